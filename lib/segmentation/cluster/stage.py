"""Stage `cluster`: user_embeddings and user_features → user_segments, segment_centroids,
segment_profiles, clustering_evaluation, and the fitted segmenter `assign` scores new users with.

Every (representation, algorithm, k) is fitted with MLlib on the same cached vectors and evaluated in
its own space and in the common raw-feature space; `selection.select` picks the segmentation by the
configured rule and records why every other partition lost.
"""

from __future__ import annotations

import json
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
from pyspark.ml.functions import array_to_vector, vector_to_array
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from segmentation.arrays import list_column_matrix
from segmentation.artifacts import atomic_write_text, publish
from segmentation.cluster import kselect
from segmentation.cluster.density import DensityModel
from segmentation.cluster.evaluate import REPRESENTATIONS, Evaluation, evaluate_partition, log_evaluation
from segmentation.cluster.fit import apply_model, fit, vector_column
from segmentation.cluster.kmeans import users_sample
from segmentation.cluster.metrics import centroids, with_distance
from segmentation.cluster.profiles import build_profiles, feature_columns, profile_schema, segment_sums
from segmentation.cluster.selection import select
from segmentation.errors import StageError
from segmentation.stage import StageContext, StageResult, summary_field
from segmentation.storage import TableStore
from segmentation.tables import (
    CLUSTERING_EVALUATION,
    CLUSTERING_EVALUATION_SCHEMA,
    K_EVIDENCE,
    K_EVIDENCE_SCHEMA,
    SEGMENT_CENTROIDS,
    SEGMENT_PROFILES,
    USER_EMBEDDINGS,
    USER_FEATURES,
    USER_SEGMENTS,
)

log = logging.getLogger(__name__)


@dataclass
class ClusterResult(StageResult):
    selected: dict = summary_field(default_factory=dict)
    raw_baseline: dict | None = None
    evaluations: list[Evaluation] = field(default_factory=list)


def run(ctx: StageContext) -> ClusterResult:
    cfg = ctx.cfg.clustering
    embeddings = ctx.store.read_or_fail(USER_EMBEDDINGS, "cluster")
    features = ctx.store.read_or_fail(USER_FEATURES, "cluster")
    truth = planted_truth(ctx)
    points = cached_points(embeddings, features, truth, ctx.spark.sparkContext.defaultParallelism)
    try:
        n_users = points.count()
        if n_users < max(cfg.k):
            raise StageError(f"{n_users} users cannot make {max(cfg.k)} segments: lower clustering.k")
        choices = _k_by_evidence(ctx, points)
        results, models = _sweep(ctx, points, truth is not None, _candidates(cfg, choices))
        if choices:
            for result in results:
                result.attach_evidence(cfg.k_rule, choices[result.representation])
        selection = select(results, cfg)
        for i, (result, reason) in enumerate(zip(results, selection.reasons, strict=True)):
            result.selected, result.selection_reason = i == selection.index, reason
        chosen = results[selection.index]
        model = models[selection.index]
        if choices:
            chosen.selection_reason = (
                f"k={chosen.k} by {cfg.k_rule}: {choices[chosen.representation].reason}; "
                + chosen.selection_reason
            )
        log.info("cluster: %s %s: %s", chosen.representation, chosen.algorithm, chosen.selection_reason)
        baseline = results[select(results, cfg, candidates=["raw"]).index]  # reported even as a candidate
        rows = [r.row(ctx.run_id) for r in results]
        frame = ctx.spark.createDataFrame(rows, CLUSTERING_EVALUATION_SCHEMA)
        ctx.store.replace_where(frame, CLUSTERING_EVALUATION, "run_id", [ctx.run_id])
        segments = _write_selected(ctx, model, points, chosen, embeddings, features)
    finally:
        points.unpersist()
    return ClusterResult(
        rows_in=n_users,
        rows_out=segments,
        selected=chosen.summary(),
        raw_baseline=baseline.summary(),
        evaluations=results,
    )


