"""The migration loop: one `dvc repro` per cycle with a growing synthetic volume, each cycle a git commit,
an MLflow child run and a registry version, until the promotion gate passes or a limit stops it.

State lives in `.llamaduo/loop.json` (which cycle, which parent run), so an interrupted loop resumes at the
cycle it was in; stages already done are skipped by DVC and service answers come from the call cache.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

from llamaduo import budget, faults, intervals, paths
from llamaduo.atomic import replacing, write_json
from llamaduo.config import load_params
from llamaduo.cycle import cost, estimate, model_registry, tracking
from llamaduo.errors import LoopError
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


def _set_cycle_params(params_file: str, *, cycle: int, volume: int, previous: list[int], cycle_alpha: float | None = None) -> None:
    """Edit params.yaml in place, keeping its comments and order (ruamel round-trip). `previous` are the
    earlier cycles' volumes: synthetic rows an earlier cycle already needed keep that cycle in their lineage.
    `cycle_alpha` is this cycle's share of the gate's error (None: the gate's whole `alpha`)."""
    from ruamel.yaml import YAML

    y = YAML()
    path = Path(params_file)
    doc = y.load(path.read_text())
    doc.setdefault("synth", {})
    doc["synth"]["volume"] = volume
    doc["synth"]["cycle"] = cycle
    doc["synth"]["previous_volumes"] = previous
    doc.setdefault("gate", {})
    doc["gate"]["cycle_alpha"] = cycle_alpha
    with replacing(path) as tmp, open(tmp, "w") as fh:  # a kill mid-write leaves the old file, never half of one
        y.dump(doc, fh)


def _load_json(path: Path, default):
    return json.loads(path.read_text()) if path.exists() else default


def _usage(metrics_dir: Path) -> dict:
    """The service calls of this cycle's stages, added up."""
    from llamaduo.reporting.summary import usage

    found = [_load_json(metrics_dir / f"{name}.json", {}) for name in ("synthesize", "baseline", "eval")]
    return {"cached": 0, "input_tokens": 0, "output_tokens": 0} | usage(found)


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


def _uncached_outs() -> list[str]:
    """The outputs dvc.yaml declares with `cache: false` (the metrics, data/services.json), as DVC reads them: DVC
    records their hashes in dvc.lock but keeps no copy and writes no .gitignore for them, so git must hold them, or a
    clone's dvc.lock names files it does not have and a resumed loop finds them untracked."""
    from dvc.exceptions import NotDvcRepoError
    from dvc.repo import Repo

    try:
        with Repo() as repo:
            return sorted(os.path.relpath(o.fs_path) for o in repo.index.outs if not o.use_cache)
    except NotDvcRepoError:  # no DVC project: no stage outputs
        return []


# what the loop itself writes and commits: a tree dirty only here is a loop that was interrupted, not user edits.
# With DVC's .gitignore files for the cached outputs and .gitignore's `.llamaduo/`, every file the pipeline and the
# loop write is committed here or ignored
def _loop_paths(params_file: str) -> list[str]:
    ignores = [f for f in _git("ls-files", "-om", "--exclude-standard").stdout.split() if f.endswith(".gitignore")]
    outs = [o for o in _uncached_outs() if Path(o).exists()]  # a pathspec naming no file fails `git add`
    return [params_file, "dvc.lock", str(paths.METRICS_DIR), *outs, *ignores]


def _dirty(params_file: str) -> list[str]:
    """Changed, staged or untracked files (git's ignores apply) outside what the loop writes."""
    ours = _loop_paths(params_file)
    out = []
    for line in _git("status", "--porcelain", "--untracked-files=all").stdout.splitlines():
        path = line[3:].split(" -> ")[-1].strip('"')
        if not any(path == p or path.startswith(p.rstrip("/") + "/") for p in ours):
            out.append(path)
    return out


@contextlib.contextmanager
def _lock():
    """One loop per repository: an exclusive lock held for the loop's lifetime. A second `llamaduo loop` exits at once,
    naming the holder; the kernel drops the lock when its holder dies, so a killed loop never blocks a restart."""
    import fcntl

    paths.LOOP_LOCK.parent.mkdir(parents=True, exist_ok=True)
    fh = open(paths.LOOP_LOCK, "a+")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.seek(0)
        holder = fh.read().strip() or "unknown"
        fh.close()
        raise LoopError(f"another `llamaduo loop` is running in this repository (holder: {holder}; lock {paths.LOOP_LOCK}); "
                        "wait for it, or stop it and rerun: the loop resumes where it stopped") from None
    try:
        fh.seek(0)
        fh.truncate()
        fh.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}))
        fh.flush()
        yield
    finally:
        fh.close()


