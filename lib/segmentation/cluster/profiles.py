"""Segment profiles: what each segment's users do, in the features' own units, and a short label.

Spark reduces the segmented users to one row of sufficient statistics per segment (`segment_sums`);
everything after that works on those k rows. Segments smaller than `privacy.min_segment_size` are merged
into one `other` row (segment_id -1) before any figure is derived, and that row too is withheld when
it is still smaller than the minimum, so no published figure describes fewer users than the minimum.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from segmentation.cluster.density import NOISE
from segmentation.cluster.kselect import JACCARD_DISSOLVED
from segmentation.features.aggregates import HOUR_BUCKETS, TYPE_NAMES

OTHER_SEGMENT = -2  # small segments merged (-1 is density clustering's noise: cluster/density.py)
LABEL_MIN_Z = 0.5  # a feature names a segment only when its mean is this many population SDs away
NON_FEATURE_COLUMNS = ("user_id", "features", "as_of", "run_id")
RULE_COLUMNS = ("rule", "rule_sql", "rule_precision", "rule_recall", "rules_fidelity", "rules_sql_agreement")

# Words for the label, "high X" / "low X"; mix shares (categories, devices, time of day) read as the
# value itself: "night · games · high conversion".
FEATURE_WORDS = {
    "n_events": "activity",
    "active_days": "active days",
    "n_sessions": "sessions",
    "events_per_session": "session depth",
    "tenure_days": "tenure",
    "mean_gap_hours": "time between events",
    "mean_session_gap_days": "time between sessions",
    "cart_per_view": "cart rate",
    "purchase_per_view": "conversion",
    "purchase_per_cart": "checkout rate",
    "purchase_count": "purchases",
    "cart_position": "late carts",
    "purchase_position": "late purchases",
    "purchase_total": "spend",
    "purchase_mean": "basket value",
    "quantity_total": "quantity",
    "category_entropy": "category variety",
}
MIX_SHARES = {f"share_{name}": name for name, _, _ in HOUR_BUCKETS} | {"weekend_share": "weekend"}


def feature_columns(features: DataFrame) -> list[str]:
    """The raw (unscaled) feature columns of `user_features`."""
    return [c for c in features.columns if c not in NON_FEATURE_COLUMNS]


def segment_sums(segments: DataFrame, features: DataFrame, names: Sequence[str]) -> DataFrame:
    """Input: `segments` (user_id, segment_id) and `features` (user_id + raw feature columns).
    Output: one row per segment_id with n_users, and sum_<f> and sumsq_<f> for every feature f."""
    stats = [F.count("*").alias("n_users")]
    for name in names:
        value = F.col(name).cast("double")
        stats += [F.sum(value).alias(f"sum_{name}"), F.sum(value * value).alias(f"sumsq_{name}")]
    return (
        segments.select("user_id", "segment_id")
        .join(features.select("user_id", *names), "user_id")
        .groupBy("segment_id")
        .agg(*stats)
    )


@dataclass
class Profiles:
    rows: list[dict]  # one per published segment, the columns of `profile_schema`
    suppressed_users: int  # users of small segments that not even the merged `other` row could show
    merged_segments: int  # segments below the minimum size, merged into `other`


def profile_schema(names: Sequence[str]) -> str:
    means = ", ".join(f"mean_{n} double" for n in names)
    lifts = ", ".join(f"lift_{n} double" for n in names)
    return (
        "segment_id int, label string, n_users long, share double, top_categories array<string>, "
        f"stability_jaccard double, dissolved boolean, {means}, {lifts}, run_id string, "
        # appended last, so that older tables evolve by new trailing columns (cluster/rules.py)
        "rule string, rule_sql string, rule_precision double, rule_recall double, rules_fidelity double, "
        "rules_sql_agreement double"  # = RULE_COLUMNS
    )


def build_profiles(
    sums: Sequence[dict],
    names: Sequence[str],
    min_size: int,
    label_features: int,
    run_id: str,
    jaccard: dict[int, float] | None = None,
) -> Profiles:
    """From `segment_sums` rows (a few per run): each published segment's size, share of all segmented
    users, mean of every feature, lift (segment mean / population mean; null when the population mean
    is 0), its top categories, a label from its most distinctive features, and its bootstrap Jaccard
    stability from `jaccard` (segment id -> value; null for `other` and segments without one) with
    `dissolved` where it is at most 0.5."""
    jaccard = jaccard or {}
    total = sum(r["n_users"] for r in sums)
    population = _moments(sums, names)
    # noise (users in no dense region) is never merged with segments: shown alone or withheld
    noise = [r for r in sums if r["segment_id"] == NOISE]
    sums_segments = [r for r in sums if r["segment_id"] != NOISE]
    small = [r for r in sums_segments if r["n_users"] < min_size]
    groups = [dict(r) for r in sums_segments if r["n_users"] >= min_size]
    groups += [dict(r) for r in noise if r["n_users"] >= min_size]
    suppressed = sum(r["n_users"] for r in noise if r["n_users"] < min_size)
    if small:
        merged = {"segment_id": OTHER_SEGMENT, "n_users": sum(r["n_users"] for r in small)}
        for key in small[0]:
            if key.startswith("sum"):
                merged[key] = sum(r[key] or 0.0 for r in small)
        if merged["n_users"] >= min_size:
            groups.append(merged)
        else:
            suppressed += merged["n_users"]
    rows = []
    for group in sorted(groups, key=lambda g: g["segment_id"]):
        n = group["n_users"]
        means = {name: (group[f"sum_{name}"] or 0.0) / n for name in names}
        lifts = {name: (means[name] / population[name][0] if population[name][0] else None) for name in names}
        if group["segment_id"] == OTHER_SEGMENT:
            label = f"other: {len(small)} segments under {min_size} users"
        elif group["segment_id"] == NOISE:
            label = "noise: in no dense region"
        else:
            label = segment_label(means, population, label_features)
        rows.append(
            {
                "segment_id": group["segment_id"],
                "label": label,
                "n_users": n,
                "share": n / total,
                "top_categories": top_categories(means),
                "stability_jaccard": jaccard.get(group["segment_id"]),
                "dissolved": (
                    jaccard[group["segment_id"]] <= JACCARD_DISSOLVED
                    if group["segment_id"] in jaccard
                    else None
                ),
                **{f"mean_{name}": means[name] for name in names},
                **{f"lift_{name}": lifts[name] for name in names},
                "run_id": run_id,
                **dict.fromkeys(RULE_COLUMNS),  # filled by cluster/rules.py's annotate
            }
        )
    return Profiles(rows=rows, suppressed_users=suppressed, merged_segments=len(small))


def _moments(sums: Sequence[dict], names: Sequence[str]) -> dict[str, tuple[float, float]]:
    """Population mean and standard deviation of every feature, from the per-segment sums."""
    n = sum(r["n_users"] for r in sums)
    out = {}
    for name in names:
        s = sum(r[f"sum_{name}"] or 0.0 for r in sums)
        ss = sum(r[f"sumsq_{name}"] or 0.0 for r in sums)
        mean = s / n
        out[name] = (mean, math.sqrt(max(ss / n - mean * mean, 0.0)))
    return out


def segment_label(means: dict[str, float], population: dict[str, tuple[float, float]], n_words: int) -> str:
    """The `n_words` features whose segment mean lies furthest from the population's, in population
    standard deviations, as words: "night · games · high conversion"; "typical" when none is distinct."""
    ranked = []
    for name, mean in means.items():
        pop_mean, pop_sd = population[name]
        if pop_sd <= 0:
            continue
        z = (mean - pop_mean) / pop_sd
        word = feature_word(name, z > 0)
        if abs(z) >= LABEL_MIN_Z and word is not None:
            ranked.append((abs(z), word))
    words: list[str] = []
    for _, word in sorted(ranked, reverse=True):
        if word not in words:
            words.append(word)
        if len(words) == n_words:
            break
    return " · ".join(words) or "typical"


def feature_word(name: str, high: bool) -> str | None:
    """How a feature reads in a label when the segment is above (`high`) or below the population.
    A mix share that is low says little (the segment's mix is elsewhere), so it gets no word."""
    for prefix in ("share_cat_", "share_device_"):
        if name.startswith(prefix):
            value = name[len(prefix) :].replace("_", " ")
            return None if not high or value == "other" else value
    if name in MIX_SHARES:
        return MIX_SHARES[name] if high else None
    if name.startswith("share_") and name[len("share_") :] in TYPE_NAMES:
        kind = name[len("share_") :]
        return f"{kind}-heavy" if high else f"few {kind}s"
    if name == "recency_days":
        return "lapsed" if high else "recent"
    word = FEATURE_WORDS.get(name, name.replace("_", " "))
    return f"{'high' if high else 'low'} {word}"


def top_categories(means: dict[str, float], n: int = 3) -> list[str]:
    """The segment's `n` most frequent named categories (by mean share of events), most frequent first."""
    shares = [
        (mean, name[len("share_cat_") :])
        for name, mean in means.items()
        if name.startswith("share_cat_") and name != "share_cat_other" and mean > 0
    ]
    return [value for _, value in sorted(shares, reverse=True)[:n]]
