"""The migration loop: one `dvc repro` per cycle with a growing synthetic volume, each cycle a git commit,
an MLflow child run and a registry version, until the promotion gate passes or a limit stops it.

State lives in `.llamaduo/loop.json` (which cycle, which parent run), so an interrupted loop resumes at the
cycle it was in; stages already done are skipped by DVC and service answers come from the call cache.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from llamaduo import paths
from llamaduo.atomic import write_json
from llamaduo.config import load_params
from llamaduo.cycle import cost, model_registry, tracking
from llamaduo.errors import LoopError
from llamaduo.providers.engine import total
from llamaduo.providers.local import stop_all


def volume_for(cycle: int, p) -> int:
    if cycle == 0:
        return 0
    return min(p.max_volume, round(p.start_volume * p.growth_factor ** (cycle - 1)))


def _git(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    res = subprocess.run(["git", *args], capture_output=True, text=True)
    if check and res.returncode != 0:
        raise LoopError(f"git {' '.join(args)} failed: {res.stderr.strip()}")
    return res


def _set_cycle_params(params_file: str, *, cycle: int, volume: int, previous: list[int]) -> None:
    """Edit params.yaml in place, keeping its comments and order (ruamel round-trip). `previous` are the
    earlier cycles' volumes: synthetic rows an earlier cycle already needed keep that cycle in their lineage."""
    from ruamel.yaml import YAML

    y = YAML()
    path = Path(params_file)
    doc = y.load(path.read_text())
    doc.setdefault("synth", {})
    doc["synth"]["volume"] = volume
    doc["synth"]["cycle"] = cycle
    doc["synth"]["previous_volumes"] = previous
    with path.open("w") as fh:
        y.dump(doc, fh)


def _load_json(path: Path, default):
    return json.loads(path.read_text()) if path.exists() else default


def _leaf_usages(u: dict) -> list[dict]:
    """The call-engine Usage dicts inside a stage's `usage` entry (flat, per provider, or with a `total`)."""
    if "calls" in u:
        return [u]
    if "total" in u:
        return _leaf_usages(u["total"])
    return [leaf for v in u.values() if isinstance(v, dict) for leaf in _leaf_usages(v)]


def _usage(metrics_dir: Path) -> dict:
    """The service calls of this cycle's stages, added up."""
    leaves = [u for name in ("synthesize", "baseline", "eval")
              for u in _leaf_usages(_load_json(metrics_dir / f"{name}.json", {}).get("usage", {}))]
    return {"calls": 0, "cached": 0, "input_tokens": 0, "output_tokens": 0, "cost_usd": 0.0} | total(leaves)


def _data_versions() -> dict:
    """md5 of each stage output from dvc.lock: which data and model this cycle used."""
    import yaml

    lock = yaml.safe_load(Path("dvc.lock").read_text()) if Path("dvc.lock").exists() else {}
    out = {}
    for body in (lock.get("stages") or {}).values():
        for o in body.get("outs", []):
            out[f"dvc.{o['path']}"] = o.get("md5", "")
    return out


def _say(msg: str) -> None:
    print(f"[llamaduo loop] {msg}", file=sys.stderr, flush=True)


