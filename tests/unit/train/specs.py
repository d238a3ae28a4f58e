"""One training run for the training function's own tests (no Spark): a small single-process spec
over parquet files, every field overridable."""

from dataclasses import replace
from pathlib import Path

from segmentation.train.spec import TrainSpec


def tiny_spec(
    directory: Path, files: tuple[str, ...], feature_names: tuple[str, ...], **changes
) -> TrainSpec:
    """A spec writing its model and checkpoint under `directory`, with `changes` to any field."""
    base = TrainSpec(
        files=files,
        total_rows=1,
        feature_names=feature_names,
        hidden_sizes=(16,),
        embedding_dim=3,
        activation="relu",
        dropout=0.0,
        noise_std=0.0,
        epochs=1,
        batch_size=32,
        learning_rate=0.01,
        lr_schedule="constant",
        grad_clip=1.0,
        validation_share=0.1,
        patience=0,
        stop_after_epochs=None,
        seed=0,
        feeder="arrow",
        cache_mb=16,
        use_gpu=False,
        model_path=str(directory / "model.pt"),
        checkpoint_path=str(directory / "checkpoint.pt"),
        version=directory.name,
    )
    return replace(base, **changes)
