"""The chat messages of a pair row: its system prompt, its earlier turns, the user instruction and (for training
and references) the assistant response. Every place that shows a row to a model builds its messages here:
training, inference, the service baseline, judging and synthesis, so they all see the same conversation.

A row's `system` is a string or None; its `history` is None or a list of {"role", "content"} turns that
alternate user/assistant, start with a user turn and end with an assistant turn (coverage checks it on load).
"""

from __future__ import annotations

ROLES = ("user", "assistant")


def messages(row: dict, *, response: bool = True, system_role: bool = True) -> list[dict]:
    """system + history + user instruction (+ assistant response) as chat messages.

    `system_role=False` folds the system prompt into the first user turn, for a chat template that has no
    system role (see `supports_system`)."""
    system = row.get("system")
    turns = [{"role": t["role"], "content": t["content"]} for t in row.get("history") or ()]
    turns.append({"role": "user", "content": row["instruction"]})
    if response:
        turns.append({"role": "assistant", "content": row["response"]})
    if not system:
        return turns
    if system_role:
        return [{"role": "system", "content": system}, *turns]
    turns[0] = {"role": "user", "content": fold(system, turns[0]["content"])}
    return turns


def fold(system: str, user: str) -> str:
    """A system prompt put in front of the first user turn (models whose template has no system role)."""
    return f"{system}\n\n{user}"


def as_request(msgs: list[dict]) -> tuple[tuple[str, str], ...]:
    """Messages in the shape providers take (`ChatRequest.messages`: (role, text) pairs)."""
    return tuple((m["role"], m["content"]) for m in msgs)


_SENTINEL = "llamaduo-system-probe-7f3a"
_support: dict[str, bool] = {}


def supports_system(tokenizer) -> bool:
    """Whether the tokenizer's chat template has a system role: rendered with a probe system message, it must
    neither raise (Gemma-style templates call `raise_exception`) nor drop the text (some templates skip
    roles they do not know). Cached per template text."""
    import jinja2

    template = tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else repr(tokenizer.chat_template)
    if template not in _support:
        probe = [{"role": "system", "content": _SENTINEL}, {"role": "user", "content": "hello"}]
        try:
            text = tokenizer.apply_chat_template(probe, tokenize=False, add_generation_prompt=True)
        except jinja2.TemplateError:
            _support[template] = False
        else:
            _support[template] = _SENTINEL in text
    return _support[template]


def for_tokenizer(row: dict, tokenizer, *, response: bool = True) -> list[dict]:
    """`messages` shaped for this tokenizer's chat template (system role kept, or folded into the first user turn)."""
    return messages(row, response=response, system_role=not row.get("system") or supports_system(tokenizer))


def render_context(row: dict) -> str:
    """The system prompt and earlier turns as plain text (what a judge reads as the instruction's context);
    "" for a single-turn row without a system prompt."""
    parts = []
    if row.get("system"):
        parts.append(f"[system]\n{row['system']}")
    parts += [f"[{t['role']}]\n{t['content']}" for t in row.get("history") or ()]
    return "\n\n".join(parts)
