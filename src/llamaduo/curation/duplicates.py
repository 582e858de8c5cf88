"""The duplicate steps: a row is dropped when it repeats a train row or a row kept before it, so the first row of a
duplicate set is kept (earlier cycles win), a set is never dropped whole, and adding rows at the end never changes
the decision on an earlier row (synthesis relies on that to count curated pairs incrementally).

- `Fingerprint` (per row): what the two steps compare, the exact key and the MinHash signature.
- `ExactDuplicates` (in order): equal normalized instruction and response.
- `NearDuplicates`: the LSH buckets over the signatures (a share of the bands per rank), ROUGE-L of a candidate
  pair (a function of the pair alone), and the keep-first walk over the close pairs in order, the one part that
  depends on order.

Each order-dependent step holds only what its decision needs: the first row of each exact key (16 bytes a key),
and which rows the walk has dropped (a byte a row). Rows, tokens and signatures stay with the executor.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from llamaduo.curation.dedup import MinHashLSH, rouge_l
from llamaduo.curation.pipeline import Batch, Codes, Notes, PipelineStep


class Fingerprint(PipelineStep):
    """Batches in, the same batches out with each row's `key` (its instruction's and response's normalized text
    hashes, combined) and, with `near_dedup`, its `sig` (the MinHash signature of the pair's word shingles: its
    instruction's and its response's, no shingle spanning the two)."""

    name = "fingerprint"

    def __init__(self, p):
        self.p = p
        self.lsh = MinHashLSH(num_perm=p.num_perm, threshold=p.lsh_threshold, seed=p.minhash_seed)

    def run(self, data: Iterable[Batch], rank: int = 0, world_size: int = 1) -> Iterator[Batch]:
        for batch in data:
            th = batch.fields().text_hash()
            with np.errstate(over="ignore"):
                batch.key = th[0::2] * np.uint64(3) + th[1::2]
            if self.p.near_dedup:
                batch.sig = self.lsh.signatures(batch.shingles(self.p.shingle_size).pairs())
            yield batch


class ExactDuplicates(PipelineStep):
    """Batches in order in, the same batches out: a kept row whose key equals a train row's or an earlier kept row's
    is dropped, naming the first row that had the key. State: the first row of each key seen, as two sorted arrays
    (not a dict: 16 bytes a key, not ~100)."""

    name = "exact_duplicates"
    reasons = ("exact_duplicate", "exact_duplicate_train")

    def __init__(self, train_keys: np.ndarray, notes: Notes):
        self.n_train = len(train_keys)
        self.keys, first = np.unique(train_keys, return_index=True)  # the first train row of each key
        self.first = first.astype(np.int64)
        self.notes = notes

    def run(self, data: Iterable[Batch], rank: int = 0, world_size: int = 1) -> Iterator[Batch]:
        for batch in data:
            self._decide(batch)
            yield batch

    def _decide(self, batch: Batch) -> None:
        alive = np.flatnonzero(batch.kept())
        key = batch.key[alive]
        place = batch.start + alive
        matched = np.full(len(key), -1, dtype=np.int64)
        if len(self.keys):
            pos = np.minimum(np.searchsorted(self.keys, key), len(self.keys) - 1)
            seen = self.keys[pos] == key
            matched[seen] = self.first[pos[seen]]
        new = matched < 0
        # among the keys not seen before, the first row of each in this batch is kept, the others match it
        keys, at, inverse = np.unique(key[new], return_index=True, return_inverse=True)
        firsts = place[new][at]
        matched[new] = np.where(firsts[inverse] == place[new], -1, firsts[inverse])
        for i in np.flatnonzero(matched >= 0).tolist():
            reason = "exact_duplicate_train" if matched[i] < self.n_train else "exact_duplicate"
            batch.reason[alive[i]] = reason
            self.notes.add(reason, int(place[i]) - self.n_train, "same normalized text as ", int(matched[i]))
        at = np.searchsorted(self.keys, keys)
        self.keys, self.first = np.insert(self.keys, at, keys), np.insert(self.first, at, firsts)


@dataclass
class Pairs:
    """Close pairs (earlier[k], later[k]) in the walk's order (by the later row, then the earlier), and their scores:
    `score(k)` gives (ROUGE-L of the pair, of their responses), computed on demand or looked up."""

    earlier: np.ndarray
    later: np.ndarray
    score: Callable[[int], tuple[float, float]]

    @classmethod
    def scored(cls, code: np.ndarray, n_rows: int, score: np.ndarray, answers: np.ndarray) -> Pairs:
        """Pairs scored elsewhere: their codes (later * n_rows + earlier) and each one's two scores."""
        return cls(code % n_rows, code // n_rows, lambda k: (score[k], answers[k]))


class NearDuplicates(PipelineStep):
    """Near duplicates among the rows still kept after the exact step (`considered`, with every train row).

    The parts, as datatrove's MinHash dedup splits them: `buckets` (the LSH: rows sharing a band bucket, kept when
    their estimated Jaccard reaches `lsh_threshold`; rank r of world_size searches a share of the bands),
    `score` (ROUGE-L of one pair: a function of the pair alone, computed anywhere), and `run`, the walk over the
    close pairs in order: a later row is dropped when its pair with a kept row (train, or a synthetic row the walk
    has not dropped) scores `rouge_l_threshold` or more and their responses `min_response_rouge_l` or more. A
    long shared passage carries the pair's score; two different questions on it, with different answers, are
    two examples (human closed-QA rows' answers share <= 0.19). The walk's state is which synthetic rows it has
    dropped: `reason`, a byte per row, its verdict when done."""

    name = "near_duplicates"
    reasons = ("near_duplicate", "near_duplicate_train")

    def __init__(self, p, *, n_train: int, n: int, codes: Codes, notes: Notes):
        self.p, self.n_train, self.notes = p, n_train, notes
        self.n_rows = n_train + n  # codes of a pair: later * n_rows + earlier, over every row's place
        self.lsh = MinHashLSH(num_perm=p.num_perm, threshold=p.lsh_threshold, seed=p.minhash_seed)
        self.reason = np.zeros(n, dtype=np.uint8)
        self.code = {r: codes.code(r) for r in self.reasons}

    def buckets(self, sig: np.ndarray, rows: np.ndarray, rank: int = 0, world_size: int = 1) -> np.ndarray:
        """Codes of the close pairs among the considered rows (`rows`: their places, ascending; `sig`: their
        signatures) found in this rank's share of the bands, ascending; pairs of two train rows left out (the walk
        never drops a train row)."""
        if len(rows) < 2:
            return np.zeros(0, dtype=np.int64)
        share = np.array_split(np.arange(self.lsh.bands()), world_size)[rank]
        code = self.lsh.close_pairs(sig, range(int(share[0]), int(share[-1]) + 1) if len(share) else range(0))
        later, earlier = rows[code // len(rows)], rows[code % len(rows)]
        return (later * self.n_rows + earlier)[later >= self.n_train]

    def score(self, a: np.ndarray, a_split: int, b: np.ndarray, b_split: int) -> tuple[float, float]:
        """(ROUGE-L of two rows' tokens, instruction then response; of their responses, NaN when the pair's is below
        `rouge_l_threshold` and the walk never reads it). `a_split`: where a's response starts."""
        pair = rouge_l(a.tolist(), b.tolist())
        if pair < self.p.rouge_l_threshold:
            return pair, float("nan")
        return pair, rouge_l(a[a_split:].tolist(), b[b_split:].tolist())

    def confirms(self, score: float, answers: float) -> bool:
        """Whether a pair with these scores makes its later row a duplicate of the earlier one."""
        return score >= self.p.rouge_l_threshold and (self.p.min_response_rouge_l is None or answers >= self.p.min_response_rouge_l)

    def run(self, data: Iterable[Pairs], rank: int = 0, world_size: int = 1) -> Iterator[Pairs]:
        """Chunks of close pairs in the walk's order in (all of them, one after the other; or only those that confirm,
        since no other pair drops a row), the same chunks out, each pair's later row dropped where the pair confirms
        with a kept row."""
        for pairs in data:
            self._walk(pairs)
            yield pairs

    def _walk(self, pairs: Pairs) -> None:
        n_train, reason = self.n_train, self.reason
        for k, (x, y) in enumerate(zip(pairs.earlier.tolist(), pairs.later.tolist())):
            j = y - n_train
            if j < 0 or reason[j] or (x >= n_train and reason[x - n_train]):
                continue  # two train rows, or a row already dropped: only a kept row (or train) drops a later one
            score, answers = pairs.score(k)
            if self.confirms(score, answers):
                why = "near_duplicate_train" if x < n_train else "near_duplicate"
                reason[j] = self.code[why]
                self.notes.add(why, j, f"ROUGE-L {score:.2f} (responses {answers:.2f}) with ", x)
