"""Segment profiles on tiny data, checked by hand: means, lifts, the merged `other` row, labels."""

import pytest

from segmentation.cluster.density import NOISE
from segmentation.cluster.profiles import (
    OTHER_SEGMENT,
    build_profiles,
    feature_word,
    segment_label,
    segment_sums,
)

NAMES = ["n_events", "share_night", "share_cat_games", "recency_days"]


def tiny(spark):
    # segment 0: users a, b; segment 1: users c, d, e; segment 2: user f alone.
    segments = spark.createDataFrame(
        [("a", 0), ("b", 0), ("c", 1), ("d", 1), ("e", 1), ("f", 2)], "user_id string, segment_id int"
    )
    features = spark.createDataFrame(
        [
            ("a", 10.0, 0.8, 0.9, 1.0),
            ("b", 20.0, 0.6, 0.7, 3.0),
            ("c", 2.0, 0.0, 0.1, 20.0),
            ("d", 4.0, 0.1, 0.0, 30.0),
            ("e", 6.0, 0.2, 0.2, 40.0),
            ("f", 100.0, 0.0, 0.0, 0.0),
        ],
        "user_id string, n_events double, share_night double, share_cat_games double, recency_days double",
    )
    return [r.asDict() for r in segment_sums(segments, features, NAMES).collect()]


def test_means_and_lifts_by_hand(spark):
    profiles = build_profiles(tiny(spark), NAMES, min_size=1, label_features=2, run_id="r")
    by_id = {p["segment_id"]: p for p in profiles.rows}
    assert sorted(by_id) == [0, 1, 2]
    population_events = (10 + 20 + 2 + 4 + 6 + 100) / 6  # 23.667
    assert by_id[0]["n_users"] == 2 and by_id[0]["share"] == pytest.approx(2 / 6)
    assert by_id[0]["mean_n_events"] == pytest.approx(15.0)
    assert by_id[0]["lift_n_events"] == pytest.approx(15.0 / population_events)
    assert by_id[1]["mean_recency_days"] == pytest.approx(30.0)
    assert by_id[1]["lift_recency_days"] == pytest.approx(30.0 / (94 / 6))
    assert by_id[0]["lift_share_night"] == pytest.approx(0.7 / (1.7 / 6))
    assert by_id[0]["top_categories"] == ["games"]
    # z of segment 0: games (0.8 - 0.317) / 0.353 = 1.37, night (0.7 - 0.283) / 0.308 = 1.35; n_events
    # (15 - 23.7) / 34.2 = -0.25 and recency (2 - 15.7) / 15.1 = -0.9 -> "recent" ranks third.
    assert by_id[0]["label"] == "games · night"
    assert by_id[1]["label"].startswith("lapsed")


def test_small_segments_merge_into_other_and_are_withheld_when_still_small(spark):
    sums = tiny(spark)
    merged = build_profiles(sums, NAMES, min_size=3, label_features=2, run_id="r")
    # segments 0 (2 users) and 2 (1 user) merge into other (3 users): shown, with pooled means.
    by_id = {p["segment_id"]: p for p in merged.rows}
    assert sorted(by_id) == [OTHER_SEGMENT, 1]
    assert by_id[OTHER_SEGMENT]["n_users"] == 3 and merged.merged_segments == 2
    assert by_id[OTHER_SEGMENT]["mean_n_events"] == pytest.approx((10 + 20 + 100) / 3)
    assert by_id[OTHER_SEGMENT]["label"].startswith("other: 2 segments")
    pooled = build_profiles(sums, NAMES, min_size=4, label_features=2, run_id="r")
    assert [(p["segment_id"], p["n_users"]) for p in pooled.rows] == [(OTHER_SEGMENT, 6)]
    withheld = build_profiles(sums, NAMES, min_size=7, label_features=2, run_id="r")
    assert withheld.rows == [] and withheld.suppressed_users == 6  # not even all users together reach 7


def test_density_noise_is_its_own_row_never_merged_with_small_segments(spark):
    sums = [dict(r, segment_id=NOISE) if r["segment_id"] == 2 else r for r in tiny(spark)]
    shown = build_profiles(sums, NAMES, min_size=1, label_features=2, run_id="r", jaccard={0: 0.8, 1: 0.4})
    by_id = {p["segment_id"]: p for p in shown.rows}
    assert sorted(by_id) == [NOISE, 0, 1] and by_id[NOISE]["label"] == "noise: in no dense region"
    assert (by_id[0]["stability_jaccard"], by_id[0]["dissolved"]) == (0.8, False)
    assert (by_id[1]["stability_jaccard"], by_id[1]["dissolved"]) == (0.4, True)
    assert (by_id[NOISE]["stability_jaccard"], by_id[NOISE]["dissolved"]) == (None, None)
    small = build_profiles(sums, NAMES, min_size=2, label_features=2, run_id="r")
    assert sorted(p["segment_id"] for p in small.rows) == [0, 1] and small.suppressed_users == 1


def test_label_words():
    assert feature_word("share_cat_home_garden", True) == "home garden"
    assert feature_word("share_cat_games", False) is None
    assert feature_word("share_night", True) == "night"
    assert feature_word("purchase_per_view", True) == "high conversion"
    assert feature_word("share_search", True) == "search-heavy"
    assert feature_word("recency_days", False) == "recent"
    population = {"a_feature": (1.0, 1.0), "n_events": (10.0, 2.0)}
    assert segment_label({"a_feature": 1.1, "n_events": 10.2}, population, 3) == "typical"
    assert segment_label({"a_feature": 1.1, "n_events": 4.0}, population, 3) == "low activity"