def _spent(params, state: dict) -> float:
    """What this loop's service calls cost so far: the call cache records each paid call with its price, so calls paid
    in a stage that later crashed count too (the metrics files only hold the last successful run's usage)."""
    from llamaduo.providers.cache import CallCache

    cache = CallCache(params.cache.path)
    try:
        return cache.paid(since=state["started_at"])["cost_usd"]
    finally:
        cache.close()


def run(params_file: str = "params.yaml", *, dvc: tuple[str, ...] = ("dvc",), allow_dirty: bool = False) -> dict:
    """Run cycles until the gate passes or a limit stops; return the final state (with `stopped_by`).

    Every side effect of a cycle (the commit, the MLflow child run, the registry version, the promotion) is recorded
    in the loop state the moment it is done, and a restart checks that record (or finds the effect by its tags)
    instead of doing it again: a kill at any point resumes with one commit, one child run and one version per cycle."""
    if _git("rev-parse", "--is-inside-work-tree", check=False).returncode != 0:
        raise LoopError("`llamaduo loop` commits each cycle: run it inside a git repository (`git init`, `dvc init`)")
    params = load_params(params_file)
    with _lock():
        dirty = _dirty(params_file)
        if dirty and not allow_dirty:
            raise LoopError(f"the working tree has changes the loop did not make: {', '.join(dirty[:5])}"
                            f"{' ...' if len(dirty) > 5 else ''}. Each cycle's commit names the code it ran, so commit or "
                            "stash them first, or pass `--allow-dirty` (they are never committed by the loop)")
        return _run(params, params_file, dvc)


def _run(params, params_file: str, dvc: tuple[str, ...]) -> dict:
    state = _load_json(paths.LOOP_STATE, None)
    if state is not None and budget.stopped_by_budget(state):
        # a budget stop is a pause: the same loop goes on, counting what it paid from the same start
        before = _spent(params, state)
        cap = params.loop.max_cost_usd
        _say(f"resuming the loop the cost budget stopped at cycle {state['cycle']}: ${before:.4f} spent before counts "
             f"against `loop.max_cost_usd` " + (f"${cap:g}" if cap is not None else "(now null: no cap)"))
        state["stopped_by"] = None
        state.pop(budget.STOP_KEY)
    elif state is None or state.get("stopped_by"):
        if state:
            _say(f"the last loop stopped ({state['stopped_by']}); starting a new loop at cycle 0")
        state = {"cycle": 0, "parent_run_id": None, "stopped_by": None, "started_at": time.time(), "cycles": {}}
    state.setdefault("started_at", time.time())
    state.setdefault("cycles", {})
    state.setdefault("key", uuid.uuid4().hex)
    write_json(paths.LOOP_STATE, state)  # the key before the parent run: a restart finds a run it did not record by it
    parent = tracking.start_parent(params.mlflow, resume_id=state["parent_run_id"], key=state["key"],
                                   tags={"llamaduo.tasks": ",".join(params.data.tasks)})
    state["parent_run_id"] = parent
    write_json(paths.LOOP_STATE, state)
    name = model_registry.model_name(params.mlflow.model_prefix, params.data.tasks)

    for cycle in range(state["cycle"], params.loop.max_cycles):
        rec = state["cycles"].setdefault(str(cycle), {})
        state["cycle"] = cycle
        if not rec.get("commit"):
            rec["commit"] = _find_commit(parent, cycle, "cycle")  # committed, then killed before recording it
        if not rec.get("commit"):
            spent = _spent(params, state)
            cap = params.loop.max_cost_usd
            if cap is not None and spent >= cap:
                state[budget.STOP_KEY] = {"spent_usd": spent, "max_cost_usd": cap}
                return _stop(state, f"cost budget: ${spent:.4f} spent of `loop.max_cost_usd` ${cap:g} before cycle {cycle}; "
                                    f"raise it and rerun `llamaduo loop`: it resumes at cycle {cycle} and counts the "
                                    f"${spent:.4f} already spent")
            write_json(paths.LOOP_STATE, state)
            est = estimate.record(estimate.plan(params, {cycle: volume_for(cycle, params.loop)}, spent_usd=spent,
                                                alpha_spent=alpha_spent(state))["cycles"][0])
            _say(f"pre-flight estimate: {estimate.describe(est)}")
            # this cycle's share of the gate's error: what the earlier cycles of this loop left, over the cycles left
            share = intervals.cycle_alpha(params.gate.alpha, alpha_spent(state), cycle, params.loop.max_cycles)
            rec["commit"] = _cycle(params, params_file, dvc, parent, cycle, cycle_alpha=share)
        write_json(paths.LOOP_STATE, state)
        faults.point("loop:after_commit")
        entry = next(h for h in _load_json(paths.HISTORY, []) if h["cycle"] == cycle)
        if params.loop.push and not rec.get("pushed"):
            from llamaduo.cycle import remote

            pushed = remote.push()
            rec["pushed"] = pushed["pushed"]
            if pushed["pushed"]:
                _say(f"cycle {cycle}: pushed the outputs to DVC remote {pushed['remote']!r}")
            write_json(paths.LOOP_STATE, state)
        _record(params, parent, name, cycle, entry, rec, params_file, state)
        if _gate_and_promote(params, params_file, name, cycle, rec, state, parent):
            return _stop(state, f"gate passed at cycle {cycle}")
        state["cycle"] = cycle + 1
        write_json(paths.LOOP_STATE, state)
    return _stop(state, f"max cycles: `loop.max_cycles` is {params.loop.max_cycles}")


