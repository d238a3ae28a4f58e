"""Both embedding paths equal single-process torch on the same rows."""

from pathlib import Path

import numpy as np
import pytest
import torch

from segmentation.embed.encoder import embed_users, embed_users_arrow, encode_batch
from segmentation.train import model as model_io

DIM = 6


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    torch.manual_seed(3)
    spec = model_io.ModelSpec(DIM, (8, 5), 3, tuple(f"f{i}" for i in range(DIM)), "test-model")
    net = model_io.build(spec)
    path = Path(tmp_path_factory.mktemp("model")) / "model.pt"
    model_io.save(net, spec, path)
    return path


@pytest.mark.parametrize("embed", [embed_users, embed_users_arrow], ids=["pandas_udf", "arrow"])
def test_embedding_equals_single_process_torch(spark, trained, embed):
    rng = np.random.default_rng(0)
    matrix = rng.normal(size=(500, DIM)).astype(np.float32)
    users = spark.createDataFrame(
        [(f"u{i}", [float(v) for v in row]) for i, row in enumerate(matrix)],
        "user_id string, features array<float>",
    ).repartition(3)
    got = {r.user_id: r for r in embed(users, str(trained)).collect()}
    model, _ = model_io.load(trained)
    expected_z, expected_err = encode_batch(model, matrix)
    assert len(got) == 500
    for i in range(500):
        row = got[f"u{i}"]
        assert np.allclose(row.embedding, expected_z[i], atol=1e-5)
        assert row.recon_error == pytest.approx(float(expected_err[i]), abs=1e-5)


def test_saved_models_load_without_running_code(trained):
    blob = torch.load(trained, weights_only=True)  # refuses pickled objects: only tensors and plain data
    assert blob["spec"]["version"] == "test-model"
