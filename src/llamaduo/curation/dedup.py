"""Near-duplicate search: MinHash signatures (rensa), LSH candidate pairs, ROUGE-L (rapidfuzz's LCS) to confirm.

Why this split:
- rensa computes the whole digest matrix from flat shingle hashes in one call, not a Python call per row or per
  shingle (what datatrove's MinHash signature step does per document: bench/curate.py runs it beside ours).
- rensa's LSH can flag rows that share a band with another row, but it names the candidate *keys* only for
  per-row `RMinHash` objects (a Python object per row and shingle). So the banding that names the pairs is
  done here, on the digest matrix: one sort of band keys per band, pairs from each bucket's runs (compiled).
- ROUGE-L F1 = 2 * LCS / (len a + len b) over the token sequences; rapidfuzz computes the LCS.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import numpy as np
from numba import njit
from rapidfuzz.distance import LCSseq
from rensa import RMinHash, RMinHashLSH

from llamaduo.curation.tokens import Tokens

# pairs per band bucket: a bucket of b rows gives b*(b-1)/2 pairs; a row is compared with at most this many
# earlier members, the first ones of the bucket (the rows most likely to be kept)
MAX_EARLIER_PER_BUCKET = 64


def _collision_errors(threshold: float, b: int, r: int) -> tuple[float, float]:
    """(false positive, false negative) areas of the LSH S-curve 1 - (1 - s^r)^b around the threshold:
    the chance mass of pairs below the threshold that collide in a band, and above it that never do."""
    from scipy.integrate import quad

    fp, _ = quad(lambda s: 1 - (1 - s ** r) ** b, 0.0, threshold)
    fn, _ = quad(lambda s: (1 - s ** r) ** b, threshold, 1.0)
    return fp, fn


@cache
def choose_bands(threshold: float, num_perm: int, fn_weight: float = 0.7) -> int:
    """Bands for an LSH at this Jaccard threshold (weighing the S-curve's errors as datasketch does); rensa
    needs a divisor of num_perm, which datasketch's own choice need not be.

    Missing a duplicate costs more than checking one extra pair with ROUGE-L, hence fn_weight > 0.5."""
    best = None
    for b in (d for d in range(1, num_perm + 1) if num_perm % d == 0):
        fp, fn = _collision_errors(threshold, b, num_perm // b)
        err = (1 - fn_weight) * fp + fn_weight * fn
        if best is None or err < best[0]:
            best = (err, b)
    return best[1]


@njit(cache=True)
def band_keys(sig, band, rows_per_band):
    """One 64-bit key per row for this band's slots (equal slots, equal key)."""
    out = np.empty(sig.shape[0], dtype=np.uint64)
    for i in range(sig.shape[0]):
        h = np.uint64(band + 1)
        for c in range(band * rows_per_band, (band + 1) * rows_per_band):
            h = (h ^ np.uint64(sig[i, c])) * np.uint64(0x9E3779B97F4A7C15)
        out[i] = h ^ (h >> np.uint64(29))
    return out


@njit(cache=True)
def bucket_pairs(keys_sorted, order, max_earlier):
    """(earlier, later) row pairs within each run of equal keys; each member meets the run's first members."""
    m = len(keys_sorted)
    total = 0
    left = np.empty(0, dtype=np.int64)
    right = np.empty(0, dtype=np.int64)
    for write in (False, True):
        if write:
            left = np.empty(total, dtype=np.int64)
            right = np.empty(total, dtype=np.int64)
        t = 0
        s = 0
        while s < m:
            e = s + 1
            while e < m and keys_sorted[e] == keys_sorted[s]:
                e += 1
            for q in range(s + 1, e):
                for p in range(s, min(q, s + max_earlier)):
                    if write:
                        left[t], right[t] = order[p], order[q]
                    t += 1
            s = e
        total = t
    return left, right


@njit(cache=True)
def agreement(sig, a, b):
    """Share of equal MinHash slots of rows a[k] and b[k] (the Jaccard estimate), pair by pair."""
    out = np.empty(len(a), dtype=np.float64)
    for k in range(len(a)):
        same = 0
        for c in range(sig.shape[1]):
            same += sig[a[k], c] == sig[b[k], c]
        out[k] = same / sig.shape[1]
    return out


@dataclass(frozen=True)
class MinHashLSH:
    """MinHash LSH over flat shingle hashes: candidate pairs (i < j) whose Jaccard is likely >= threshold."""

    num_perm: int = 128
    threshold: float = 0.5
    seed: int = 0

    def digests(self, shingles: Tokens):
        return RMinHash.digest_matrix_from_flat_token_hashes(shingles.hashes, shingles.offsets.astype(np.uint64),
                                                             self.num_perm, self.seed)

    def signatures(self, shingles: Tokens, rows: np.ndarray | None = None) -> np.ndarray:
        """The digests of some rows (all by default) as a numpy matrix (empty rows: the empty-set signature)."""
        sub = shingles if rows is None else _take(shingles, rows)
        if len(sub) == 0:
            return np.zeros((0, self.num_perm), dtype=np.uint32)
        return np.asarray(self.digests(sub).to_rows(), dtype=np.uint32)

    def bands(self) -> int:
        return choose_bands(self.threshold, self.num_perm)

    def close_pairs(self, sig: np.ndarray, bands: range | None = None) -> np.ndarray:
        """Pairs (i, j), i < j, of the rows of `sig` that share a bucket in one of `bands` (all by default) and whose
        estimated Jaccard reaches the threshold, each once, as codes j * len(sig) + i in ascending order: sorted
        by the later row, then the earlier. The union over any split of the bands is the whole set (a pair's
        agreement is its own), so slices of the bands can be searched apart and merged with np.union1d."""
        n, nb = len(sig), self.bands()
        r = self.num_perm // nb
        codes = [np.zeros(0, dtype=np.int64)]
        for b in range(nb) if bands is None else bands:
            keys = band_keys(sig, b, r)
            order = np.argsort(keys, kind="stable")  # stable: row order inside a bucket
            a, c = bucket_pairs(keys[order], order, MAX_EARLIER_PER_BUCKET)
            # a shared band is only a hint: keep the pairs whose estimated Jaccard reaches the threshold, so the
            # costlier confirmation (ROUGE-L) runs on few pairs (filtered per band: the pair lists stay short)
            close = agreement(sig, a, c) >= self.threshold
            codes.append(c[close] * n + a[close])
        # each pair once (np.unique's hashing path measured ~10x slower than a plain sort here)
        code = np.sort(np.concatenate(codes))
        return code[np.concatenate([[True], code[1:] != code[:-1]])] if len(code) else code

    def candidates(self, shingles: Tokens, *, consider: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Candidate pairs (i, j), i < j, as two index arrays sorted by (j, i): all of a row's earlier candidates
        come before it is itself a candidate for a later row.

        `consider` (bool per row) drops rows from the search up front (e.g. rows already dropped)."""
        rows = np.arange(len(shingles)) if consider is None else np.flatnonzero(consider)
        if len(rows) < 2:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
        code = self.close_pairs(np.ascontiguousarray(self.signatures(shingles)[rows]))
        return rows[code % len(rows)], rows[code // len(rows)]

    def cross_candidates(self, queries: Tokens, index: Tokens, *, consider: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(query row, index row, estimated Jaccard) for every pair at or above the threshold.

        Meant for a small index (the test split). rensa flags a query when it has more than one candidate
        key, so each index row goes in twice: one shared band with any index row then flags the query, and
        queries never flag each other. Only flagged queries are compared with the index, slot by slot."""
        empty = np.zeros(0, dtype=np.int64)
        if len(index) == 0 or not consider.any():
            return empty, empty, np.zeros(0)
        lsh = RMinHashLSH(self.threshold, self.num_perm, self.bands())
        idx_digests = self.digests(index)
        lsh.insert_matrix(idx_digests, 0)
        lsh.insert_matrix(idx_digests, len(index))
        flags = np.asarray(lsh.query_duplicate_flags_matrix(self.digests(queries)), dtype=bool)
        flagged = np.flatnonzero(flags & consider)
        if len(flagged) == 0:
            return empty, empty, np.zeros(0)
        q_sig = self.signatures(queries, flagged)
        i_sig = self.signatures(index)
        sim = (q_sig[:, None, :] == i_sig[None, :, :]).mean(axis=-1)
        qi, ii = np.nonzero(sim >= self.threshold)
        return flagged[qi], ii, sim[qi, ii]


def _take(t: Tokens, rows: np.ndarray) -> Tokens:
    counts = t.counts[rows]
    offs = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    local = np.arange(offs[-1]) - np.repeat(offs[:-1], counts)
    return Tokens(t.hashes[np.repeat(t.offsets[rows], counts) + local], offs)


def rouge_l(a, b) -> float:
    """ROUGE-L F1 of two token sequences (any hashable items), via rapidfuzz's LCS."""
    if len(a) == 0 or len(b) == 0:
        return 0.0
    return 2.0 * LCSseq.similarity(a, b) / (len(a) + len(b))

