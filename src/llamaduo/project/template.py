"""Where the example project's files are (the wheel's copy, or this checkout), and the one change a user's
project needs in dvc.yaml: the package is installed there, not in the tree."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from llamaduo.project import layout

PACKAGE = Path(__file__).resolve().parent.parent  # .../llamaduo


def root() -> Path:
    """The folder holding the carried files: the wheel's `llamaduo/project/template/`, or, in an editable install
    (which runs from src/ and builds no template), the repository checkout itself."""
    packaged = PACKAGE / layout.PACKAGED
    if packaged.is_dir():
        return packaged
    checkout = PACKAGE.parent.parent  # src/llamaduo -> the repository root
    if (checkout / "dvc.yaml").is_file() and (checkout / "stages").is_dir():
        return checkout
    raise FileNotFoundError(f"no project template: neither {packaged} (a built wheel) nor a checkout at {checkout}; "
                            "reinstall llamaduo")


def files(base: Path | None = None) -> list[Path]:
    """The carried files, relative to `base` (default: `root()`), in a stable order."""
    base = base or root()
    out = []
    for name in layout.CARRIED:
        path = base / name
        found = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        out += [f.relative_to(base) for f in found if not set(layout.SKIPPED_PARTS) & set(f.parts)
                and not f.name.endswith(layout.SKIPPED_SUFFIXES)]
    return out


# A user's project pins the package in pyproject.toml; DVC reads TOML params files, so this one key stands for
# every library file the stages import here: a new pinned version reruns the stages.
VERSION_PARAM = "      - pyproject.toml: [project.dependencies]  # the pinned llamaduo version: upgrading it reruns the stage"

_LIB_DEP = re.compile(r"^\s*- \$\{lib\}/")
_LIB_VAR = re.compile(r"^\s*- lib:\s")
_STAGE_PARAMS = re.compile(r"^    params:")


def user_dvc_yaml(text: str) -> str:
    """This repository's dvc.yaml as a user's project needs it: the `${lib}/...` code deps (the package's files,
    which are in this tree but not in theirs) dropped with the `lib` var, and each stage given the pinned version
    as a params dep instead. Line by line, so every comment and the layout stay as written here."""
    lines = text.splitlines(keepends=True)
    out: list[str] = []
    in_vars = in_stages = False
    for i, line in enumerate(lines):
        top = line[:1] not in (" ", "#", "\n", "")
        if top:
            in_vars, in_stages = line.startswith("vars:"), line.startswith("stages:")
            if in_vars and not any(_LIB_VAR.match(x) is None and x.startswith(" ") for x in _block(lines, i)):
                continue  # `lib` was the only var: drop the whole block
        if in_vars and _LIB_VAR.match(line):
            continue
        if in_stages and _LIB_DEP.match(line):
            continue
        out.append(line)
        if in_stages and _STAGE_PARAMS.match(line):
            out.append(VERSION_PARAM + "\n")
    result = "".join(out)
    if re.search(r"^[^#\n]*\$\{lib\}", result, re.M):  # outside a comment
        raise ValueError("dvc.yaml uses ${lib} outside a stage's deps list; user_dvc_yaml cannot carry it")
    stages = (yaml.safe_load(result) or {}).get("stages", {})
    unpinned = [name for name, body in stages.items() if {"pyproject.toml": ["project.dependencies"]} not in body.get("params", [])]
    if unpinned:  # every stage script imports the package: none may miss the version (a stage without `params:`)
        raise ValueError(f"dvc.yaml stages {unpinned} have no `params:` list to hold the pinned llamaduo version")
    return result


def _block(lines: list[str], start: int) -> list[str]:
    """The indented lines under the top-level key at `start`."""
    out = []
    for line in lines[start + 1:]:
        if line[:1] not in (" ", "#", "\n", ""):
            break
        out.append(line)
    return out
