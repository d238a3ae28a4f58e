"""The SQL views over the segment tables: current segments and a per-segment summary, small segments
suppressed."""

import datetime as dt

from segmentation import views
from segmentation.storage import open_store
from segmentation.tables import SEGMENT_PROFILES, USER_SEGMENTS
from tests.conftest import make_config

AT = dt.datetime(2026, 9, 1, tzinfo=dt.UTC)


def _segment_tables(spark, store) -> None:
    """Ten users in three segments (the third of one user, merged at the fit) and two profiles."""
    users = [(f"u{i}", 0 if i < 6 else 1 if i < 9 else 2, "m1", "fit", AT) for i in range(10)]
    store.overwrite(
        spark.createDataFrame(
            users,
            "user_id string, segment_id int, model_version string, assigned_by string, assigned_at timestamp",
        ),
        USER_SEGMENTS,
    )
    profiles = [(0, "night", 5, 0.9, False, "m1"), (1, "games", 3, 0.4, True, "m1")]  # 2: merged at the fit
    store.overwrite(
        spark.createDataFrame(
            profiles,
            "segment_id int, label string, n_users long, stability_jaccard double, dissolved boolean, run_id string",
        ),
        SEGMENT_PROFILES,
    )


def test_views_show_current_segments_and_suppress_small_ones(spark, cfg):
    store = open_store(spark, cfg.storage)
    _segment_tables(spark, store)
    store.register_views()
    # the session is shared: views over tables other tests registered (recommendations) may follow
    assert views.register(spark, min_segment_size=3)[:2] == ["segments_current", "segment_summary"]

    current = spark.sql("SELECT user_id, segment_id, label FROM segments_current").collect()
    assert len(current) == 9 and {r.segment_id for r in current} == {0, 1}  # segment 2 has one user
    assert {r.label for r in current if r.segment_id == 0} == {"night"}
    summary = {r.segment_id: r for r in spark.sql("SELECT * FROM segment_summary").collect()}
    assert set(summary) == {0, 1}
    assert (summary[0].users, summary[0].share, summary[0].fitted_users) == (6, 0.6, 5)
    assert (summary[1].stability_jaccard, summary[1].dissolved, summary[1].model_version) == (0.4, True, "m1")


def test_a_catalog_lake_gets_the_views_as_views_of_its_schema(spark, tmp_path):
    """storage.schema (Unity Catalog on Databricks; here the session catalog): every fit creates the
    views in the tables' schema, over their full names, so SQL clients outside the product see them."""
    spark.sql(f"CREATE SCHEMA segment_views_test LOCATION '{tmp_path / 'schema'}'")
    try:
        cfg = make_config(tmp_path, "storage.schema=segment_views_test")
        store = open_store(spark, cfg.storage)
        _segment_tables(spark, store)
        created = views.persist(store, min_segment_size=3)
        assert created == ["segment_views_test.segments_current", "segment_views_test.segment_summary"]
        for name in created:
            assert spark.catalog.getTable(name).tableType == "VIEW"
        spark.catalog.setCurrentDatabase("default")  # a client with another current schema
        current = spark.sql("SELECT segment_id FROM segment_views_test.segments_current").collect()
        assert len(current) == 9 and {r.segment_id for r in current} == {0, 1}
    finally:
        spark.catalog.setCurrentDatabase("default")
        spark.sql("DROP SCHEMA segment_views_test CASCADE")


def test_a_path_lake_gets_no_persistent_views(spark, cfg):
    store = open_store(spark, cfg.storage)
    _segment_tables(spark, store)
    assert views.persist(store, min_segment_size=3) == []
