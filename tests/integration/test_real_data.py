"""Real logs: the UCI Online Retail invoice lines (../shared/datasets/online_retail, CC BY 4.0),
ingested with the README's configuration, every count checked against the data set's facts.json."""

from __future__ import annotations

import json

import pytest
from pyspark.sql import functions as F

from segmentation.cli import main
from segmentation.storage import open_store
from segmentation.tables import EVENTS_SILVER, PIPELINE_RUNS
from tests.conftest import REPO, make_config, shared_dataset


@pytest.mark.slow
def test_online_retail_ingests_with_exact_counts(spark, tmp_path):
    data = shared_dataset("online_retail")
    facts = json.loads((data / "facts.json").read_text())
    expected = facts["expected_ingest"]
    settings = [
        f"storage.root={tmp_path / 'lake'}",
        f"input.path={data / facts['file']}",
        f"report.path={tmp_path / 'reports'}",
        "spark.master=local[2]",
    ]
    args = ["--conf", str(REPO / "conf" / "local.yaml"), "--conf", str(data / "overlay.yaml")]
    args += [a for s in settings for a in ("--set", s)]
    assert main(["ingest", *args, "--run-id", "retail"]) == 0

    store = open_store(spark, make_config(tmp_path, *settings).storage)
    run = store.read(PIPELINE_RUNS).where("run_id = 'retail'").head()
    details = json.loads(run.details)
    assert (run.rows_in, run.rows_out, run.rows_quarantined, run.rows_duplicate) == (
        expected["rows_in"],
        expected["rows_out"],
        expected["rows_quarantined"],
        expected["rows_duplicate"],
    )
    assert details["quarantined_by_reason"] == expected["quarantine_reasons"]
    silver = store.read(EVENTS_SILVER)
    totals = silver.agg(
        F.countDistinct("user_id").alias("users"),
        F.round(F.sum("value"), 2).alias("amount"),
        F.sum("quantity").alias("quantity"),
        F.sum(F.col("is_bot").cast("int")).alias("bot_events"),
        F.min("event_time").alias("first"),
        F.max("event_time").alias("last"),
    ).head()
    assert totals.users == expected["users_in_silver"] == facts["distinct_customers_accepted"]
    assert totals.amount == pytest.approx(facts["line_amount_sum_accepted"], abs=0.005)
    assert totals.quantity == facts["quantity_sum_accepted"]
    # wholesale customers' invoices (up to 281 lines in one minute) are baskets, not bots
    assert totals.bot_events == 0 and details["bot_users"] == 0
    assert (
        str(totals.first) == facts["event_time_min_utc"] and str(totals.last) == facts["event_time_max_utc"]
    )
