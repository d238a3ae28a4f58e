# The body of .venv/bin/spark-submit (scripts/setup.sh writes the header above this line).
venv="$(cd "$(dirname "$0")/.." && pwd)"
export PYSPARK_PYTHON="${PYSPARK_PYTHON:-$venv/bin/python}"
export PYSPARK_DRIVER_PYTHON="${PYSPARK_DRIVER_PYTHON:-$venv/bin/python}"
SPARK_HOME="$("$venv/bin/python" -c 'import os, pyspark; print(os.path.dirname(pyspark.__file__))')"
export SPARK_HOME

delta_jars=$(ls "$venv"/share/delta-jars/*.jar 2>/dev/null | paste -sd, -)
# Options of spark-submit that take no value; every other --option takes one (or is --option=value).
flags=" --verbose -v --supervise --help -h --version "
args=() jars_at=-1 brings_delta=0 extensions=0 catalog=0 i=0
while [ $# -gt 0 ]; do
  arg=$1; shift
  case "$arg" in
    --jars=*|--packages=*|--conf=*) value=${arg#*=}; arg=${arg%%=*}; set -- "$value" "$@" ;;
  esac
  if [[ "$arg" != -* ]]; then  # the application file: the rest are the application's own arguments
    args+=("$arg" "$@"); break
  fi
  args+=("$arg")
  if [[ "$flags" == *" $arg "* ]] || [ $# -eq 0 ]; then continue; fi
  value=$1; shift
  case "$arg" in
    --jars) jars_at=${#args[@]}; [[ "$value" == *delta-spark* ]] && brings_delta=1 ;;
    --packages) [[ "$value" == *io.delta:* ]] && brings_delta=1 ;;
    --conf)
      [[ "$value" == spark.sql.extensions=* ]] && extensions=1
      [[ "$value" == spark.sql.catalog.spark_catalog=* ]] && catalog=1
      [[ "$value" == spark.jars=*delta-spark* || "$value" == spark.jars.packages=*io.delta:* ]] && brings_delta=1 ;;
  esac
  args+=("$value")
done

extra=()
if [ -n "$delta_jars" ] && [ "$brings_delta" = 0 ]; then
  if [ "$jars_at" -ge 0 ]; then
    args[$jars_at]="$delta_jars,${args[$jars_at]}"  # the command's own --jars keep theirs and gain Delta's
  else
    extra+=(--jars "$delta_jars")
  fi
fi
if [ -n "$delta_jars" ] || [ "$brings_delta" = 1 ]; then
  [ "$extensions" = 0 ] && extra+=(--conf spark.sql.extensions=io.delta.sql.DeltaSparkSessionExtension)
  [ "$catalog" = 0 ] && extra+=(--conf spark.sql.catalog.spark_catalog=org.apache.spark.sql.delta.catalog.DeltaCatalog)
fi
exec "$SPARK_HOME/bin/spark-submit" "${extra[@]}" "${args[@]}"
