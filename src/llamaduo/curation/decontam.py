"""Decontamination: find synthetic rows too close to any test row (its prompt or its reference answer).

Three tests, each field against each test field: equal after normalization; sharing at least one n-gram
(13 words by default, long enough that a shared one is copied text rather than a common phrase); MinHash
Jaccard of word shingles at or above a threshold (catches paraphrase-level copies the n-gram test misses).
"""

from __future__ import annotations

import numpy as np

from llamaduo.curation import hashindex
from llamaduo.curation.dedup import MinHashLSH
from llamaduo.curation.tokens import Tokens, tokenize


def find_leaks(fields: Tokens, shingles: Tokens, test: list[dict], p, *, alive: np.ndarray) -> dict[int, tuple[str, str]]:
    """{row index: (method, test row id)} for every alive row too close to a test row.

    `fields`: the rows' tokens, instruction and response of row i at 2i and 2i+1 (`tokenize(ins, res)`);
    `shingles`: their word shingles (`fields.windows(p.shingle_size, short=True)`)."""
    n = len(fields) // 2
    if not test or n == 0:
        return {}
    t_fields = tokenize([r["instruction"] for r in test], [r["response"] for r in test])
    test_ids = [r["id"] for r in test]  # test field k belongs to test row k // 2
    field_alive = np.repeat(alive, 2)
    leaks: dict[int, tuple[str, str]] = {}

    def hit(fields_hit, method, test_field):
        for f, tf in zip(fields_hit.tolist(), test_field.tolist()):
            leaks.setdefault(f // 2, (method, test_ids[tf // 2]))

    # 1. equal after normalization
    th = t_fields.text_hash()
    lookup = hashindex.build(np.where(t_fields.counts > 0, th, np.uint64(0)))
    nonempty = field_alive & (fields.counts > 0)
    first = hashindex.first_per_row(fields.text_hash(), np.arange(len(fields) + 1), *lookup, nonempty)
    f = np.flatnonzero(first >= 0)
    hit(f, "exact", first[f])

    # 2. a shared n-gram: every synthetic n-gram looked up among the test fields' n-grams
    tg = t_fields.windows(p.decontam_ngram, short=False)
    if len(tg.hashes):
        owner = np.repeat(np.arange(len(t_fields)), tg.counts)
        slots, values = hashindex.build(tg.hashes)
        g = fields.windows(p.decontam_ngram, short=False)
        first = hashindex.first_per_row(g.hashes, g.offsets, slots, values, field_alive)
        f = np.flatnonzero(first >= 0)
        hit(f, "ngram", owner[first[f]])

    # 3. MinHash Jaccard of word shingles with any test field
    if p.decontam_minhash_threshold is not None:
        lsh = MinHashLSH(num_perm=p.num_perm, threshold=p.decontam_minhash_threshold, seed=p.minhash_seed)
        q, t, _ = lsh.cross_candidates(shingles, t_fields.windows(p.shingle_size, short=True), consider=nonempty)
        hit(q, "minhash", t)
    return leaks
