"""Prompt templates live in prompts/ as Markdown with $placeholders; this renders them."""

from __future__ import annotations

import hashlib
import string
from functools import cache
from pathlib import Path

from llamaduo.errors import DataError


@cache
def load(name: str, prompt_dir: str = "prompts") -> str:
    path = Path(prompt_dir) / f"{name}.md"
    if not path.is_file():
        raise DataError(f"prompt template {path} not found")
    return path.read_text(encoding="utf-8")


def template_sha(name: str | tuple[str, ...], prompt_dir: str = "prompts") -> str:
    """12 hex digits identifying a template, or the templates a prompt is assembled from (a tuple, in order)."""
    names = (name,) if isinstance(name, str) else name
    return hashlib.sha256("\0".join(load(n, prompt_dir) for n in names).encode()).hexdigest()[:12]


def render(name: str, *, fallback: str | None = None, prompt_dir: str = "prompts", **values) -> str:
    """Fill a template; `fallback` is used when there is no template of that name (e.g. no task-specific one)."""
    if fallback is not None and not (Path(prompt_dir) / f"{name}.md").is_file():
        name = fallback
    try:
        return string.Template(load(name, prompt_dir)).substitute(**values)
    except KeyError as exc:
        raise DataError(f"prompt template {name}: no value for placeholder ${exc.args[0]}") from None
