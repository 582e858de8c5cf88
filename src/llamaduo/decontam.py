"""Decontamination: find synthetic rows too close to any test row (its prompt or its reference answer).

Three tests, each field against each test field: equal after normalization; sharing at least one n-gram
(13 words by default, long enough that a shared one is copied text rather than a common phrase); MinHash
Jaccard of word shingles at or above a threshold (catches paraphrase-level copies the n-gram test misses).
"""

from __future__ import annotations

import numpy as np

from llamaduo.dedup import MinHashLSH
from llamaduo.tokens import Tokens, tokenize


def _concat(a: Tokens, b: Tokens) -> Tokens:
    """Rows of a, then rows of b."""
    return Tokens(np.concatenate([a.hashes, b.hashes]), np.concatenate([a.offsets, b.offsets[1:] + a.offsets[-1]]))


def find_leaks(ins: Tokens, res: Tokens, test: list[dict], p, *, alive: np.ndarray) -> dict[int, tuple[str, str]]:
    """{row index: (method, test row id)} for every alive row too close to a test row."""
    n = len(ins)
    if not test or n == 0:
        return {}
    t_ins = tokenize([r["instruction"] for r in test])
    t_res = tokenize([r["response"] for r in test])
    test_ids = [r["id"] for r in test] * 2  # test fields: instructions, then responses
    t_fields = _concat(t_ins, t_res)
    fields = _concat(ins, res)  # row i's fields are i and n + i
    field_alive = np.concatenate([alive, alive])
    leaks: dict[int, tuple[str, str]] = {}

    def hit(field_idx, method, test_field):
        row = int(field_idx) % n
        if row not in leaks:
            leaks[row] = (method, test_ids[int(test_field)])

    # 1. equal after normalization
    th = t_fields.text_hash()
    lookup = {int(h): k for k, h in enumerate(th) if t_fields.counts[k] > 0}
    fh = fields.text_hash()
    for f in np.flatnonzero(field_alive & np.isin(fh, th) & (fields.counts > 0)):
        hit(f, "exact", lookup[int(fh[f])])

    # 2. a shared n-gram: sorted test n-grams, a binary search per synthetic n-gram
    tg = t_fields.windows(p.decontam_ngram, short=False)
    if len(tg.hashes):
        order = np.argsort(tg.hashes, kind="stable")
        sorted_h = tg.hashes[order]
        owner = np.repeat(np.arange(len(t_fields)), tg.counts)[order]
        g = fields.windows(p.decontam_ngram, short=False)
        pos = np.searchsorted(sorted_h, g.hashes)
        pos[pos == len(sorted_h)] = 0
        found = np.flatnonzero(sorted_h[pos] == g.hashes)
        if len(found):
            field_of = np.searchsorted(g.offsets, found, side="right") - 1
            for f, k in zip(field_of, found):
                if field_alive[f]:
                    hit(f, "ngram", owner[pos[k]])

    # 3. MinHash Jaccard of word shingles with any test field
    if p.decontam_minhash_threshold is not None:
        lsh = MinHashLSH(num_perm=p.num_perm, threshold=p.decontam_minhash_threshold, seed=p.minhash_seed)
        q, t, _ = lsh.cross_candidates(fields.windows(p.shingle_size, short=True),
                                       t_fields.windows(p.shingle_size, short=True),
                                       consider=field_alive & (fields.counts > 0))
        for f, tf in zip(q.tolist(), t.tolist()):
            hit(f, "minhash", tf)
    return leaks
