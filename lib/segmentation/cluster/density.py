"""Density-based segments: HDBSCAN on a bounded sample, extended to every user in Spark tasks.

HDBSCAN (scikit-learn) needs all pairwise neighbourhoods, so it runs on a uniform driver sample of at
most `clustering.selection_sample_rows` users. Every sampled user it puts in a dense region becomes an
exemplar, with its core distance (the distance to its `min_samples`-th nearest sampled neighbour).
Every user is then assigned in Spark to the segment of its nearest exemplar when it lies within that
exemplar's core distance, i.e. where the data are as dense as at the exemplar; any other user is noise:
`segment_id` -1 (`NOISE`), in no segment, rather than forced into the nearest one. The number of
segments is what HDBSCAN finds, not `clustering.k`; segments smaller than
`clustering.min_segment_share` of the sample are not formed (HDBSCAN's `min_cluster_size`).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from pyspark.ml.functions import vector_to_array
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from segmentation.errors import StageError

log = logging.getLogger(__name__)

NOISE = -1  # segment_id of users in no dense region
MIN_SAMPLES = 10  # neighbours that make a point a core point (HDBSCAN's min_samples)
ASSIGN_CHUNK = 2048  # users per distance block in a task (block x exemplars doubles in memory)


@dataclass(frozen=True)
class DensityModel:
    """Exemplars (sampled users in dense regions) with their segment and core distance."""

    exemplars: np.ndarray  # (m, dim)
    labels: np.ndarray  # (m,) segment of each exemplar, 0..k-1
    radius: np.ndarray  # (m,) core distance of each exemplar
    noise_share: float  # share of the sample HDBSCAN left as noise

    @property
    def k(self) -> int:
        return int(self.labels.max()) + 1 if len(self.labels) else 0

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Segment of each row of `x` (NOISE outside every exemplar's core distance)."""
        out = np.empty(len(x), dtype=np.int32)
        norms = (self.exemplars**2).sum(axis=1)
        for start in range(0, len(x), ASSIGN_CHUNK):
            block = x[start : start + ASSIGN_CHUNK]
            d2 = (block**2).sum(axis=1)[:, None] - 2 * block @ self.exemplars.T + norms[None, :]
            nearest = d2.argmin(axis=1)
            distance = np.sqrt(np.maximum(d2[np.arange(len(block)), nearest], 0))
            out[start : start + len(block)] = np.where(
                distance <= self.radius[nearest], self.labels[nearest], NOISE
            )
        return out

    def transform(self, points: DataFrame, features: str, prediction: str) -> DataFrame:
        """`points` plus `prediction` (int) read from the vector column `features`, in Spark tasks."""
        model = self

        @F.pandas_udf("int")
        def assign(values: pd.Series) -> pd.Series:
            if len(values) == 0:
                return pd.Series([], dtype="int32")
            return pd.Series(model.predict(np.stack(values.to_numpy()).astype(np.float64)))

        return points.withColumn(prediction, assign(vector_to_array(features)))

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        np.savez(
            directory / "exemplars.npz", exemplars=self.exemplars, labels=self.labels, radius=self.radius
        )
        (directory / "density.json").write_text(
            json.dumps({"k": self.k, "exemplars": len(self.labels), "noise_share": self.noise_share})
        )

    @classmethod
    def load(cls, directory: Path) -> DensityModel:
        arrays = np.load(directory / "exemplars.npz")
        meta = json.loads((directory / "density.json").read_text())
        return cls(arrays["exemplars"], arrays["labels"], arrays["radius"], meta["noise_share"])


def fit_density(sample: np.ndarray, min_share: float, seed: int) -> DensityModel:
    """HDBSCAN on `sample` (rows x dim) with segments of at least `min_share` of its rows."""
    from sklearn.cluster import HDBSCAN
    from sklearn.neighbors import NearestNeighbors

    min_size = max(MIN_SAMPLES, int(round(min_share * len(sample))))
    if len(sample) < 2 * min_size:
        raise StageError(f"cluster: hdbscan needs at least {2 * min_size} sampled users, got {len(sample)}")
    labels = HDBSCAN(min_cluster_size=min_size, min_samples=MIN_SAMPLES, copy=True).fit(sample).labels_
    dense = labels >= 0
    if not dense.any():
        raise StageError(
            "cluster: hdbscan found no dense region in the sample: the users form no density-separated "
            "segments (use kmeans, or lower clustering.min_segment_share)"
        )
    # core distance: to the MIN_SAMPLES-th neighbour, the point itself counted as HDBSCAN does
    neighbours = NearestNeighbors(n_neighbors=MIN_SAMPLES).fit(sample)
    radius = neighbours.kneighbors(sample[dense])[0][:, -1]
    _, compact = np.unique(labels[dense], return_inverse=True)
    model = DensityModel(sample[dense], compact.astype(np.int32), radius, float(1 - dense.mean()))
    log.info(
        "cluster: hdbscan found %d segments on %d sampled users (%.1f%% noise)",
        model.k,
        len(sample),
        100 * model.noise_share,
    )
    return model
