"""The fitted segmenter as one MLflow pyfunc model: a user's raw features (the `user_features` columns)
→ segment id and distance to the segment's centroid, without Spark: the snapshot's scaling, the encoder
(the autoencoder, or its IDEC refinement) and the clusterer's centres. For model serving, notebooks and
any pandas caller; `assign` scores in Spark tasks from the same saved parts.

Covered: k-means on the `raw`, `embedding` and `idec` representations. Not covered (the cluster stage
registers nothing for them and says so): bisecting k-means (MLlib assigns by walking its tree, which
PySpark does not expose), Gaussian mixtures, HDBSCAN, and the `sequence` representation (its input is
a user's events, not features).

Nothing here imports Spark: a serving environment has numpy, pandas, torch and this package only.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import mlflow.pyfunc
import numpy as np
import pandas as pd

ALGORITHMS = ("kmeans",)
REPRESENTATIONS = ("raw", "embedding", "idec")
PARTS = "segmenter.json"  # scaling, centres, ids: everything but the encoder's weights
ENCODER = "encoder.pt"


def supported(algorithm: str, representation: str) -> bool:
    return algorithm in ALGORITHMS and representation in REPRESENTATIONS


def scale(frame: pd.DataFrame, scaling: dict) -> np.ndarray:
    """The scaled float32 matrix of features/scaling.py's `Scaler.transform` (log1p of the non-negative
    part where chosen, standardized, clipped), from the raw feature columns of `frame`. The same
    arithmetic as that Spark column, here in numpy; tests/integration/test_segmenter_model.py checks
    they agree."""
    missing = [name for name in scaling["feature_names"] if name not in frame.columns]
    if missing:
        raise ValueError(f"the input lacks feature columns: {', '.join(missing[:5])}")
    columns = []
    for name, use_log, mean, std in zip(
        scaling["feature_names"], scaling["log1p"], scaling["mean"], scaling["std"], strict=True
    ):
        x = frame[name].to_numpy(dtype=np.float64)
        if use_log:
            x = np.log1p(np.maximum(x, 0.0))
        z = (x - mean) / std
        columns.append(np.clip(z, -scaling["clip_std"], scaling["clip_std"]).astype(np.float32))
    return np.stack(columns, axis=1)


def export(
    directory: Path,
    manifest: dict,
    scaling: dict,
    centres: np.ndarray,
    centroids: dict[int, list[float]],
    encoder: Path | None,
) -> dict[str, str]:
    """Write the model's parts under `directory`; returns them as MLflow artifacts (name -> path).
    `centres`: the clusterer's centres by cluster index; `centroids`: each segment's centroid (what
    user_segments.distance measures against)."""
    directory.mkdir(parents=True, exist_ok=True)
    parts = {
        "segmenter": manifest,
        "scaling": scaling,
        "centres": np.asarray(centres, dtype=np.float64).tolist(),
        "centroids": {str(k): list(v) for k, v in centroids.items()},
    }
    (directory / PARTS).write_text(json.dumps(parts))
    artifacts = {"parts": str(directory / PARTS)}
    if encoder is not None:
        shutil.copyfile(encoder, directory / ENCODER)
        artifacts["encoder"] = str(directory / ENCODER)
    return artifacts


class SegmenterModel(mlflow.pyfunc.PythonModel):
    """Input: a DataFrame with the raw feature columns (extra columns are ignored). Output: segment_id
    (int) and distance (float) per row, as `segment assign` would write them."""

    def load_context(self, context) -> None:
        parts = json.loads(Path(context.artifacts["parts"]).read_text())
        self.scaling = parts["scaling"]
        self.segment_ids = np.asarray(parts["segmenter"]["segment_ids"], dtype=np.int32)
        self.centres = np.asarray(parts["centres"], dtype=np.float64)
        ids = sorted(int(k) for k in parts["centroids"])
        self.centroid_rows = {segment: row for row, segment in enumerate(ids)}
        self.centroids = np.asarray([parts["centroids"][str(k)] for k in ids], dtype=np.float64)
        self.encoder = None
        if "encoder" in context.artifacts:
            from segmentation.train import model as model_io

            self.encoder, _ = model_io.load(Path(context.artifacts["encoder"]))

    def represent(self, scaled: np.ndarray) -> np.ndarray:
        if self.encoder is None:
            return scaled.astype(np.float64)
        import torch

        with torch.no_grad():
            return self.encoder.encode(torch.from_numpy(scaled)).numpy().astype(np.float64)

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        points = self.represent(scale(model_input, self.scaling))
        squared = ((points[:, None, :] - self.centres[None, :, :]) ** 2).sum(axis=2)
        segments = self.segment_ids[squared.argmin(axis=1)]
        rows = np.asarray([self.centroid_rows[int(s)] for s in segments], dtype=np.int64)
        distance = np.sqrt(((points - self.centroids[rows]) ** 2).sum(axis=1))
        return pd.DataFrame({"segment_id": segments.astype(np.int32), "distance": distance})
