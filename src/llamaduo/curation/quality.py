"""Quality rules for synthetic pairs: each rule a param, each returns the rows it fails.

Lengths are counted in this project's word tokens (src/llamaduo/curation/tokens.py: runs of letters, digits and `_`;
punctuation separates), not in a model tokenizer's: the rules need a stable, cheap count, not exact budgets.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from llamaduo.curation import hashindex
from llamaduo.curation.dedup import rouge_l
from llamaduo.curation.tokens import Tokens, tokenize

# Common English function words; a long row with almost none of them is very likely not English.
STOPWORDS = ("the a an and or but of to in on at for with by from as is are was were be been it this that these "
             "those i you he she we they not no do does did have has had can will would should could what which "
             "who how when where why if then than so there their its my your our his her them me us").split()
_STOP_TABLE = hashindex.build(tokenize([" ".join(STOPWORDS)]).hashes)

# leftovers of the structured-output wrapper inside a field: the model echoed JSON instead of filling it
JSON_LEFTOVER = r'\{\s*"pairs"\s*:|"instruction"\s*:\s*"|"response"\s*:\s*"'


def _rule_lengths(fields: Tokens, p) -> list[tuple[str, np.ndarray]]:
    ni, nr = fields.counts[0::2], fields.counts[1::2]
    return [
        ("empty", (ni == 0) | (nr == 0)),
        ("instruction_too_short", ni < p.min_instruction_tokens),
        ("response_too_short", nr < p.min_response_tokens),
        ("instruction_too_long", ni > p.max_instruction_tokens),
        ("response_too_long", nr > p.max_response_tokens),
    ]


def _rule_copy(fields: Tokens, p) -> np.ndarray:
    """The response repeats (nearly all of) the instruction: LCS >= copy_ratio of the instruction's tokens."""
    ni, nr = fields.counts[0::2], fields.counts[1::2]
    out = np.zeros(len(ni), dtype=bool)
    if p.copy_ratio is None:
        return out
    # the LCS cannot exceed the response's length: only rows long enough to hold the copy are checked
    for i in np.flatnonzero((ni > 0) & (nr >= p.copy_ratio * ni)):
        a, b = fields.row(2 * i).tolist(), fields.row(2 * i + 1).tolist()
        lcs = rouge_l(a, b) * (len(a) + len(b)) / 2
        out[i] = lcs >= p.copy_ratio * len(a)
    return out


def _rule_refusal(responses: pa.Array, p) -> np.ndarray:
    if not p.refusal_patterns:
        return np.zeros(len(responses), dtype=bool)
    pattern = "|".join(f"(?:{x})" for x in p.refusal_patterns)
    # only the start of the answer: a story may well contain "I'm sorry" further on
    head = pc.utf8_slice_codeunits(responses, 0, p.refusal_window_chars)
    return pc.match_substring_regex(head, pattern, ignore_case=True).to_numpy(zero_copy_only=False)


def _rule_markup(instructions: pa.Array, responses: pa.Array, tasks: list[str], p) -> np.ndarray:
    n = len(tasks)
    out = np.zeros(n, dtype=bool)
    if not p.leftover_markup:
        return out
    fence_ok = np.isin(np.asarray(tasks, dtype=object), list(p.fence_ok_tasks))
    for field in (instructions, responses):
        out |= pc.match_substring_regex(field, JSON_LEFTOVER).to_numpy(zero_copy_only=False)
        t = pc.utf8_trim_whitespace(field)
        # a field wrapped in a fence is a formatting leftover, except where code is the answer
        fenced = pc.or_(pc.starts_with(t, "```"), pc.ends_with(t, "```")).to_numpy(zero_copy_only=False)
        out |= fenced & ~fence_ok
    return out


def _rule_language(fields: Tokens, p) -> np.ndarray:
    """Too few English function words among instruction + response tokens (long rows only)."""
    both = fields.pairs()
    out = np.zeros(len(both), dtype=bool)
    if p.min_stopword_ratio is None:
        return out
    total = both.counts
    hits = hashindex.count_per_row(both.hashes, both.offsets, *_STOP_TABLE)
    long_enough = total >= p.language_min_tokens
    out[long_enough] = hits[long_enough] < p.min_stopword_ratio * total[long_enough]
    return out


def check(instructions: pa.Array, responses: pa.Array, tasks: list[str], fields: Tokens, p) -> np.ndarray:
    """The first rule each row fails (object array; None = passes), in the order the rules are listed.

    `fields` are the rows' tokens as `tokenize(instructions, responses)` gives them (instruction, response, ...)."""
    rules = _rule_lengths(fields, p) + [
        ("copied_instruction", _rule_copy(fields, p)),
        ("refusal", _rule_refusal(responses, p)),
        ("leftover_markup", _rule_markup(instructions, responses, tasks, p)),
        ("wrong_language", _rule_language(fields, p)),
    ]
    reason = np.full(len(tasks), None, dtype=object)
    for name, failed in rules:
        reason[failed & (reason == None)] = name  # noqa: E711 (elementwise on an object array)
    return reason
