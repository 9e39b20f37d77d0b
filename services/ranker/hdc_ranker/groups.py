"""Compiled grouping of equal rows: which rejected candidates share an explanation.

Rows are compared bit for bit (keys are converted to 64-bit patterns first), through an
open-addressing table keyed by a hash of the row; equal hashes are checked row against row,
so a collision never merges different keys. O(rows x width), no sort.
"""

from __future__ import annotations

import numpy as np
from numba import njit

_MUL = np.uint64(0x9E3779B97F4A7C15)


@njit(cache=True)
def _row_hash(keys, i):
    h = np.uint64(0x243F6A8885A308D3)
    for j in range(keys.shape[1]):
        h = (h ^ keys[i, j]) * _MUL
        h ^= h >> np.uint64(29)
    return h


@njit(cache=True)
def _same_row(keys, a, b):
    for j in range(keys.shape[1]):  # noqa: SIM110 - compiled by numba: a plain loop
        if keys[a, j] != keys[b, j]:
            return False
    return True


@njit(cache=True)
def distinct_rows(keys):
    """(first row of each distinct row, in order of appearance; distinct row of each row)."""
    n = keys.shape[0]
    size = 16
    while size < 2 * n:
        size *= 2
    mask = np.uint64(size - 1)
    slot = np.full(size, -1, np.int64)  # group id
    first = np.empty(n, np.int64)
    group = np.empty(n, np.int64)
    count = 0
    for i in range(n):
        s = _row_hash(keys, i) & mask
        while True:
            g = slot[s]
            if g < 0:
                slot[s] = count
                first[count] = i
                group[i] = count
                count += 1
                break
            if _same_row(keys, first[g], i):
                group[i] = g
                break
            s = (s + np.uint64(1)) & mask
    return first[:count], group


def group_rows(key: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """distinct_rows of any numeric key (1-D: one value per row; 2-D: one row each)."""
    k = np.asarray(key)
    if k.ndim == 1:
        k = k.reshape(-1, 1)
    if k.dtype.kind == "f":
        k = np.ascontiguousarray(k, dtype=np.float64) + 0.0  # -0.0 and 0.0 alike
        bits = k.view(np.uint64)
    else:
        bits = np.ascontiguousarray(k).astype(np.uint64)
    return distinct_rows(bits)
