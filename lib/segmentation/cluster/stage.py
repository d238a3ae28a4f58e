"""Stage `cluster`: user_embeddings and user_features → user_segments, segment_centroids,
segment_profiles, clustering_evaluation, and the fitted segmenter `assign` scores new users with.

Every (representation, algorithm, k) is fitted with MLlib on the same cached vectors and evaluated in
its own space and in the common raw-feature space; `selection.select` picks the segmentation by the
configured rule and records why every other partition lost. The representations are the embedding and
the scaled raw features; where `clustering.candidates` names them, the sequence encoder's embedding
(stage `sequence`) and the IDEC refinement of the embedding (cluster/refine.py), which needs the
embedding's chosen k and so is trained here.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
from pyspark.ml.functions import array_to_vector, vector_to_array
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from segmentation import views
from segmentation.arrays import list_column_matrix
from segmentation.artifacts import publish, published
from segmentation.assign import drift
from segmentation.cluster import history, kselect, registration, rules
from segmentation.cluster.density import NOISE, DensityModel
from segmentation.cluster.evaluate import REPRESENTATIONS, Evaluation, evaluate_partition, log_evaluation
from segmentation.cluster.fit import apply_model, fit, vector_column
from segmentation.cluster.identity import match_previous
from segmentation.cluster.kmeans import users_sample
from segmentation.cluster.metrics import centroids, with_distance
from segmentation.cluster.profiles import build_profiles, feature_columns, profile_schema, segment_sums
from segmentation.cluster.refine import REPRESENTATION as IDEC
from segmentation.cluster.refine import refine, refined_embedding
from segmentation.cluster.segmenter import FIT, Segmenter
from segmentation.cluster.selection import select
from segmentation.errors import StageError
from segmentation.sequence.stage import REPRESENTATION as SEQUENCE
from segmentation.sequence.tokens import FIELDS
from segmentation.spark import default_parallelism, is_connect, thread_pool
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
    USER_SEQUENCE_EMBEDDINGS,
    USER_SEQUENCES,
)

log = logging.getLogger(__name__)


@dataclass
class ClusterResult(StageResult):
    selected: dict = summary_field(default_factory=dict)
    raw_baseline: dict | None = None
    evaluations: list[Evaluation] = field(default_factory=list)
    registered_model: str | None = summary_field()  # in MLflow's registry, as `champion`


def run(ctx: StageContext) -> ClusterResult:
    cfg = ctx.cfg.clustering
    embeddings = ctx.store.read_or_fail(USER_EMBEDDINGS, "cluster")
    features = ctx.store.read_or_fail(USER_FEATURES, "cluster")
    truth = planted_truth(ctx)
    cores = default_parallelism(ctx.spark)
    extra = {}
    if SEQUENCE in cfg.candidates:
        extra[SEQUENCE] = ctx.store.read_or_fail(USER_SEQUENCE_EMBEDDINGS, "cluster (sequence candidate)")
    points = cached_points(embeddings, features, truth, cores, extra)
    try:
        n_users = points.count()
        if n_users < max(cfg.k):
            raise StageError(f"{n_users} users cannot make {max(cfg.k)} segments: lower clustering.k")
        if extra and n_users != embeddings.count():
            raise StageError(
                f"user_sequence_embeddings covers {n_users} of the {embeddings.count()} embedded users: "
                "run `segment sequence` on the current features"
            )
        representations = [*REPRESENTATIONS, *extra]
        choices, samples = _k_by_evidence(ctx, points, representations)
        if IDEC in cfg.candidates and choices is None:
            log.warning(
                "cluster: idec skipped: it refines the embedding at the k evidence chose (k_rule metric)"
            )
        elif IDEC in cfg.candidates:
            points = _add_idec(ctx, points, embeddings, features, choices, samples["embedding"], cores)
            representations.append(IDEC)
        _write_evidence(ctx, choices)
        candidates = _candidates(cfg, choices, representations)
        results, models = _sweep(ctx, points, truth is not None, candidates)
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
        segments, registered = _write_selected(ctx, model, points, chosen, embeddings, features)
    finally:
        points.unpersist()
    return ClusterResult(
        rows_in=n_users,
        rows_out=segments,
        selected=chosen.summary(),
        raw_baseline=baseline.summary(),
        evaluations=results,
        registered_model=None if registered is None else f"{registered.name} version {registered.version}",
    )


def _evidence_sample(points: DataFrame, representations, cfg) -> dict[str, np.ndarray]:
    """The same bounded sample of users (`clustering.selection_sample_rows`) in each representation."""
    table = (
        users_sample(points, cfg.selection_sample_rows, cfg.seed)
        .select(*[vector_to_array(vector_column(r)).alias(r) for r in representations])
        .toArrow()
    )
    return {r: list_column_matrix(table.column(r), np.float64) for r in representations}


def _k_by_evidence(
    ctx: StageContext, points: DataFrame, representations: list[str]
) -> tuple[dict[str, kselect.KChoice] | None, dict[str, np.ndarray]]:
    """Each representation's k by `clustering.k_rule` from the evidence of every k of `clustering.k` on
    a driver sample (None under k_rule `metric`), and that sample. Bootstrap Jaccard is always
    computed: it is the per-segment stability the profiles report."""
    cfg = ctx.cfg.clustering
    if cfg.k_rule == "metric":
        return None, {}
    ctx.describe("cluster: sample for the evidence for k")
    samples = _evidence_sample(points, representations, cfg)
    choices = {}
    for representation, sample in samples.items():
        ctx.describe(f"cluster: evidence for k on {representation}")
        figures = kselect.evidence(sample, cfg.k, sorted({cfg.k_rule, "clusterboot"}), cfg.seed)
        choices[representation] = kselect.choose(figures, cfg.k_rule, cfg.k, cfg.ps_threshold)
        log.info(
            "cluster: %s k=%d by %s: %s",
            representation,
            choices[representation].k,
            cfg.k_rule,
            choices[representation].reason,
        )
    return choices, samples


def _add_idec(
    ctx: StageContext,
    points: DataFrame,
    embeddings: DataFrame,
    features: DataFrame,
    choices: dict[str, kselect.KChoice],
    sample: np.ndarray,
    cores: int,
) -> DataFrame:
    """`points` with the idec representation: the autoencoder behind the embeddings refined from the
    embedding's k-means centres at its chosen k, applied to every user. Its k is that k (the one it was
    trained for); its evidence at that k (bootstrap Jaccard) joins `choices`. `sample` is the evidence
    sample of the embedding. Unpersists `points`."""
    cfg = ctx.cfg.clustering
    version = embeddings.select("model_version").head()[0]
    model = refine(ctx, ctx.paths.model(version), sample, choices["embedding"])
    refined = refined_embedding(features, model, ctx.cfg.embed.method)
    joined = points.join(refined, "user_id").withColumn(vector_column(IDEC), array_to_vector(IDEC))
    out = spread(joined, cores)
    k = choices["embedding"].k
    try:
        figures = kselect.evidence(_evidence_sample(out, [IDEC], cfg)[IDEC], [k], ["clusterboot"], cfg.seed)
    except BaseException:
        out.unpersist()
        raise
    points.unpersist()
    choices[IDEC] = kselect.KChoice(k, "the embedding's k, which the refinement was trained for", figures)
    return out


def _write_evidence(ctx: StageContext, choices: dict[str, kselect.KChoice] | None) -> None:
    """Every representation's figures for every k it was scored at, to k_evidence (this run's rows
    replaced)."""
    if choices is None:
        return
    rule = ctx.cfg.clustering.k_rule
    rows = [
        (
            ctx.run_id,
            representation,
            f.k,
            0 if f.labels is None else len(f.labels),
            f.inertia,
            f.silhouette,
            f.prediction_strength,
            f.gap,
            f.gap_se,
            f.jaccard_min,
            f.jaccard_mean,
            f.k == choice.k,
            rule,
            choice.reason if f.k == choice.k else None,
        )
        for representation, choice in choices.items()
        for f in choice.evidence
    ]
    frame = ctx.spark.createDataFrame(rows, K_EVIDENCE_SCHEMA)
    ctx.store.replace_where(frame, K_EVIDENCE, "run_id", [ctx.run_id])


def _candidates(
    cfg, choices: dict[str, kselect.KChoice] | None, representations
) -> list[tuple[str, str, int | None]]:
    """(representation, algorithm, k) to fit: every k of clustering.k under k_rule `metric`, else each
    representation's chosen k; hdbscan once per representation (k None: it finds its own)."""
    out: list[tuple[str, str, int | None]] = []
    for r in representations:
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
    with thread_pool(ctx.spark, cfg.parallelism) as pool:
        scored = list(pool.map(fit_and_score, candidates))
    return [r for r, _ in scored], [m for _, m in scored]


