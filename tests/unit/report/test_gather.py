"""The report's Spark side: drift reduced to a row per run, and the map's bounded, repeatable sample."""

import datetime as dt

from segmentation.report.stage import drift_by_run, map_sample
from segmentation.tables import SEGMENT_DRIFT_SCHEMA

T0 = dt.datetime(2026, 6, 1, 8, 0)


def _drift_row(run, model, kind, name, psi, threshold, drifted, minutes):
    return (
        run,
        model,
        kind,
        name,
        100,
        90,
        10,
        psi,
        None,
        threshold,
        0.05,
        drifted,
        T0 + dt.timedelta(minutes=minutes),
    )


def test_drift_is_one_row_per_run_with_the_largest_statistic_of_each_kind(spark):
    rows = [
        _drift_row("a1", "m1", "feature", "n_events", 0.05, 0.2, False, 0),
        _drift_row("a1", "m1", "feature", "share_night", 0.31, 0.2, True, 0),
        _drift_row("a1", "m1", "segment_share", "segments", 0.02, 0.1, False, 0),
        _drift_row("a1", "m1", "summary", "retrain_recommended", None, None, True, 0),
        _drift_row("a2", "m1", "feature", "n_events", 0.01, 0.2, False, 60),
        _drift_row("a2", "m1", "summary", "retrain_recommended", None, None, False, 60),
    ]
    frame = spark.createDataFrame(rows, SEGMENT_DRIFT_SCHEMA)
    out = [r.asDict() for r in drift_by_run(frame).collect()]
    assert [r["run_id"] for r in out] == ["a2", "a1"]  # the latest first
    latest, first = out
    assert first["feature_psi"] == 0.31 and first["feature_threshold"] == 0.2
    assert first["segment_share_psi"] == 0.02 and first["drifted"] is True
    assert latest["segment_share_psi"] is None and latest["drifted"] is False
    assert [r.run_id for r in drift_by_run(frame, limit=1).collect()] == ["a2"]


def test_the_map_sample_is_bounded_repeatable_and_of_the_current_model_only(spark):
    segments = spark.createDataFrame(
        [(f"u{i}", i % 3, "m2" if i < 50 else "m1") for i in range(60)],
        "user_id string, segment_id int, model_version string",
    )
    features = spark.createDataFrame(
        [(f"u{i}", i, float(i) / 2, "x", T0) for i in range(60)],
        "user_id string, n_events long, share_night double, run_id string, as_of timestamp",
    )
    sample = map_sample(segments, features, "m2", 20)
    assert sample.columns == ["segment_id", "n_events", "share_night"]  # raw features, as doubles
    rows = sample.collect()
    assert len(rows) == 20 and all(r.n_events < 50 for r in rows)  # users of m1 left out
    again = map_sample(segments.repartition(4), features.repartition(3), "m2", 20).collect()
    assert sorted(rows) == sorted(again)  # the same users, whatever the partitioning
    assert len(map_sample(segments, features, "m2", 500).collect()) == 50