def run(params_file: str = "params.yaml", *, dvc: tuple[str, ...] = ("dvc",)) -> dict:
    """Run cycles until the gate passes or a limit stops; return the final state (with `stopped_by`)."""
    if _git("rev-parse", "--is-inside-work-tree", check=False).returncode != 0:
        raise LoopError("`llamaduo loop` commits each cycle: run it inside a git repository (`git init`, `dvc init`)")
    params = load_params(params_file)
    state = _load_json(paths.LOOP_STATE, {"cycle": 0, "parent_run_id": None, "stopped_by": None})
    if state.get("stopped_by"):
        _say(f"the last loop stopped ({state['stopped_by']}); starting a new loop at cycle 0")
        state = {"cycle": 0, "parent_run_id": None, "stopped_by": None}
    parent = tracking.start_parent(params.mlflow, resume_id=state["parent_run_id"], tags={"llamaduo.tasks": ",".join(params.data.tasks)})
    state["parent_run_id"] = parent
    write_json(paths.LOOP_STATE, state)
    name = model_registry.model_name(params.mlflow.model_prefix, params.data.tasks)
    history = _load_json(paths.HISTORY, [])

    for cycle in range(state["cycle"], params.loop.max_cycles):
        spent = sum(h.get("cost_usd", 0) for h in history if h["cycle"] < cycle)
        if params.loop.max_cost_usd is not None and spent >= params.loop.max_cost_usd:
            return _stop(state, f"cost budget: ${spent:.2f} spent of `loop.max_cost_usd` {params.loop.max_cost_usd}")
        volume = volume_for(cycle, params.loop)
        if cycle > 0:
            _check_readable(params, volume)
        state["cycle"] = cycle
        write_json(paths.LOOP_STATE, state)
        _set_cycle_params(params_file, cycle=cycle, volume=volume,
                          previous=[volume_for(c, params.loop) for c in range(cycle)])
        _say(f"cycle {cycle} of at most {params.loop.max_cycles - 1}: synthetic volume {volume}; dvc repro")
        start = time.monotonic()
        try:
            rc = subprocess.call([*dvc, "repro"])
        finally:  # the service stages share one vLLM server per cycle; it never outlives the cycle
            stop_all()
        if rc != 0:
            raise LoopError(f"`dvc repro` failed in cycle {cycle} (exit {rc}); fix the cause and rerun `llamaduo loop`: "
                            f"it resumes at cycle {cycle} and pays for no service call twice")
        summary = _load_json(paths.SUMMARY, {})
        usage = _usage(paths.METRICS_DIR)
        g = summary["gate"]
        entry = {"cycle": cycle, "volume": volume, "synthetic_curated": summary.get("synthetic_curated"),
                 "train_rows": summary.get("train_rows"), "metric": g["metric"], "score": g["score"],
                 "ci95": g.get("ci95"), "precision": summary["precision"].get("mean"),
                 "similarity": summary["similarity"].get("mean"), "judge": params.judge.provider,
                 "wall_s": round(time.monotonic() - start, 1), **{k: usage[k] for k in ("calls", "cached", "cost_usd")},
                 "tokens": usage["input_tokens"] + usage["output_tokens"]}
        history = [h for h in history if h["cycle"] != cycle] + [entry]
        write_json(paths.HISTORY, history)
        rep = cost.write(params=params, baseline=_load_json(paths.BASELINE, {}),
                         loop_cost_usd=sum(h.get("cost_usd", 0) for h in history),
                         json_out=paths.COST, plot_out=paths.COST_PLOT)
        if rep is not None:
            _say(f"cost: service ${rep['service_usd_per_month']:.2f}/month vs local ${rep['local_usd_per_month']:.2f}/month; "
                 f"break-even month: {rep['break_even_month']}")
        commit = _commit(f"llamaduo cycle {cycle}: volume {entry['volume']}, {entry['metric']} {entry['score']}, "
                         f"{entry['calls']} paid calls")
        _record(params, parent, name, cycle, entry, commit, params_file)
        _say(f"cycle {cycle}: {entry['train_rows']} train rows ({entry['synthetic_curated']} synthetic), "
             f"{g['metric']} {g['score']} (95% CI {g.get('ci95')}), {usage['calls']} paid calls, "
             f"{entry['tokens']} tokens, ${usage['cost_usd']:.4f}, {entry['wall_s']} s")
        if _gate_and_promote(params, name, cycle):
            return _stop(state, f"gate passed at cycle {cycle}")
        state["cycle"] = cycle + 1
        write_json(paths.LOOP_STATE, state)
    return _stop(state, f"max cycles: `loop.max_cycles` is {params.loop.max_cycles}")


