"""Failpoints: named places in the loop where a test kills the process with SIGKILL, to prove a restart resumes
from there without repeating a side effect (a commit, a child run, a registry version, a paid call).

`LLAMADUO_FAILPOINT=<name>` arms one. Unset (always, outside tests) a point is one dictionary lookup."""

from __future__ import annotations

import os
import signal

ENV = "LLAMADUO_FAILPOINT"


def point(name: str) -> None:
    if os.environ.get(ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)