def alpha_spent(state: dict) -> float:
    """The gate's error this loop's cycles have spent: each cycle's share, recorded with its decision (a cycle
    that was killed before its decision was recorded reran the same test, at the same share, and spends it once)."""
    return sum(rec.get("alpha", 0.0) for rec in state.get("cycles", {}).values())


def _cycle(params, params_file: str, dvc: tuple[str, ...], parent: str, cycle: int, *, cycle_alpha: float | None = None) -> str:
    """One cycle's pipeline: params for its volume, `dvc repro`, the history row and cost report; commit them."""
    volume = volume_for(cycle, params.loop)
    if cycle > 0:
        _check_readable(params, volume)
    _set_cycle_params(params_file, cycle=cycle, volume=volume, previous=[volume_for(c, params.loop) for c in range(cycle)],
                      cycle_alpha=cycle_alpha)
    _say(f"cycle {cycle} of at most {params.loop.max_cycles - 1}: synthetic volume {volume}; dvc repro")
    start = time.monotonic()
    try:
        rc = subprocess.call([*dvc, "repro"])
    finally:  # the service stages share one vLLM server per cycle; it never outlives the cycle
        stop_all()
    if rc != 0:
        raise LoopError(f"`dvc repro` failed in cycle {cycle} (exit {rc}); fix the cause and rerun `llamaduo loop`: "
                        f"it resumes at cycle {cycle} and pays for no service call twice")
    faults.point("loop:after_stages")
    summary = _load_json(paths.SUMMARY, {})
    usage = _usage(paths.METRICS_DIR)
    g = summary["gate"]
    entry = {"cycle": cycle, "volume": volume, "synthetic_curated": summary.get("synthetic_curated"),
             "train_rows": summary.get("train_rows"), "metric": g["metric"], "score": g["score"],
             "ci95": g.get("ci95"), "precision": summary["precision"].get("mean"),
             "similarity": summary["similarity"].get("mean"), "judge": params.judge.provider,
             "wall_s": round(time.monotonic() - start, 1), **{k: usage[k] for k in ("calls", "cached", "cost_usd")},
             "tokens": usage["input_tokens"] + usage["output_tokens"], "estimate": estimate.recorded(cycle),
             # every judge's figures with their intervals (the report's Figure 2 draws one line per judge and metric)
             "judges": _load_json(paths.METRICS_DIR / "headline.json", {}).get("judge")}
    history = [h for h in _load_json(paths.HISTORY, []) if h["cycle"] != cycle] + [entry]
    write_json(paths.HISTORY, history)
    rep = cost.write(params=params, baseline=_load_json(paths.BASELINE, {}),
                     loop_cost_usd=sum(h.get("cost_usd", 0) for h in history),
                     json_out=paths.COST, plot_out=paths.COST_PLOT)
    if rep is not None:
        _say(f"cost: service ${rep['service_usd_per_month']:.2f}/month vs local ${rep['local_usd_per_month']:.2f}/month; "
             f"break-even month: {rep['break_even_month']}")
    _report()
    _say(f"cycle {cycle}: {entry['train_rows']} train rows ({entry['synthetic_curated']} synthetic), "
         f"{g['metric']} {g['score']} (95% CI {g.get('ci95')}), {usage['calls']} paid calls, "
         f"{entry['tokens']} tokens, ${usage['cost_usd']:.4f}, {entry['wall_s']} s")
    sha = _commit(f"llamaduo cycle {cycle}: volume {entry['volume']}, {entry['metric']} {entry['score']}, "
                  f"{entry['calls']} paid calls", params_file, loop=parent, cycle=cycle, step="cycle")
    faults.point("loop:cycle_committed")
    return sha


def _report() -> None:
    """metrics/report.html with this cycle's history (the report stage wrote it before the history row existed)."""
    from llamaduo.reporting import html_report, page_data

    html_report.write(paths.REPORT, page_data.load(paths.METRICS_DIR))


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


