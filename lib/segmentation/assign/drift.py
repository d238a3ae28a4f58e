"""Drift of newly scored users against the snapshot the model was fitted on, with thresholds that
account for sample size and binning.

For every raw feature: the reference's deciles (Spark's approxQuantile on the fitted snapshot) cut
both samples into the same bins, one aggregation per sample counts them, and the population
stability index (PSI) and the Jensen–Shannon distance compare the two histograms. The segments'
shares in the batch are compared with their shares at the fit the same way.

A fixed PSI threshold (0.1, 0.25) fires on most small samples of unchanged behaviour and almost never
on large ones, because sampling noise alone moves PSI by roughly (bins - 1) / n. So each statistic's
threshold is calibrated against the null: both samples are drawn again from the reference's binned
distribution at their real sizes (a parametric bootstrap), the statistic recomputed, and the
threshold set at its 1 - alpha / m quantile, m being the number of statistics tested (Bonferroni), so
a batch of unchanged behaviour raises an alarm on any of them with probability at most `alpha`. The
threshold used is stored with every row.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from segmentation.artifacts import atomic_write_text, published
from segmentation.cluster.segmenter import Segmenter
from segmentation.stage import StageContext
from segmentation.storage.base import sql_double
from segmentation.tables import SEGMENT_CENTROIDS, SEGMENT_DRIFT, SEGMENT_DRIFT_SCHEMA, USER_FEATURES

log = logging.getLogger(__name__)

RETRAIN = "retrain_recommended"  # the summary row's name

FLOOR = 1e-4  # share given to an empty bin, so the log ratio of PSI stays finite
QUANTILE_ERROR = 0.001


@dataclass(frozen=True)
class Drift:
    """One compared quantity: a feature or the segment shares."""

    kind: str  # feature | segment_share
    name: str
    reference_rows: int
    batch_rows: int
    bins: int
    psi: float | None  # None on the summary row
    js_distance: float | None
    threshold: float | None
    drifted: bool


def psi(reference: np.ndarray, batch: np.ndarray) -> np.ndarray:
    """Population stability index of histograms (last axis: bins; counts or shares)."""
    p = np.maximum(reference / reference.sum(axis=-1, keepdims=True), FLOOR)
    q = np.maximum(batch / batch.sum(axis=-1, keepdims=True), FLOOR)
    return ((q - p) * np.log(q / p)).sum(axis=-1)


def js_distance(reference: np.ndarray, batch: np.ndarray) -> np.ndarray:
    """Jensen–Shannon distance (base 2: 0 identical, 1 disjoint) of histograms (last axis: bins)."""
    p = reference / reference.sum(axis=-1, keepdims=True)
    q = batch / batch.sum(axis=-1, keepdims=True)
    m = (p + q) / 2

    def kl(a, b):
        return np.where(a > 0, a * np.log2(np.where(a > 0, a, 1) / np.where(b > 0, b, 1)), 0).sum(axis=-1)

    return np.sqrt(np.maximum((kl(p, m) + kl(q, m)) / 2, 0))


def null_threshold(
    reference: np.ndarray, batch_rows: int, quantile: float, simulations: int, rng: np.random.Generator
) -> float:
    """The `quantile` of PSI between two samples of the reference's binned distribution, of the
    reference's size and of `batch_rows`: what sampling alone gives."""
    p = reference / reference.sum()
    again = rng.multinomial(int(reference.sum()), p, size=simulations)
    batch = rng.multinomial(batch_rows, p, size=simulations)
    return float(np.quantile(psi(again, batch), quantile))


def compare(
    kind: str,
    names: Sequence[str],
    reference: Sequence[np.ndarray],
    batch: Sequence[np.ndarray],
    alpha: float,
    tests: int,
    simulations: int,
    seed: int,
) -> list[Drift]:
    """Each pair of histograms compared, with its null-calibrated threshold at 1 - alpha / tests."""
    rng = np.random.default_rng(seed)
    quantile = 1 - alpha / max(tests, 1)
    out = []
    for name, ref, new in zip(names, reference, batch, strict=True):
        n_ref, n_new = int(ref.sum()), int(new.sum())
        if n_ref == 0 or n_new == 0 or len(ref) < 2:
            continue
        value = float(psi(ref, new))
        threshold = null_threshold(ref, n_new, quantile, simulations, rng)
        out.append(
            Drift(
                kind,
                name,
                n_ref,
                n_new,
                len(ref),
                value,
                float(js_distance(ref, new)),
                threshold,
                value > threshold,
            )
        )
    return out


