"""Stable segment ids across retrains: each new fit's segments matched to the previous model's by
their members: `match_previous` reads the overlap (one aggregation to a small segment-by-segment
table) and `match_segments`, a pure function, matches.

A marketer's campaign is keyed to "segment 3"; a retrain must not rename it because k-means numbered
its clusters in another order. The new segments and the previous ones (user_segments as it stood
before the fit: the last fit plus every assignment since) are compared by member overlap, and the
pairs are chosen by Hungarian matching on Jaccard similarity: a new segment that shares at least
`min_jaccard` of its union with a previous one takes its id; the others get ids never used before;
previous segments left unmatched are recorded as vanished. Density noise (-1) is not a segment and
keeps its id.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from scipy.optimize import linear_sum_assignment

from segmentation.cluster.density import NOISE
from segmentation.stage import StageContext
from segmentation.tables import (
    SEGMENT_LINEAGE,
    SEGMENT_LINEAGE_SCHEMA,
    SEGMENT_PROFILES,
    SEGMENT_TRANSITIONS,
    SEGMENT_TRANSITIONS_SCHEMA,
    USER_SEGMENTS,
)

log = logging.getLogger(__name__)

MATCHED, NEW, VANISHED = "matched", "new", "vanished"


@dataclass(frozen=True)
class Match:
    """One lineage row: a new segment and the previous one it continues (None for either side when
    the segment is new or vanished)."""

    segment_id: int | None
    previous_segment_id: int | None
    users: int  # members of the new segment (0 when vanished)
    previous_users: int
    overlap: int
    jaccard: float
    status: str


def jaccard_matrix(overlap: np.ndarray, previous_sizes: np.ndarray, new_sizes: np.ndarray) -> np.ndarray:
    """Jaccard similarity |A∩B| / |A∪B| of every (previous, new) pair of segments."""
    union = previous_sizes[:, None] + new_sizes[None, :] - overlap
    return np.divide(overlap, union, out=np.zeros(overlap.shape, dtype=float), where=union > 0)


def match_segments(
    overlap: np.ndarray,
    previous_ids: list[int],
    previous_sizes: np.ndarray,
    new_clusters: list[int],
    new_sizes: np.ndarray,
    next_id: int,
    min_jaccard: float,
) -> tuple[dict[int, int], list[Match]]:
    """Input: `overlap[i, j]`, the users in previous segment `previous_ids[i]` and new cluster
    `new_clusters[j]`; each side's sizes; the first id never used; the smallest Jaccard that continues
    a segment. Output: the id of every new cluster, and one `Match` per new segment and per vanished
    previous one. Noise (-1) on either side is never matched and keeps -1."""
    keep_prev = [i for i, s in enumerate(previous_ids) if s != NOISE]
    keep_new = [j for j, c in enumerate(new_clusters) if c != NOISE]
    similarity = jaccard_matrix(overlap, previous_sizes, new_sizes)
    pairs: dict[int, int] = {}  # new column -> previous row
    if keep_prev and keep_new:
        sub = similarity[np.ix_(keep_prev, keep_new)]
        rows, cols = linear_sum_assignment(sub, maximize=True)
        for r, c in zip(rows, cols, strict=True):
            if sub[r, c] >= min_jaccard:
                pairs[keep_new[c]] = keep_prev[r]
    ids: dict[int, int] = {}
    lineage: list[Match] = []
    # new segments numbered by cluster order, so a first fit's ids are its clusters' 0..k-1
    for j, cluster in sorted(enumerate(new_clusters), key=lambda item: item[1]):
        if cluster == NOISE:
            ids[cluster] = NOISE
            continue
        i = pairs.get(j)
        if i is None:
            ids[cluster] = next_id
            next_id += 1
            if new_sizes[j]:  # a cluster no user fell in still gets an id (assign may use it), no row
                lineage.append(Match(ids[cluster], None, int(new_sizes[j]), 0, 0, 0.0, NEW))
        else:
            ids[cluster] = previous_ids[i]
            lineage.append(
                Match(
                    previous_ids[i],
                    previous_ids[i],
                    int(new_sizes[j]),
                    int(previous_sizes[i]),
                    int(overlap[i, j]),
                    float(similarity[i, j]),
                    MATCHED,
                )
            )
    continued = set(pairs.values())
    for i in keep_prev:
        if i not in continued:
            best = int(similarity[i].argmax()) if similarity.shape[1] else None
            lineage.append(
                Match(
                    None,
                    previous_ids[i],
                    0,
                    int(previous_sizes[i]),
                    int(overlap[i, best]) if best is not None else 0,
                    float(similarity[i, best]) if best is not None else 0.0,
                    VANISHED,
                )
            )
    return ids, lineage


@dataclass
class Identity:
    """This fit's stable segment ids, what they continue, and the labels of the segments they continue."""

    run_id: str
    previous_run_id: str | None
    ids: dict[int, int]  # model cluster -> segment id
    lineage: list[Match]
    transitions: list[tuple[int | None, int | None, int]]  # (from segment, to segment, users)
    previous_labels: dict[int, str]
    rewrite: bool  # False when user_segments already holds this run (a rerun): its lineage stands

    @property
    def segment_ids(self) -> list[int]:
        return [self.ids[c] for c in sorted(c for c in self.ids if c != NOISE)]

    def keep_labels(self, rows: list[dict]) -> None:
        """A segment that continues a previous one keeps its label (campaigns and reports know it by
        it); new segments keep the label their profile gave them."""
        continued = {m.segment_id for m in self.lineage if m.status == MATCHED}
        for row in rows:
            if row["segment_id"] in continued and row["segment_id"] in self.previous_labels:
                row["label"] = self.previous_labels[row["segment_id"]]

    def write(self, ctx: StageContext) -> None:
        if not self.rewrite:
            return
        clusters = {segment: cluster for cluster, segment in self.ids.items()}
        lineage = [
            (
                self.run_id,
                m.segment_id,
                clusters.get(m.segment_id) if m.segment_id is not None else None,
                self.previous_run_id,
                m.previous_segment_id,
                m.users,
                m.previous_users,
                m.overlap,
                m.jaccard,
                m.status,
            )
            for m in self.lineage
        ]
        moves = [(self.run_id, self.previous_run_id, a, b, n) for a, b, n in self.transitions]
        spark = ctx.spark
        ctx.store.replace_where(
            spark.createDataFrame(lineage, SEGMENT_LINEAGE_SCHEMA), SEGMENT_LINEAGE, "run_id", [self.run_id]
        )
        ctx.store.replace_where(
            spark.createDataFrame(moves, SEGMENT_TRANSITIONS_SCHEMA),
            SEGMENT_TRANSITIONS,
            "run_id",
            [self.run_id],
        )


