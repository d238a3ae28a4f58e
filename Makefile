# Quickstart: `make demo` and `make test`; both set up .venv/ first when it is missing or stale.
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.setup-done
CONF   ?= conf/local.yaml
DEMO_USERS ?= 20000

.PHONY: setup demo test test-fast bench lint docs lock clean

setup: $(STAMP)

$(STAMP): requirements/dev.lock requirements/test.lock pyproject.toml scripts/setup.sh
	bash scripts/setup.sh

demo: $(STAMP)
	$(BIN)/segment generate --conf $(CONF) --set generate.users=$(DEMO_USERS)
	$(BIN)/segment run --conf $(CONF) --set ingest.mode=full

test: $(STAMP)
	$(BIN)/pytest tests

test-fast: $(STAMP)
	$(BIN)/pytest tests -m "not slow"

# Not part of `make test`: about 15 minutes here. Results: docs/benchmark.json and docs/benchmark.md.
bench: $(STAMP)
	$(BIN)/segment bench --conf $(CONF) --out docs/benchmark.json

lint: $(STAMP)
	$(BIN)/ruff check lib tests jobs
	$(BIN)/ruff format --check lib tests jobs

docs: $(STAMP)
	$(BIN)/python -m segmentation.features.dictionary > docs/features.md

# Regenerate the development lock from the current venv (after changing a pin by hand).
lock: $(STAMP)
	$(BIN)/pip freeze --exclude-editable | grep -v '^ruff==\|^pytest==\|^iniconfig==\|^pluggy==' \
	  | sed 's/^torch==.*/torch==2.13.0/' > requirements/dev.lock.new && mv requirements/dev.lock.new requirements/dev.lock

clean:
	rm -rf data spark-warehouse metastore_db .pytest_cache
