"""Failpoints: named places in the loop where a test kills the process with SIGKILL, to prove a restart resumes
from there without repeating a side effect (a commit, a child run, a registry version, a paid call).

`LLAMADUO_FAILPOINT=<name>` arms one. Unset (always, outside tests) a point is one dictionary lookup.

Each side effect has a point between the effect and its record (the window the recovery code exists for: the restart
must find the effect, not repeat it) and, where the record is the loop state, one after the record. The loop's
end-to-end test kills at every point the code arms (tests/cycle/test_driver_e2e.py)."""

from __future__ import annotations

import os
import signal

ENV = "LLAMADUO_FAILPOINT"


def point(name: str) -> None:
    if os.environ.get(ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)
