"""Quality rules for synthetic pairs, calibrated per task on that task's own human (coverage train) rows.

Each rule gives every row a value (a token count, a share) or a flag, and a row fails a numeric rule when
its value passes the rule's threshold (a param). Before curating, `calibrate` runs every rule over the
coverage train rows of each task: a rule that would drop more than `curate.max_coverage_drop` of them is
wrong for that task, so a numeric rule gets the task's own quantile as its threshold and a flag rule is
switched off for that task (rules tuned on synthetic rows dropped 9% of human coding rows).

Lengths are counted in this project's word tokens (src/llamaduo/curation/tokens.py: runs of letters, digits and `_`;
punctuation separates), not in a model tokenizer's: the rules need a stable, cheap count, not exact budgets.
"""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from llamaduo.curation import hashindex
from llamaduo.curation.dedup import rouge_l
from llamaduo.curation.pipeline import Batch, RowFilter
from llamaduo.curation.tokens import Tokens, tokenize

# Common English function words; a long row with almost none of them is very likely not English.
STOPWORDS = ("the a an and or but of to in on at for with by from as is are was were be been it this that these "
             "those i you he she we they not no do does did have has had can will would should could what which "
             "who how when where why if then than so there their its my your our his her them me us").split()
_STOP_TABLE = hashindex.build(tokenize([" ".join(STOPWORDS)]).hashes)

# What the synthesis schema ({"pairs": [{"instruction", "response"}]}) leaves behind when a model echoes it
# inside a field: its key names. A code block or a JSON snippet inside an answer is not a leftover.
SCHEMA_KEYS = r'\{\s*"pairs"\s*:|"instruction"\s*:\s*"|"response"\s*:\s*"'
FENCE = "```"

# The rules in the order they are checked (a row is dropped for the first it fails).
RULES = ("empty", "instruction_too_short", "response_too_short", "instruction_too_long", "response_too_long",
         "copied_instruction", "refusal", "leftover_markup", "wrong_language")
# numeric rules: the param holding the threshold, and how a row's value fails it
THRESHOLDS = {
    "instruction_too_short": ("min_instruction_tokens", "below"),
    "response_too_short": ("min_response_tokens", "below"),
    "instruction_too_long": ("max_instruction_tokens", "above"),
    "response_too_long": ("max_response_tokens", "above"),
    "copied_instruction": ("copy_ratio", "at_or_above"),
    "wrong_language": ("min_stopword_ratio", "below"),
}
# flag rules: the param that switches them on (a non-empty list or true)
FLAGS = {"empty": None, "refusal": "refusal_openers", "leftover_markup": "leftover_markup"}


def _fails(values: np.ndarray, limit, how: str) -> np.ndarray:
    """Rows whose value fails `limit` (a number, or an array of per-row limits; NaN = rule off there)."""
    with np.errstate(invalid="ignore"):
        if how == "below":
            return values < limit
        if how == "above":
            return values > limit
        return values >= limit


# ---- per-row values ---------------------------------------------------------------------------------------

def _copy_share(fields: Tokens, floor: float | None) -> np.ndarray:
    """How much of a pair is the instruction copied into the response: the LCS as a share of the instruction
    and of the response, the smaller of the two. An echo ("repeat the prompt back") scores near 1; an answer
    that restates a short question and then answers it scores low, because the copy is a small part of the
    response (a share of the instruction alone dropped 7% of human open-QA rows); so does an
    answer that quotes the code it annotates and adds to it.

    Only rows that could reach `floor` (the lowest threshold any task uses) are computed: the LCS is at most
    the shorter field, so a row with min/max length below the floor scores 0 without one."""
    ni, nr = fields.counts[0::2].astype(float), fields.counts[1::2].astype(float)
    out = np.zeros(len(ni))
    if floor is None:
        return out
    with np.errstate(invalid="ignore", divide="ignore"):
        reach = np.minimum(ni, nr) / np.maximum(ni, nr)
    for i in np.flatnonzero((ni > 0) & (nr > 0) & (reach >= floor)):
        a, b = fields.row(2 * i).tolist(), fields.row(2 * i + 1).tolist()
        lcs = rouge_l(a, b) * (len(a) + len(b)) / 2
        out[i] = min(lcs / len(a), lcs / len(b))
    return out


