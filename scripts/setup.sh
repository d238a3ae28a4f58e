#!/usr/bin/env bash
# Builds .venv/ from the committed locks on a bare machine: Java check, torch first, then the
# development lock, then the package itself (editable, no dependency resolution), then Delta Lake's
# Spark jars from Maven Central (requirements/delta-jars.lock, SHA-256 checked) into .venv/share/delta-jars.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv
PYTHON=${PYTHON:-python3}

java_major=$(java -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -n1 || true)
if [ -z "${java_major}" ] || [ "${java_major}" -lt 17 ]; then
  echo "setup: Java 17 or newer is required by Spark 4 (found: ${java_major:-none})." >&2
  echo "setup: install it, e.g. 'apt-get install -y openjdk-17-jre-headless', or set JAVA_HOME." >&2
  exit 1
fi

py_ok=$("$PYTHON" -c 'import sys; print(int(sys.version_info[:2] == (3, 11)))')
if [ "$py_ok" != "1" ]; then
  echo "setup: Python 3.11 is required (found $("$PYTHON" --version 2>&1))." >&2
  exit 1
fi

rm -rf "$VENV"
"$PYTHON" -m venv "$VENV"
PIP="$VENV/bin/pip --disable-pip-version-check"
# torch first, on its own: where a local CPU wheel lies in pip's find-links it takes that one; otherwise
# PyPI's build (with its CUDA libraries, a few GB, cached by pip after the first machine) runs on CPU too.
$PIP install --quiet "torch==2.13.0"
$PIP install --quiet -r requirements/dev.lock -r requirements/test.lock
$PIP install --quiet --no-deps -e .
$PIP check
"$VENV/bin/python" scripts/fetch_jars.py requirements/delta-jars.lock "$VENV/share/delta-jars"

# pip's spark-submit runs `python3` from PATH to find Spark, which fails unless the venv is activated.
# Replace it with a wrapper that pins this venv's Spark and Python (driver and executors) and adds
# Delta Lake's jars, session extension and catalog unless the command brings its own Delta.
log4j="$(pwd)/lib/segmentation/resources/log4j2.properties"
cat > "$VENV/bin/spark-submit" <<WRAPPER
#!/usr/bin/env bash
# Written by scripts/setup.sh: spark-submit with this venv's Spark, Python and Delta Lake jars.
# Spark's own logging is quiet (warnings) unless SPARK_SUBMIT_OPTS says otherwise.
export SPARK_SUBMIT_OPTS="\${SPARK_SUBMIT_OPTS:--Dlog4j2.configurationFile=$log4j}"
WRAPPER
cat scripts/spark-submit.sh >> "$VENV/bin/spark-submit"
chmod +x "$VENV/bin/spark-submit"
touch "$VENV/.setup-done"
echo "setup: .venv ready ($("$VENV/bin/python" -c 'import pyspark, torch; print("pyspark", pyspark.__version__, "torch", torch.__version__)'))"
