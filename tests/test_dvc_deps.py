"""`dvc.yaml` is exact: each stage's deps are the modules of the package its script can import, file by file,
no more and no fewer (walked with ast, nothing executed), and dvc.lock records them, so an edit reruns exactly the
stages that import the edited file (checked with `dvc status` on a copy of the project); each stage lists the
params keys that change its result and none of the runtime knobs; the paths the loop and the CLI read are paths
dvc.yaml declares."""

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, copy_project
from llamaduo import config, paths, registries
from llamaduo.services import services

LIB = ROOT / "src" / "llamaduo"
# the registries' name tables: {table name: {name: "module:Class"}}
TABLES = {name: table for name, table in vars(registries).items() if isinstance(table, dict) and not name.startswith("_")}


def dvc_yaml() -> dict:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text())


def expand(entry: str, variables: dict) -> str:
    for k, v in variables.items():
        entry = entry.replace("${" + k + "}", str(v))
    return entry


def stages() -> dict[str, dict]:
    doc = dvc_yaml()
    variables = {k: v for d in doc.get("vars", []) for k, v in d.items()}
    out = {}
    for name, body in doc["stages"].items():
        deps = [expand(d, variables) for d in body.get("deps", [])]
        out[name] = {"cmd": body["cmd"], "deps": deps, "params": body.get("params", [])}
    return out


def module_file(name: str) -> Path | None:
    """The file of module `llamaduo.x.y` (a package's __init__.py), or None when it is not ours."""
    if name != "llamaduo" and not name.startswith("llamaduo."):
        return None
    base = LIB.parent.joinpath(*name.split("."))
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    return None


def imported(path: Path) -> set[str]:
    """Every module of ours `path` can import, at the top or inside a function (both run), with their parent
    packages (importing a.b.c runs a and a.b first), and the modules of a registry table it resolves names
    through. Relative imports resolve against the file's package."""
    inside = LIB.parent in path.parents
    package = ""
    if inside:
        parts = path.relative_to(LIB.parent).with_suffix("").parts
        package = ".".join(parts[:-1])
    names = set()
    source = path.read_text()
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join(base + ([mod] if mod else []))
            names.add(mod)
            names |= {f"{mod}.{a.name}" for a in node.names}  # `from pkg import submodule`
    # a name resolved through a registry's table (`importlib.import_module` on the table's `module:Class` entries)
    # can import every module of that table
    if "import_module" in source:
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module == "llamaduo.registries":
                names |= {entry.partition(":")[0] for a in node.names for entry in TABLES.get(a.name, {}).values()}
    out = set()
    for n in names:
        parts = n.split(".")
        out |= {".".join(parts[:i]) for i in range(1, len(parts) + 1)}
    return {n for n in out if module_file(n) is not None}


def closure(script: Path) -> set[Path]:
    """The package files a stage script imports, transitively."""
    seen: set[Path] = set()
    todo = [module_file(m) for m in imported(script)]
    while todo:
        f = todo.pop()
        if f not in seen:
            seen.add(f)
            todo += [module_file(m) for m in imported(f)]
    return seen


def script_of(cmd: str) -> Path:
    return ROOT / next(w for w in cmd.split() if w.startswith("stages/") and w.endswith(".py"))


def library_deps(deps: list[str]) -> set[str]:
    return {d for d in deps if d.startswith(f"{LIB.relative_to(ROOT)}/")}


def mismatch(body: dict) -> tuple[list[str], list[str]]:
    """The package files the stage imports that its deps lack, and the deps it lists that it does not import."""
    imports = {str(f.relative_to(ROOT)) for f in closure(script_of(body["cmd"]))}
    listed = library_deps(body["deps"])
    return sorted(imports - listed), sorted(listed - imports)


@pytest.mark.parametrize("name", list(stages()))
def test_deps_are_exactly_the_modules_the_stage_imports(name):
    body = stages()[name]
    script = script_of(body["cmd"])
    assert str(script.relative_to(ROOT)) in body["deps"], f"stage `{name}`: its script is not a dep"
    folders = [d for d in library_deps(body["deps"]) if not d.endswith(".py")]
    assert not folders, f"stage `{name}` lists folders {folders}: list the files it imports"
    missing, extra = mismatch(body)
    assert not missing, f"stage `{name}` imports {missing}, which its deps in dvc.yaml do not list"
    assert not extra, f"stage `{name}` lists {extra}, which it does not import: an edit there would rerun it for nothing"


def test_the_check_fails_on_a_missing_and_on_an_extra_dep():
    body = stages()["curate"]
    deps = [d for d in body["deps"] if d != "src/llamaduo/curation/tokens.py"] + ["src/llamaduo/providers/base.py"]
    assert mismatch(dict(body, deps=deps)) == (["src/llamaduo/curation/tokens.py"], ["src/llamaduo/providers/base.py"])


def test_imports_are_followed_through_packages_and_functions():
    files = {str(f.relative_to(ROOT)) for f in closure(ROOT / "stages" / "synthesize.py")}
    # synthesis imports curation inside a function; importing a module runs its package's __init__ first
    assert {"src/llamaduo/curation/compose.py", "src/llamaduo/curation/__init__.py", "src/llamaduo/providers/__init__.py",
            "src/llamaduo/synthesis/requests.py", "src/llamaduo/registries.py"} <= files
    assert "src/llamaduo/cycle/driver.py" not in files and "src/llamaduo/training/trainer.py" not in files
    # the provider classes are imported by name from the registry's table, and bring what they import
    assert {"src/llamaduo/providers/local.py", "src/llamaduo/providers/gemini.py", "src/llamaduo/hardware.py",
            "src/llamaduo/vllm_cpu.py"} <= files
    merge = {str(f.relative_to(ROOT)) for f in closure(ROOT / "stages" / "merge.py")}
    assert {"src/llamaduo/merging/weighted_average.py", "src/llamaduo/merging/parameter_selection.py"} <= merge
    # the params schema reads the registries' name tables, not the providers and mergers themselves
    assert {str(f.relative_to(ROOT)) for f in closure(ROOT / "stages" / "prepare.py")} & {
        "src/llamaduo/providers/__init__.py", "src/llamaduo/providers/base.py", "src/llamaduo/merging/__init__.py"} == set()