def _stopword_share(fields: Tokens, min_tokens: int) -> np.ndarray:
    """Share of English function words among instruction + response tokens; NaN (never judged) below min_tokens."""
    both = fields.pairs()
    total = both.counts
    hits = hashindex.count_per_row(both.hashes, both.offsets, *_STOP_TABLE)
    out = np.full(len(total), np.nan)
    long_enough = total >= min_tokens
    out[long_enough] = hits[long_enough] / total[long_enough]
    return out


def _refusal_regexes(p) -> tuple[str, str]:
    # the opener must start the reply (after spaces, quotes or markdown emphasis); the decline may follow it
    opener = r"^[\s\"'*_]*(?:" + "|".join(f"(?:{x})" for x in p.refusal_openers) + ")"
    decline = "|".join(f"(?:{x})" for x in p.refusal_declines)
    return opener, decline


def _refusal(responses: pa.Array, p) -> np.ndarray:
    """An apology (or an AI disclaimer, or a flat "I can't help with that") that opens the reply, and a
    first-person decline within its first `refusal_window_chars`. Either alone is ordinary writing: "I'm
    sorry to hear that..." opens much advice, and "I cannot say" occurs anywhere."""
    if not p.refusal_openers or not p.refusal_declines:
        return np.zeros(len(responses), dtype=bool)
    opener, decline = _refusal_regexes(p)
    head = pc.utf8_slice_codeunits(responses, 0, p.refusal_window_chars)
    opens = pc.match_substring_regex(head, opener, ignore_case=True)
    declines = pc.match_substring_regex(head, decline, ignore_case=True)
    return pc.and_(opens, declines).to_numpy(zero_copy_only=False)


def _whole_json(text: str) -> bool:
    try:
        return isinstance(json.loads(text), (dict, list))
    except ValueError:
        return False


def _markup(field: pa.Array) -> np.ndarray:
    """Structured output left in a field: a schema key name, the whole field one JSON object or array, or the
    whole field one fenced block (a fence inside prose, as coding answers have, is not a leftover)."""
    out = pc.match_substring_regex(field, SCHEMA_KEYS).to_numpy(zero_copy_only=False)
    t = pc.utf8_trim_whitespace(field)
    one_fence = pc.and_(pc.and_(pc.starts_with(t, FENCE), pc.ends_with(t, FENCE)), pc.equal(pc.count_substring(t, FENCE), 2))
    out |= one_fence.to_numpy(zero_copy_only=False)
    # JSON candidates by their first and last characters (vectorized); only those few are parsed
    braced = pc.or_(pc.and_(pc.starts_with(t, "{"), pc.ends_with(t, "}")), pc.and_(pc.starts_with(t, "["), pc.ends_with(t, "]")))
    for i in np.flatnonzero(braced.to_numpy(zero_copy_only=False) & ~out):
        out[i] = _whole_json(t[i].as_py())
    return out


def values(instructions: pa.Array, responses: pa.Array, fields: Tokens, p) -> dict[str, np.ndarray]:
    """Each rule's per-row value (float for a numeric rule, bool "fails" for a flag rule), thresholds aside.

    `fields` are the rows' tokens as `tokenize(instructions, responses)` gives them (instruction, response, ...)."""
    ni, nr = fields.counts[0::2], fields.counts[1::2]
    n = len(ni)
    return {
        "empty": (ni == 0) | (nr == 0),
        "instruction_too_short": ni.astype(float), "response_too_short": nr.astype(float),
        "instruction_too_long": ni.astype(float), "response_too_long": nr.astype(float),
        "copied_instruction": _copy_share(fields, p.copy_ratio),
        "refusal": _refusal(responses, p),
        "leftover_markup": (_markup(instructions) | _markup(responses)) if p.leftover_markup and n else np.zeros(n, dtype=bool),
        "wrong_language": _stopword_share(fields, p.language_min_tokens) if p.min_stopword_ratio is not None else np.full(n, np.nan),
    }