def _k_by_evidence(ctx: StageContext, points: DataFrame) -> dict[str, kselect.KChoice] | None:
    """Each representation's k by `clustering.k_rule` from the evidence of every k of `clustering.k` on
    a driver sample (None under k_rule `metric`), written to k_evidence. Bootstrap Jaccard is always
    computed: it is the per-segment stability the profiles report."""
    cfg = ctx.cfg.clustering
    if cfg.k_rule == "metric":
        return None
    rules = {cfg.k_rule, "clusterboot"}
    choices, rows = {}, []
    ctx.describe("cluster: sample for the evidence for k")
    table = (
        users_sample(points, cfg.selection_sample_rows, cfg.seed)
        .select(*[vector_to_array(vector_column(r)).alias(r) for r in REPRESENTATIONS])
        .toArrow()
    )
    for representation in REPRESENTATIONS:
        ctx.describe(f"cluster: evidence for k on {representation}")
        sample = list_column_matrix(table.column(representation), np.float64)
        figures = kselect.evidence(sample, cfg.k, sorted(rules), cfg.seed)
        choice = kselect.choose(figures, cfg.k_rule, cfg.k, cfg.ps_threshold)
        log.info("cluster: %s k=%d by %s: %s", representation, choice.k, cfg.k_rule, choice.reason)
        choices[representation] = choice
        rows += [
            (
                ctx.run_id,
                representation,
                f.k,
                len(sample),
                f.inertia,
                f.silhouette,
                f.prediction_strength,
                f.gap,
                f.gap_se,
                f.jaccard_min,
                f.jaccard_mean,
                f.k == choice.k,
                cfg.k_rule,
                choice.reason if f.k == choice.k else None,
            )
            for f in figures
        ]
    frame = ctx.spark.createDataFrame(rows, K_EVIDENCE_SCHEMA)
    ctx.store.replace_where(frame, K_EVIDENCE, "run_id", [ctx.run_id])
    return choices


def _candidates(cfg, choices: dict[str, kselect.KChoice] | None) -> list[tuple[str, str, int | None]]:
    """(representation, algorithm, k) to fit: every k of clustering.k under k_rule `metric`, else each
    representation's chosen k; hdbscan once per representation (k None: it finds its own)."""
    out: list[tuple[str, str, int | None]] = []
    for r in REPRESENTATIONS:
        for a in cfg.algorithms:
            if a == "hdbscan":
                out.append((r, a, None))
            else:
                out += [(r, a, k) for k in (cfg.k if choices is None else [choices[r].k])]
    return out


def _sweep(
    ctx: StageContext, points: DataFrame, has_truth: bool, candidates: list[tuple[str, str, int | None]]
) -> tuple[list[Evaluation], list]:
    """Every (representation, algorithm, k) candidate fitted and scored: evaluations and models, in
    candidate order."""
    cfg = ctx.cfg.clustering

    def fit_and_score(candidate: tuple[str, str, int | None]):
        representation, algorithm, k = candidate
        ctx.describe(f"cluster: {representation} {algorithm} k={k or 'found'}")
        model = fit(points, algorithm, k, cfg, vector_column(representation))
        if isinstance(model, DensityModel):
            k = model.k
        result = evaluate_partition(model, points, has_truth, representation, algorithm, k, cfg)
        log_evaluation(result)
        return result, model

    # On small data each fit and metric is a handful of short Spark jobs whose cost is scheduling
    # latency, so candidates run side by side (Spark accepts jobs from several driver threads).
    with ThreadPoolExecutor(max_workers=cfg.parallelism) as pool:
        scored = list(pool.map(fit_and_score, candidates))
    return [r for r, _ in scored], [m for _, m in scored]


