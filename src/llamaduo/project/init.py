"""`llamaduo init DIR`: a new git + DVC project holding the user's data, params, stage scripts and, later, their
cycle history, with the installed package pinned (the tool's own history stays out of it)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from llamaduo import __version__
from llamaduo.atomic import write_json
from llamaduo.errors import CoverageError, UserError
from llamaduo.project import template
from llamaduo.urls import credential_refusal

TASK_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")  # a coverage file's stem (`<task>.jsonl`), no path

# A user's test split is sized for the gate's verdict: its one-sided bound narrows as 1/sqrt(test prompts), and
# the demo's 0.96 (16 of 395 rows, chosen to keep the demo short) leaves a 183-row task 7 prompts, where no verdict
# is possible. A fifth of the rows, at least 50 prompts (never more than half the rows), at most 300 (each test
# prompt is answered k times and judged M times per answer, every cycle).
TEST_SHARE, MIN_TEST, MAX_TEST = 0.2, 50, 300

PYPROJECT = """\
# The llamaduo version this project runs with: `pip install "llamaduo=={version}"`.
# Every stage in dvc.yaml depends on this list (params: pyproject.toml's project.dependencies), so pinning a new
# version reruns them; `llamaduo check` and `llamaduo run` stop when the installed version is another one.
[project]
name = "{name}"
version = "0.1.0"
requires-python = ">=3.11"
dependencies = ["llamaduo=={version}"]

[tool.pytest.ini_options]
testpaths = ["tests"]
"""

COVERAGE_README = """\
# Coverage data

The prompt/response pairs kept from the service LLM: one file per task, `<task>.jsonl`, `<task>.csv` or
`<task>.parquet`, each task listed in `data.tasks` in params.yaml (`llamaduo init --task NAME --from FILE`
copies one here). `pytest tests` reads every listed task as `prepare` will and names the file and line of a
broken row.

What the reader accepts (llamaduo {version}, `llamaduo.coverage.prepare`):

{doc}
"""


def _run(cmd: list[str], cwd: Path, what: str) -> None:
    res = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if res.returncode != 0:
        raise UserError(f"{what} failed in {cwd}: {(res.stderr or res.stdout).strip()}")


def test_prompts_for(rows: int) -> int:
    """The test split a task of `rows` coverage rows gets (TEST_SHARE, MIN_TEST, MAX_TEST)."""
    return max(1, min(rows // 2, MAX_TEST, max(MIN_TEST, round(TEST_SHARE * rows))))


def train_ratio_for(rows: int) -> float:
    """`data.train_ratio` that leaves `test_prompts_for(rows)` test rows in expectation (each row goes to test with
    chance 1 - train_ratio, by a hash of its id)."""
    test = test_prompts_for(rows)
    return round((rows - test) / rows, 6)


def _check_coverage(task: str, source: Path, params_text: str) -> int:
    """Read `source` as the task's coverage file and split it with the template's params, before anything is
    written: a broken row fails now, naming the user's file and line. Returns the number of rows."""
    from llamaduo.coverage import load_task, split
    from llamaduo.coverage.prepare import FORMATS

    ext = source.suffix[1:].lower()
    if ext not in FORMATS:
        raise CoverageError(f"{source}: a coverage file is .jsonl, .csv or .parquet, got {source.suffix or 'no suffix'!r}")
    if not source.is_file():
        raise CoverageError(f"{source}: no such file")
    import yaml

    data = (yaml.safe_load(params_text) or {}).get("data", {})
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / f"{task}.{ext}"
        shutil.copyfile(source, copy)  # the reader finds a task by file name; the copy has the same bytes and lines
        try:
            rows = load_task(tmp, task)
        except CoverageError as exc:
            raise CoverageError(str(exc).replace(str(copy), str(source))) from None
    split(rows, train_ratio=train_ratio_for(len(rows)) if len(rows) > 1 else data.get("train_ratio", 0.9),
          seed=data.get("seed", 42))
    return len(rows)


def _set_tasks(params_text: str, tasks: list[str], rows: int | None = None) -> str:
    """params.yaml with `data.tasks` replaced and, given the task's `rows`, `data.train_ratio` sized for the gate
    (its comment saying so), every other comment kept (ruamel round trip, as the loop edits it)."""
    import io

    from ruamel.yaml import YAML

    y = YAML()
    # ruamel writes a null as nothing (`lora_r:`); the template spells `null`, which its comments refer to
    y.representer.add_representer(type(None), lambda r, _: r.represent_scalar("tag:yaml.org,2002:null", "null"))
    doc = y.load(params_text)
    doc["data"]["tasks"][:] = tasks  # in place: the list keeps its flow style and comments
    if rows is not None and rows > 1:
        ratio = train_ratio_for(rows)
        doc["data"]["train_ratio"] = ratio
        doc["data"].yaml_add_eol_comment(f"sized for the gate by `llamaduo init`: {rows - test_prompts_for(rows)} train / "
                                         f"{test_prompts_for(rows)} test rows", "train_ratio")
    out = io.StringIO()
    y.dump(doc, out)
    return out.getvalue()


