"""Decontamination: find synthetic rows too close to any test row (its prompt or its reference answer).

Three tests, each field against each test field: equal after normalization; sharing at least one n-gram
(13 words by default, long enough that a shared one is copied text rather than a common phrase); MinHash
Jaccard of word shingles at or above a threshold (catches paraphrase-level copies the n-gram test misses).
"""

from __future__ import annotations

import numpy as np

from llamaduo.curation import hashindex
from llamaduo.curation.dedup import MinHashLSH
from llamaduo.curation.pipeline import Batch, RowFilter
from llamaduo.curation.tokens import Tokens, tokenize


class Decontaminate(RowFilter):
    """The three tests as a filter. The test split is tokenized and indexed once, here; each batch is then looked up
    against it (a test split is small: every worker carries it whole). A row's reason names the first test it
    fails; `Batch.leaks` records the method and the test row for the report."""

    name = "decontaminate"
    reasons = ("test_contamination_exact", "test_contamination_ngram", "test_contamination_minhash")

    def __init__(self, p, test: list[dict]):
        self.p = p
        self.test_ids = [r["id"] for r in test]  # test field k belongs to test row k // 2
        fields = tokenize([r["instruction"] for r in test], [r["response"] for r in test])
        self.exact = hashindex.build(np.where(fields.counts > 0, fields.text_hash(), np.uint64(0)))
        grams = fields.windows(p.decontam_ngram, short=False)
        self.gram_owner = np.repeat(np.arange(len(fields)), grams.counts)
        self.grams = hashindex.build(grams.hashes) if len(grams.hashes) else None
        self.shingles = fields.windows(p.shingle_size, short=True)

    def leaks(self, fields: Tokens, shingles: Tokens | None, alive: np.ndarray) -> dict[int, tuple[str, str]]:
        """{row: (method, test row id)} for every alive row too close to a test row.

        `fields`: the rows' tokens, instruction and response of row i at 2i and 2i+1 (`tokenize(ins, res)`);
        `shingles`: their word shingles (`fields.windows(p.shingle_size, short=True)`; only the MinHash test
        reads them)."""
        if not self.test_ids or len(fields) == 0:
            return {}
        field_alive = np.repeat(alive, 2)
        found: dict[int, tuple[str, str]] = {}

        def hit(fields_hit, method, test_field):
            for f, tf in zip(fields_hit.tolist(), test_field.tolist()):
                found.setdefault(f // 2, (method, self.test_ids[tf // 2]))

        # 1. equal after normalization
        nonempty = field_alive & (fields.counts > 0)
        first = hashindex.first_per_row(fields.text_hash(), np.arange(len(fields) + 1), *self.exact, nonempty)
        f = np.flatnonzero(first >= 0)
        hit(f, "exact", first[f])

        # 2. a shared n-gram: every synthetic n-gram looked up among the test fields' n-grams
        if self.grams is not None:
            g = fields.windows(self.p.decontam_ngram, short=False)
            first = hashindex.first_per_row(g.hashes, g.offsets, *self.grams, field_alive)
            f = np.flatnonzero(first >= 0)
            hit(f, "ngram", self.gram_owner[first[f]])

        # 3. MinHash Jaccard of word shingles with any test field
        if self.p.decontam_minhash_threshold is not None:
            lsh = MinHashLSH(num_perm=self.p.num_perm, threshold=self.p.decontam_minhash_threshold, seed=self.p.minhash_seed)
            q, t, _ = lsh.cross_candidates(shingles, self.shingles, consider=nonempty)
            hit(q, "minhash", t)
        return found

    def filter(self, batch: Batch) -> np.ndarray:
        shingles = batch.shingles(self.p.shingle_size) if self.p.decontam_minhash_threshold is not None else None
        batch.leaks = self.leaks(batch.fields(), shingles, batch.kept())
        reason = np.full(len(batch), None, dtype=object)
        for i, (method, _) in batch.leaks.items():
            reason[i] = f"test_contamination_{method}"
        return reason
