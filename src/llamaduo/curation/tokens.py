"""Word tokens of many texts at once, as 64-bit hashes in flat numpy arrays (no Python object per token).

Curation works on 256k rows of ~1,300 characters each (paper scale, Section 4.2). Per-token Python
(`re.findall`, a vocabulary dict) measured ~35 s each for that here, vectorized numpy over the UTF-8 bytes
~14 s (it needs a dozen full passes of 64-bit temporaries), pyarrow's regex split ~12 s; one compiled
pass (numba) ~2.5 s, and ~0.5 s per 50M n-gram windows, so tokenizing, n-gram hashing and text hashes
are numba kernels over the bytes and the token hashes (bench/curate.py).

The tokenizer: a token is a maximal run of ASCII letters, digits, `_` or non-ASCII characters; ASCII is
case-folded; ASCII punctuation and the Unicode general punctuation block (U+2000..U+207F: curly quotes,
dashes, ellipsis) separate tokens. `normalize()` gives the same tokens joined by one space.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
from numba import njit

_P = np.uint64(0x100000001B3)  # odd multiplier of the polynomial hashes (tokens' bytes, windows' tokens)

_WORD = np.zeros(256, dtype=np.bool_)
for _c in b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_":
    _WORD[_c] = True
_WORD[0x80:] = True
_LOWER = np.arange(256, dtype=np.uint8)
_LOWER[ord("A"):ord("Z") + 1] += 32


@njit(cache=True, inline="always")
def _mix(x):
    """splitmix64 finalizer: spreads polynomial hashes over all 64 bits (MinHash permutations need that)."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


@njit(cache=True)
def _scan(data, i, end, word, lower, out, t, write):
    """Hash the tokens of data[i:end] into out[t:] (when `write`); returns t plus the number of tokens."""
    in_tok = False
    h = np.uint64(0)
    while i < end:
        b = data[i]
        # U+2000..U+207F (E2 80 xx, E2 81 xx) separates, like ASCII punctuation
        if b == 0xE2 and i + 2 < end and (data[i + 1] == 0x80 or data[i + 1] == 0x81):
            step, is_word = 3, False
        else:
            step, is_word = 1, word[b]
        if is_word:
            if not in_tok:
                in_tok, h = True, np.uint64(0)
            h = h * _P + np.uint64(lower[b]) + np.uint64(1)
        elif in_tok:
            if write:
                out[t] = _mix(h)
            t += 1
            in_tok = False
        i += step
    if in_tok:
        if write:
            out[t] = _mix(h)
        t += 1
    return t


@njit(cache=True)
def _tokenize(data_a, off_a, data_b, off_b, columns, word, lower):
    """(token hashes, token offsets) of texts a[0], b[0], a[1], b[1], ... (or a[0], a[1], ... for one column).

    Two passes, count then hash, so the one big array is allocated once at its exact size."""
    n = len(off_a) - 1
    tok_offsets = np.zeros(n * columns + 1, dtype=np.int64)
    hashes = np.empty(0, dtype=np.uint64)
    for write in (False, True):
        if write:
            hashes = np.empty(tok_offsets[-1], dtype=np.uint64)
        t = 0
        for r in range(n):
            for c in range(columns):
                if c == 0:
                    t = _scan(data_a, off_a[r], off_a[r + 1], word, lower, hashes, t, write)
                else:
                    t = _scan(data_b, off_b[r], off_b[r + 1], word, lower, hashes, t, write)
                tok_offsets[r * columns + c + 1] = t
    return hashes, tok_offsets


