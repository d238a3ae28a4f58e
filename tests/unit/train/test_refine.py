"""The IDEC refinement in the training function itself (one process, no Spark): it starts from a
trained autoencoder and centres, sharpens the soft assignments, saves the centres with the model, and a
resumed refinement equals an uninterrupted one (the cluster sizes its targets divide by are carried in
the checkpoint)."""

from dataclasses import replace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from sklearn.metrics import adjusted_rand_score

from segmentation.cluster.refine import initial_centres
from segmentation.train import model as model_io
from segmentation.train import trainer
from segmentation.train.spec import RefineSpec, TrainSpec
from tests.unit.train.specs import tiny_spec

DIM, K, PER = 6, 3, 60


@pytest.fixture
def blobs(tmp_path):
    """Three overlapping blobs as a parquet file, and their labels."""
    rng = np.random.default_rng(3)
    truth = np.repeat(np.arange(K), PER)
    x = (rng.normal(size=(K, DIM)) * 1.2)[truth] + rng.normal(size=(K * PER, DIM))
    table = pa.table(
        {
            "user_id": [f"u{i:03d}" for i in range(len(x))],
            "features": pa.array(x.astype(np.float32).tolist(), pa.list_(pa.float32())),
        }
    )
    pq.write_table(table, tmp_path / "part-0.parquet", row_group_size=64)
    return tmp_path / "part-0.parquet", x.astype(np.float32), truth


def _spec(tmp_path, files, **changes) -> TrainSpec:
    """The autoencoder at tmp_path/ae, unless `changes` say otherwise."""
    settings = {"total_rows": K * PER, "epochs": 30, "seed": 5} | changes
    return tiny_spec(tmp_path / "ae", (str(files),), tuple(f"f{i}" for i in range(DIM)), **settings)


def _encode(path, x):
    net, _ = model_io.load(path)
    with torch.no_grad():
        return net.encode(torch.from_numpy(x))


def _refine_spec(tmp_path, files, x, name: str, **changes) -> TrainSpec:
    """The refinement of the autoencoder at tmp_path/ae from its embedding's k-means centres."""
    from sklearn.cluster import KMeans

    ae = tmp_path / "ae" / "model.pt"
    z = _encode(ae, x).numpy()
    labels = KMeans(K, n_init=10, random_state=0).fit_predict(z)
    centres, frequencies = initial_centres(z, labels, K)
    return _spec(
        tmp_path,
        files,
        epochs=20,
        learning_rate=0.005,
        model_path=str(tmp_path / name / "model.pt"),
        checkpoint_path=str(tmp_path / name / "checkpoint.pt"),
        version=name,
        refine=RefineSpec(str(ae), tuple(map(tuple, centres.tolist())), tuple(frequencies.tolist()), 0.1),
        **changes,
    )


def test_initial_centres_are_group_means_with_soft_sizes():
    x = np.array([[0.0, 0.0], [0.0, 2.0], [10.0, 0.0]])
    centres, sizes = initial_centres(x, np.array([0, 0, 1]), 2)
    np.testing.assert_allclose(centres, [[0.0, 1.0], [10.0, 0.0]])
    assert sizes.sum() == pytest.approx(1.0)
    assert sizes[0] > sizes[1]  # two users near the first centre, one near the second


@pytest.mark.slow
def test_refinement_sharpens_assignments_and_saves_centres(tmp_path, blobs):
    files, x, truth = blobs
    trainer.train(_spec(tmp_path, files))
    spec = _refine_spec(tmp_path, files, x, "idec")
    before = model_io.soft_assign(_encode(spec.refine.init_model, x), torch.tensor(spec.refine.centres))

    outcome = trainer.train(spec)

    assert outcome.finished and outcome.epochs_done == 20
    centres = model_io.load_centres(tmp_path / "idec" / "model.pt")
    assert centres is not None and tuple(centres.shape) == (K, 3)
    assert not torch.allclose(centres, torch.tensor(spec.refine.centres))  # trained, not copied
    after = model_io.soft_assign(_encode(tmp_path / "idec" / "model.pt", x), centres)
    # the point of the KL term: each user's assignment grows more confident
    assert float(after.max(dim=1).values.mean()) > float(before.max(dim=1).values.mean()) + 0.02
    # and the partition still describes the blobs
    assert adjusted_rand_score(truth, after.argmax(dim=1).numpy()) >= 0.8 * adjusted_rand_score(
        truth, before.argmax(dim=1).numpy()
    )
    assert model_io.load_centres(tmp_path / "ae" / "model.pt") is None


@pytest.mark.slow
def test_a_resumed_refinement_equals_an_uninterrupted_one(tmp_path, blobs):
    files, x, _ = blobs
    trainer.train(_spec(tmp_path, files))
    trainer.train(_refine_spec(tmp_path, files, x, "whole"))
    interrupted = _refine_spec(tmp_path, files, x, "parts", stop_after_epochs=5)
    assert not trainer.train(interrupted).finished
    assert trainer.train(replace(interrupted, stop_after_epochs=None)).finished

    whole, parts = tmp_path / "whole" / "model.pt", tmp_path / "parts" / "model.pt"
    torch.testing.assert_close(model_io.load_centres(whole), model_io.load_centres(parts))
    torch.testing.assert_close(_encode(whole, x), _encode(parts, x))
