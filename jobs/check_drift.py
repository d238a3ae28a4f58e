"""spark-submit entry point for `segment check-drift` (also a Databricks spark_python_task).

    spark-submit jobs/check_drift.py --conf conf/local.yaml [--conf FILE ...] [--set key=value ...]

Arguments are those of the `segment` CLI; exits non-zero with a one-line reason on failure.
"""

from segmentation.cli import job_main

if __name__ == "__main__":
    job_main("check-drift")
