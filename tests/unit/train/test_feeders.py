"""Feeders give every rank data, the same fixed-size batches, whatever the shard sizes."""

import itertools

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from segmentation.train.feeders import FeedSpec, arrow_batches, petastorm_available, petastorm_batches

DIM = 3


def _write(path, rows: int, row_group_size: int, offset: int = 0):
    values = np.arange(offset, offset + rows, dtype=np.float32)
    column = pa.array([[v] * DIM for v in values], type=pa.list_(pa.float32()))
    ids = pa.array([f"u{int(v)}" for v in values])
    pq.write_table(pa.table({"user_id": ids, "features": column}), path, row_group_size=row_group_size)
    return str(path)


@pytest.fixture
def uneven_files(tmp_path):
    # Three files of different sizes, five row groups in all: two ranks get unequal shares.
    return (
        _write(tmp_path / "a.parquet", 7, 4),
        _write(tmp_path / "b.parquet", 3, 3, offset=100),
        _write(tmp_path / "c.parquet", 11, 6, offset=200),
    )


FEEDERS = [arrow_batches] + ([petastorm_batches] if petastorm_available() else [])


@pytest.mark.parametrize("feeder", FEEDERS)
def test_every_rank_gets_full_batches_forever(feeder, uneven_files):
    seen = []
    for rank in range(2):
        batches = list(itertools.islice(feeder(FeedSpec(uneven_files, rank, 2, 4, seed=1)), 12))
        assert all(b.shape == (4, DIM) and b.dtype == np.float32 for b in batches)
        seen.append({float(v) for b in batches for v in b[:, 0]})
    assert not seen[0] & seen[1]  # disjoint shards
    assert len(seen[0] | seen[1]) == 21  # together they cover every row


@pytest.mark.parametrize("feeder", FEEDERS)
def test_fewer_row_groups_than_ranks_still_feeds_every_rank(feeder, tmp_path):
    single = (_write(tmp_path / "one.parquet", 9, 100),)
    shares = [
        {float(v) for b in itertools.islice(feeder(FeedSpec(single, rank, 3, 2, seed=0)), 6) for v in b[:, 0]}
        for rank in range(3)
    ]
    assert all(shares)
    assert set().union(*shares) == {float(v) for v in range(9)}
    assert sum(len(s) for s in shares) == 9


def test_validation_split_is_stable_and_disjoint(uneven_files):
    from segmentation.train.feeders import is_validation, validation_rows

    ids = np.array([f"u{i}" for i in range(2000)], dtype=object)
    held = is_validation(ids, 0.2)
    assert 0.15 < held.mean() < 0.25
    assert (is_validation(ids, 0.2) == held).all()
    spec = FeedSpec(uneven_files, 0, 1, 4, seed=1, validation_share=0.3)
    validation = {float(v) for v in validation_rows(spec)[:, 0]}
    training = {float(v) for b in itertools.islice(arrow_batches(spec), 20) for v in b[:, 0]}
    assert validation and not validation & training
    assert len(validation | training) == 21


def test_each_epoch_stream_is_reproducible(uneven_files):
    spec = FeedSpec(uneven_files, 1, 2, 4, seed=7)
    first = [b.tolist() for b in itertools.islice(arrow_batches(spec, epoch=3), 5)]
    again = [b.tolist() for b in itertools.islice(arrow_batches(spec, epoch=3), 5)]
    other = [b.tolist() for b in itertools.islice(arrow_batches(spec, epoch=4), 5)]
    assert first == again and first != other


@pytest.mark.parametrize("name", ["arrow"] + (["petastorm"] if petastorm_available() else []))
def test_a_shard_that_fits_is_read_once_and_reshuffled_in_memory(name, uneven_files):
    from segmentation.train.feeders import Feeder

    per_rank = []
    for rank in range(2):
        spec = FeedSpec(uneven_files, rank, 2, 4, seed=3)
        feeder = Feeder(name, spec, cache_bytes=1 << 20)
        assert feeder.cached
        # one pass over an epoch's stream holds every row of the shard exactly once
        rows = len(feeder.rows)
        first = np.concatenate(list(itertools.islice(feeder.epoch(1), rows // 4)))[:, 0]
        assert len(set(first.tolist())) == len(first)
        assert [b.tolist() for b in itertools.islice(feeder.epoch(1), 6)] == [
            b.tolist() for b in itertools.islice(Feeder(name, spec, 1 << 20).epoch(1), 6)
        ]  # the same stream on another launch: a resumed run sees what an uninterrupted one would
        assert not np.array_equal(next(feeder.epoch(1)), next(feeder.epoch(2)))
        per_rank.append({float(v) for v in feeder.rows[:, 0]})
    assert not per_rank[0] & per_rank[1]
    assert len(per_rank[0] | per_rank[1]) == 21


def test_a_shard_over_the_cache_limit_is_streamed(uneven_files):
    from segmentation.train.feeders import Feeder

    spec = FeedSpec(uneven_files, 0, 1, 4, seed=3)
    feeder = Feeder("arrow", spec, cache_bytes=40)  # 21 rows x 3 floats need 252 bytes
    assert not feeder.cached
    batches = list(itertools.islice(feeder.epoch(1), 10))
    assert {float(v) for b in batches for v in b[:, 0]} == {
        float(v) for v in [*range(7), *range(100, 103), *range(200, 211)]
    }
    assert not Feeder("arrow", spec, cache_bytes=0).cached
