"""The fitted segmenter: what a cluster run saves so that `assign` scores new users exactly as the fit
scored its users (the same features snapshot's scaling and vocabulary, the same encoder, the same
clusterer), and the one definition of a `user_segments` row, whichever of the two made it.

A segmenter lives in `<artifacts>/segmenters/<cluster run>/`: `segmenter.json` (this manifest) and
`model/` (the MLlib model, saved reading a plain `vector` column, or the density model's exemplars).
Model files are named by version, never by absolute path, so a lake moved with its artifacts still
resolves them.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from pyspark.ml.clustering import BisectingKMeansModel, GaussianMixtureModel, KMeansModel
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from segmentation.artifacts import ArtifactPaths, atomic_write_text
from segmentation.cluster.density import NOISE, DensityModel
from segmentation.errors import StageError

MANIFEST = "segmenter.json"
PUBLISHED = "published_tables.json"  # the table versions the fit wrote its segments in (promotion.py)
FIT, ASSIGN = "fit", "assign"  # how a user_segments row was made
_MLLIB = {
    "kmeans": KMeansModel,
    "bisecting_kmeans": BisectingKMeansModel,
    "gaussian_mixture": GaussianMixtureModel,
}


@dataclass(frozen=True)
class Segmenter:
    run_id: str  # the cluster run that fitted it: the model version of the rows it makes
    representation: str  # raw | embedding | idec | sequence
    algorithm: str
    k: int
    autoencoder_version: str  # the autoencoder behind `embedding` and the start of `idec`
    encoder_version: str | None  # the run whose idec or sequence model makes the representation
    features_run_id: str  # the user_features snapshot: its scaling statistics and vocabulary
    features_as_of: str  # that snapshot's as_of (ISO): `assign` scores users with events after it
    sequence_events: int | None  # the sequence representation: how many of a user's last events it reads
    segment_ids: list[int]  # the stable segment id of each of the model's clusters 0..k-1 (identity.py)

    def save(self, paths: ArtifactPaths, model) -> Path:
        directory = paths.segmenter(self.run_id)
        if isinstance(model, DensityModel):
            model.save(directory / "model")
        else:  # saved reading a plain `vector` column, whatever the sweep called it
            model.copy({model.featuresCol: "vector"}).write().overwrite().save(str(directory / "model"))
        atomic_write_text(directory / MANIFEST, json.dumps(asdict(self), indent=2))
        return directory

    @staticmethod
    def load(paths: ArtifactPaths, version: str) -> Segmenter:
        path = paths.segmenter(version) / MANIFEST
        if not path.is_file():
            raise StageError(f"segmenter {version} has no {MANIFEST} under {path.parent}")
        values = json.loads(path.read_text())
        missing = [name for name in Segmenter.__dataclass_fields__ if name not in values]
        if missing:
            raise StageError(
                f"segmenter {version} was saved by an older version (no {', '.join(missing)}): "
                "run `segment cluster` again to fit one `assign` can use"
            )
        return Segmenter(**{name: values[name] for name in Segmenter.__dataclass_fields__})

    def record_tables(self, paths: ArtifactPaths, versions: dict[str, int]) -> None:
        """Record the versions of the segment tables in which this fit published its segments."""
        atomic_write_text(paths.segmenter(self.run_id) / PUBLISHED, json.dumps(versions, indent=2))

    def published_tables(self, paths: ArtifactPaths) -> dict[str, int] | None:
        """The table versions `record_tables` recorded; None for a fit that recorded none."""
        path = paths.segmenter(self.run_id) / PUBLISHED
        return {k: int(v) for k, v in json.loads(path.read_text()).items()} if path.is_file() else None

    def model(self, paths: ArtifactPaths):
        """The fitted clusterer, reading the vector column `vector`."""
        directory = paths.segmenter(self.run_id) / "model"
        if self.algorithm == "hdbscan":
            return DensityModel.load(directory)
        if self.algorithm not in _MLLIB:
            raise StageError(f"segmenter {self.run_id}: unknown algorithm {self.algorithm!r}")
        return _MLLIB[self.algorithm].load(str(directory))

    def stable(self, cluster: str) -> Column:
        """The stable segment id of the model's cluster index in column `cluster` (noise stays -1)."""
        ids = F.array(*[F.lit(i) for i in self.segment_ids])
        index = F.col(cluster)
        return F.when(index == NOISE, F.lit(NOISE)).otherwise(F.element_at(ids, index + 1)).cast("int")

    @property
    def as_of(self) -> dt.datetime:
        return dt.datetime.fromisoformat(self.features_as_of)

    def rows(self, scored: DataFrame, how: str, run_id: str) -> DataFrame:
        """Input: user_id, segment_id, distance. Output: `user_segments` rows: those columns, then
        algorithm, k, representation, model_version, assigned_by (`fit` or `assign`), assigned_at
        (when the query runs: one instant for all its rows) and run_id (the run that wrote the row)."""
        return scored.select(
            "user_id",
            F.col("segment_id").cast("int").alias("segment_id"),
            F.col("distance").cast("double").alias("distance"),
            F.lit(self.algorithm).alias("algorithm"),
            F.lit(self.k).alias("k"),
            F.lit(self.representation).alias("representation"),
            F.lit(self.run_id).alias("model_version"),
            F.lit(how).alias("assigned_by"),
            F.current_timestamp().alias("assigned_at"),
            F.lit(run_id).alias("run_id"),
        )
