"""The sequence encoder in the training function itself (one process, no Spark): users who do the same
things in the same proportions, in opposite orders, are told apart by their embeddings, where their
per-user counts cannot tell them apart; crops are contiguous runs of a user's own events."""

from dataclasses import replace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score

from segmentation.sequence.tokens import FIELDS
from segmentation.train import model as model_io
from segmentation.train import trainer
from segmentation.train.spec import SequenceSpec
from tests.unit.train.specs import tiny_spec

MAX_EVENTS = 24
CARDINALITIES = (7, 3, 24, 8, 8, 8)
SEQUENCE = SequenceSpec(CARDINALITIES, (0, 1, 3, 4, 5), MAX_EVENTS, field_dim=4, temperature=0.1)


def _users(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Token rows of `n` users: half browse then buy, half buy then browse, with the same mix."""
    rng = np.random.default_rng(seed)
    truth = np.arange(n) % 2
    rows = np.zeros((n, MAX_EVENTS, len(FIELDS)), np.int32)
    for u in range(n):
        length = int(rng.integers(12, MAX_EVENTS + 1))
        types = np.where(rng.random(length) < 0.3, 4, 1)  # purchase or view
        types = np.sort(types) if truth[u] == 0 else np.sort(types)[::-1]
        rows[u, :length, 0] = types
        rows[u, :length, 1] = rng.integers(1, 4, length)
        rows[u, :length, 2] = rng.integers(1, 25, length)
        rows[u, :length, 3] = rng.integers(1, 9, length)
        rows[u, :length, 4] = rng.integers(1, 9, length)
        rows[u, :length, 5] = 1 + (np.arange(length) * 8) // length
    return rows.reshape(n, -1), truth


def test_the_two_views_are_disjoint_halves_of_a_users_events_in_order():
    rows, _ = _users(16, 0)
    x = torch.from_numpy(rows.astype(np.float32))
    first, second = trainer.Contrastive(SEQUENCE).views(x)
    original = x.reshape(16, MAX_EVENTS, -1)
    first, second = first.reshape(16, MAX_EVENTS, -1), second.reshape(16, MAX_EVENTS, -1)
    for u in range(16):
        length = int((original[u, :, 0] > 0).sum())
        a, b = int((first[u, :, 0] > 0).sum()), int((second[u, :, 0] > 0).sum())
        assert a + b == length and not first[u, a:].any() and not second[u, b:].any()
        # the halves interleave back into the user's events: each is a subsequence, together all
        merged, i, j = [], 0, 0
        for event in original[u, :length]:
            if i < a and torch.equal(first[u, i], event):
                merged.append(event)
                i += 1
            elif j < b and torch.equal(second[u, j], event):
                merged.append(event)
                j += 1
        assert i == a and j == b


@pytest.mark.slow
def test_the_encoder_tells_apart_orders_that_counts_cannot(tmp_path):
    rows, truth = _users(240, 1)
    table = pa.table(
        {
            "user_id": [f"u{i:03d}" for i in range(len(rows))],
            "sequence": pa.array(rows.tolist(), pa.list_(pa.int32())),
        }
    )
    pq.write_table(table, tmp_path / "part-0.parquet", row_group_size=64)
    spec = tiny_spec(
        tmp_path / "seq",
        (str(tmp_path / "part-0.parquet"),),
        FIELDS,
        total_rows=len(rows),
        hidden_sizes=(32,),
        embedding_dim=8,
        epochs=20,
        batch_size=16,
        learning_rate=0.005,
        seed=2,
        sequence=SEQUENCE,
        column="sequence",
    )
    assert trainer.train(spec).finished
    model, model_spec = model_io.load(tmp_path / "seq" / "model.pt")
    assert model_spec.kind == "sequence" and model_spec.cardinalities == CARDINALITIES
    with torch.no_grad():
        z = model.encode(torch.from_numpy(rows.astype(np.float32))).numpy()
    assert np.allclose(np.linalg.norm(z, axis=1), 1.0, atol=1e-5)
    by_order = KMeans(2, n_init=10, random_state=0).fit_predict(z)
    assert adjusted_rand_score(truth, by_order) >= 0.9
    # the same users as counts per type (what per-user aggregates see) carry no trace of the order
    codes = rows.reshape(len(rows), MAX_EVENTS, -1)[:, :, 0]
    counts = np.stack([(codes == c).sum(axis=1) for c in (1, 4)], axis=1).astype(float)
    assert adjusted_rand_score(truth, KMeans(2, n_init=10, random_state=0).fit_predict(counts)) < 0.1
    # a resumed run reaches the same encoder
    parts = replace(
        spec,
        model_path=str(tmp_path / "parts" / "model.pt"),
        checkpoint_path=str(tmp_path / "parts" / "checkpoint.pt"),
        stop_after_epochs=6,
    )
    assert not trainer.train(parts).finished
    assert trainer.train(replace(parts, stop_after_epochs=None)).finished
    resumed, _ = model_io.load(tmp_path / "parts" / "model.pt")
    for name, value in model.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[name], value)
