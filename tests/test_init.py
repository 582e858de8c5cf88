"""`llamaduo init`: a user's own git + DVC project, made of exactly this repository's pipeline files (the templates
ARE dvc.yaml, params.yaml, stages/, prompts/ here), with the package pinned instead of its source as deps; and the
same from the built wheel, in a fresh venv that cannot see this checkout."""

import json
import os
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, copy_project
from llamaduo import __version__, cli
from llamaduo.errors import CoverageError, UserError
from llamaduo.project import init, layout, template

ROWS = [{"prompt": f"Summarize: item {i} is a {'red' if i % 2 else 'blue'} box of {i} apples.",
         "response": f"A {'red' if i % 2 else 'blue'} box with {i} apples."} for i in range(12)]


@pytest.fixture(autouse=True)
def git_identity(monkeypatch):
    # init makes a commit; the machine running the tests may have no git identity
    for who in ("AUTHOR", "COMMITTER"):
        monkeypatch.setenv(f"GIT_{who}_NAME", "test")
        monkeypatch.setenv(f"GIT_{who}_EMAIL", "test@example.invalid")
    monkeypatch.setenv("DVC_NO_ANALYTICS", "1")


def coverage_file(path: Path, rows=ROWS) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True).stdout


def check_project(demo: Path, task: str, base: Path = ROOT) -> None:
    """What init writes: this repo's files (dvc.yaml with the pinned version as its code dep, params.yaml with the
    task), the user's data, an empty history, one commit holding the user's project and nothing of the tool's.
    `base`: the repository's files as they were built into the wheel under test."""
    for rel in template.files(base):
        if rel.name not in ("dvc.yaml", "params.yaml"):
            assert (demo / rel).read_bytes() == (base / rel).read_bytes(), rel
    assert (demo / "dvc.yaml").read_text() == template.user_dvc_yaml((base / "dvc.yaml").read_text())
    ours, theirs = (base / "params.yaml").read_text().splitlines(), (demo / "params.yaml").read_text().splitlines()
    changed = [(a, b) for a, b in zip(ours, theirs) if a != b]  # every comment kept: only the tasks and split lines differ
    ratio = [b for a, b in changed if a.startswith("  train_ratio:")]
    # 12 rows: half of them test (the gate's 50-prompt floor, never more than half the rows)
    assert ratio == ["  train_ratio: 0.5  # sized for the gate by `llamaduo init`: 6 train / 6 test rows"]
    assert len(ours) == len(theirs) and [c for c in changed if not c[0].startswith("  train_ratio:")] == \
        ([] if task == "summarize" else [("  tasks: [summarize]", f"  tasks: [{task}]")])
    assert tomllib.loads((demo / "pyproject.toml").read_text())["project"]["dependencies"] == [f"llamaduo=={__version__}"]
    assert "prompt_id" in (demo / "data" / "coverage" / "README.md").read_text()  # the reader's formats
    assert json.loads((demo / "metrics" / "champion.json").read_text()) == {}
    assert json.loads((demo / "metrics" / "history.json").read_text()) == []
    assert len(git(demo, "log", "--oneline").splitlines()) == 1
    tracked = git(demo, "ls-files").split()
    assert f"data/coverage/{task}.jsonl" in tracked and "stages/prepare.py" in tracked and ".dvc/config" in tracked
    assert not [f for f in tracked if f.startswith(("src/", "bench/", "scripts/", "support/"))], "the tool's own files leaked in"
    assert git(demo, "status", "--porcelain") == ""


def test_init_writes_this_repository_s_project_shape(tmp_path, monkeypatch, capsys):
    src = coverage_file(tmp_path / "my export.jsonl")
    demo = tmp_path / "demo"
    rc = cli.main(["init", str(demo), "--task", "support", "--from", str(src), "--remote", str(tmp_path / "store")])
    assert rc == 0, capsys.readouterr().err
    check_project(demo, "support")
    assert (demo / "data" / "coverage" / "support.jsonl").read_bytes() == src.read_bytes()
    config = (demo / ".dvc" / "config").read_text()
    assert "remote = storage" in config and str(tmp_path / "store") in config
    monkeypatch.chdir(demo)
    assert cli.main(["check"]) == 0
    # a project pinned to another version refuses to run: its stages would record the wrong code
    pyproject = demo / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace(f"llamaduo=={__version__}", "llamaduo==9.9.9"))
    assert cli.main(["check"]) == 2
    assert f"pins llamaduo==9.9.9 but {__version__} is installed" in capsys.readouterr().err


