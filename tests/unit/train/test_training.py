"""Distributed training through TorchDistributor on a small feature table (2 CPU processes, gloo)."""

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from segmentation.errors import ConfigError, StageError
from segmentation.features.scaling import Scaler
from segmentation.stage import StageContext
from segmentation.storage import open_store
from segmentation.tables import USER_FEATURES
from segmentation.train import model as model_io
from segmentation.train import stage as train
from segmentation.train import trainer
from segmentation.train.spec import per_process_batch, training_rows
from segmentation.train.tracking import tracking_uri
from tests.unit.train.specs import tiny_spec

DIM = 5


@pytest.fixture
def features_table(spark, cfg):
    """Clustered points in three files of very uneven size (40, 7 and 1 rows)."""
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, DIM)) * 2
    frames = []
    start = 0
    for size in (40, 7, 1):
        rows = [
            (f"u{i}", [float(v) for v in centres[i % 3] + rng.normal(scale=0.3, size=DIM)], "feat")
            for i in range(start, start + size)
        ]
        frames.append(
            spark.createDataFrame(rows, "user_id string, features array<float>, run_id string").coalesce(1)
        )
        start += size
    table = frames[0].unionByName(frames[1]).unionByName(frames[2])
    open_store(spark, cfg.storage).overwrite(table, USER_FEATURES)
    Scaler([f"f{i}" for i in range(DIM)], [False] * DIM, [0.0] * DIM, [1.0] * DIM, 5.0, [], "feat").save(
        cfg.paths.scaling("feat")
    )
    cfg.training.num_processes = 2
    cfg.training.batch_size = 8
    cfg.training.epochs = 6
    cfg.training.patience = 0
    cfg.training.validation_share = 0.2
    cfg.training.hidden_sizes = [8]
    cfg.training.embedding_dim = 2
    cfg.training.learning_rate = 0.01
    return cfg


def _weights(path):
    model, _ = model_io.load(path)
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.slow
def test_resume_after_interruption_equals_an_uninterrupted_run(spark, features_table):
    cfg = features_table
    cfg.training.feeder = "arrow"
    whole = train.run(StageContext.create(spark, cfg, "whole"))
    assert whole.finished and whole.world_size == 2
    assert whole.losses[-1] < whole.losses[0]  # it learns
    assert cfg.paths.current_model_file() == cfg.paths.model("whole")
    scaling = model_io.load_scaling(cfg.paths.model("whole"))
    assert scaling["feature_names"] == [f"f{i}" for i in range(DIM)] and scaling["run_id"] == "feat"
    client = MlflowClient(tracking_uri(cfg))
    tracked = client.get_run(whole.mlflow_run_id)
    assert tracked.data.params["epochs"] == "6"
    assert [m.value for m in client.get_metric_history(tracked.info.run_id, "train_loss")] == pytest.approx(
        whole.losses
    )
    logged = client.search_logged_models(experiment_ids=[tracked.info.experiment_id])
    assert logged and logged[0].source_run_id == tracked.info.run_id

    cfg.training.stop_after_epochs = 3
    first = train.run(StageContext.create(spark, cfg, "split"))
    assert not first.finished and first.epochs_done == 3
    assert not cfg.paths.model("split").exists()
    cfg.training.stop_after_epochs = None
    second = train.run(StageContext.create(spark, cfg, "split"))
    assert second.finished and second.epochs_done == 6
    assert second.losses == pytest.approx(whole.losses, rel=1e-5)
    resumed, uninterrupted = (
        _weights(cfg.paths.model("split")),
        _weights(cfg.paths.model("whole")),
    )
    for name, tensor in uninterrupted.items():
        assert torch.allclose(resumed[name], tensor, atol=1e-5), name


@pytest.mark.slow
def test_petastorm_feeder_trains_a_usable_model(spark, features_table):
    pytest.importorskip("petastorm")
    cfg = features_table
    cfg.training.feeder = "petastorm"
    cfg.training.epochs = 3
    cfg.training.max_steps_per_epoch = 2  # 38 training rows over 2 processes: batches grow from 8 to 10
    result = train.run(StageContext.create(spark, cfg, "peta"))
    assert result.feeder == "petastorm" and result.finished
    assert result.batch_size == 10
    assert result.samples_per_epoch == 2 * 2 * 10  # 2 steps of 10 rows in each process
    model, spec = model_io.load(cfg.paths.model("peta"))
    z = model.encode(torch.zeros(4, spec.input_dim))
    assert z.shape == (4, 2) and torch.isfinite(z).all()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_training_with_nccl(spark, features_table):
    """A plain local session has no Spark GPU resources: the process takes the driver's GPU itself."""
    cfg = features_table
    cfg.training.use_gpu = True
    cfg.training.num_processes = 1
    result = train.run(StageContext.create(spark, cfg, "gpu"))
    assert result.finished and result.device == "cuda:0"
    assert result.losses[-1] < result.losses[0]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without a GPU")
def test_use_gpu_without_a_gpu_fails_before_training(spark, features_table):
    cfg = features_table
    cfg.training.use_gpu = True
    with pytest.raises(ConfigError, match="sees no CUDA GPU on the driver"):
        train.run(StageContext.create(spark, cfg, "nogpu"))
    assert not cfg.paths.checkpoint("nogpu").exists()


def test_use_gpu_on_a_cluster_needs_spark_gpu_scheduling(spark, features_table):
    cfg = features_table
    cfg.training.use_gpu = True
    cfg.training.local_mode = False
    with pytest.raises(ConfigError, match="spark.task.resource.gpu.amount"):
        train.run(StageContext.create(spark, cfg, "cluster"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without a GPU")
def test_a_training_process_without_a_gpu_refuses_use_gpu(tmp_path):
    """No silent fall-back to CPU inside a process TorchDistributor started without a GPU."""
    spec = tiny_spec(tmp_path, (), ("f",), use_gpu=True)
    with pytest.raises(StageError, match="sees no CUDA device in this process"):
        trainer.train(spec)


@pytest.mark.parametrize(
    ("users", "max_steps", "expected"),
    [
        (1_000, 64, 256),  # few users: the configured batch
        (100_000, 64, 704),  # 90,000 training rows / (2 processes x 64 steps), rounded up
        (100_000, None, 256),  # growth off
    ],
)
def test_batches_grow_so_an_epoch_keeps_its_step_count(users, max_steps, expected):
    from segmentation.config import TrainingConfig

    training = TrainingConfig(
        batch_size=256, num_processes=2, validation_share=0.1, max_steps_per_epoch=max_steps
    )
    rows = training_rows(users, training.validation_share)
    assert per_process_batch(training.batch_size, rows, training.num_processes, max_steps) == expected
