"""The params reference page (docs/params.md), written from the schema in config.py.

Every key's type, default, whether it is runtime and what it does come from the pydantic fields and their
descriptions, so the page cannot say something the code does not. `python -m llamaduo.params_doc` rewrites the
page; tests/test_docs.py fails while the committed page differs from what this module writes.
"""

from __future__ import annotations

import sys
import types
import typing
from pathlib import Path

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from llamaduo.atomic import replacing
from llamaduo.config import Params, ProviderParams

PAGE = Path("docs") / "params.md"
COMMAND = "python -m llamaduo.params_doc"

HEADER = f"""# Params reference

Every key of `params.yaml`, generated from the schema in `src/llamaduo/config.py` (`{COMMAND}` rewrites this
page; a test fails while it is stale). A wrong key or value stops a run naming the key; `llamaduo check` validates
params without running anything.

**runtime** marks a knob that changes how fast or where a run goes, never what it computes: `dvc.yaml` does not
list it, so changing it reruns no stage.
"""


def _type(tp) -> str:
    """A field's annotation as a reader writes it in YAML terms."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Literal:
        return " \\| ".join("null" if a is None else f"`{a}`" if isinstance(a, str) else str(a).lower() for a in args)
    if origin in (typing.Union, types.UnionType):
        return " \\| ".join(_type(a) for a in args)
    if tp is type(None):
        return "null"
    if origin is list:
        return f"list of {_type(args[0])}" if args else "list"
    if origin is dict:
        return f"mapping of {_type(args[1])}" if args else "mapping"
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return "section"
    return {str: "string", int: "integer", float: "number", bool: "boolean"}.get(tp, getattr(tp, "__name__", str(tp)))


def _default(field) -> str:
    if field.default is PydanticUndefined and field.default_factory is None:
        return "required"
    value = field.default_factory() if field.default_factory is not None else field.default
    if isinstance(value, BaseModel):
        return "(section below)"
    if value is None:
        return "`null`"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, str):
        return f'`"{value}"`' if value == "" else f"`{value}`"
    return f"`{value}`"


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _doc(model: type[BaseModel]) -> str:
    own = model.__dict__.get("__doc__")
    return " ".join(own.split()) if own else ""


def _section(prefix: str, model: type[BaseModel], out: list[str]) -> None:
    nested: list[tuple[str, type[BaseModel]]] = []
    out += ["", f"## `{prefix}`", ""]
    if doc := _doc(model):
        out += [doc, ""]
    out += ["| key | type | default | runtime | what it does |", "| --- | --- | --- | --- | --- |"]
    for name, field in model.model_fields.items():
        tp = field.annotation
        runtime = "runtime" if (field.json_schema_extra or {}).get("runtime") else ""
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            nested.append((f"{prefix}.{name}", tp))
        out.append(f"| `{name}` | {_type(tp)} | {_default(field)} | {runtime} | {_cell(field.description or '')} |")
    for sub_prefix, sub in nested:
        _section(sub_prefix, sub, out)


def render() -> str:
    """The whole page, sections in the order params.yaml has them."""
    out = [HEADER.rstrip()]
    for name, field in Params.model_fields.items():
        tp = field.annotation
        if typing.get_origin(tp) is dict:
            # providers: entries with names the user picks, each one ProviderParams
            _section(f"{name}.<name>", ProviderParams, out)
        else:
            _section(name, tp, out)
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    path = Path(args[0]) if args else PAGE
    with replacing(path) as tmp:
        Path(tmp).write_text(render())
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