# ---- calibration on the task's own human rows -------------------------------------------------------------

def _default(rule: str, p):
    """The rule's setting from params: a threshold (None = off) or, for a flag rule, whether it is on."""
    if rule in THRESHOLDS:
        return getattr(p, THRESHOLDS[rule][0])
    return True if FLAGS[rule] is None else bool(getattr(p, FLAGS[rule]))


def calibrate(vals: dict[str, np.ndarray], tasks: list[str], p) -> tuple[dict[str, dict], dict]:
    """Per-task settings from the coverage train rows' own rule values: (overrides {task: {rule: threshold or
    None = off}}, report for metrics). A rule may fail at most floor(max_coverage_drop x rows) of a task's rows;
    one that fails more gets the threshold that fails exactly that many at most (numeric), or is switched off."""
    overrides, report = {}, {}
    tasks_arr = np.asarray(tasks, dtype=object)
    for task in sorted(set(tasks)):
        idx = np.flatnonzero(tasks_arr == task)
        n = len(idx)
        allowed = math.floor(p.max_coverage_drop * n)
        would, changed = {}, {}
        for rule in RULES:
            setting = _default(rule, p)
            if setting is None or setting is False:
                continue
            v = vals[rule][idx]
            failing = int(_fails(v, setting, THRESHOLDS[rule][1]).sum()) if rule in THRESHOLDS else int(v.sum())
            if failing:
                would[rule] = failing
            if failing <= allowed:
                continue
            why = (f"would drop {failing} of {n} {task!r} coverage train rows ({failing / n:.1%}), more than "
                   f"curate.max_coverage_drop ({p.max_coverage_drop:.1%})")
            if rule in THRESHOLDS:
                param, how = THRESHOLDS[rule]
                new = _quantile_limit(v, allowed, how)
                overrides.setdefault(task, {})[rule] = new
                changed[rule] = {"param": param, "default": setting, "value": new,
                                 "why": why + ("; switched off (no threshold keeps enough rows)" if new is None
                                               else "; threshold moved to the rows' own quantile")}
            else:
                overrides.setdefault(task, {})[rule] = None
                changed[rule] = {"param": FLAGS[rule], "default": "on", "value": "off", "why": why + "; switched off for this task"}
        report[task] = {"coverage_rows": n, "allowed_drops": allowed, "would_drop": would, "adjusted": changed}
    return overrides, report


def _quantile_limit(v: np.ndarray, allowed: int, how: str):
    """The tightest threshold that fails at most `allowed` of these values (None: the rule must be off)."""
    v = np.sort(v[~np.isnan(v)])
    if len(v) <= allowed:
        return None
    if how == "below":  # fails when value < limit: the (allowed)-th smallest value lets exactly the smaller ones fail
        return float(v[allowed])
    if how == "above":  # fails when value > limit
        return float(v[len(v) - 1 - allowed])
    limit = float(np.nextafter(v[len(v) - 1 - allowed], np.inf))  # fails when value >= limit
    return None if limit > 1 else limit


# ---- the check --------------------------------------------------------------------------------------------

