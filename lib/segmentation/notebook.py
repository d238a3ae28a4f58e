"""What the notebooks in notebooks/ share, so they hold no logic of their own.

- The config is found from the repository root, wherever the notebook runs: Databricks runs a
  notebook with its own folder as the working directory, where `conf/...` does not resolve. On
  Databricks (DATABRICKS_RUNTIME_VERSION set) that is conf/databricks.yaml, elsewhere conf/local.yaml;
  SEGMENTATION_CONF adds overlay files (os.pathsep-separated) and SEGMENTATION_SET `key=value`
  overrides (one per line), as `--conf` and `--set` do for the CLI.
- The working directory becomes the repository root, so the relative paths of conf/local.yaml
  (./data/lake, ...) mean what they mean for the CLI.
- `show` is Databricks' `display` in a Databricks notebook (an interactive table) and plain text
  elsewhere.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from pyspark.sql import DataFrame, SparkSession

from segmentation import views
from segmentation.config import Config, load_config
from segmentation.errors import ConfigError
from segmentation.spark import get_spark
from segmentation.storage import TableStore, open_store

log = logging.getLogger(__name__)


def on_databricks() -> bool:
    return "DATABRICKS_RUNTIME_VERSION" in os.environ


def repo_root(start: Path | None = None) -> Path:
    """The repository root: the first folder at or above `start` (default: the working directory)
    with a conf/ folder and databricks.yml."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "conf").is_dir() and (folder / "databricks.yml").is_file():
            return folder
    raise ConfigError(f"no repository root (a folder with conf/ and databricks.yml) at or above {here}")


@dataclass(frozen=True)
class Lake:
    spark: SparkSession
    cfg: Config
    store: TableStore
    root: Path


def open_lake() -> Lake:
    """The session, config and table layer of the repository's lake, every table and view registered
    for spark.sql (what `segment sql` sees)."""
    root = repo_root()
    os.chdir(root)
    files = [str(root / "conf" / ("databricks.yaml" if on_databricks() else "local.yaml"))]
    files += [f for f in os.environ.get("SEGMENTATION_CONF", "").split(os.pathsep) if f]
    overrides = [line for line in os.environ.get("SEGMENTATION_SET", "").splitlines() if line.strip()]
    cfg = load_config(files, overrides)
    spark = get_spark(cfg)
    store = open_store(spark, cfg.storage)
    tables = store.register_views()
    made = views.register(spark, cfg.privacy.min_segment_size, cfg.recommend.event_types)
    log.info("notebook: %s; tables %s; views %s", ", ".join(files), ", ".join(tables), ", ".join(made))
    return Lake(spark, cfg, store, root)


def show(df: DataFrame, rows: int = 20) -> None:
    """Databricks' interactive `display` in a Databricks notebook, else the first `rows` as text."""
    display = getattr(sys.modules.get("__main__"), "display", None)
    if on_databricks() and callable(display):
        display(df)
    else:
        df.show(rows, truncate=False)
