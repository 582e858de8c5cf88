"""What every stage script shares: parse its output paths, load params once, turn known errors into one clear line."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

from llamaduo.config import load_params
from llamaduo.errors import UserError


def run(main: Callable, *paths: str, optional: tuple[str, ...] = (), params_file: str = "params.yaml") -> None:
    """Call `main(params, **paths)` with each path taken from `--<name>` on the command line (as dvc.yaml declares it);
    a name in `optional` may be left off the command line, and is then None."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = argparse.ArgumentParser()
    parser.add_argument("--params", default=params_file)
    for name in paths:
        parser.add_argument(f"--{name.replace('_', '-')}", dest=name, required=True)
    for name in optional:
        parser.add_argument(f"--{name.replace('_', '-')}", dest=name, default=None)
    args = vars(parser.parse_args())
    try:
        params = load_params(args.pop("params"))
        main(params, **args)
    except UserError as exc:  # bad input or a failed service: one line, no traceback (anything else is a bug)
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
