"""Pseudonymization: user ids replaced by keyed HMAC-SHA256 (hex), deterministic for one key.

The key comes from an environment variable or a Databricks secret, never from config files, and there
is no default key. The HMAC runs in a pandas UDF: composing it from built-in `sha2` would put the key
material into query plans, the Spark UI and event logs.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Iterator

import pandas as pd
from pyspark.sql import Column, SparkSession
from pyspark.sql.functions import pandas_udf

from segmentation.config import PrivacyConfig
from segmentation.errors import ConfigError


def hmac_key(spark: SparkSession, cfg: PrivacyConfig) -> bytes:
    """The pseudonymization key, from the Databricks secret when configured, else the environment."""
    if cfg.secret_scope and cfg.secret_key:
        try:
            from pyspark.dbutils import DBUtils  # only on Databricks
        except ImportError:
            raise ConfigError(
                "privacy.secret_scope is set but Databricks secrets are not available here; "
                f"use the environment variable named by privacy.key_env ({cfg.key_env}) instead"
            ) from None
        value = DBUtils(spark).secrets.get(scope=cfg.secret_scope, key=cfg.secret_key)
        where = f"Databricks secret {cfg.secret_scope}/{cfg.secret_key}"
    else:
        value = os.environ.get(cfg.key_env, "")
        where = f"environment variable {cfg.key_env}"
    if len(value) < 16:
        raise ConfigError(
            f"privacy.pseudonymize is true but the {where} is "
            + ("not set" if not value else "shorter than 16 characters")
            + ": set a secret key there (there is no default key)"
        )
    return value.encode("utf-8")


def pseudonym(value: str, key: bytes) -> str:
    """HMAC-SHA256 of `value` under `key`, as lower-case hex (what the Spark column computes)."""
    return hmac.new(key, value.encode("utf-8"), hashlib.sha256).hexdigest()


def pseudonymize(column: Column, key: bytes) -> Column:
    """A string column → its pseudonyms (nulls stay null)."""

    @pandas_udf("string")
    def _hmac(batches: Iterator[pd.Series]) -> Iterator[pd.Series]:
        for ids in batches:
            yield ids.map(lambda v: None if v is None else pseudonym(v, key), na_action="ignore")

    return _hmac(column)
