"""spark-submit entry point for `segment recommend` (also a Databricks spark_python_task).

    spark-submit jobs/recommend.py --conf conf/local.yaml [--conf FILE ...] [--set key=value ...]

Arguments are those of the `segment` CLI; exits non-zero with a one-line reason on failure.
"""

from segmentation.cli import job_main

if __name__ == "__main__":
    job_main("recommend")
