"""Exact lookup of 64-bit hashes from compiled loops: a small open-addressing table, built once from a key set
(the stopwords, the test split's n-grams) and probed for every token or window of the synthetic data.

numpy's `isin`/`searchsorted` sort or binary-search the ~57M probes (3-5 s each at 256k rows); a table this
small stays in cache and answers most probes with one read. Keys must already be well mixed (tokens.py's
hashes are), since the low bits pick the slot.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True)
def build(keys):
    """(slot keys, slot values): the value of a key is the position of its first occurrence in `keys`."""
    size = 16
    while size < 2 * len(keys):
        size *= 2
    slots = np.zeros(size, dtype=np.uint64)
    values = np.full(size, -1, dtype=np.int64)
    mask = np.uint64(size - 1)
    for i in range(len(keys)):
        k = keys[i]
        j = np.int64(k & mask)
        while values[j] != -1 and slots[j] != k:
            j = (j + 1) & (size - 1)
        if values[j] == -1:
            slots[j], values[j] = k, i
    return slots, values


@njit(cache=True, inline="always")
def find(slots, values, key):
    """The key's value, or -1 when the key is not in the table."""
    size = len(slots)
    j = np.int64(key & np.uint64(size - 1))
    while values[j] != -1:
        if slots[j] == key:
            return values[j]
        j = (j + 1) & (size - 1)
    return -1


@njit(cache=True)
def count_per_row(hashes, offsets, slots, values):
    """How many of each row's hashes are in the table."""
    n = len(offsets) - 1
    out = np.zeros(n, dtype=np.int64)
    for r in range(n):
        c = 0
        for j in range(offsets[r], offsets[r + 1]):
            if find(slots, values, hashes[j]) >= 0:
                c += 1
        out[r] = c
    return out


@njit(cache=True)
def first_per_row(hashes, offsets, slots, values, alive):
    """Per row: the value of its first hash found in the table, or -1 (also for rows not alive)."""
    n = len(offsets) - 1
    out = np.full(n, -1, dtype=np.int64)
    for r in range(n):
        if not alive[r]:
            continue
        for j in range(offsets[r], offsets[r + 1]):
            v = find(slots, values, hashes[j])
            if v >= 0:
                out[r] = v
                break
    return out