def _find_commit(loop: str, cycle: int, step: str) -> str | None:
    """The commit this loop made for `cycle`'s `step`, found by its trailers (a kill after committing and before
    recording the sha must not make a second commit)."""
    res = _git("log", "--all-match", f"--grep=^Llamaduo-Loop: {loop}$", f"--grep=^Llamaduo-Cycle: {cycle}$",
               f"--grep=^Llamaduo-Step: {step}$", "--format=%H", "-n", "1", check=False)
    return res.stdout.strip() or None


def _commit(message: str, params_file: str, *, loop: str, cycle: int, step: str) -> str:
    """Commit only what the loop wrote (params, lock, metrics and the .gitignore files DVC writes), naming the paths:
    whatever else the user has staged stays staged and out of the cycle's commit. Trailers identify the commit."""
    ours = _loop_paths(params_file)
    _git("add", "-A", "--", *ours)
    trailers = f"Llamaduo-Loop: {loop}\nLlamaduo-Cycle: {cycle}\nLlamaduo-Step: {step}"
    _git("commit", "-q", "--allow-empty", "-m", message, "-m", trailers, "--", *ours)
    return _git("rev-parse", "HEAD").stdout.strip()


def _record(params, parent: str, name: str, cycle: int, entry: dict, rec: dict, params_file: str, state: dict) -> None:
    """The cycle's MLflow child run, then its registry version, each recorded in the loop state as soon as it exists."""
    import mlflow

    tracking.connect(params.mlflow)
    versions = _data_versions()
    if not rec.get("run_id"):
        committed_ms = int(_git("show", "-s", "--format=%ct", rec["commit"]).stdout) * 1000
        run_id = tracking.find_cycle_run(parent, cycle) or tracking.log_cycle(
            parent_id=parent, cycle=cycle, params_file=params_file, metrics_dir=str(paths.METRICS_DIR),
            tags={"git_commit": rec["commit"], **versions}, at_ms=committed_ms)
        faults.point("loop:child_run_logged")
        rec["run_id"] = run_id
        write_json(paths.LOOP_STATE, state)
        faults.point("loop:after_child_run")
    if not rec.get("version"):
        with mlflow.start_run(run_id=rec["run_id"]):
            ci = entry.get("ci95") or (None, None)
            merged = str(paths.MERGED) if (paths.MERGED / "config.json").is_file() else None
            version = model_registry.log_and_register(
                name=name, adapter_dir=str(paths.ADAPTER), base_dir=str(paths.BASE_MODEL), merged_dir=merged,
                base_md5=versions.get(f"dvc.{paths.BASE_MODEL}", ""),
                tags={"cycle": cycle, "loop": parent, "metric": entry["metric"], "score": entry["score"], "ci_low": ci[0],
                      "ci_high": ci[1], "volume": entry["volume"], "git_commit": rec["commit"], "run_id": rec["run_id"]})
        faults.point("loop:version_registered")
        rec["version"] = version
        write_json(paths.LOOP_STATE, state)
        faults.point("loop:after_register")


def _gate_and_promote(params, params_file: str, name: str, cycle: int, rec: dict, state: dict, parent: str) -> bool:
    """Tag this cycle's version with the gate's decision; when it passed, move the alias and commit the champion."""
    import mlflow

    # the report stage decided, against the champion in metrics/champion.json (one decision, in one place);
    # the cycle's commit holds that decision even if the working tree moved on after a kill
    g = json.loads(_git("show", f"{rec['commit']}:{paths.SUMMARY}").stdout)["gate"]
    passed, reason = g["passed"], g["reason"]
    if "gate" not in rec:
        mlflow.MlflowClient().set_model_version_tag(name, rec["version"], "gate", reason)
        rec["gate"] = passed
        # the share of gate.alpha this test spent, with the decision in one write: it survives a kill
        rec["alpha"] = (g.get("test") or {}).get("alpha", 0.0)
        state["alpha_spent"] = alpha_spent(state)
        write_json(paths.LOOP_STATE, state)
        _say(f"gate: {'PASS' if passed else 'not yet'}: {reason}")
    if passed and not rec.get("promoted"):
        alias = params.mlflow.champion_alias
        model_registry.promote(name, rec["version"], alias=alias, reason=f"gate, cycle {cycle}: {reason}")
        model_registry.save_champion(name, alias, paths.CHAMPION)
        sha = _find_commit(parent, cycle, "promotion") or _commit(
            f"llamaduo cycle {cycle}: v{rec['version']} is now {alias!r} ({reason})", params_file,
            loop=parent, cycle=cycle, step="promotion")
        faults.point("loop:promotion_committed")
        rec["promoted"] = sha
        write_json(paths.LOOP_STATE, state)
    return passed


def _stop(state: dict, why: str) -> dict:
    state["stopped_by"] = why
    write_json(paths.LOOP_STATE, state)
    _say(f"stopped: {why}")
    return state