def test_every_output_a_cycle_writes_outside_dvc_s_cache_is_committed_by_the_loop_or_ignored(tmp_path, monkeypatch):
    """In a project made by `llamaduo init`: the outputs dvc.yaml keeps out of DVC's cache (`cache: false`: DVC writes
    no .gitignore for them), the loop's own files and its working state, written as a cycle writes them, leave no
    change the loop would refuse to resume over, and the loop's commit leaves the tree clean."""
    from llamaduo import paths
    from llamaduo.cycle import driver

    demo = init(tmp_path / "demo", task="summarize", source=coverage_file(tmp_path / "export.jsonl"))
    monkeypatch.chdir(demo)
    uncached = driver._uncached_outs()
    assert "data/services.json" in uncached and "metrics/summary.json" in uncached
    written = [*uncached, paths.HISTORY, paths.COST, paths.COST_PLOT, paths.LOOP_STATE, ".llamaduo/calls.sqlite",
               ".llamaduo/checkpoints/abc/state.json"]
    for rel in written:
        (demo / rel).parent.mkdir(parents=True, exist_ok=True)
        (demo / rel).write_text("written by a cycle")
    (demo / "dvc.lock").write_text("schema: '2.0'\n")
    (demo / "notes.txt").write_text("the user's")
    assert driver._dirty("params.yaml") == ["notes.txt"]
    driver._commit("llamaduo cycle 0: test", "params.yaml", loop="L", cycle=0, step="cycle")
    assert git(demo, "status", "--porcelain", "--untracked-files=all") == "?? notes.txt\n"
    assert "data/services.json" in git(demo, "show", "--name-only", "--format=", "HEAD").split()


def test_user_dvc_yaml_swaps_the_source_deps_for_the_pinned_version():
    ours = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    theirs = yaml.safe_load(template.user_dvc_yaml((ROOT / "dvc.yaml").read_text()))
    assert "vars" not in theirs and {k: v for k, v in ours.items() if k not in ("stages", "vars")} == \
        {k: v for k, v in theirs.items() if k != "stages"}
    assert list(theirs["stages"]) == list(ours["stages"])
    for name, body in ours["stages"].items():
        mine = theirs["stages"][name]
        assert mine["deps"] == [d for d in body["deps"] if not d.startswith("${lib}")], name
        assert mine["params"] == [{"pyproject.toml": ["project.dependencies"]}, *body["params"]], name
        assert {k: v for k, v in mine.items() if k not in ("deps", "params")} == \
            {k: v for k, v in body.items() if k not in ("deps", "params")}, name
    with pytest.raises(ValueError, match="no `params:`"):  # a stage that could not carry the version
        template.user_dvc_yaml("stages:\n  a:\n    cmd: python stages/a.py\n    deps:\n      - ${lib}/x.py\n")


def test_init_refuses_a_non_empty_folder(tmp_path):
    (tmp_path / "demo").mkdir()
    (tmp_path / "demo" / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="is not empty"):
        init(tmp_path / "demo")
    assert [p.name for p in (tmp_path / "demo").iterdir()] == ["notes.txt"]
    # a step failing half-way (here `dvc init`) leaves nothing behind, so the command can simply be rerun
    with pytest.raises(UserError, match="dvc init failed"):
        init(tmp_path / "new", dvc=("false",))
    assert not (tmp_path / "new").exists()


def test_a_broken_coverage_file_fails_naming_it_and_writes_nothing(tmp_path):
    src = coverage_file(tmp_path / "export.jsonl")
    src.write_text(src.read_text() + '{"prompt": "Summarize: x", "response": 3}\n')
    with pytest.raises(CoverageError, match=rf"^{src}:13: `response` must be a string"):
        init(tmp_path / "demo", task="support", source=src)
    assert not (tmp_path / "demo").exists()
    with pytest.raises(CoverageError, match="is .jsonl, .csv or .parquet"):
        init(tmp_path / "demo", task="support", source=tmp_path / "export.txt")
    with pytest.raises(UserError, match="go together"):
        init(tmp_path / "demo", task="support")