def dvc_status(proj: Path) -> dict[str, dict[str, str]]:
    """`dvc status`: each stage's changed deps, {path: how} (the outputs a copy lacks are left aside)."""
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    res = subprocess.run(["dvc", "status", "--json"], cwd=proj, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    out = {}
    for stage, changes in json.loads(res.stdout or "{}").items():
        deps = {k: v for c in changes if isinstance(c, dict) for k, v in c.get("changed deps", {}).items()}
        out[stage.split(":")[-1]] = deps
    return out


def rerun_by(status: dict[str, dict[str, str]], path: str) -> set[str]:
    return {stage for stage, deps in status.items() if deps.get(path) == "modified"}


@pytest.fixture(scope="module")
def project_copy(tmp_path_factory) -> Path:
    proj = copy_project(tmp_path_factory.mktemp("project"))
    subprocess.run(["git", "init", "-q"], cwd=proj, check=True)
    return proj


def test_dvc_lock_records_every_code_dep_as_it_is(project_copy):
    # outputs and pipeline data are absent from a copy; every file the repository holds matches dvc.lock, so a
    # checkout reruns nothing for code it did not change
    tracked = {str(f.relative_to(ROOT)) for f in [*LIB.rglob("*.py"), *(ROOT / "stages").glob("*.py")]}
    stale = {stage: {p: how for p, how in deps.items() if p in tracked} for stage, deps in dvc_status(project_copy).items()}
    assert not {k: v for k, v in stale.items() if v}, f"dvc.lock is stale: {stale}"


@pytest.mark.parametrize(("path", "reruns"), [
    # the provider base class: the stages that call a service LLM, never training
    ("src/llamaduo/providers/base.py", {"synthesize", "baseline", "judge"}),
    # the merger registry: the merge stage alone
    ("src/llamaduo/merging/__init__.py", {"merge"}),
    # the trainer: training, and the merge stage that measures validation loss as training does; not inference
    ("src/llamaduo/training/trainer.py", {"train", "merge"}),
])
def test_an_edit_reruns_exactly_the_stages_that_import_the_file(project_copy, path, reruns):
    f = project_copy / path
    original = f.read_text()
    try:
        f.write_text(original + "# an edit\n")
        assert rerun_by(dvc_status(project_copy), path) == reruns
    finally:
        f.write_text(original)


SECTIONS = {name: f.annotation for name, f in config.Params.model_fields.items()}


def listed_params(body: dict) -> list[str]:
    out = []
    for p in body["params"]:
        out += [p] if isinstance(p, str) else [k for v in p.values() for k in v]
    return out


@pytest.mark.parametrize("name", list(stages()))
def test_params_are_the_keys_that_change_the_result(name):
    keys = listed_params(stages()[name])
    for section in {k.split(".")[0] for k in keys}:
        if section == "providers":  # named entries: only the `services` stage reads them, and filters them itself
            # (with `compute`: a local server's dtype follows `compute.dtype`)
            assert name == "services" and sorted(keys) == ["compute", "providers"], f"stage `{name}` lists `providers`: depend on data/services.json"
            continue
        model = SECTIONS[section]
        runtime = config.runtime_keys(model)
        listed = {k.split(".", 1)[1] for k in keys if "." in k and k.split(".")[0] == section}
        if section in keys:  # the whole section: only where it has no runtime knob
            assert not runtime, f"stage `{name}` lists all of `{section}`, whose runtime keys {sorted(runtime)} would rerun it"
            continue
        assert not listed & runtime, f"stage `{name}` lists runtime keys {sorted(listed & runtime)}"
        want = set(model.model_fields) - runtime
        assert listed == want, f"stage `{name}`: `{section}` keys missing {sorted(want - listed)}, unknown {sorted(listed - want)}"


def test_providers_reach_the_service_stages_only_through_their_result_fields():
    st = stages()
    assert sorted(listed_params(st["services"])) == ["compute", "providers"]
    for name in ("synthesize", "baseline", "judge"):
        assert "data/services.json" in st[name]["deps"], name
        assert not any(k.startswith("providers") for k in listed_params(st[name])), name
    dumped = services(config.Params())
    assert "concurrency" not in dumped["service"] and "threads" not in dumped["service"]["server"]
    assert dumped["service"]["model"] == "models/base" and dumped["service"]["server"]["seed"] == 0


def test_paths_the_loop_reads_are_declared_in_dvc_yaml():
    text = (ROOT / "dvc.yaml").read_text()
    for p in (paths.BASE_MODEL, paths.ADAPTER, paths.MERGED, paths.BASELINE, paths.SUMMARY, paths.HISTORY, paths.CHAMPION):
        assert str(p) in text, f"{p} (llamaduo/paths.py) is not in dvc.yaml"
    assert (ROOT / paths.CHAMPION).is_file()  # a dep of `report`: it must exist before any promotion
