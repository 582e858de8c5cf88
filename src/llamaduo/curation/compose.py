"""Curation of synthetic pairs: quality rules, decontamination against test, exact and near duplicates.

Rows are taken in (cycle, position) order and each is judged only against train and the rows kept before
it, so earlier cycles win a duplicate set, a set is never dropped whole, and adding rows at the end never
changes the decision on an earlier row (synthesis relies on that to count curated pairs incrementally).
Each row is dropped for the first check it fails, in this order: quality rules (quality.py), test
contamination (decontam.py), exact duplicate, near duplicate (dedup.py). The quality rules are first
calibrated per task on train (the task's own human rows): a rule that would drop more than
`max_coverage_drop` of them is loosened or switched off for that task, and the counts say so. Rows keep
every column they came with, kept and dropped alike (the stage writes each table's own columns).
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pyarrow as pa

from llamaduo.curation import quality
from llamaduo.curation.decontam import find_leaks
from llamaduo.curation.dedup import MinHashLSH, rouge_l
from llamaduo.curation.tokens import tokenize

# characters of each field shown in the report's examples: enough to see what a rule matched, and metrics stay small
EXAMPLE_CHARS = 300



def exact_walk(key, ids: list[str], n_train: int, reason, why) -> None:
    """Mark exact duplicates in place: row i (after the n_train train rows in `key`) whose key equals a train row's
    or an earlier kept row's. In order, so the first of equal rows is kept; the local and the Ray path both call it."""
    train_keys = {k: i for i, k in reversed(list(enumerate(key[:n_train].tolist())))}
    seen = dict(train_keys)
    for i, k in enumerate(key[n_train:].tolist()):
        if reason[i] is None:
            if k in seen:
                reason[i] = "exact_duplicate_train" if k in train_keys else "exact_duplicate"
                why[i] = f"same normalized text as {ids[seen[k]]}"
            seen.setdefault(k, n_train + i)


def curate(raw: list[dict], *, train: list[dict], test: list[dict], p, cluster=None) -> tuple[list[dict], list[dict], dict]:
    """(kept rows, dropped rows with `reason`, counts). The first of a duplicate set is kept, never both dropped.

    `cluster` (ClusterParams) with `engine: ray`: the same result computed on that Ray cluster (distributed.py)."""
    if cluster is not None and cluster.engine == "ray":
        from llamaduo.curation.distributed import curate_ray  # Ray is imported only on this path

        return curate_ray(raw, train=train, test=test, p=p, cluster=cluster)
    order = sorted(range(len(raw)), key=lambda i: raw[i]["cycle"])  # stable: position breaks ties
    rows = [raw[i] for i in order]
    n, n_train = len(rows), len(train)
    # train rows first, then the synthetic rows; tokenized once, instruction and response side by side
    instructions = pa.array([r["instruction"] for r in train] + [r["instruction"] for r in rows], type=pa.large_string())
    responses = pa.array([r["response"] for r in train] + [r["response"] for r in rows], type=pa.large_string())
    all_fields = tokenize(instructions, responses)
    fields = all_fields.slice(2 * n_train)
    # the rules' settings per task, from that task's human rows; then the rules over the synthetic rows
    overrides, calibration = quality.calibrate(
        quality.values(instructions.slice(0, n_train), responses.slice(0, n_train), all_fields.slice(0, 2 * n_train), p),
        [r["task"] for r in train], p)
    tasks = [r["task"] for r in rows]
    values = quality.values(instructions.slice(n_train), responses.slice(n_train), fields, p)
    reason = quality.check(values, tasks, overrides, p)
    why: dict[int, str] = {}  # what a dropped row matched (for the report's examples), where it is cheap to say
    # word shingles per field; a pair's shingle set is its instruction's and its response's together
    need_shingles = p.near_dedup or (p.decontaminate and test and p.decontam_minhash_threshold is not None)
    shingles = all_fields.windows(p.shingle_size, short=True) if need_shingles and n else None
    decontaminated = []

    if p.decontaminate and test and n:
        leaks = find_leaks(fields, shingles.slice(2 * n_train) if shingles is not None else None, test, p, alive=reason == None)  # noqa: E711
        for i in sorted(leaks):
            method, test_id = leaks[i]
            reason[i] = f"test_contamination_{method}"
            why[i] = f"{method} match with test row {test_id}"
            decontaminated.append({"id": rows[i]["id"], "test_id": test_id, "method": method})

    # exact duplicates: equal normalized (instruction, response) to a train row or an earlier kept row
    th = all_fields.text_hash()
    with np.errstate(over="ignore"):
        key = th[0::2] * np.uint64(3) + th[1::2]
    ids = [r["id"] for r in train] + [r["id"] for r in rows]
    exact_walk(key, ids, n_train, reason, why)

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
            score = rouge_l(both.row(x).tolist(), both.row(y).tolist())
            if score < p.rouge_l_threshold:
                continue
            # a long shared passage carries the pair's score; two different questions on it, with different
            # answers, are two examples (human closed-QA rows: answers share <= 0.19, issue #16)
            answers = rouge_l(all_fields.row(2 * x + 1).tolist(), all_fields.row(2 * y + 1).tolist())
            if p.min_response_rouge_l is None or answers >= p.min_response_rouge_l:
                reason[j] = "near_duplicate_train" if x < n_train else "near_duplicate"
                why[j] = f"ROUGE-L {score:.2f} (responses {answers:.2f}) with {ids[x]}"

    return outcome(rows, reason, why, values, tasks, overrides, p, decontaminated, calibration)


