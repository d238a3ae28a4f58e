"""Feeders: where a training process gets its batches from (torch-free, Spark-free).

A feeder is an endless iterator of float32 arrays of shape (batch, dim) holding this rank's share of the
feature table. Endless on purpose: the trainer takes the same number of steps on every rank, so ranks
with uneven shards cannot leave DDP waiting at the end of an epoch.

- `ArrowFeeder` reads the table's parquet files with pyarrow; the unit of sharding is a row group.
- `PetastormFeeder` reads them with petastorm's `make_batch_reader` (optional extra; needs pyarrow < 15).
With fewer row groups than ranks both fall back to every rank reading everything and keeping every
world_size-th row, so no rank is ever empty.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import urlparse

import numpy as np
import pyarrow.parquet as pq

log = logging.getLogger(__name__)

COLUMN = "features"


@dataclass(frozen=True)
class FeedSpec:
    files: tuple[str, ...]
    rank: int
    world_size: int
    batch_size: int
    seed: int


def petastorm_available() -> bool:
    try:
        import petastorm  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_feeder(name: str) -> str:
    """`auto` → petastorm when importable, else arrow."""
    if name == "auto":
        return "petastorm" if petastorm_available() else "arrow"
    return name


def open_feeder(name: str, spec: FeedSpec) -> Iterator[np.ndarray]:
    kind = resolve_feeder(name)
    if kind == "petastorm":
        return petastorm_batches(spec)
    return arrow_batches(spec)


def _local(path: str) -> str:
    parsed = urlparse(path)
    return parsed.path if parsed.scheme in ("file", "") else path


def _rebatch(chunks: Iterator[np.ndarray], batch_size: int) -> Iterator[np.ndarray]:
    """Fixed-size batches from variable-size chunks (the last partial batch of a pass carries over)."""
    pending: list[np.ndarray] = []
    held = 0
    for chunk in chunks:
        pending.append(chunk)
        held += len(chunk)
        while held >= batch_size:
            block = np.concatenate(pending)
            yield block[:batch_size]
            rest = block[batch_size:]
            pending, held = ([rest], len(rest)) if len(rest) else ([], 0)


def _to_matrix(column) -> np.ndarray:
    """A parquet list<float> column → (rows, dim) float32, without a Python loop over rows."""
    flat = column.combine_chunks() if hasattr(column, "combine_chunks") else column
    values = flat.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    rows = len(flat)
    return values.reshape(rows, -1) if rows else np.zeros((0, 0), np.float32)


def arrow_batches(spec: FeedSpec) -> Iterator[np.ndarray]:
    units = [(f, g) for f in spec.files for g in range(pq.ParquetFile(_local(f)).num_row_groups)]
    if not units:
        raise ValueError("the feature table has no data files")
    share_rows = len(units) < spec.world_size
    mine = units if share_rows else units[spec.rank :: spec.world_size]

    def chunks() -> Iterator[np.ndarray]:
        epoch = 0
        while True:
            rng = np.random.default_rng([spec.seed, spec.rank, epoch])
            for index in rng.permutation(len(mine)):
                path, group = mine[index]
                table = pq.ParquetFile(_local(path)).read_row_group(group, columns=[COLUMN])
                matrix = _to_matrix(table.column(COLUMN))
                if share_rows:
                    matrix = matrix[spec.rank :: spec.world_size]
                if len(matrix):
                    yield matrix[rng.permutation(len(matrix))]
            epoch += 1

    return _rebatch(chunks(), spec.batch_size)


def petastorm_batches(spec: FeedSpec) -> Iterator[np.ndarray]:
    # petastorm 0.12 uses pyarrow's legacy dataset API; its deprecation warnings say nothing to users.
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"petastorm(\..*)?")
    logging.getLogger("petastorm").setLevel(logging.WARNING)
    from petastorm import make_batch_reader

    urls = [f if urlparse(f).scheme else f"file://{f}" for f in spec.files]
    groups = sum(pq.ParquetFile(_local(f)).num_row_groups for f in spec.files)
    share_rows = groups < spec.world_size
    reader = make_batch_reader(
        urls,
        schema_fields=[COLUMN],
        num_epochs=None,  # endless: the trainer decides how many steps make an epoch
        cur_shard=None if share_rows else spec.rank,
        shard_count=None if share_rows else spec.world_size,
        shuffle_row_groups=True,
        seed=spec.seed,
        reader_pool_type="thread",
        workers_count=2,
    )

    def chunks() -> Iterator[np.ndarray]:
        with reader:
            for batch in reader:
                column = getattr(batch, COLUMN)
                matrix = np.stack(column).astype(np.float32) if len(column) else np.zeros((0, 0), np.float32)
                if share_rows:
                    matrix = matrix[spec.rank :: spec.world_size]
                if len(matrix):
                    yield matrix

    return _rebatch(chunks(), spec.batch_size)
