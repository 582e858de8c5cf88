"""The `llamaduo` command: make a project, capture coverage data from recorded traffic, check params, run one cycle,
run the loop, say where it stands, move the champion, serve it."""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

from llamaduo import __version__, paths
from llamaduo.config import load_params
from llamaduo.errors import ParamsError, UserError
from llamaduo.project.tracked import untracked_keys


def _params(args):
    return load_params(args.params)


def _pinned_version(pyproject: Path) -> str | None:
    """The `llamaduo==X` a project made by `llamaduo init` pins in pyproject.toml (None elsewhere, e.g. here)."""
    import tomllib

    if not pyproject.is_file():
        return None
    deps = tomllib.loads(pyproject.read_text()).get("project", {}).get("dependencies", [])
    pins = [m.group(1) for d in deps if (m := re.fullmatch(r"\s*llamaduo\s*==\s*([^\s;,]+)\s*", d))]
    return pins[0] if pins else None


def _pipeline_params(args):
    """Params for running the pipeline: valid, and setting every key dvc.yaml tracks."""
    params = load_params(args.params)
    pinned = _pinned_version(Path(args.params).parent / "pyproject.toml")
    if pinned is not None and pinned != __version__:
        # the stages depend on the pin, not on the code that runs: a mismatch would record results under the wrong version
        raise UserError(f"pyproject.toml pins llamaduo=={pinned} but {__version__} is installed: "
                        f"`pip install llamaduo=={pinned}`, or pin {__version__} there (the stages then rerun)")
    missing = untracked_keys(args.params)
    if missing:
        raise ParamsError(f"{args.params} does not set these keys, which dvc.yaml tracks (DVC needs each present; "
                          f"add them): {', '.join(missing)}")
    return params


def _check(args) -> int:
    _pipeline_params(args)
    print(f"{args.params}: valid")
    return 0


def _stop(args) -> int:
    from llamaduo.providers.local import stop_all

    print(f"stopped {stop_all()} shared local vLLM server(s)")
    return 0


def _stop_servers() -> None:
    """Stop the vLLM server the cycle's service stages shared (never left running after a run)."""
    from llamaduo.providers.local import stop_all

    if stop_all():
        print("stopped the shared local vLLM server", file=sys.stderr)


def _run(args) -> int:
    _pipeline_params(args)
    try:
        return subprocess.call(["dvc", "repro", *args.targets])
    finally:
        _stop_servers()


def _plan(args) -> int:
    from llamaduo.cycle import driver, estimate

    print(estimate.table(estimate.loop_plan(_params(args), driver.volume_for, driver.alpha_spent)))
    return 0


def _loop(args) -> int:
    from llamaduo.cycle import driver

    if args.dry_run:
        return _plan(args)
    _pipeline_params(args)
    state = driver.run(args.params, allow_dirty=args.allow_dirty)
    print(state["stopped_by"])
    return 0


def _capture(args) -> int:
    from llamaduo.capture import capture, report

    summary = capture(_params(args), sources=args.source or None, dry_run=args.dry_run, recheck=args.recheck)
    print(report(summary) or "capture: no source is enabled (params `capture.mlflow.experiment`, `capture.openai.enabled`, "
                              "`capture.otlp.files`)")
    return 0


def _init(args) -> int:
    from llamaduo.project import init

    target = init(args.dir, task=args.task, source=args.source, remote=args.remote)
    print(f"{target}: a new llamaduo {__version__} project (git + DVC), one commit")
    if args.task:
        print(f"  data/coverage/{args.task}{Path(args.source).suffix.lower()} holds your coverage data; `data.tasks` is [{args.task}]")
    else:
        print("  put each task's coverage file in data/coverage/ (formats: data/coverage/README.md) and list it in `data.tasks`")
    if args.remote:
        print(f"  DVC remote `storage` (default): {args.remote}")
    print(f"next: cd {target} && pytest tests && llamaduo check && llamaduo run")
    return 0


def _status(args) -> int:
    from llamaduo.project import status

    print(status(Path(args.params).parent))
    return 0


def _cost(args) -> int:
    import json

    from llamaduo.cycle import cost

    p = _params(args)
    read = lambda f, d: json.loads(Path(f).read_text()) if Path(f).exists() else d  # noqa: E731
    rep = cost.write(params=p, baseline=read(paths.BASELINE, {}),
                     loop_cost_usd=sum(h.get("cost_usd", 0) for h in read(paths.HISTORY, [])),
                     json_out=paths.COST, plot_out=paths.COST_PLOT)
    if rep is None:
        print("error: no service baseline in metrics/baseline.json to measure tokens per request from "
              "(set `judge.baseline.services` and run `dvc repro`)", file=sys.stderr)
        return 2
    print(f"service: ${rep['service_usd_per_request']:.6f}/request, ${rep['service_usd_per_month']:.2f}/month; "
          f"local: ${rep['local_usd_per_month']:.2f}/month; migration ${rep['migration_cost_usd']:.2f}; "
          f"break-even month: {rep['break_even_month']} (metrics/cost.json, metrics/plots/cost.png)")
    return 0


def _registry_target(args):
    from llamaduo.cycle import model_registry, tracking

    p = _params(args)
    tracking.connect(p.mlflow)
    return p, model_registry.model_name(p.mlflow.model_prefix, p.data.tasks)


