"""The `llamaduo` command: check params, run the pipeline."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

from llamaduo.config import ParamsError, load_params


def _check(args) -> int:
    try:
        load_params(args.params)
    except ParamsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{args.params}: valid")
    return 0


def _run(args) -> int:
    if _check(args):
        return 2
    env = dict(os.environ, HF_HUB_OFFLINE=os.environ.get("HF_HUB_OFFLINE", "1"))
    return subprocess.call(["dvc", "repro", *args.targets], env=env)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="llamaduo", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check", help="validate params.yaml and exit")
    check.add_argument("--params", default="params.yaml")
    check.set_defaults(func=_check)
    run = sub.add_parser("run", help="validate params.yaml, then `dvc repro` one cycle")
    run.add_argument("--params", default="params.yaml")
    run.add_argument("targets", nargs="*", help="stages to reproduce (default: all)")
    run.set_defaults(func=_run)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
