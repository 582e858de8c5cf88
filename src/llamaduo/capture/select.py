"""Selection that a person controls (params `capture`): which recorded calls become rows, and into which task.

Every call that is not kept is counted under one reason, the first that applies, in this order: `failed` (the call
returned an error), `not_chat` (with `skip_non_chat`), `unrated` / `not_positive` (MLflow: no assessment of
`rating_name`, or a value outside `rating_values`), `tags`, `model`, `route`, `time` (outside the filters),
`no_task` (no task tag and no system prompt of `tasks_by_system`); then, for a chat call, `tool_call` (a turn the
local model cannot learn: a tool call or a tool's result), `truncated` (stopped at the token limit), `not_text`.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

from llamaduo.capture.record import Exchange, chat, text_of


def _ms(t: datetime | None) -> int | None:
    if t is None:
        return None
    return int((t if t.tzinfo else t.replace(tzinfo=UTC)).timestamp() * 1000)


# the date suffixes of a snapshot: OpenAI's -2024-07-18 and -0613, Anthropic's -20241022
_SNAPSHOT = r"-(?:\d{4}-\d{2}-\d{2}|\d{8}|\d{4})"


def model_matches(model: str | None, wanted: list[str]) -> bool:
    """A model is wanted when it is a listed name or a dated snapshot of one (`gpt-4o-mini-2024-07-18` for
    `gpt-4o-mini`, but not for `gpt-4o`): services answer an alias with a snapshot and record that."""
    return bool(model) and any(model == w or re.fullmatch(re.escape(w) + _SNAPSHOT, model) for w in wanted)


def system_prompt(messages: list | None) -> str | None:
    if messages and isinstance(messages[0], dict) and messages[0].get("role") in ("system", "developer"):
        return text_of(messages[0].get("content"))
    return None


class Selection:
    def __init__(self, p):
        self.p = p
        self.since, self.until = _ms(p.since), _ms(p.until)
        self.by_system = {v.strip(): k for k, v in p.tasks_by_system.items()}

    def task_of(self, ex: Exchange) -> str | None:
        if self.p.task_key and ex.tags.get(self.p.task_key):
            return str(ex.tags[self.p.task_key])
        system = system_prompt(ex.messages)
        return self.by_system.get(system.strip()) if system else None

    def decide(self, ex: Exchange) -> tuple[str | None, dict | None, str | None]:
        """(task, row object, None) for a kept call, or (task or None, None, reason) for a dropped one."""
        p = self.p
        if ex.failed:
            return None, None, "failed"
        if p.skip_non_chat and (ex.messages is None or ex.operation != "chat"):
            return None, None, "not_chat"
        if ex.rating == "unrated":
            return None, None, "unrated"
        if ex.rating == "negative":
            return None, None, "not_positive"
        if any(str(ex.tags.get(k)) != str(v) for k, v in p.tags.items()):
            return None, None, "tags"
        if p.models and not model_matches(ex.model, p.models):
            return None, None, "model"
        if p.routes and ex.tags.get(p.route_key) not in p.routes:
            return None, None, "route"
        if ex.time_ms is not None and ((self.since is not None and ex.time_ms < self.since)
                                       or (self.until is not None and ex.time_ms >= self.until)):
            return None, None, "time"
        task = self.task_of(ex)
        if task is None:
            return None, None, "no_task"
        obj, reason = chat(ex)
        return task, obj, reason
