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
import pyarrow as pa

from llamaduo.curation import quality
from llamaduo.curation.decontam import find_leaks
from llamaduo.curation.dedup import MinHashLSH, rouge_l
from llamaduo.curation.tokens import tokenize


def curate(raw: list[dict], *, train: list[dict], test: list[dict], p) -> tuple[list[dict], list[dict], dict]:
    """(kept rows, dropped rows with `reason`, counts). The first of a duplicate set is kept, never both dropped."""
    order = sorted(range(len(raw)), key=lambda i: raw[i]["cycle"])  # stable: position breaks ties
    rows = [raw[i] for i in order]
    n, n_train = len(rows), len(train)
    # train rows first, then the synthetic rows; tokenized once, instruction and response side by side
    instructions = pa.array([r["instruction"] for r in train] + [r["instruction"] for r in rows], type=pa.large_string())
    responses = pa.array([r["response"] for r in train] + [r["response"] for r in rows], type=pa.large_string())
    all_fields = tokenize(instructions, responses)
    fields = all_fields.slice(2 * n_train)
    reason = quality.check(instructions.slice(n_train), responses.slice(n_train), [r["task"] for r in rows], fields, p)
    # word shingles per field; a pair's shingle set is its instruction's and its response's together
    need_shingles = p.near_dedup or (p.decontaminate and test and p.decontam_minhash_threshold is not None)
    shingles = all_fields.windows(p.shingle_size, short=True) if need_shingles and n else None
    decontaminated = []

    if p.decontaminate and test and n:
        leaks = find_leaks(fields, shingles.slice(2 * n_train) if shingles is not None else None, test, p, alive=reason == None)  # noqa: E711
        for i in sorted(leaks):
            method, test_id = leaks[i]
            reason[i] = f"test_contamination_{method}"
            decontaminated.append({"id": rows[i]["id"], "test_id": test_id, "method": method})

    # exact duplicates: equal normalized (instruction, response) to a train row or an earlier kept row
    th = all_fields.text_hash()
    with np.errstate(over="ignore"):
        key = th[0::2] * np.uint64(3) + th[1::2]
    train_keys = set(key[:n_train].tolist())
    seen = set(train_keys)
    for i, k in enumerate(key[n_train:].tolist()):
        if reason[i] is None:
            if k in seen:
                reason[i] = "exact_duplicate_train" if k in train_keys else "exact_duplicate"
            seen.add(k)

    # near duplicates: LSH candidates over train + rows, confirmed by ROUGE-L against a train or kept row
    if p.near_dedup and n:
        both = all_fields.pairs()
        alive = np.concatenate([np.ones(n_train, dtype=bool), reason == None])  # noqa: E711
        lsh = MinHashLSH(num_perm=p.num_perm, threshold=p.lsh_threshold, seed=p.minhash_seed)
        a, b = lsh.candidates(shingles.pairs(), consider=alive)  # sorted by the later row
        for x, y in zip(a.tolist(), b.tolist()):
            j = y - n_train
            if j < 0 or reason[j] is not None:
                continue  # two train rows, or a row already dropped
            if x >= n_train and reason[x - n_train] is not None:
                continue  # only a kept row (or train) can make a later row a duplicate
            if rouge_l(both.row(x).tolist(), both.row(y).tolist()) >= p.rouge_l_threshold:
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