def cached_points(
    embeddings: DataFrame,
    features: DataFrame,
    truth: DataFrame | None,
    cores: int,
    extra: dict[str, DataFrame] | None = None,
) -> DataFrame:
    """One row per user with every representation (`embedding`, `raw` and each of `extra`'s, from its
    `embedding` column: arrays, and their vectors) and, for generated data, the planted `segment`:
    joined once and cached for the whole sweep, so no candidate joins or re-reads anything; spread
    over at least every core."""
    frame = embeddings.select("user_id", F.col("embedding").alias("embedding")).join(
        features.select("user_id", F.col("features").alias("raw")), "user_id"
    )
    for name, table in (extra or {}).items():
        frame = frame.join(table.select("user_id", F.col("embedding").alias(name)), "user_id")
    if truth is not None:
        frame = frame.join(truth, "user_id", "left")
    for representation in [*REPRESENTATIONS, *(extra or {})]:
        frame = frame.withColumn(vector_column(representation), array_to_vector(representation))
    return spread(frame, cores)


def spread(frame: DataFrame, cores: int) -> DataFrame:
    """`frame` partitioned by user over at least every core, sorted within partitions, cached: the fits
    sample and iterate over the same rows in the same order whatever order the table's files are listed
    in (a round-robin spread made k-means starts and Gaussian mixtures differ from one read of the same
    table to the next). Under Spark Connect, where a plan's partitions are not visible without running
    it, the spread is over `cores` partitions."""
    partitions = cores if is_connect(frame.sparkSession) else max(cores, frame.rdd.getNumPartitions())
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
) -> tuple[int, registration.Registered | None]:
    """user_segments, segment_centroids and segment_profiles of the selected partition, and the saved
    (and registered) segmenter; returns the number of users segmented and the registered version.

    Everything is computed and the model saved before the first table is replaced; then the three
    tables are replaced back to back, user_segments last, and the segmenter published. A run killed
    before that leaves the previous run's outputs whole; one killed between those commits leaves
    tables of two runs, which `published_run` detects (every reader checks it) until cluster runs
    again."""
    cfg, store, run_id = ctx.cfg, ctx.store, ctx.run_id
    ctx.describe(f"cluster: write segments ({chosen.representation} {chosen.algorithm} k={chosen.k})")
    representation = chosen.representation
    fitted = (
        apply_model(model, points, vector_column(representation))
        .select("user_id", F.col("segment_id").alias("cluster"), F.col(representation).alias("values"))
        .cache()
    )
    assigned = None
    try:
        identity = match_previous(ctx, fitted, _clusters(model, chosen))
        segmenter = _segmenter(ctx, chosen, embeddings, features, identity.segment_ids)
        assigned = fitted.select("user_id", segmenter.stable("cluster").alias("segment_id"), "values").cache()
        centres = centroids(assigned, "values", "segment_id").cache()
        tags = [
            F.lit(chosen.algorithm).alias("algorithm"),
            F.lit(chosen.k).alias("k"),
            F.lit(run_id).alias("run_id"),
        ]
        segments = segmenter.rows(with_distance(assigned, centres, "values", "segment_id"), FIT, run_id)
        names = feature_columns(features)
        sums = [r.asDict() for r in segment_sums(assigned, features, names).collect()]  # a row per segment
        jaccard = segment_jaccard(model, segmenter, points, cfg.clustering)
        profiles = build_profiles(
            sums, names, cfg.privacy.min_segment_size, cfg.clustering.label_features, run_id, jaccard
        )
        identity.keep_labels(profiles.rows)
        if cfg.clustering.rules_depth:
            ctx.describe("cluster: rules")
            segment_ids = assigned.select("user_id", "segment_id")
            surrogate = rules.fit(
                segment_ids, features, names, cfg.clustering.rules_depth, cfg.clustering.seed
            )
            rules.annotate(profiles.rows, surrogate, segment_ids, features)
        _log_profiles(profiles, cfg.privacy.min_segment_size)
        previous = _published_segmenter(ctx)
        directory = segmenter.save(ctx.paths, model)
        drift.Reference.of(features, names).save(ctx.paths.drift_reference(run_id))
        log.info("cluster: model saved to %s", directory)
        # registered (and made champion) before any table is replaced: a run that dies after this
        # leaves the champion ahead of the tables, which assign detects, as it does mixed tables
        registered = registration.register(ctx, segmenter, model, centres, chosen.metrics())
        ctx.describe("cluster: publish")
        identity.write(ctx)
        store.overwrite(ctx.spark.createDataFrame(profiles.rows, profile_schema(names)), SEGMENT_PROFILES)
        store.overwrite(
            centres.select("segment_id", F.col("n").alias("size"), "centroid", *tags), SEGMENT_CENTROIDS
        )
        store.overwrite(segments, USER_SEGMENTS)
        segmenter.record_tables(ctx.paths, {name: store.version(name) for name in SEGMENT_TABLES})
        publish(ctx.paths.current_segmenter, run_id)
        history.sync(ctx)
        views.persist(store, cfg.privacy.min_segment_size, cfg.recommend.event_types)
        if previous is not None:
            drift.between_fits(ctx, previous, features)
        centres.unpersist()
    finally:
        fitted.unpersist()
        if assigned is not None:
            assigned.unpersist()
    return sum(r["n_users"] for r in sums), registered


