"""Arrow ↔ NumPy helpers shared by the Spark tasks, the training processes and the driver (no Spark,
no torch)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa


def list_column_matrix(column: pa.Array | pa.ChunkedArray, dtype: type = np.float32) -> np.ndarray:
    """A list<float|double> Arrow column of equal-length rows → a (rows, dim) matrix of `dtype`, without
    a Python loop over rows (zero-copy where the types allow)."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    rows = len(column)
    if rows == 0:
        return np.zeros((0, 0), dtype)
    values = column.flatten().to_numpy(zero_copy_only=False).astype(dtype, copy=False)
    return values.reshape(rows, -1)