def limits(tasks: list[str], overrides: dict[str, dict], p) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(task index per row, per rule the setting per distinct task: float threshold with NaN = off, or bool on)."""
    uniq, inv = np.unique(np.asarray(tasks, dtype=object), return_inverse=True) if len(tasks) else (np.array([]), np.array([], int))
    out = {}
    for rule in RULES:
        per_task = [overrides.get(t, {}).get(rule, _default(rule, p)) for t in uniq.tolist()]
        if rule in THRESHOLDS:
            out[rule] = np.array([np.nan if x is None else float(x) for x in per_task], dtype=float)
        else:
            out[rule] = np.array([x is not None and x is not False for x in per_task], dtype=bool)
    return inv, out


def check(vals: dict[str, np.ndarray], tasks: list[str], overrides: dict[str, dict], p) -> np.ndarray:
    """The first rule each row fails (object array; None = passes), in the order of RULES, with each task's
    calibrated settings (`overrides` from `calibrate`; {} = params as they are)."""
    inv, lim = limits(tasks, overrides, p)
    reason = np.full(len(tasks), None, dtype=object)
    for rule in RULES:
        if rule in THRESHOLDS:
            failed = _fails(vals[rule], lim[rule][inv], THRESHOLDS[rule][1])
        else:
            failed = vals[rule] & lim[rule][inv]
        reason[failed & (reason == None)] = rule  # noqa: E711 (elementwise on an object array)
    return reason


def detail(rule: str, instruction: str, response: str, value, limit, p) -> str:
    """Why one row failed `rule`, in words, for the report's examples (so a misfire shows without the code)."""
    if rule in THRESHOLDS:
        param, how = THRESHOLDS[rule]
        word = {"below": "<", "above": ">", "at_or_above": ">="}[how]
        shown = f"{value:.3f}" if isinstance(value, float) and not value.is_integer() else f"{value:g}"
        return f"{rule}: value {shown} {word} {param} {limit:g}"
    if rule == "refusal":
        opener, decline = _refusal_regexes(p)
        head = response[:p.refusal_window_chars]
        o, d = re.search(opener, head, re.I), re.search(decline, head, re.I)
        return f"refusal: opens with {o.group(0).strip()!r}, declines with {d.group(0)!r}" if o and d else "refusal"
    if rule == "leftover_markup":
        for name, text in (("instruction", instruction), ("response", response)):
            m, t = re.search(SCHEMA_KEYS, text), text.strip()
            if m:
                return f"leftover_markup: schema key {m.group(0)!r} in the {name}"
            if t.startswith(FENCE) and t.endswith(FENCE) and t.count(FENCE) == 2:
                return f"leftover_markup: the whole {name} is one fenced block"
            if t[:1] in "{[" and _whole_json(t):
                return f"leftover_markup: the whole {name} is JSON"
        return "leftover_markup"
    return rule


# ---- the step ---------------------------------------------------------------------------------------------

class QualityFilter(RowFilter):
    """The rules as a filter: each task's settings calibrated once on train (that task's human rows), then every
    row checked against its task's settings. A row's reason is the first rule (in RULES' order) it fails."""

    name = "quality"
    reasons = RULES

    def __init__(self, p, train: list[dict]):
        self.p = p
        ins = pa.array([r["instruction"] for r in train], type=pa.large_string())
        res = pa.array([r["response"] for r in train], type=pa.large_string())
        self.overrides, self.calibration = calibrate(values(ins, res, tokenize(ins, res), p), [r["task"] for r in train], p)

    def filter(self, batch: Batch) -> np.ndarray:
        vals = values(batch.column("instruction"), batch.column("response"), batch.fields(), self.p)
        return check(vals, batch.column("task").to_pylist(), self.overrides, self.p)

    def detail(self, rule: str, instruction: str, response: str, task: str) -> str:
        """What one row that failed `rule` matched, in words (the report's examples; the row's value is its own,
        computed again here, so the rows' values need not be kept)."""
        if rule not in THRESHOLDS:
            return detail(rule, instruction, response, None, None, self.p)
        ins, res = pa.array([instruction], type=pa.large_string()), pa.array([response], type=pa.large_string())
        value = values(ins, res, tokenize(ins, res), self.p)[rule][0]
        inv, lim = limits([task], self.overrides, self.p)
        return detail(rule, instruction, response, float(value), lim[rule][inv[0]], self.p)
