# Quickstart: `make demo` and `make test`; both set up .venv/ first when it is missing or stale.
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.setup-done
CONF   ?= conf/local.yaml
DEMO_USERS ?= 20000

.PHONY: setup browser demo test test-fast test-tools test-connect bench quality quality-tuning lint docs lock clean cluster-up cluster-down connect-up \
	connect-down wheel

setup: $(STAMP)

$(STAMP): requirements/dev.lock requirements/test.lock requirements/delta-jars.lock pyproject.toml \
          scripts/setup.sh scripts/spark-submit.sh scripts/fetch_jars.py
	bash scripts/setup.sh

demo: $(STAMP)
	$(BIN)/segment generate --conf $(CONF) --set generate.users=$(DEMO_USERS)
	$(BIN)/segment run --conf $(CONF) --set ingest.mode=full

# Everything but the developer tools' smoke tests (`make test-tools`) and the Spark Connect tests (`make
# test-connect`), which CI's 90 minutes no longer hold; CI runs this.
test: $(STAMP) browser
	$(BIN)/pytest tests -m "not tools and not connect"

# Debian's Chromium for the report's browser test (installed when missing and run as root).
browser:
	bash scripts/browser.sh

# The pure tier: no SparkSession, no training processes.
test-fast: $(STAMP)
	$(BIN)/pytest tests -m "not spark and not slow"

# The smoke tests of `segment bench` and of the quality lab on tiny sizes (about 15 minutes here): run
# them after changing either tool, and before `make bench` / `make quality` spend their hours.
test-tools: $(STAMP)
	$(BIN)/pytest tests -m tools

# The product as a Spark Connect client (tests/integration/test_connect.py, about 10 minutes here): run it
# after changing the table layer, the CLI or anything that branches on Spark Connect.
test-connect: $(STAMP)
	$(BIN)/pytest tests -m connect

# Not part of `make test`: about 15 minutes here. Results: docs/benchmark.json and docs/benchmark.md.
bench: $(STAMP)
	$(BIN)/segment bench --conf $(CONF) --out docs/benchmark.json

# The quality lab on the held-out worlds (about two hours here): docs/quality.md, .png and .jsonl. A
# rerun measures only worlds missing from docs/quality.jsonl; delete it to measure all again.
quality: $(STAMP)
	$(BIN)/segment bench --conf $(CONF) --quality held-out --out docs/quality.jsonl

# The same on the tuning worlds (about an hour): the measurements to develop a rule on, so that the
# held-out ones are read only to report it.
quality-tuning: $(STAMP)
	$(BIN)/segment bench --conf $(CONF) --quality tuning --out docs/quality-tuning.jsonl

lint: $(STAMP)
	$(BIN)/ruff check lib tests jobs
	$(BIN)/ruff format --check lib tests jobs

docs: $(STAMP)
	$(BIN)/python -m segmentation.features.dictionary > docs/features.md

# Regenerate the development lock from the current venv (after changing a pin by hand).
lock: $(STAMP)
	$(BIN)/pip freeze --exclude-editable | grep -v '^ruff==\|^pytest==\|^iniconfig==\|^pluggy==' \
	  | sed 's/^torch==.*/torch==2.13.0/' > requirements/dev.lock.new && mv requirements/dev.lock.new requirements/dev.lock

# A Spark standalone master and two workers (1 core, 2 GiB each) on 127.0.0.1, from the venv's Spark;
# `cluster-up` prints the master URL to pass to spark-submit --master. README "Run on a cluster".
cluster-up: $(STAMP)
	$(BIN)/python -m segmentation.standalone up --dir data/cluster

cluster-down:
	$(BIN)/python -m segmentation.standalone down --dir data/cluster

# A local Spark Connect server with Delta; prints the sc:// URL for spark.remote. README "Spark Connect".
connect-up: $(STAMP)
	$(BIN)/python -m segmentation.standalone connect-up --dir data/connect

connect-down:
	$(BIN)/python -m segmentation.standalone connect-down --dir data/connect

# The package as a wheel (dist/), for pip and Databricks libraries, and the same file as
# dist/deep_user_segmentation.zip for spark-submit --py-files: PySpark puts --py-files on executors'
# sys.path only for .zip, .egg and .jar names (a pure-Python wheel is a zip of the package).
wheel: $(STAMP)
	rm -f dist/deep_user_segmentation-*.whl dist/deep_user_segmentation.zip
	$(BIN)/pip wheel --quiet --no-deps -w dist .
	cp dist/deep_user_segmentation-*.whl dist/deep_user_segmentation.zip

clean:
	rm -rf data dist build spark-warehouse metastore_db .pytest_cache