def _check_readable(params, volume: int) -> None:
    """Refuse a volume that training's step cap cannot read: every synthetic row beyond it is paid for and never
    trained on. Rows = coverage train (less the validation slice, as the train stage holds it out) + the volume."""
    from llamaduo.training.budget import rows_read
    from llamaduo.training.data import holdout_size

    if params.loop.allow_unread_rows:
        return
    split = _load_json(paths.METRICS_DIR / "prepare.json", {})
    coverage = sum(t.get("train", 0) for t in split.values() if isinstance(t, dict))
    rows = coverage - holdout_size(coverage, params.train) + volume
    read = rows_read(params.train, rows)
    if read < rows:
        raise LoopError(f"synthetic volume {volume} would give {rows} training rows, but `train.max_steps` "
                        f"({params.train.max_steps}) and `train.epochs` ({params.train.epochs:g}) let training read {read} of "
                        f"them: raise `train.max_steps` (or set it to null to train `train.epochs` epochs), or set "
                        f"`loop.allow_unread_rows: true` to pay for rows that are never trained on")


def _commit(message: str) -> str:
    """Commit params, lock and metrics (and the .gitignore files DVC writes); idempotent on resume."""
    ignores = [f for f in _git("ls-files", "-om", "--exclude-standard").stdout.split() if f.endswith(".gitignore")]
    _git("add", "params.yaml", "dvc.lock", str(paths.METRICS_DIR), *ignores)
    if _git("diff", "--cached", "--quiet", check=False).returncode != 0:
        _git("commit", "-q", "-m", message)
    return _git("rev-parse", "HEAD").stdout.strip()


def _record(params, parent: str, name: str, cycle: int, entry: dict, commit: str, params_file: str) -> None:
    import mlflow

    tracking.connect(params.mlflow)
    if cycle in tracking.logged_cycles(parent):
        return  # logged before an interruption
    versions = _data_versions()
    tags = {"git_commit": commit, **versions}
    child = tracking.log_cycle(parent_id=parent, cycle=cycle, params_file=params_file, metrics_dir=str(paths.METRICS_DIR),
                               tags=tags)
    with mlflow.start_run(run_id=child):
        ci = entry.get("ci95") or (None, None)
        merged = str(paths.MERGED) if (paths.MERGED / "config.json").is_file() else None
        model_registry.log_and_register(
            name=name, adapter_dir=str(paths.ADAPTER), base_dir=str(paths.BASE_MODEL), merged_dir=merged,
            base_md5=versions.get(f"dvc.{paths.BASE_MODEL}", ""),
            tags={"cycle": cycle, "metric": entry["metric"], "score": entry["score"], "ci_low": ci[0], "ci_high": ci[1],
                  "volume": entry["volume"], "git_commit": commit, "run_id": child})


def _gate_and_promote(params, name: str, cycle: int) -> bool:
    """Tag this cycle's version with the gate's decision; when it passed, move the alias and commit the champion."""
    import mlflow

    client = mlflow.MlflowClient()
    versions = client.search_model_versions(f"name = '{name}' and tag.cycle = '{cycle}'")
    if not versions:
        raise LoopError(f"no registry version of {name} for cycle {cycle}")
    version = max(versions, key=lambda v: int(v.version))
    # the report stage decided, against the champion in metrics/champion.json (one decision, in one place)
    g = _load_json(paths.SUMMARY, {})["gate"]
    passed, reason = g["passed"], g["reason"]
    client.set_model_version_tag(name, version.version, "gate", reason)
    _say(f"gate: {'PASS' if passed else 'not yet'}: {reason}")
    if passed:
        alias = params.mlflow.champion_alias
        model_registry.promote(name, version.version, alias=alias, reason=f"gate, cycle {cycle}: {reason}")
        model_registry.save_champion(name, alias, paths.CHAMPION)
        _commit(f"llamaduo cycle {cycle}: v{version.version} is now {alias!r} ({reason})")
    return passed


def _stop(state: dict, why: str) -> dict:
    state["stopped_by"] = why
    write_json(paths.LOOP_STATE, state)
    _say(f"stopped: {why}")
    return state