def decile_cuts(reference: DataFrame, names: Sequence[str]) -> dict[str, list[float]]:
    """Each feature's distinct inner deciles on the reference (approxQuantile: one pass)."""
    probabilities = [i / 10 for i in range(1, 10)]
    quantiles = reference.approxQuantile(list(names), probabilities, QUANTILE_ERROR)
    return {name: sorted(set(q)) for name, q in zip(names, quantiles, strict=True)}


def _bin(column: str, cuts: list[float]) -> Column:
    """The bin of each value: how many cut points lie below it (nulls in bin 0). One SQL expression:
    built from Column objects it took a py4j call per operator, ~3 s for 40 features of 9 cuts,
    paid on every assign and stream micro-batch."""
    value = f"coalesce(cast(`{column.replace('`', '``')}` as double), {sql_double(float('-inf'))})"
    return F.expr(" + ".join(f"if({value} > {sql_double(c)}, 1, 0)" for c in cuts) or "0")


def histograms(frame: DataFrame, cuts: dict[str, list[float]]) -> dict[str, np.ndarray]:
    """Input: rows with the feature columns of `cuts`. Output: each feature's bin counts (one
    aggregation; features x bins rows come back). Each row is turned into one (feature, bin) pair per
    feature and those are counted: one small expression per feature, where a count per (feature, bin)
    pair, each with its own binning, took Spark ~15 s to compile for 40 features, whatever the rows."""
    pairs = F.array(
        *[F.struct(F.lit(name).alias("name"), _bin(name, c).alias("bin")) for name, c in cuts.items()]
    )
    counts = frame.select(F.explode(pairs).alias("pair")).groupBy("pair.name", "pair.bin").count().collect()
    out = {name: np.zeros(len(c) + 1) for name, c in cuts.items()}
    for r in counts:
        out[r["name"]][r["bin"]] = r["count"]
    return out


@dataclass(frozen=True)
class Reference:
    """A fitted snapshot's features binned at their deciles: what drift compares new users with. Saved
    beside the segmenter at the fit, so drift does not depend on what user_features holds later."""

    cuts: dict[str, list[float]]
    counts: dict[str, list[float]]

    @classmethod
    def of(cls, snapshot: DataFrame, names: Sequence[str]) -> Reference:
        """Input: user_features (the raw feature columns `names`). One quantile pass, one aggregation."""
        cuts = decile_cuts(snapshot, names)
        return cls(cuts, {name: counts.tolist() for name, counts in histograms(snapshot, cuts).items()})

    def save(self, path: Path) -> None:
        atomic_write_text(path, json.dumps(asdict(self)))

    @classmethod
    def load(cls, path: Path) -> Reference | None:
        """None for a segmenter saved before references were (drift then reads user_features)."""
        if not path.is_file():
            return None
        values = json.loads(path.read_text())
        return cls(values["cuts"], values["counts"])


def reference(ctx: StageContext, segmenter: Segmenter, names: Sequence[str]) -> Reference | None:
    """The segmenter's saved reference, or for an older segmenter one computed from user_features when
    that still holds its snapshot (None otherwise, with a warning)."""
    saved = Reference.load(ctx.paths.drift_reference(segmenter.run_id))
    if saved is not None:
        return saved
    snapshot = ctx.store.read_or_fail(USER_FEATURES, "drift")
    held = snapshot.select("run_id").head()
    if held is None or held[0] != segmenter.features_run_id:
        log.warning(
            "drift: not measured: user_features holds snapshot %s, the model was fitted on %s",
            held[0] if held else None,
            segmenter.features_run_id,
        )
        return None
    return Reference.of(snapshot, names)


def measure(
    ctx: StageContext, segmenter: Segmenter, names: Sequence[str], batch: DataFrame, segments: DataFrame
) -> list[Drift] | None:
    """Input: the scored users' raw features (`names`) and their segments (segment_id). Compares
    them with the fitted snapshot (the segmenter's reference) and the fit's segment sizes
    (segment_centroids), writes this run's rows of segment_drift and returns them; None when there is
    nothing to compare."""
    cfg = ctx.cfg.drift
    ref = reference(ctx, segmenter, names)
    if ref is None:
        return None
    names = [name for name in names if name in ref.cuts]
    after = histograms(batch, {name: ref.cuts[name] for name in names})
    sizes = {
        r.segment_id: r.size for r in ctx.store.read(SEGMENT_CENTROIDS).select("segment_id", "size").collect()
    }
    counts = {r.segment_id: r["count"] for r in segments.groupBy("segment_id").count().collect()}
    ids = sorted(sizes)
    shares_before = np.array([sizes[i] for i in ids], dtype=float)
    shares_after = np.array([counts.get(i, 0) for i in ids], dtype=float)
    tests = len(names) + 1
    rows = compare(
        "feature",
        names,
        [np.array(ref.counts[n]) for n in names],
        [after[n] for n in names],
        cfg.alpha,
        tests,
        cfg.simulations,
        cfg.seed,
    )
    rows += compare(
        "segment_share",
        ["segments"],
        [shares_before],
        [shares_after],
        cfg.alpha,
        tests,
        cfg.simulations,
        cfg.seed + 1,
    )
    advice = "retraining is recommended (`segment run --if-drifted` retrains now)"
    return _record(ctx, segmenter.run_id, rows, "the users scored against the fit", advice)