def init(target: str | Path, *, task: str | None = None, source: str | Path | None = None, remote: str | None = None,
         dvc: tuple[str, ...] | None = None) -> Path:
    """Create the project in `target` (new or empty) and make its first commit; return its path. On any failure
    what was written is removed again, so the command can simply be rerun."""
    target = Path(target)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise UserError(f"{target} is not empty: `llamaduo init` makes a new project in a new or empty folder")
    if (task is None) != (source is None):
        raise UserError("`--task NAME` and `--from FILE` go together: the task's coverage file and its name")
    if task is not None and not TASK_NAME.match(task):
        raise UserError(f"--task {task!r}: a task name is a file stem (letters, digits, `_`, `.`, `-`)")
    refusal = credential_refusal(remote, "--remote", stored="the remote's URL is written to .dvc/config, committed and printed",
                                 instead="give the URL alone and, once the project exists, `dvc remote modify --local storage "
                                         "user|password|access_key_id|secret_access_key|... VALUE` (written to "
                                         ".dvc/config.local, which git ignores), or the storage's own environment variables "
                                         "(AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY for s3://)")
    if refusal:
        raise UserError(refusal)
    # DVC from the interpreter that runs llamaduo: a fresh venv may have no `dvc` on PATH
    dvc = dvc or (sys.executable, "-m", "dvc")
    base = template.root()
    params_text = (base / "params.yaml").read_text()
    if task is not None:
        rows = _check_coverage(task, Path(source), _set_tasks(params_text, [task]))
        params_text = _set_tasks(params_text, [task], rows)

    created = not target.exists()
    target.mkdir(parents=True, exist_ok=True)
    try:
        _write(target, base, params_text, task, Path(source) if source else None, remote, dvc)
    except BaseException:
        if created:
            shutil.rmtree(target, ignore_errors=True)
        else:  # it was empty: empty it again
            for p in target.iterdir():
                shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
        raise
    return target


def _write(target: Path, base: Path, params_text: str, task: str | None, source: Path | None, remote: str | None,
           dvc: tuple[str, ...]) -> None:
    import importlib

    from llamaduo.config import load_params
    from llamaduo.project.tracked import untracked_keys

    # the reader's module docstring lists the accepted formats (`llamaduo.coverage.prepare` is also a function name)
    reader = importlib.import_module("llamaduo.coverage.prepare")

    _run(["git", "init", "-q"], target, "git init")
    _run([*dvc, "init", "-q"], target, "dvc init")
    for rel in template.files(base):  # after `dvc init`, whose default .dvcignore ours replaces
        dest = target / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        if rel == Path("dvc.yaml"):
            dest.write_text(template.user_dvc_yaml((base / rel).read_text()))
        elif rel == Path("params.yaml"):
            dest.write_text(params_text)
        else:
            shutil.copyfile(base / rel, dest)
    cov = target / "data" / "coverage"
    cov.mkdir(parents=True, exist_ok=True)
    (cov / "README.md").write_text(COVERAGE_README.format(version=__version__, doc=reader.__doc__.strip()))
    if task is not None:
        shutil.copyfile(source, cov / f"{task}.{source.suffix[1:].lower()}")
    (target / "models").mkdir(exist_ok=True)
    (target / "models" / ".gitkeep").touch()  # git keeps no empty folder; DVC writes the models here
    write_json(target / "metrics" / "champion.json", {})  # a dep of `report`: `{}` until a first promotion
    write_json(target / "metrics" / "history.json", [])  # the loop's one row per cycle; an empty plot until then
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", target.resolve().name).strip("-._") or "llamaduo-project"
    (target / "pyproject.toml").write_text(PYPROJECT.format(name=name, version=__version__))
    # the written params must validate and set every key dvc.yaml tracks, as `llamaduo check` demands
    load_params(target / "params.yaml")
    missing = untracked_keys(target / "params.yaml", target / "dvc.yaml")
    if missing:
        raise UserError(f"the template's params.yaml misses keys its dvc.yaml tracks: {', '.join(missing)}")
    if remote:
        _run([*dvc, "remote", "add", "-d", "storage", remote], target, f"dvc remote add -d storage {remote}")
    _run(["git", "add", "-A"], target, "git add")
    what = f"task {task!r}" if task else "no task yet"
    _run(["git", "commit", "-q", "-m", f"llamaduo init ({what}; llamaduo {__version__})"], target, "git commit")
