"""What crosses into TorchDistributor (`TrainSpec`) and what comes back (`TrainOutcome`), and the step
arithmetic both sides share. Stdlib only: the training processes import it before torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

SUMMARY = {"summary": True}  # fields `segment train` prints (see segmentation.stage.summary_field)


def training_rows(total_rows: int, validation_share: float) -> int:
    """Rows an epoch trains on: the users outside the validation share (at least one)."""
    return max(1, int(total_rows * (1 - validation_share)))


def steps_per_epoch(train_rows: int, world_size: int, batch_size: int) -> int:
    """Optimizer steps every process takes per epoch: enough batches to see every training row once."""
    return max(1, -(-train_rows // (world_size * batch_size)))


def per_process_batch(min_batch: int, train_rows: int, processes: int, max_steps: int | None) -> int:
    """`min_batch`, grown until an epoch takes at most `max_steps` steps across `processes` (None: never
    grown). The embedding's segment structure tracked optimizer steps, not epochs (see
    `training.max_steps_per_epoch`)."""
    if max_steps is None:
        return min_batch
    return max(min_batch, -(-train_rows // (processes * max_steps)))


@dataclass(frozen=True)
class RefineSpec:
    """An IDEC-style refinement (Guo et al., 2017): a trained autoencoder and cluster centres in its
    embedding trained jointly on reconstruction + `gamma` x KL(P || Q), where Q is the Student-t soft
    assignment of each user to the centres and P the sharpened target (q^2 / cluster frequency, per
    user normalized). `frequencies` are the clusters' soft sizes the first epoch's targets divide by;
    each later epoch divides by the sizes the previous epoch measured over every rank's batches."""

    init_model: str  # the autoencoder file the refinement starts from
    centres: tuple[tuple[float, ...], ...]
    frequencies: tuple[float, ...]
    gamma: float


@dataclass(frozen=True)
class SequenceSpec:
    """A sequence encoder (`train/model.py: SequenceEncoder`) trained contrastively (trainer.py:
    `Contrastive`): two disjoint random halves of each user's recent events should embed closer to each
    other than to the other users' halves in the batch (InfoNCE at `temperature`). Rows are
    `max_events` x len(`cardinalities`) integer codes, 0 for padding."""

    cardinalities: tuple[int, ...]  # the codes of each token field, padding excluded
    inputs: tuple[int, ...]  # the fields the encoder reads, by index (the first, the type, marks events)
    max_events: int
    field_dim: int
    temperature: float


@dataclass(frozen=True)
class TrainSpec:
    """One training run, as every process sees it. Built by the launcher from `training.*`; the
    `training.<name>` key of the same name documents each model and optimizer setting."""

    # the data: the feature table snapshot's parquet files, its row count and feature names
    files: tuple[str, ...]
    total_rows: int
    feature_names: tuple[str, ...]
    # the model
    hidden_sizes: tuple[int, ...]
    embedding_dim: int
    activation: str
    dropout: float
    noise_std: float
    # the optimization; batch_size is the effective per-process batch (training.batch_size grown by
    # training.max_steps_per_epoch), not the configured minimum
    epochs: int
    batch_size: int
    learning_rate: float
    lr_schedule: str
    grad_clip: float
    validation_share: float
    patience: int
    stop_after_epochs: int | None
    seed: int
    # the processes
    feeder: str
    cache_mb: int
    use_gpu: bool
    # the outputs: the model file, the checkpoint a rerun resumes from, the model's version (run id),
    # and the scaling statistics saved with the model
    model_path: str
    checkpoint_path: str
    version: str
    scaling: dict = field(default_factory=dict)
    # None: train an autoencoder from scratch; else refine `refine.init_model` with its centres (IDEC)
    refine: RefineSpec | None = None
    # set: train a sequence encoder on the `column` of the table's files instead of an autoencoder
    sequence: SequenceSpec | None = None
    column: str = "features"

    @property
    def train_rows(self) -> int:
        return training_rows(self.total_rows, self.validation_share)

    def steps_per_epoch(self, world_size: int) -> int:
        return steps_per_epoch(self.train_rows, world_size, self.batch_size)


@dataclass
class TrainOutcome:
    """What rank 0 returns: small figures only (the model itself is on disk at `model_path`)."""

    losses: list[float] = field(default_factory=list, metadata=SUMMARY)
    val_losses: list[float] = field(default_factory=list)
    epochs_done: int = 0
    finished: bool = False
    stopped_early: bool = False
    model_path: str = ""
    world_size: int = 1
    device: str = "cpu"
    feeder: str = ""
    feeder_cached: bool = False
    epoch_seconds: list[float] = field(default_factory=list)  # this launch's epochs
    batch_size: int = 0
    samples_per_epoch: int = 0
    # where each rank ran (host, process, working directory, the package it imported): the run's record
    # shows whether training ran on the driver or in executors, and with which code
    processes: list[dict] = field(default_factory=list)