def cached_points(
    embeddings: DataFrame, features: DataFrame, truth: DataFrame | None, cores: int
) -> DataFrame:
    """One row per user with every representation (`embedding`, `raw`: arrays, and their vectors) and,
    for generated data, the planted `segment`: joined once and cached for the whole sweep, so no
    candidate joins or re-reads anything; spread over at least every core."""
    frame = embeddings.select("user_id", F.col("embedding").alias("embedding")).join(
        features.select("user_id", F.col("features").alias("raw")), "user_id"
    )
    if truth is not None:
        frame = frame.join(truth, "user_id", "left")
    for representation in REPRESENTATIONS:
        frame = frame.withColumn(vector_column(representation), array_to_vector(representation))
    # Partitioned by user and sorted: the fits sample and iterate over the same rows in the same order
    # whatever order the table's files are listed in (a round-robin spread made k-means starts and
    # Gaussian mixtures differ from one read of the same table to the next).
    partitions = max(cores, frame.rdd.getNumPartitions())
    return frame.repartition(partitions, "user_id").sortWithinPartitions("user_id").cache()


def planted_truth(ctx: StageContext) -> DataFrame | None:
    """The planted segment of each user (`clustering.truth_path`; by default where `segment generate`
    writes it), or None where there is none."""
    path = ctx.paths.truth
    if ctx.cfg.clustering.truth_path is None and not path.is_dir():
        return None
    if not path.exists():
        raise StageError(f"clustering.truth_path: {path} does not exist")
    return ctx.spark.read.json(str(path)).select("user_id", "segment")


def _write_selected(
    ctx: StageContext,
    model,
    points: DataFrame,
    chosen: Evaluation,
    embeddings: DataFrame,
    features: DataFrame,
) -> int:
    """user_segments, segment_centroids and segment_profiles of the selected partition, and the saved
    segmenter; returns the number of users segmented.

    Everything is computed and the model saved before the first table is replaced; then the three
    tables are replaced back to back, user_segments last, and the segmenter published. A run killed
    before that leaves the previous run's outputs whole; one killed between those commits leaves
    tables of two runs, which `published_run` detects (every reader checks it) until cluster runs
    again."""
    cfg, store, run_id = ctx.cfg, ctx.store, ctx.run_id
    ctx.describe(f"cluster: write segments ({chosen.representation} {chosen.algorithm} k={chosen.k})")
    representation = chosen.representation
    assigned = (
        apply_model(model, points, vector_column(representation))
        .select("user_id", "segment_id", F.col(representation).alias("values"))
        .cache()
    )
    try:
        centres = centroids(assigned, "values", "segment_id").cache()
        tags = [
            F.lit(chosen.algorithm).alias("algorithm"),
            F.lit(chosen.k).alias("k"),
            F.lit(run_id).alias("run_id"),
        ]
        segments = with_distance(assigned, centres, "values", "segment_id").select(
            "user_id",
            "segment_id",
            "distance",
            *tags,
            F.lit(chosen.representation).alias("representation"),
        )
        names = feature_columns(features)
        sums = [r.asDict() for r in segment_sums(assigned, features, names).collect()]  # a row per segment
        jaccard = segment_jaccard(model, points, chosen, cfg.clustering)
        profiles = build_profiles(
            sums, names, cfg.privacy.min_segment_size, cfg.clustering.label_features, run_id, jaccard
        )
        _log_profiles(profiles, cfg.privacy.min_segment_size)
        _save_segmenter(ctx, model, chosen, embeddings, features)
        ctx.describe("cluster: publish")
        store.overwrite(ctx.spark.createDataFrame(profiles.rows, profile_schema(names)), SEGMENT_PROFILES)
        store.overwrite(
            centres.select("segment_id", F.col("n").alias("size"), "centroid", *tags), SEGMENT_CENTROIDS
        )
        store.overwrite(segments, USER_SEGMENTS)
        publish(ctx.paths.current_segmenter, run_id)
        centres.unpersist()
    finally:
        assigned.unpersist()
    return sum(r["n_users"] for r in sums)


