"""The `idec` representation: the autoencoder refined together with cluster centres (IDEC, Guo et al.
2017), trained through TorchDistributor on the feature table's files with the same feeders as `train`,
then applied to every user in Spark tasks like `embed`.

The refinement starts from the autoencoder that made `user_embeddings` and from k-means centres of the
embedding at the k its evidence chose (the evidence sample's k-means labels, so no further fit); it
sharpens the embedding around those centres while reconstruction keeps it faithful to the features.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from segmentation.cluster.kselect import KChoice
from segmentation.embed.encoder import METHODS
from segmentation.errors import StageError
from segmentation.stage import StageContext
from segmentation.train.spec import RefineSpec, TrainSpec
from segmentation.train.stage import distributor_schedules_gpus, finished_model, launch
from segmentation.train.stage import plan as training_plan

log = logging.getLogger(__name__)

REPRESENTATION = "idec"


def initial_centres(sample: np.ndarray, labels: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The mean of each of the k labelled groups of `sample` (k-means centres when the labels are a
    k-means fit's), and the groups' soft sizes under IDEC's Student-t assignment to those centres."""
    centres = np.stack([sample[labels == j].mean(axis=0) for j in range(k)])
    distances = ((sample[:, None, :] - centres[None, :, :]) ** 2).sum(axis=2)
    q = 1.0 / (1.0 + distances)
    q /= q.sum(axis=1, keepdims=True)
    return centres, q.sum(axis=0) / len(sample)


def refine_spec(
    ctx: StageContext, autoencoder: Path, centres: np.ndarray, frequencies: np.ndarray
) -> TrainSpec:
    """The training plan of `train` (the feature table's snapshot, processes, feeder, batch) with the
    refinement's epochs and learning rate, no input noise and no early stopping."""
    idec = ctx.cfg.clustering.idec
    return replace(
        training_plan(ctx),
        epochs=idec.epochs,
        learning_rate=idec.learning_rate,
        lr_schedule="constant",
        noise_std=0.0,
        dropout=0.0,
        patience=0,
        stop_after_epochs=None,
        model_path=str(ctx.paths.refined_model(ctx.run_id).resolve()),
        checkpoint_path=str(ctx.paths.refine_checkpoint(ctx.run_id).resolve()),
        version=ctx.run_id,
        refine=RefineSpec(
            init_model=str(autoencoder.resolve()),
            centres=tuple(tuple(float(v) for v in row) for row in centres),
            frequencies=tuple(float(f) for f in frequencies),
            gamma=idec.gamma,
        ),
    )


def refine(ctx: StageContext, autoencoder: Path, sample: np.ndarray, choice: KChoice) -> Path:
    """Train the refinement of `autoencoder` from the centres of the embedding `sample`'s k-means
    labels at the chosen k; returns the refined model's file (an autoencoder, with its centres)."""
    fitted = next((e for e in choice.evidence if e.k == choice.k), None)
    if fitted is None or fitted.labels is None:
        raise StageError(f"cluster: no k-means labels at k={choice.k} on the embedding sample to refine")
    centres, frequencies = initial_centres(sample, fitted.labels, choice.k)
    spec = refine_spec(ctx, autoencoder, centres, frequencies)
    ctx.describe(f"cluster: idec refinement at k={choice.k} (TorchDistributor)")
    log.info(
        "cluster: refining autoencoder %s with %d centres for %d epochs (idec, gamma %.3g)",
        autoencoder.parent.name,
        choice.k,
        spec.epochs,
        spec.refine.gamma,
    )
    outcome = launch(
        ctx.spark, ctx.cfg.training, spec, distributor_schedules_gpus(ctx.spark, ctx.cfg.training)
    )
    return finished_model(
        outcome, "cluster: idec refinement", f"run `segment cluster --run-id {ctx.run_id}` again to resume"
    )


def refined_embedding(features: DataFrame, model: Path, method: str) -> DataFrame:
    """Input: user_id, features (array<float>). Output: user_id, idec (array<float>): every user's
    embedding under the refined encoder, computed in Spark tasks as `embed` does."""
    return METHODS[method](features, str(model)).select("user_id", F.col("embedding").alias(REPRESENTATION))
