"""Word tokens of many texts at once, as 64-bit hashes in flat numpy arrays (no Python object per token).

Curation works on 256k rows of ~1,300 characters each (paper scale, Section 4.2): per-token Python code
(`re.findall`, a vocabulary dict) measured ~35 s each for that here, so tokenizing, n-gram hashing and
shingling are done on the UTF-8 bytes with numpy instead.

The tokenizer: a token is a maximal run of ASCII letters, digits, `_` or non-ASCII characters; ASCII is
case-folded; ASCII punctuation and the Unicode general punctuation block (curly quotes, dashes, ellipsis)
separate tokens. `normalize()` gives the same tokens joined by one space, for display and tests.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

_P = np.uint64(0x100000001B3)  # odd multiplier of the polynomial hash (invertible mod 2^64)
_P_INV = np.uint64(pow(0x100000001B3, -1, 1 << 64))
_CHUNK = 1 << 22  # bytes hashed per numpy pass: bounds the temporaries

_WORD = np.zeros(256, dtype=bool)
for _c in b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_":
    _WORD[_c] = True
_WORD[0x80:] = True
_LOWER = np.arange(256, dtype=np.uint8)
_LOWER[ord("A"):ord("Z") + 1] += 32


def mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finalizer: spreads polynomial hashes over all 64 bits (MinHash permutations need that)."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


_POW_CACHE: dict[int, np.ndarray] = {}


def _powers(n: int, base: np.uint64) -> np.ndarray:
    """base^0 .. base^(n-1) mod 2^64, cached (grown on demand) since every tokenize call needs them."""
    key = int(base)
    have = _POW_CACHE.get(key)
    if have is None or len(have) < n:
        out = np.full(max(n, 1024), base, dtype=np.uint64)
        out[0] = 1
        with np.errstate(over="ignore"):
            have = _POW_CACHE[key] = np.cumprod(out, dtype=np.uint64)  # wraps mod 2^64, as intended
    return have


@dataclass
class Tokens:
    """Token hashes of n texts: text i has hashes[offsets[i]:offsets[i+1]]."""

    hashes: np.ndarray  # uint64
    offsets: np.ndarray  # int64, len n+1

    @property
    def counts(self) -> np.ndarray:
        return np.diff(self.offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def row(self, i: int) -> np.ndarray:
        return self.hashes[self.offsets[i]:self.offsets[i + 1]]

    def text_hash(self) -> np.ndarray:
        """One order-sensitive hash per text (0 for an empty one): equal token sequences, equal hash."""
        n = len(self)
        counts = self.counts
        pos = np.arange(len(self.hashes), dtype=np.uint64) - np.repeat(self.offsets[:-1], counts).astype(np.uint64)
        with np.errstate(over="ignore"):
            per_tok = mix64(self.hashes ^ mix64(pos + np.uint64(1)))
        out = np.zeros(n, dtype=np.uint64)
        return _segment_sum(per_tok, self.offsets, out)

    def windows(self, k: int, *, short: bool) -> "Tokens":
        """Hashes of every k-token window of each text (word shingles / n-grams).

        `short=True` gives a text with fewer than k tokens (but at least one) one window of all its tokens,
        so short texts still get a MinHash; `short=False` gives them none (an n-gram test needs n tokens)."""
        counts = self.counts
        m = max(len(self.hashes) - k + 1, 0)
        h = np.zeros(m, dtype=np.uint64)
        with np.errstate(over="ignore"):
            for j in range(k):
                h = h * _P + self.hashes[j:j + m]
        n_full = np.maximum(counts - k + 1, 0)
        few = np.flatnonzero((counts > 0) & (counts < k)) if short else np.zeros(0, dtype=np.int64)
        n_win = n_full.copy()
        n_win[few] = 1
        offs = np.concatenate([[0], np.cumsum(n_win)]).astype(np.int64)
        out = np.empty(offs[-1], dtype=np.uint64)
        # window j of text i starts at token offsets[i] + j and lands at offs[i] + j
        local = np.arange(n_full.sum()) - np.repeat(np.cumsum(n_full) - n_full, n_full)
        out[np.repeat(offs[:-1], n_full) + local] = h[np.repeat(self.offsets[:-1], n_full) + local]
        for i in few:  # rare in real data (rows this short usually fail the length rules)
            v = np.uint64(0)
            with np.errstate(over="ignore"):
                for t in self.row(i):
                    v = v * _P + t
            out[offs[i]] = v
        with np.errstate(over="ignore"):
            return Tokens(mix64(out), offs)


def _segment_sum(values: np.ndarray, offsets: np.ndarray, out: np.ndarray) -> np.ndarray:
    nonempty = np.flatnonzero(np.diff(offsets) > 0)
    if len(nonempty):
        with np.errstate(over="ignore"):
            out[nonempty] = np.add.reduceat(values, offsets[nonempty])
    return out


def tokenize(texts) -> Tokens:
    """Token hashes of every text (a list of str or a pyarrow string array)."""
    arr = texts if isinstance(texts, (pa.Array, pa.ChunkedArray)) else pa.array(texts, type=pa.large_string())
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    arr = arr.cast(pa.large_string())
    n = len(arr)
    if arr.null_count:
        raise ValueError("tokenize: texts contain nulls")
    _, off_buf, data_buf = arr.buffers()
    offsets = np.frombuffer(off_buf, dtype=np.int64)[arr.offset:arr.offset + n + 1]
    base = int(offsets[0])
    data = np.frombuffer(data_buf, dtype=np.uint8)[base:int(offsets[-1])] if data_buf is not None else np.zeros(0, np.uint8)
    offsets = offsets - base
    word = _WORD[data]
    # U+2000..U+207F (E2 80 xx, E2 81 xx): dashes, curly quotes, ellipsis -> separators, not word characters
    if len(data) >= 3:
        lead = np.flatnonzero((data[:-2] == 0xE2) & ((data[1:-1] == 0x80) | (data[1:-1] == 0x81)))
        for d in range(3):
            word[lead + d] = False
    row_start = np.zeros(len(data) + 1, dtype=bool)
    row_start[offsets] = True
    prev = np.concatenate([[False], word[:-1]]) & ~row_start[:-1]
    nxt = np.concatenate([word[1:], [False]]) & ~row_start[1:]
    starts = np.flatnonzero(word & ~prev)
    ends = np.flatnonzero(word & ~nxt) + 1
    hashes = np.empty(len(starts), dtype=np.uint64)
    x_all = _LOWER[data]
    # polynomial hash of each token's bytes, chunk by chunk: sum over the token of (byte+1) * P^pos, then
    # shifted to the token's own start by P^-start
    t0 = 0
    while t0 < len(starts):
        lo = starts[t0]
        t1 = int(np.searchsorted(starts, lo + _CHUNK, side="left"))
        t1 = max(t1, t0 + 1)
        hi = ends[t1 - 1]
        size = hi - lo
        pw, ipw = _powers(size, _P), _powers(size, _P_INV)
        x = np.where(word[lo:hi], x_all[lo:hi].astype(np.uint64) + np.uint64(1), np.uint64(0))
        with np.errstate(over="ignore"):
            x *= pw[:size]
            seg = np.add.reduceat(x, starts[t0:t1] - lo)
            hashes[t0:t1] = mix64(seg * ipw[starts[t0:t1] - lo])
        t0 = t1
    tok_offsets = np.searchsorted(starts, offsets, side="left").astype(np.int64)
    return Tokens(hashes, tok_offsets)


def normalize(text: str) -> str:
    """The text as this tokenizer sees it: its tokens joined by one space (case, punctuation, spacing folded)."""
    data = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)
    word = _WORD[data].copy()
    if len(data) >= 3:
        lead = np.flatnonzero((data[:-2] == 0xE2) & ((data[1:-1] == 0x80) | (data[1:-1] == 0x81)))
        for d in range(3):
            word[lead + d] = False
    out = np.where(word, _LOWER[data], ord(" ")).astype(np.uint8).tobytes().decode("utf-8")
    return " ".join(out.split())
