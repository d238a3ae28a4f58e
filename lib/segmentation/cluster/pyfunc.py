"""The fitted segmenter as one MLflow pyfunc model: a user's raw features (the `user_features` columns)
→ segment id and distance to the segment's centroid, without Spark: the snapshot's scaling, the encoder
(the autoencoder, or its IDEC refinement) and the clusterer: k-means' centres, or bisecting k-means'
tree. For model serving, notebooks and any pandas caller; `assign` scores in Spark tasks from the same
saved parts.

Covered: k-means and bisecting k-means on the `raw`, `embedding` and `idec` representations. MLlib
assigns a point to a bisecting leaf by walking its tree from the root, at each split to the nearer
child; PySpark does not expose the tree, so `bisecting_tree` reads it from the model MLlib saved (its
nodes' data file) and `predict` walks it the same way. Not covered (the cluster stage registers nothing
for them and says so): Gaussian mixtures, HDBSCAN, and the `sequence` representation (its input is a
user's events, not features).

Nothing here imports Spark: a serving environment has numpy, pandas, torch and this package only.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import mlflow.pyfunc
import numpy as np
import pandas as pd

ALGORITHMS = ("kmeans", "bisecting_kmeans")
REPRESENTATIONS = ("raw", "embedding", "idec")
PARTS = "segmenter.json"  # scaling, centres, ids: everything but the encoder's weights
ENCODER = "encoder.pt"


def supported(algorithm: str, representation: str) -> bool:
    return algorithm in ALGORITHMS and representation in REPRESENTATIONS


def scale(frame: pd.DataFrame, scaling: dict) -> np.ndarray:
    """The scaled float32 matrix of features/scaling.py's `Scaler.transform` (log1p of the non-negative
    part where chosen, standardized, clipped, net of volume where the snapshot chose it), from the raw
    feature columns of `frame`. The same arithmetic as that Spark column, here in numpy;
    tests/integration/test_segmenter_model.py and tests/unit/cluster/test_pyfunc.py check they agree."""
    missing = [name for name in scaling["feature_names"] if name not in frame.columns]
    if missing:
        raise ValueError(f"the input lacks feature columns: {', '.join(missing[:5])}")
    scaled = {}
    for name, use_log, mean, std in zip(
        scaling["feature_names"], scaling["log1p"], scaling["mean"], scaling["std"], strict=True
    ):
        x = frame[name].to_numpy(dtype=np.float64)
        if use_log:
            x = np.log1p(np.maximum(x, 0.0))
        scaled[name] = np.clip((x - mean) / std, -scaling["clip_std"], scaling["clip_std"])
    netted = scaling.get("partial_out", {})  # absent from snapshots written before the option
    columns = [
        z - netted[name] * scaled[scaling["volume"]] if name in netted else z for name, z in scaled.items()
    ]
    return np.stack([c.astype(np.float32) for c in columns], axis=1)


def bisecting_tree(model_directory: Path) -> list[dict]:
    """The nodes of a saved MLlib bisecting k-means model (`<model>/data/data/*.parquet`, one row per
    node): index (the cluster index of a leaf; negative for a split, -1 the root), centre, and the
    children's indices in MLlib's order."""
    import pyarrow.parquet as pq

    files = sorted((model_directory / "data" / "data").glob("*.parquet"))
    if not files:
        raise ValueError(f"no bisecting k-means tree under {model_directory}")
    nodes = []
    for row in pq.read_table(files).to_pylist():
        centre = row["center"]
        if centre["type"] == 0:  # a sparse vector
            dense = np.zeros(centre["size"])
            dense[centre["indices"]] = centre["values"]
            values = dense.tolist()
        else:
            values = list(centre["values"])
        nodes.append({"index": row["index"], "centre": values, "children": list(row["children"])})
    return nodes


def walk(points: np.ndarray, tree: list[dict]) -> np.ndarray:
    """Each point's leaf (cluster index) under bisecting k-means' rule: from the root, at every split
    to the child whose centre is nearest (squared Euclidean distance; the first of equals)."""
    nodes = {n["index"]: n for n in tree}
    root = -1 if -1 in nodes else max(nodes, key=lambda i: len(nodes[i]["children"]))
    at = np.full(len(points), root, dtype=np.int64)
    while True:
        splits = [i for i in np.unique(at) if nodes[int(i)]["children"]]
        if not splits:
            return at
        for split in splits:
            here = at == split
            children = nodes[int(split)]["children"]
            centres = np.asarray([nodes[c]["centre"] for c in children], dtype=np.float64)
            squared = ((points[here][:, None, :] - centres[None, :, :]) ** 2).sum(axis=2)
            at[here] = np.asarray(children)[squared.argmin(axis=1)]


def export(
    directory: Path,
    manifest: dict,
    scaling: dict,
    centres: np.ndarray,
    centroids: dict[int, list[float]],
    encoder: Path | None,
    tree: list[dict] | None = None,
) -> dict[str, str]:
    """Write the model's parts under `directory`; returns them as MLflow artifacts (name -> path).
    `centres`: the clusterer's centres by cluster index; `centroids`: each segment's centroid (what
    user_segments.distance measures against); `tree`: bisecting k-means' nodes (`bisecting_tree`),
    which then assign the cluster instead of the nearest centre."""
    directory.mkdir(parents=True, exist_ok=True)
    parts = {
        "segmenter": manifest,
        "scaling": scaling,
        "centres": np.asarray(centres, dtype=np.float64).tolist(),
        "centroids": {str(k): list(v) for k, v in centroids.items()},
        "tree": tree,
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
        self.tree = parts.get("tree")
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
        if self.tree:
            clusters = walk(points, self.tree)
        else:
            clusters = (((points[:, None, :] - self.centres[None, :, :]) ** 2).sum(axis=2)).argmin(axis=1)
        segments = self.segment_ids[clusters]
        rows = np.asarray([self.centroid_rows[int(s)] for s in segments], dtype=np.int64)
        distance = np.sqrt(((points - self.centroids[rows]) ** 2).sum(axis=1))
        return pd.DataFrame({"segment_id": segments.astype(np.int32), "distance": distance})