def _promote(args) -> int:
    from llamaduo.cycle import model_registry

    p, name = _registry_target(args)
    model_registry.promote(name, args.version, alias=p.mlflow.champion_alias, reason=f"by hand: {args.reason}")
    model_registry.save_champion(name, p.mlflow.champion_alias, paths.CHAMPION)  # the gate compares with it
    print(f"{name} v{args.version} is now {p.mlflow.champion_alias!r}")
    return 0


def _rollback(args) -> int:
    from llamaduo.cycle import model_registry

    p, name = _registry_target(args)
    target = model_registry.rollback(name, alias=p.mlflow.champion_alias, reason=args.reason)
    model_registry.save_champion(name, p.mlflow.champion_alias, paths.CHAMPION)
    print(f"{name}: {p.mlflow.champion_alias!r} -> {'v' + target if target else 'no version'}")
    return 0


def _serve(args) -> int:
    from llamaduo.cycle.serving import serve
    from llamaduo.hardware import compute_dtype

    p, name = _registry_target(args)
    return serve(name=name, ref=args.ref or p.mlflow.champion_alias, host=args.host or p.serve.host,
                 port=args.port or p.serve.port, p=p.serve, extra=args.extra, dtype=compute_dtype(p.compute.dtype)["dtype"])


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    parser = argparse.ArgumentParser(prog="llamaduo", description=__doc__)
    parser.add_argument("--version", action="version", version=f"llamaduo {__version__}")
    parser.add_argument("--params", default="params.yaml")
    sub = parser.add_subparsers(dest="command", required=True)
    init = sub.add_parser("init", help="make a new project (git + DVC, the pipeline, params, stage scripts) in a new or "
                                       "empty folder, with the installed llamaduo pinned")
    init.add_argument("dir")
    init.add_argument("--task", default=None, help="the task's name (its coverage file becomes data/coverage/NAME.<ext>)")
    init.add_argument("--from", dest="source", default=None, help="the task's coverage file (.jsonl, .csv or .parquet)")
    init.add_argument("--remote", default=None, help="URL of a DVC remote to add as the default (`storage`)")
    init.set_defaults(func=_init)
    sub.add_parser("status", help="where the loop stands (cycle, scores, champion, spend, gate), from the state "
                                  "files only").set_defaults(func=_status)
    sub.add_parser("check", help="validate params.yaml and exit").set_defaults(func=_check)
    sub.add_parser("stop", help="stop the shared local vLLM servers this project's stages started (they also stop "
                                "on their own once the `dvc repro` that used them ends)").set_defaults(func=_stop)
    run = sub.add_parser("run", help="validate params.yaml, then `dvc repro` one cycle")
    run.add_argument("targets", nargs="*", help="stages to reproduce (default: all)")
    run.set_defaults(func=_run)
    loop = sub.add_parser("loop", help="cycles of `dvc repro` with a growing synthetic volume until the gate passes; "
                                       "resumes where it stopped")
    loop.add_argument("--allow-dirty", action="store_true",
                      help="run although files outside what the loop writes have changes (they are never committed)")
    loop.add_argument("--dry-run", action="store_true",
                      help="print the pre-flight estimate of the coming cycles (as `llamaduo plan`) and run nothing")
    loop.set_defaults(func=_loop)
    sub.add_parser("plan", help="the pre-flight estimate: each coming cycle's paid service calls, tokens, USD at the "
                                "providers' prices and wall time, from what the last cycle measured and the call cache "
                                "holds; runs nothing").set_defaults(func=_plan)
    cap = sub.add_parser("capture", help="add recorded traffic (MLflow traces, OpenAI stored completions, OTLP JSON files) "
                                         "to the tasks' coverage data, as params `capture` selects it")
    cap.add_argument("--source", action="append", choices=["mlflow", "openai", "otlp"], help="only this source (repeatable)")
    cap.add_argument("--dry-run", action="store_true", help="read, select and count; write nothing")
    cap.add_argument("--recheck", action="store_true",
                     help="judge again the calls an earlier capture dropped (failed, truncated, duplicates, secrets), "
                          "which are otherwise passed over while the settings that dropped them hold")
    cap.set_defaults(func=_capture)
    sub.add_parser("cost", help="cost report: the service's measured tokens at its price vs serving the local model "
                                "(metrics/cost.json and a plot)").set_defaults(func=_cost)
    promote = sub.add_parser("promote", help="move the champion alias to a registry version by hand")
    promote.add_argument("version")
    promote.add_argument("--reason", required=True)
    promote.set_defaults(func=_promote)
    rollback = sub.add_parser("rollback", help="move the champion alias back to the previous champion")
    rollback.add_argument("--reason", required=True)
    rollback.set_defaults(func=_rollback)
    serve = sub.add_parser("serve", help="serve the champion (or --ref VERSION|ALIAS) with vLLM's OpenAI-compatible server")
    serve.add_argument("--ref", default=None)
    serve.add_argument("--host", default=None, help="default: `serve.host`")
    serve.add_argument("--port", type=int, default=None, help="default: `serve.port`")
    serve.add_argument("extra", nargs="*", help="more `vllm serve` arguments (after --)")
    serve.set_defaults(func=_serve)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except UserError as exc:  # bad params or data, a failed service, a loop that cannot go on: the message says what to do
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