def between_fits(ctx: StageContext, previous: Segmenter, snapshot: DataFrame) -> list[Drift] | None:
    """After a fit: the new snapshot (user_features) against the one the previous model was fitted on,
    feature by feature, with the same null-calibrated thresholds. Rows go to segment_drift under this
    run with the previous model's version (so they never decide `--if-drifted` for the new one)."""
    cfg = ctx.cfg.drift
    ref = Reference.load(ctx.paths.drift_reference(previous.run_id))
    if ref is None:
        log.info("drift: the previous model %s saved no reference; not compared", previous.run_id)
        return None
    names = [name for name in ref.cuts if name in snapshot.columns]
    after = histograms(snapshot, {name: ref.cuts[name] for name in names})
    before = [np.array(ref.counts[n]) for n in names]
    rows = compare(
        "feature", names, before, [after[n] for n in names], cfg.alpha, len(names), cfg.simulations, cfg.seed
    )
    what = f"this fit's snapshot against model {previous.run_id}'s"
    return _record(ctx, previous.run_id, rows, what, "behaviour changed between the two fits")


def _record(
    ctx: StageContext, model_version: str, rows: list[Drift], what: str, advice: str
) -> list[Drift] | None:
    """Write `rows` and their summary as this run's rows of segment_drift; log the verdict."""
    cfg = ctx.cfg.drift
    if not rows:
        return None
    drifted = [r for r in rows if r.drifted]
    summary = Drift(
        "summary", RETRAIN, rows[0].reference_rows, rows[0].batch_rows, 0, None, None, None, bool(drifted)
    )
    measured_at = dt.datetime.now(dt.UTC)
    frame = ctx.spark.createDataFrame(
        [
            (
                ctx.run_id,
                model_version,
                r.kind,
                r.name,
                r.reference_rows,
                r.batch_rows,
                r.bins,
                r.psi,
                r.js_distance,
                r.threshold,
                cfg.alpha,
                r.drifted,
                measured_at,
            )
            for r in [*rows, summary]
        ],
        SEGMENT_DRIFT_SCHEMA,
    )
    ctx.store.replace_where(frame, SEGMENT_DRIFT, "run_id", [ctx.run_id])
    if drifted:
        log.warning(
            "drift of %s: %d of %d statistics past their null-calibrated thresholds (%s): %s",
            what,
            len(drifted),
            len(rows),
            ", ".join(f"{r.name} PSI {r.psi:.3f} > {r.threshold:.3f}" for r in drifted[:5]),
            advice,
        )
    else:
        log.info(
            "drift of %s: none of %d statistics past their thresholds (alpha %.2f)",
            what,
            len(rows),
            cfg.alpha,
        )
    return rows


def retrain_recommended(ctx: StageContext) -> tuple[bool, str]:
    """Whether `segment run --if-drifted` should retrain, and why: yes without a fitted model, yes
    when the latest drift measured for the current model recommends it, no otherwise."""
    version = published(ctx.paths.current_segmenter)
    if version is None:
        return True, "no fitted model yet"
    if not ctx.store.exists(SEGMENT_DRIFT):
        return False, f"no drift measured for model {version}"
    latest = (
        ctx.store.read(SEGMENT_DRIFT)
        .where((F.col("kind") == "summary") & (F.col("model_version") == version))
        .orderBy(F.desc("measured_at"), F.desc("run_id"))
        .head()
    )
    if latest is None:
        return False, f"no drift measured for model {version}"
    if latest.drifted:
        return True, f"assign run {latest.run_id} measured drift against model {version}"
    return (
        False,
        f"the latest drift measured for model {version} (assign run {latest.run_id}) is within its thresholds",
    )
