"""Curation of synthetic pairs: length rules, exact duplicates, and decontamination against the test split."""

from __future__ import annotations

import re
import unicodedata
from collections import Counter

_SPACE = re.compile(r"\s+")
_PUNCT = re.compile(r"[^\w\s]")


def normalize(text: str) -> str:
    """Case, accents, punctuation and spacing folded, so trivially different copies compare equal."""
    text = unicodedata.normalize("NFKC", text).casefold()
    return _SPACE.sub(" ", _PUNCT.sub(" ", text)).strip()


def curate(raw: list[dict], *, train: list[dict], test: list[dict], p) -> tuple[list[dict], list[dict], dict]:
    """(kept rows, dropped rows with `reason`, counts). The first of a duplicate set is kept, never both dropped."""
    seen_pairs = {(normalize(r["instruction"]), normalize(r["response"])) for r in train}
    test_texts = set()
    if p.decontaminate:
        for r in test:
            test_texts.add(normalize(r["instruction"]))
            test_texts.add(normalize(r["response"]))
    kept, dropped = [], []
    reasons: Counter = Counter()

    def drop(row, reason):
        reasons[reason] += 1
        dropped.append({k: row[k] for k in ("id", "task", "instruction", "response")} | {"reason": reason})

    for row in raw:
        ins, res = normalize(row["instruction"]), normalize(row["response"])
        if len(row["instruction"].strip()) < p.min_instruction_chars:
            drop(row, "instruction_too_short")
        elif len(row["response"].strip()) < p.min_response_chars:
            drop(row, "response_too_short")
        elif ins in test_texts or res in test_texts:
            drop(row, "test_contamination")
        elif (ins, res) in seen_pairs:
            drop(row, "exact_duplicate")
        else:
            seen_pairs.add((ins, res))
            kept.append(row)
    counts = {"rows_in": len(raw), "rows_out": len(kept), "dropped": dict(sorted(reasons.items()))}
    return kept, dropped, counts