def test_the_wheel_carries_the_templates_and_inits_a_project_without_this_checkout(tmp_path):
    """Build the wheel, install it (--no-deps) into a fresh venv that sees the heavy dependencies through a .pth
    file but not this checkout, and run what a new user runs: init, check, the data smoke test, one stage."""
    dist = tmp_path / "dist"
    src = copy_project(tmp_path / "src")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", str(src), "-w", str(dist)],
                   check=True, capture_output=True)
    (wheel,) = dist.glob("llamaduo-*.whl")
    # the wheel's templates are this repository's files (as copied for the build), byte for byte
    assert template.files(src) == template.files(ROOT)
    with zipfile.ZipFile(wheel) as z:
        packaged = sorted(n for n in z.namelist() if n.startswith(f"llamaduo/{layout.PACKAGED}/"))
        assert packaged == sorted(f"llamaduo/{layout.PACKAGED}/{rel.as_posix()}" for rel in template.files(src))
        for rel in template.files(src):
            assert z.read(f"llamaduo/{layout.PACKAGED}/{rel.as_posix()}") == (src / rel).read_bytes(), rel

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = venv / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    # the heavy dependencies (torch, dvc, ...) from this .venv; its editable llamaduo is a .pth there, and .pth
    # files inside a directory added this way are not read, so the wheel's copy is the only llamaduo importable
    heavy = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (site / "heavy.pth").write_text("".join(p + "\n" for p in sorted(heavy)))
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "-q", "--no-deps",
                    str(wheel)], check=True, capture_output=True)

    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env['PATH']}"  # `python` in dvc.yaml's cmds is the venv's

    def run(*cmd: str, cwd: Path = tmp_path) -> str:
        res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
        assert res.returncode == 0, f"{cmd}: {res.stdout}\n{res.stderr}"
        return res.stdout

    where = run("python", "-c", "import llamaduo, importlib.metadata as m; print(llamaduo.__file__, m.version('llamaduo'))")
    assert where.split()[0].startswith(str(venv)) and where.split()[1] == __version__, where
    assert run("llamaduo", "--version").strip() == f"llamaduo {__version__}"
    coverage_file(tmp_path / "small.jsonl")
    run("llamaduo", "init", "demo", "--task", "summarize", "--from", "small.jsonl")
    demo = tmp_path / "demo"
    check_project(demo, "summarize", src)
    assert run("llamaduo", "check", cwd=demo).strip() == "params.yaml: valid"
    assert "2 passed" in run("python", "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests", cwd=demo)
    assert "no loop has run" in run("llamaduo", "status", cwd=demo)
    # DVC reads the pinned version from pyproject.toml as the stage's params dep, and the stage runs from the wheel
    run("python", "-m", "dvc", "repro", "-q", "prepare", cwd=demo)
    lock = yaml.safe_load((demo / "dvc.lock").read_text())
    assert lock["stages"]["prepare"]["params"]["pyproject.toml"] == {"project.dependencies": [f"llamaduo=={__version__}"]}
    # init sized the split for the gate (half of 12 rows to test, in expectation); the hashed split's own sides
    from llamaduo.coverage import load_task, split
    from llamaduo.project.init import train_ratio_for

    data = yaml.safe_load((demo / "params.yaml").read_text())["data"]
    assert data["train_ratio"] == train_ratio_for(12) == 0.5
    train, test = split(load_task(demo / "data" / "coverage", "summarize"), train_ratio=data["train_ratio"], seed=data["seed"])
    assert json.loads((demo / "metrics" / "prepare.json").read_text())["summarize"] == {"train": len(train), "test": len(test)}
    assert len(train) + len(test) == 12 and len(test) >= 1


def test_a_users_test_split_is_sized_for_the_gate_not_the_demo():
    from llamaduo.coverage import split
    from llamaduo.project.init import test_prompts_for, train_ratio_for

    # the demo's 0.96 left a 183-row task 7 test prompts; a fifth of the rows, 50 at least, half at most, 300 at most
    assert [test_prompts_for(n) for n in (12, 183, 395, 1000, 5000)] == [6, 50, 79, 200, 300]
    # each row goes to test with chance 1 - train_ratio (a hash of its id): the expected test split is the target,
    # and what one seed gives lies within 3 standard deviations of it
    for n in (12, 183, 395, 1000, 5000):
        ratio = train_ratio_for(n)
        assert n * (1 - ratio) == pytest.approx(test_prompts_for(n), abs=1e-3)
        train, test = split([{"id": str(i)} for i in range(n)], train_ratio=ratio, seed=42)
        assert abs(len(test) - test_prompts_for(n)) <= 3 * (n * ratio * (1 - ratio)) ** 0.5 and len(train) == n - len(test)