def outcome(rows, reason, why, values, tasks, overrides, p, decontaminated, calibration) -> tuple[list[dict], list[dict], dict]:
    """(kept, dropped, counts) from each row's drop reason (None: kept): the local and the Ray path end here."""
    kept = [r for r, r_why in zip(rows, reason) if r_why is None]
    # every column passes through (lineage, and any a table gains later); the reason is added
    dropped = [dict(r, reason=r_why) for r, r_why in zip(rows, reason) if r_why is not None]
    counts = _counts(rows, reason, decontaminated)
    counts["examples"] = _examples(rows, reason, why, values, tasks, overrides, p)
    counts["calibration"] = {"max_coverage_drop": p.max_coverage_drop, "tasks": calibration}
    return kept, dropped, counts


def _clip(text: str) -> str:
    return text if len(text) <= EXAMPLE_CHARS else text[:EXAMPLE_CHARS] + "…"


def _examples(rows, reason, why, values, tasks, overrides, p) -> dict[str, list[dict]]:
    """The first `report_examples` dropped rows per reason, clipped, with what the rule matched."""
    inv, lim = quality.limits(tasks, overrides, p)
    out: dict[str, list[dict]] = {}
    for i, r_why in enumerate(reason.tolist()):
        if r_why is None or len(out.setdefault(r_why, [])) >= p.report_examples:
            continue
        r = rows[i]
        if r_why in quality.RULES:
            v = values[r_why][i]
            limit = lim[r_why][inv[i]] if r_why in quality.THRESHOLDS else None
            said = quality.detail(r_why, r["instruction"], r["response"], float(v) if limit is not None else v, limit, p)
        else:
            said = why.get(i, r_why)
        out[r_why].append({"id": r["id"], "task": r["task"], "matched": said,
                           "instruction": _clip(r["instruction"]), "response": _clip(r["response"])})
    return dict(sorted((k, v) for k, v in out.items() if v))


def _counts(rows: list[dict], reason: np.ndarray, decontaminated: list[dict]) -> dict:
    def summary(idx):
        reasons = Counter(reason[i] for i in idx if reason[i] is not None)
        return {"rows_in": len(idx), "rows_out": len(idx) - sum(reasons.values()), "dropped": dict(sorted(reasons.items()))}

    cycles = sorted({r["cycle"] for r in rows})
    per_cycle = {str(c): summary([i for i, r in enumerate(rows) if r["cycle"] == c]) for c in cycles}
    return summary(range(len(rows))) | {"per_cycle": per_cycle, "decontaminated": decontaminated}
