"""Curation of synthetic pairs: quality rules, decontamination against test, exact and near duplicates.

Rows are taken in (cycle, position) order and each is judged only against train and the rows kept before
it, so earlier cycles win a duplicate set, a set is never dropped whole, and adding rows at the end never
changes the decision on an earlier row (synthesis relies on that to count curated pairs incrementally).
Each row is dropped for the first check it fails, in this order: quality rules (quality.py), test
contamination (decontam.py), exact duplicate, near duplicate (dedup.py).
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from llamaduo import quality
from llamaduo.decontam import find_leaks
from llamaduo.dedup import MinHashLSH, rouge_l
from llamaduo.tokens import Tokens, normalize, tokenize  # noqa: F401  (normalize: part of this module's API)


def _interleave(a: Tokens, b: Tokens) -> Tokens:
    """Per row, a's tokens then b's (instruction followed by response)."""
    ca, cb = a.counts, b.counts
    offs = np.concatenate([[0], np.cumsum(ca + cb)]).astype(np.int64)
    out = np.empty(offs[-1], dtype=np.uint64)
    la = np.arange(ca.sum()) - np.repeat(np.cumsum(ca) - ca, ca)
    out[np.repeat(offs[:-1], ca) + la] = a.hashes
    lb = np.arange(cb.sum()) - np.repeat(np.cumsum(cb) - cb, cb)
    out[np.repeat(offs[:-1] + ca, cb) + lb] = b.hashes
    return Tokens(out, offs)


def _pair_tokens(rows: list[dict]) -> tuple[Tokens, Tokens]:
    return tokenize([r["instruction"] for r in rows]), tokenize([r["response"] for r in rows])


def curate(raw: list[dict], *, train: list[dict], test: list[dict], p) -> tuple[list[dict], list[dict], dict]:
    """(kept rows, dropped rows with `reason`, counts). The first of a duplicate set is kept, never both dropped."""
    order = sorted(range(len(raw)), key=lambda i: raw[i]["cycle"])  # stable: position breaks ties
    rows = [raw[i] for i in order]
    n = len(rows)
    ins, res = _pair_tokens(rows)
    reason = quality.check(rows, ins, res, p)
    decontaminated = []

    if p.decontaminate and test:
        leaks = find_leaks(ins, res, test, p, alive=reason == None)  # noqa: E711
        for i in sorted(leaks):
            method, test_id = leaks[i]
            reason[i] = f"test_contamination_{method}"
            decontaminated.append({"id": rows[i]["id"], "test_id": test_id, "method": method})

    # exact duplicates: equal normalized (instruction, response) to a train row or an earlier kept row
    tr_ins, tr_res = _pair_tokens(train)
    with np.errstate(over="ignore"):
        key = ins.text_hash() * np.uint64(3) + res.text_hash()
        train_keys = set((tr_ins.text_hash() * np.uint64(3) + tr_res.text_hash()).tolist())
    seen = set(train_keys)
    for i in range(n):
        if reason[i] is None:
            k = int(key[i])
            if k in seen:
                reason[i] = "exact_duplicate_train" if k in train_keys else "exact_duplicate"
            seen.add(k)

    # near duplicates: LSH candidates over train + rows, confirmed by ROUGE-L against a train or kept row
    if p.near_dedup and n:
        docs = _interleave(*_pair_tokens(train)) if train else Tokens(np.zeros(0, np.uint64), np.zeros(1, np.int64))
        n_train = len(docs)
        both = _interleave(ins, res)
        allt = Tokens(np.concatenate([docs.hashes, both.hashes]), np.concatenate([docs.offsets, both.offsets[1:] + docs.offsets[-1]]))
        alive = np.concatenate([np.ones(n_train, dtype=bool), reason == None])  # noqa: E711
        lsh = MinHashLSH(num_perm=p.num_perm, threshold=p.lsh_threshold, seed=p.minhash_seed)
        a, b = lsh.candidates(allt.windows(p.shingle_size, short=True), consider=alive)
        by_later = np.lexsort((a, b))
        a, b = a[by_later], b[by_later]
        for x, y in zip(a.tolist(), b.tolist()):
            j = y - n_train
            if reason[j] is not None:
                continue
            if x >= n_train and reason[x - n_train] is not None:
                continue  # only a kept row (or train) can make a later row a duplicate
            if rouge_l(allt.row(x).tolist(), allt.row(y).tolist()) >= p.rouge_l_threshold:
                reason[j] = "near_duplicate_train" if x < n_train else "near_duplicate"

    kept = [r for r, why in zip(rows, reason) if why is None]
    dropped = [{k: r[k] for k in ("id", "task", "instruction", "response")} | {"reason": why}
               for r, why in zip(rows, reason) if why is not None]
    return kept, dropped, _counts(rows, reason, decontaminated)


def _counts(rows: list[dict], reason: np.ndarray, decontaminated: list[dict]) -> dict:
    def summary(idx):
        reasons = Counter(reason[i] for i in idx if reason[i] is not None)
        return {"rows_in": len(idx), "rows_out": len(idx) - sum(reasons.values()), "dropped": dict(sorted(reasons.items()))}

    cycles = sorted({r["cycle"] for r in rows})
    per_cycle = {str(c): summary([i for i, r in enumerate(rows) if r["cycle"] == c]) for c in cycles}
    return summary(range(len(rows))) | {"per_cycle": per_cycle, "decontaminated": decontaminated}