@njit(cache=True)
def _windows(hashes, offsets, k, short):
    """Hashes of every k-token window per text (rolling polynomial hash), and their offsets."""
    n = len(offsets) - 1
    out_offsets = np.zeros(n + 1, dtype=np.int64)
    for r in range(n):
        c = offsets[r + 1] - offsets[r]
        w = c - k + 1 if c >= k else (1 if short and c > 0 else 0)
        out_offsets[r + 1] = out_offsets[r] + w
    out = np.empty(out_offsets[n], dtype=np.uint64)
    top = np.uint64(1)  # P^(k-1): the weight of the token leaving the window
    for _ in range(k - 1):
        top = top * _P
    for r in range(n):
        s, e, o = offsets[r], offsets[r + 1], out_offsets[r]
        if out_offsets[r + 1] == o:
            continue
        h = np.uint64(0)
        for j in range(s, min(s + k, e)):  # the first window (a short text's only one: all its tokens)
            h = h * _P + hashes[j]
        out[o] = _mix(h)
        for j in range(s + k, e):
            h = (h - hashes[j - k] * top) * _P + hashes[j]
            o += 1
            out[o] = _mix(h)
    return out, out_offsets


@njit(cache=True)
def _text_hashes(hashes, offsets):
    """One order-sensitive hash per text; 0 for an empty text."""
    n = len(offsets) - 1
    out = np.zeros(n, dtype=np.uint64)
    for r in range(n):
        h = np.uint64(0)
        for j in range(offsets[r], offsets[r + 1]):
            h = h + _mix(hashes[j] ^ _mix(np.uint64(j - offsets[r] + 1)))
        out[r] = h
    return out


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

    def pair(self, i: int) -> tuple[np.ndarray, int]:
        """Pair i of a `tokenize(instructions, responses)`: its instruction's and response's tokens together, and
        where the response starts among them."""
        start = self.offsets[2 * i]
        return self.hashes[start:self.offsets[2 * i + 2]], int(self.offsets[2 * i + 1] - start)

    def text_hash(self) -> np.ndarray:
        """One order-sensitive hash per text (0 for an empty one): equal token sequences, equal hash."""
        return _text_hashes(self.hashes, self.offsets)

    def slice(self, start: int, stop: int | None = None) -> Tokens:
        """Rows start..stop-1 (the hashes are a view; the offsets are rebased to 0)."""
        offs = self.offsets[start:(len(self) if stop is None else stop) + 1]
        return Tokens(self.hashes[offs[0]:offs[-1]], offs - offs[0])

    def pairs(self) -> Tokens:
        """Rows 2i and 2i+1 joined into row i (a view: the hashes are shared)."""
        if len(self) % 2:
            raise ValueError("pairs: odd number of rows")
        return Tokens(self.hashes, np.ascontiguousarray(self.offsets[::2]))

    def windows(self, k: int, *, short: bool) -> Tokens:
        """Hashes of every k-token window of each text (word shingles / n-grams).

        `short=True` gives a text with fewer than k tokens (but at least one) one window of all its tokens,
        so short texts still get a MinHash; `short=False` gives them none (an n-gram test needs n tokens)."""
        return Tokens(*_windows(self.hashes, self.offsets, k, short))


def utf8_buffers(texts) -> tuple[np.ndarray, np.ndarray]:
    """(UTF-8 bytes, offsets of each text) of a list of str or a pyarrow string array, zero-copy from Arrow."""
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
    return data, offsets - base


def tokenize(texts, paired=None) -> Tokens:
    """Token hashes of every text (a list of str or a pyarrow string array).

    With `paired` (as many texts again), row 2i is texts[i] and row 2i+1 is paired[i]: the instruction and
    response of pair i sit side by side, so `pairs()` gives each pair's tokens without a copy."""
    data, offsets = utf8_buffers(texts)
    if paired is None:
        return Tokens(*_tokenize(data, offsets, data, offsets, 1, _WORD, _LOWER))
    data_b, offsets_b = utf8_buffers(paired)
    if len(offsets_b) != len(offsets):
        raise ValueError(f"tokenize: {len(offsets) - 1} texts but {len(offsets_b) - 1} paired texts")
    return Tokens(*_tokenize(data, offsets, data_b, offsets_b, 2, _WORD, _LOWER))


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
