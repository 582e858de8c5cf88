"""Near-duplicate search: MinHash signatures (rensa), LSH candidate pairs, ROUGE-L (rapidfuzz's LCS) to confirm.

Why this split (measured on 256k rows, bench/curate.py):
- rensa computes the whole digest matrix from flat shingle hashes in one call (~3.5 s for 56M shingles,
  128 permutations); datasketch's per-row `MinHash` is the naive baseline in the bench.
- rensa's LSH finds which rows share a band with another row straight from that matrix
  (`query_duplicate_flags_matrix_one_shot`), but it returns candidate *keys* only for per-row `RMinHash`
  objects, which need a Python object per shingle. So rensa's flags pick the few rows that have any
  candidate, and only those rows' digests are banded again here to name the pairs.
- ROUGE-L F1 = 2 * LCS / (len a + len b) over the token sequences; rapidfuzz computes the LCS.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from datasketch.lsh import _false_negative_probability, _false_positive_probability
from rapidfuzz.distance import LCSseq
from rensa import RMinHash, RMinHashLSH

from llamaduo.tokens import Tokens

# pairs per band bucket: a bucket of b rows gives b*(b-1)/2 pairs; a row is compared with at most this many
# earlier members, the first ones of the bucket (the rows most likely to be kept)
MAX_EARLIER_PER_BUCKET = 64


def choose_bands(threshold: float, num_perm: int, fn_weight: float = 0.7) -> int:
    """Bands for an LSH at this Jaccard threshold; rensa needs a divisor of num_perm.

    Missing a duplicate costs more than checking one extra pair with ROUGE-L, hence fn_weight > 0.5."""
    best = None
    for b in (d for d in range(1, num_perm + 1) if num_perm % d == 0):
        r = num_perm // b
        err = (1 - fn_weight) * _false_positive_probability(threshold, b, r) + fn_weight * _false_negative_probability(threshold, b, r)
        if best is None or err < best[0]:
            best = (err, b)
    return best[1]


@dataclass(frozen=True)
class MinHashLSH:
    """MinHash LSH over flat shingle hashes: candidate pairs (i < j) whose Jaccard is likely >= threshold."""

    num_perm: int = 128
    threshold: float = 0.5
    seed: int = 0

    def digests(self, shingles: Tokens):
        return RMinHash.digest_matrix_from_flat_token_hashes(shingles.hashes, shingles.offsets.astype(np.uint64),
                                                             self.num_perm, self.seed)

    def signatures(self, shingles: Tokens, rows: np.ndarray) -> np.ndarray:
        """The digests of some rows as a numpy matrix (empty rows give the empty-set signature)."""
        sub = _take(shingles, rows)
        if len(rows) == 0:
            return np.zeros((0, self.num_perm), dtype=np.uint32)
        return np.asarray(self.digests(sub).to_rows(), dtype=np.uint32)

    def candidates(self, shingles: Tokens, *, consider: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Candidate pairs (i, j), i < j, as two index arrays (row i first).

        `consider` (bool per row) drops rows from the search up front (e.g. rows already dropped)."""
        n = len(shingles)
        rows = np.arange(n) if consider is None else np.flatnonzero(consider)
        empty = np.zeros(0, dtype=np.int64)
        if len(rows) < 2:
            return empty, empty
        sub = _take(shingles, rows)
        bands = choose_bands(self.threshold, self.num_perm)
        flags = RMinHashLSH(self.threshold, self.num_perm, bands).query_duplicate_flags_matrix_one_shot(self.digests(sub))
        flagged = rows[np.asarray(flags, dtype=bool)]
        if len(flagged) < 2:
            return empty, empty
        sig = self.signatures(shingles, flagged)
        r = self.num_perm // bands
        left, right = [], []
        for b in range(bands):
            band = np.ascontiguousarray(sig[:, b * r:(b + 1) * r]).view(np.dtype((np.void, 4 * r))).ravel()
            _, inverse, counts = np.unique(band, return_inverse=True, return_counts=True)
            idx = np.flatnonzero(counts[inverse] > 1)
            if not len(idx):
                continue
            order = idx[np.argsort(inverse[idx], kind="stable")]  # grouped by bucket, row order inside
            bucket = inverse[order]
            first = np.flatnonzero(np.concatenate([[True], bucket[1:] != bucket[:-1]]))
            group_start = np.repeat(first, np.diff(np.concatenate([first, [len(order)]])))
            pos = np.arange(len(order)) - group_start
            # each member is paired with the first members of its bucket (those most likely to be kept)
            for d in range(min(int(pos.max()), MAX_EARLIER_PER_BUCKET)):
                later = np.flatnonzero(pos > d)
                left.append(order[group_start[later] + d])
                right.append(order[later])
        if not left:
            return empty, empty
        pairs = np.unique(np.stack([np.concatenate(left), np.concatenate(right)], axis=1), axis=0)
        # a shared band is only a hint: keep the pairs whose estimated Jaccard reaches the threshold, so the
        # costlier confirmation (ROUGE-L) runs on few pairs
        close = jaccard_estimate(sig[pairs[:, 0]], sig[pairs[:, 1]]) >= self.threshold
        return flagged[pairs[close, 0]], flagged[pairs[close, 1]]

    def cross_candidates(self, queries: Tokens, index: Tokens, *, consider: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(query row, index row, estimated Jaccard) for every pair at or above the threshold.

        Meant for a small index (the test split). rensa flags a query when it has more than one candidate
        key, so each index row goes in twice: one shared band with any index row then flags the query, and
        queries never flag each other. Only flagged queries are compared with the index, slot by slot."""
        empty = np.zeros(0, dtype=np.int64)
        rows = np.flatnonzero(consider)
        if len(index) == 0 or len(rows) == 0:
            return empty, empty, np.zeros(0)
        bands = choose_bands(self.threshold, self.num_perm)
        lsh = RMinHashLSH(self.threshold, self.num_perm, bands)
        idx_digests = self.digests(index)
        lsh.insert_matrix(idx_digests, 0)
        lsh.insert_matrix(idx_digests, len(index))
        flags = np.asarray(lsh.query_duplicate_flags_matrix(self.digests(_take(queries, rows))), dtype=bool)
        flagged = rows[flags]
        if len(flagged) == 0:
            return empty, empty, np.zeros(0)
        q_sig = self.signatures(queries, flagged)
        i_sig = self.signatures(index, np.arange(len(index)))
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


def jaccard_estimate(sig_a: np.ndarray, sig_b: np.ndarray) -> np.ndarray:
    """Share of equal MinHash slots, row by row."""
    return (sig_a == sig_b).mean(axis=-1)