def segment_jaccard(model, points: DataFrame, chosen: Evaluation, cfg) -> dict[int, float]:
    """Hennig's clusterboot for the selected partition: each segment's mean bootstrap Jaccard with
    k-means refitted on resamples of a driver sample (at most `selection_sample_rows` users) of the
    chosen representation; segments with no sampled member are absent."""
    if isinstance(model, DensityModel):
        log.info("cluster: no bootstrap Jaccard for hdbscan segments (it is defined by k-means refits)")
        return {}
    sample = users_sample(points, cfg.selection_sample_rows, cfg.seed)
    column = vector_column(chosen.representation)
    table = (
        apply_model(model, sample, column)
        .select("segment_id", vector_to_array(column).alias("values"))
        .toArrow()
    )
    ids, labels = np.unique(table.column("segment_id").to_numpy(zero_copy_only=False), return_inverse=True)
    if len(ids) < 2:
        return {}
    x = list_column_matrix(table.column("values"), np.float64)
    values = kselect.bootstrap_jaccard(x, labels, len(ids), cfg.seed)
    dissolved = [int(i) for i, v in zip(ids, values, strict=True) if v <= kselect.JACCARD_DISSOLVED]
    if dissolved:
        log.warning(
            "cluster: segments %s dissolve under resampling (bootstrap Jaccard <= %.2f): do not act on them alone",
            dissolved,
            kselect.JACCARD_DISSOLVED,
        )
    return {int(i): float(v) for i, v in zip(ids, values, strict=True)}


def _log_profiles(profiles, minimum: int) -> None:
    if profiles.merged_segments:
        log.info(
            "cluster: %d segments under privacy.min_segment_size=%d merged into segment -2 (other)%s",
            profiles.merged_segments,
            minimum,
            f"; {profiles.suppressed_users} users withheld" if profiles.suppressed_users else "",
        )
    for row in profiles.rows:
        log.info(
            "cluster: segment %3d  %6d users (%.1f%%)  %s",
            row["segment_id"],
            row["n_users"],
            100 * row["share"],
            row["label"],
        )


def published_run(store: TableStore) -> str:
    """The cluster run whose outputs user_segments, segment_centroids and segment_profiles hold; a
    StageError when they hold different runs (a cluster run was killed while replacing them) or
    when one is missing. Each table holds one run (the stage replaces them whole), so one row each
    says which."""
    runs = {}
    for name in (SEGMENT_PROFILES, SEGMENT_CENTROIDS, USER_SEGMENTS):
        row = store.read_or_fail(name, "reading segments").select("run_id").head()
        runs[name] = row.run_id if row else None
    if len(set(runs.values())) != 1:
        held = ", ".join(f"{name}: {run}" for name, run in runs.items())
        raise StageError(
            f"the segment tables hold different cluster runs ({held}): a cluster run stopped while "
            "replacing them; run `segment cluster` again"
        )
    return next(iter(runs.values()))


def _save_segmenter(
    ctx: StageContext, model, chosen: Evaluation, embeddings: DataFrame, features: DataFrame
) -> None:
    """Save the selected fitted model with what `assign` needs to score new users the same way: the
    representation, and the autoencoder and feature snapshot it was fitted on."""
    run_id = ctx.run_id
    directory = ctx.paths.segmenter(run_id)
    if isinstance(model, DensityModel):
        model.save(directory / "model")
    else:  # saved reading a plain `vector` column (of the representation below), whatever the sweep called it
        model.copy({model.featuresCol: "vector"}).write().overwrite().save(str(directory / "model"))
    manifest = {
        "run_id": run_id,
        "representation": chosen.representation,
        "algorithm": chosen.algorithm,
        "k": chosen.k,
        "autoencoder_version": embeddings.select("model_version").head()[0],
        "features_run_id": features.select("run_id").head()[0],
    }
    atomic_write_text(directory / "segmenter.json", json.dumps(manifest, indent=2))
    log.info("cluster: model saved to %s", directory)
