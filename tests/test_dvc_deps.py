"""`dvc.yaml` is exact: each stage's deps cover every module of the package its script can import (walked with
ast, nothing executed), each stage lists the params keys that change its result and none of the runtime knobs,
and the paths the loop and the CLI read are paths dvc.yaml declares."""

import ast
from pathlib import Path

import pytest
import yaml

from conftest import ROOT
from llamaduo import config, paths

LIB = ROOT / "src" / "llamaduo"


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
    packages (importing a.b.c runs a and a.b first). Relative imports resolve against the file's package."""
    inside = LIB.parent in path.parents
    package = ""
    if inside:
        parts = path.relative_to(LIB.parent).with_suffix("").parts
        package = ".".join(parts[:-1])
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join(base + ([mod] if mod else []))
            names.add(mod)
            names |= {f"{mod}.{a.name}" for a in node.names}  # `from pkg import submodule`
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


def covered(f: Path, deps: list[str]) -> bool:
    rel = f.relative_to(ROOT)
    return any(rel == Path(d) or Path(d) in rel.parents for d in deps)


def uncovered(name: str, body: dict) -> list[str]:
    return sorted(str(f.relative_to(ROOT)) for f in closure(script_of(body["cmd"])) if not covered(f, body["deps"]))


@pytest.mark.parametrize("name", list(stages()))
def test_deps_cover_every_module_the_stage_imports(name):
    body = stages()[name]
    script = script_of(body["cmd"])
    assert str(script.relative_to(ROOT)) in body["deps"], f"stage `{name}`: its script is not a dep"
    missing = uncovered(name, body)
    assert not missing, f"stage `{name}` imports {missing}, which its deps in dvc.yaml do not cover"


def test_the_check_fails_when_a_dep_is_removed():
    body = stages()["curate"]
    deps = [d for d in body["deps"] if not d.endswith("/curation")]
    assert deps != body["deps"]
    missing = uncovered("curate", dict(body, deps=deps))
    assert "src/llamaduo/curation/compose.py" in missing and "src/llamaduo/curation/tokens.py" in missing


def test_imports_are_followed_through_packages_and_functions():
    files = {str(f.relative_to(ROOT)) for f in closure(ROOT / "stages" / "synthesize.py")}
    # synthesis imports curation inside a function, and config imports the provider and merger registries
    assert {"src/llamaduo/curation/compose.py", "src/llamaduo/providers/__init__.py",
            "src/llamaduo/merging/__init__.py", "src/llamaduo/synthesis/requests.py"} <= files
    assert "src/llamaduo/cycle/driver.py" not in files and "src/llamaduo/training/trainer.py" not in files


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
    dumped = config.services(config.Params())
    assert "concurrency" not in dumped["service"] and "threads" not in dumped["service"]["server"]
    assert dumped["service"]["model"] == "models/base" and dumped["service"]["server"]["seed"] == 0


def test_paths_the_loop_reads_are_declared_in_dvc_yaml():
    text = (ROOT / "dvc.yaml").read_text()
    for p in (paths.BASE_MODEL, paths.ADAPTER, paths.MERGED, paths.BASELINE, paths.SUMMARY, paths.HISTORY, paths.CHAMPION):
        assert str(p) in text, f"{p} (llamaduo/paths.py) is not in dvc.yaml"
    assert (ROOT / paths.CHAMPION).is_file()  # a dep of `report`: it must exist before any promotion
