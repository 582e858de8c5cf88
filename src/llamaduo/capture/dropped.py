"""The calls a capture dropped, so the next capture passes over them instead of judging them again.

Each dropped call is recorded by its row id (`<source>:<source id>`) with its reason and a fingerprint of the
settings that decided it, in `<data.coverage_dir>/.capture-dropped.json` beside the coverage files it goes with
(versioned with them; ids, reasons and hashes only, never a row's text). A later capture skips a recorded id before
selection, the secret and personal-data detectors, and curation's duplicate checks, and counts it as dropped
before; when the settings that decided it changed (the fingerprint differs), the call is judged again.

Only reasons the recorded call itself decides, with the settings, are recorded. Ratings and tags can change after
the call (a person rates a trace in the MLflow UI, tags a trace, edits a stored completion's metadata), so a call
dropped as `unrated`, `not_positive`, `tags`, `route` or `no_task` is read and judged again on every capture. A
duplicate is judged against the rows the task held at the time: removing the row it duplicated brings it back only
with `llamaduo capture --recheck`, which judges every call again.
"""

from __future__ import annotations

import hashlib
import json
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from llamaduo.atomic import write_json
from llamaduo.capture import hygiene
from llamaduo.capture.record import TOOL_ROLES, TRUNCATED, CaptureError
from llamaduo.config import runtime_keys

STATE_NAME = ".capture-dropped.json"
FORMAT = 1
# decided by what can change after the call: judged again on every capture
RECHECKED = frozenset({"unrated", "not_positive", "tags", "route", "no_task"})
# the packages whose detectors decide a `pii` drop: a new release may find more or less
_DETECTORS = ("detect-secrets", "presidio-analyzer", "phonenumbers", "tldextract")


def _version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def _pii_settings(c) -> dict:
    return {"pii": c.pii, "pii_kinds": sorted(c.pii_kinds), "phone_regions": sorted(c.phone_regions),
            "detectors": {n: _version(n) for n in _DETECTORS}}


def settings(reason: str, p) -> dict | None:
    """The settings that decide a drop for `reason` (None: a reason that is not recorded). A drop for one reason
    stays a drop whatever the other settings become, since each check alone drops the call."""
    c = p.capture
    if reason in RECHECKED:
        return None
    if reason == "failed":
        return {}
    if reason == "not_chat":
        return {"skip_non_chat": c.skip_non_chat}
    if reason == "model":
        return {"models": c.models}
    if reason == "time":
        return {"since": c.since, "until": c.until}
    if reason == "tool_call":
        return {"tool_roles": sorted(TOOL_ROLES)}
    if reason == "truncated":
        return {"finish_reasons": sorted(TRUNCATED)}
    if reason == "not_text":
        return {}
    if reason == "pii":
        return _pii_settings(c)
    # curation's duplicate and test-leak reasons: its checks and thresholds, the task a call joins, the test side of
    # the split, and the text compared (redacted as `pii` says)
    curate = hygiene.dedup_params(p.curate)
    shown = {"report_examples"}  # how many drops metrics/curate.json shows, not which
    return {"dedup": c.dedup, "curate": curate.model_dump(mode="json", exclude=runtime_keys(type(curate)) | shown),
            "task_key": c.task_key, "tasks_by_system": c.tasks_by_system, "train_ratio": p.data.train_ratio,
            "seed": p.data.seed, **_pii_settings(c)}


def fingerprint(reason: str, p) -> str | None:
    s = settings(reason, p)
    if s is None:
        return None
    text = json.dumps({"reason": reason, **s}, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class Dropped:
    """The recorded drops of one coverage folder: `before(row_id)` names the reason of a drop whose settings still
    hold; `record` and `forget` change the record in memory, `save` writes it whole (atomically)."""

    def __init__(self, coverage_dir: str | Path, p, *, recheck: bool = False):
        self.path = Path(coverage_dir) / STATE_NAME
        self.p = p
        self.entries: dict[str, list[str]] = self._load() if self.path.is_file() else {}
        self.recheck = recheck
        self._fp: dict[str, str | None] = {}
        self.changed = False

    def _load(self) -> dict[str, list[str]]:
        try:
            obj = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CaptureError(f"{self.path}: not the capture's record of dropped calls ({exc}); remove it to judge "
                               "every call again") from None
        if not isinstance(obj, dict) or obj.get("format") != FORMAT or not isinstance(obj.get("dropped"), dict):
            raise CaptureError(f"{self.path}: not the capture's record of dropped calls (format {FORMAT}); remove it to "
                               "judge every call again")
        return obj["dropped"]

    def fingerprint(self, reason: str) -> str | None:
        if reason not in self._fp:
            self._fp[reason] = fingerprint(reason, self.p)
        return self._fp[reason]

    def before(self, row_id: str) -> str | None:
        """The reason the call was dropped before, when the settings that decided it are the same now."""
        if self.recheck:
            return None
        entry = self.entries.get(row_id)
        if entry is None:
            return None
        reason, fp = entry
        return reason if fp == self.fingerprint(reason) else None

    def record(self, row_id: str, reason: str) -> None:
        fp = self.fingerprint(reason)
        if fp is None:
            self.forget(row_id)
        elif self.entries.get(row_id) != [reason, fp]:
            self.entries[row_id] = [reason, fp]
            self.changed = True

    def forget(self, row_id: str) -> None:
        if self.entries.pop(row_id, None) is not None:
            self.changed = True

    def save(self) -> None:
        if self.changed:
            write_json(self.path, {"format": FORMAT, "dropped": self.entries})
            self.changed = False