def _clusters(model, chosen: Evaluation) -> list[int]:
    """The model's cluster indices: 0..k-1, and -1 for a density model's noise."""
    clusters = list(range(model.k if isinstance(model, DensityModel) else chosen.k))
    return [NOISE, *clusters] if isinstance(model, DensityModel) else clusters


def segment_jaccard(model, segmenter: Segmenter, points: DataFrame, cfg) -> dict[int, float]:
    """Hennig's clusterboot for the selected partition: each segment's mean bootstrap Jaccard with
    k-means refitted on resamples of a driver sample (at most `selection_sample_rows` users) of the
    chosen representation; segments with no sampled member are absent."""
    if isinstance(model, DensityModel):
        log.info("cluster: no bootstrap Jaccard for hdbscan segments (it is defined by k-means refits)")
        return {}
    sample = users_sample(points, cfg.selection_sample_rows, cfg.seed)
    column = vector_column(segmenter.representation)
    table = (
        apply_model(model, sample, column)
        .select(segmenter.stable("segment_id").alias("segment_id"), vector_to_array(column).alias("values"))
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


SEGMENT_TABLES = (SEGMENT_PROFILES, SEGMENT_CENTROIDS, USER_SEGMENTS)
"""The tables a cluster run publishes its segments in, in the order it replaces them."""


def published_run(store: TableStore, strict: bool = True) -> str | None:
    """The cluster run whose outputs user_segments, segment_centroids and segment_profiles hold; a
    StageError when they hold different runs (a cluster run was killed while replacing them; None
    instead when not `strict`) or when one is missing. Each table holds one run (the stage replaces them whole; `assign` adds rows
    of the same model to user_segments, whose model_version names it), so one row each says which."""
    runs = {}
    for name in SEGMENT_TABLES:
        table = store.read_or_fail(name, "reading segments")
        # user_segments written before assign existed has no model_version: its run_id is the model's
        column = "model_version" if "model_version" in table.columns else "run_id"
        row = table.select(column).head()
        runs[name] = row[0] if row else None
    if len(set(runs.values())) != 1:
        if not strict:
            return None
        held = ", ".join(f"{name}: {run}" for name, run in runs.items())
        raise StageError(
            f"the segment tables hold different cluster runs ({held}): a cluster run stopped while "
            "replacing them; run `segment cluster` again"
        )
    return next(iter(runs.values()))


def _encoder_version(ctx: StageContext, representation: str) -> str | None:
    """The run whose model makes a representation other than the autoencoder's embedding and raw."""
    if representation == IDEC:
        return ctx.run_id  # trained by this cluster run: paths.refined_model(run)
    if representation == SEQUENCE:
        return ctx.store.read(USER_SEQUENCE_EMBEDDINGS).select("model_version").head()[0]
    return None


def _published_segmenter(ctx: StageContext) -> Segmenter | None:
    """The segmenter in use before this run (None before the first fit, or one too old to load)."""
    version = published(ctx.paths.current_segmenter)
    if version is None or version == ctx.run_id:
        return None
    try:
        return Segmenter.load(ctx.paths, version)
    except StageError as exc:
        log.info("cluster: drift against the previous model not measured: %s", exc)
        return None


def _segmenter(
    ctx: StageContext, chosen: Evaluation, embeddings: DataFrame, features: DataFrame, segment_ids: list[int]
) -> Segmenter:
    """What `assign` needs to score new users as this run scored its users."""
    snapshot = features.select("run_id", "as_of").head()
    return Segmenter(
        run_id=ctx.run_id,
        representation=chosen.representation,
        algorithm=chosen.algorithm,
        k=chosen.k,
        autoencoder_version=embeddings.select("model_version").head()[0],
        encoder_version=_encoder_version(ctx, chosen.representation),
        features_run_id=snapshot["run_id"],
        features_as_of=snapshot["as_of"].isoformat(),
        sequence_events=_sequence_events(ctx) if chosen.representation == SEQUENCE else None,
        segment_ids=segment_ids,
    )


def _sequence_events(ctx: StageContext) -> int:
    """How many events per user the sequence encoder's tokens hold (user_sequences' width)."""
    width = ctx.store.read(USER_SEQUENCES).select(F.size("sequence")).head()[0]
    return width // len(FIELDS)
