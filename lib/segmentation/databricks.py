"""What only a Databricks job run has: task values, which a later task's condition reads. Elsewhere
(spark-submit, tests) there is no job to hand them to, and setting one does nothing."""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)


def on_databricks() -> bool:
    return "DATABRICKS_RUNTIME_VERSION" in os.environ


def set_task_value(key: str, value: str) -> bool:
    """Set this task's value `key` (read as {{tasks.<task>.values.<key>}}); False when not on Databricks."""
    if not on_databricks():
        log.debug("not a Databricks job run: task value %s=%s not set", key, value)
        return False
    from databricks.sdk.runtime import dbutils  # present on every Databricks runtime

    dbutils.jobs.taskValues.set(key=key, value=value)
    return True