def match_previous(ctx: StageContext, fitted: DataFrame, clusters: list[int]) -> Identity:
    """Input: fitted (user_id, cluster). Output: this fit's `Identity`: each cluster matched by its
    members to the segments user_segments held before it (the last fit and every assignment since);
    the overlap is one aggregation to a (previous segments + 1) x (clusters + 1) table."""
    store, run_id = ctx.store, ctx.run_id
    previous, previous_run, labels = None, None, {}
    if store.exists(USER_SEGMENTS):
        table = store.read(USER_SEGMENTS)
        row = table.select("model_version" if "model_version" in table.columns else "run_id").head()
        if row is not None:
            previous_run = row[0]
            previous = table.select("user_id", F.col("segment_id").alias("previous"))
    if previous is not None and store.exists(SEGMENT_PROFILES):
        labels = {
            r.segment_id: r.label
            for r in store.read(SEGMENT_PROFILES).select("segment_id", "label").collect()
        }
    members = fitted.select("user_id", "cluster")
    if previous is None:
        counts = [(None, r.cluster, r["count"]) for r in members.groupBy("cluster").count().collect()]
    else:
        joined = members.join(previous, "user_id", "full_outer").groupBy("previous", "cluster").count()
        counts = [(r.previous, r.cluster, r["count"]) for r in joined.collect()]
    previous_ids = sorted({p for p, _, _ in counts if p is not None})
    overlap = np.zeros((len(previous_ids), len(clusters)), dtype=np.int64)
    previous_sizes = np.zeros(len(previous_ids), dtype=np.int64)
    new_sizes = np.zeros(len(clusters), dtype=np.int64)
    for p, c, n in counts:
        if p is not None:
            previous_sizes[previous_ids.index(p)] += n
        if c is not None:
            new_sizes[clusters.index(c)] += n
        if p is not None and c is not None:
            overlap[previous_ids.index(p), clusters.index(c)] += n
    used = [i for i in previous_ids if i >= 0]
    if store.exists(SEGMENT_LINEAGE):
        ever = store.read(SEGMENT_LINEAGE).agg(F.max("segment_id"), F.max("previous_segment_id")).head()
        used += [v for v in ever if v is not None]
    ids, lineage = match_segments(
        overlap,
        previous_ids,
        previous_sizes,
        clusters,
        new_sizes,
        max(used, default=-1) + 1,
        ctx.cfg.clustering.match_min_jaccard,
    )
    transitions = [(p, ids[c] if c is not None else None, n) for p, c, n in counts]
    identity = Identity(
        run_id,
        previous_run,
        ids,
        lineage,
        transitions,
        labels,
        rewrite=previous_run != run_id,
    )
    _log_identity(identity)
    return identity


def _log_identity(identity: Identity) -> None:
    by_status = {
        status: [m for m in identity.lineage if m.status == status] for status in (MATCHED, NEW, VANISHED)
    }
    if identity.previous_run_id is None:
        log.info("cluster: first fit: segment ids %s", identity.segment_ids)
        return
    log.info(
        "cluster: segment ids against run %s: %d continued %s, %d new %s, %d vanished %s",
        identity.previous_run_id,
        len(by_status[MATCHED]),
        [(m.segment_id, round(m.jaccard, 2)) for m in by_status[MATCHED]],
        len(by_status[NEW]),
        [m.segment_id for m in by_status[NEW]],
        len(by_status[VANISHED]),
        [m.previous_segment_id for m in by_status[VANISHED]],
    )
