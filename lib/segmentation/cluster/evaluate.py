"""Scoring one fitted partition: in its own space, in the common space, against a refit (stability)
and, where a planted truth is known, against it."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

from pyspark.sql import DataFrame

from segmentation.cluster.fit import apply_model, stability_model, vector_column
from segmentation.cluster.metrics import adjusted_rand, normalized_mutual_info, partition_stats
from segmentation.config import ClusteringConfig
from segmentation.tables import CLUSTERING_EVALUATION_SCHEMA, columns

log = logging.getLogger(__name__)

REPRESENTATIONS = ("embedding", "raw")  # the autoencoder's embedding and, as the baseline, scaled features
COMMON_SPACE = "raw"  # partitions of every representation are also scored on the scaled raw features
SUMMARY = ("representation", "algorithm", "k", "silhouette", "stability_ari", "ari_truth", "nmi_truth")


@dataclass
class Evaluation:
    representation: str
    algorithm: str
    k: int
    silhouette: float | None
    calinski_harabasz: float | None
    davies_bouldin: float | None
    wssse: float
    min_segment_share: float
    stability_ari: float | None = None
    selected: bool = False
    silhouette_common: float | None = None
    calinski_harabasz_common: float | None = None
    davies_bouldin_common: float | None = None
    selection_reason: str = ""
    ari_truth: float | None = None
    nmi_truth: float | None = None
    k_rule: str | None = None
    jaccard_min: float | None = None
    jaccard_mean: float | None = None

    def metrics(self) -> dict[str, float]:
        """The partition's numeric scores (silhouette ... jaccard_mean), those that were measured."""
        return {
            name: float(value)
            for name, value in asdict(self).items()
            if isinstance(value, int | float) and not isinstance(value, bool) and name != "k"
        }

    def attach_evidence(self, rule: str, choice) -> None:
        """The rule that chose this k and the bootstrap Jaccard of k-means at this k on the sample."""
        figures = next((f for f in choice.evidence if f.k == self.k), None)
        self.k_rule = rule
        if figures is not None:
            self.jaccard_min, self.jaccard_mean = figures.jaccard_min, figures.jaccard_mean

    def row(self, run_id: str) -> tuple:
        """This evaluation as a clustering_evaluation row."""
        return tuple(
            run_id if name == "run_id" else getattr(self, name)
            for name in columns(CLUSTERING_EVALUATION_SCHEMA)
        )

    def summary(self) -> dict:
        return {name: getattr(self, name) for name in SUMMARY} | {"reason": self.selection_reason}


def evaluate_partition(
    model,
    points: DataFrame,
    has_truth: bool,
    representation: str,
    algorithm: str,
    k: int,
    cfg: ClusteringConfig,
) -> Evaluation:
    """Score one fitted partition in its own space and in the common space, against a perturbed refit
    (stability) and, for generated data, against the planted truth: all from one `partition_stats`."""
    assigned = apply_model(model, points, vector_column(representation))
    crosstab = []
    stability = stability_model(points, algorithm, k, representation, cfg)
    if stability is not None:
        assigned = apply_model(stability, assigned, vector_column(representation), "stability_segment")
        crosstab.append("stability_segment")
    if has_truth:
        crosstab.append("segment")
    spaces = {representation: representation, COMMON_SPACE: COMMON_SPACE}
    stats = partition_stats(assigned, "segment_id", spaces, tuple(crosstab))
    own, common = stats.spaces[representation], stats.spaces[COMMON_SPACE]
    result = Evaluation(
        representation=representation,
        algorithm=algorithm,
        k=k,
        silhouette=own.silhouette,
        calinski_harabasz=own.calinski_harabasz,
        davies_bouldin=own.davies_bouldin,
        wssse=own.wssse,
        min_segment_share=min(stats.sizes.values()) / stats.n,
        silhouette_common=common.silhouette,
        calinski_harabasz_common=common.calinski_harabasz,
        davies_bouldin_common=common.davies_bouldin,
    )
    if stability is not None:
        result.stability_ari = adjusted_rand(stats.crosstabs["stability_segment"])
    if has_truth:
        table = stats.crosstabs["segment"]
        result.ari_truth, result.nmi_truth = adjusted_rand(table), normalized_mutual_info(table)
    return result


def log_evaluation(result: Evaluation) -> None:
    log.info(
        "cluster: %-9s %-16s k=%d silhouette=%s (common space %s) CH=%s DB=%s smallest share=%.3f "
        "stability=%s%s",
        result.representation,
        result.algorithm,
        result.k,
        _fmt(result.silhouette),
        _fmt(result.silhouette_common),
        _fmt(result.calinski_harabasz),
        _fmt(result.davies_bouldin),
        result.min_segment_share,
        _fmt(result.stability_ari),
        f" ARI vs truth={result.ari_truth:.3f}" if result.ari_truth is not None else "",
    )


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"
