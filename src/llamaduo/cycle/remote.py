"""A team's shared storage: after each cycle is committed, its DVC-tracked outputs (adapter, data, metrics) go to the
project's default DVC remote, so a teammate's `git pull && dvc pull` gets that cycle exactly.

The remote is plain DVC configuration (`dvc remote add -d NAME s3://bucket/path`, or `llamaduo init --remote`):
credentials come from where DVC itself reads them, the standard AWS environment (AWS_ACCESS_KEY_ID, ...) or
`.dvc/config.local` (git-ignored), never from params.yaml, and they are never printed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

from llamaduo.errors import LoopError
from llamaduo.urls import mask_url

# config keys of DVC remotes (s3, http, ssh, webdav, azure, gs ...) whose values are secrets
SECRET_KEYS = ("secret_access_key", "access_key_id", "session_token", "password", "token", "account_key",
               "connection_string", "sas_token", "key")
SECRET_ENV = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID")


def _remote_config() -> tuple[str | None, dict]:
    """(default remote name or None, its merged config section): DVC's own reading of the system, global,
    repo and local (`config.local`) levels, so what we report is what `dvc push` will use."""
    from dvc.repo import Repo

    with Repo() as repo:
        config = repo.config
        name = config["core"].get("remote")
        return name, dict(config["remote"].get(name, {})) if name else {}


def default_remote() -> str | None:
    """The name of the current DVC project's default remote, or None when there is none."""
    return _remote_config()[0]


def _redact(text: str, section: dict) -> str:
    """dvc's message with every secret we know of (the remote's config values, AWS env) replaced by ***."""
    secrets = [str(section[k]) for k in SECRET_KEYS if section.get(k)] + [os.environ[k] for k in SECRET_ENV if os.environ.get(k)]
    if section.get("url"):
        text = text.replace(section["url"], mask_url(section["url"]))
    for s in sorted(set(secrets), key=len, reverse=True):
        if len(s) >= 4:  # a 1-3 character "secret" would blank unrelated words; real keys are longer
            text = text.replace(s, "***")
    return text


def push(*, jobs: int | None = None) -> dict:
    """`dvc push` to the default remote, when one is set. Returns {"remote": name, "pushed": True, "seconds": s}
    or {"remote": None, "pushed": False} (no remote: nothing to share, not an error). A failed push raises
    LoopError: the cycle is already committed in git, so the remedy is only to push again."""
    name, section = _remote_config()
    if name is None:
        return {"remote": None, "pushed": False}
    # a subprocess, not dvc's Python API: dvc's own CLI error text (what a user would see running it) and no dvc
    # logging/progress state left in the driver's process; `-m dvc` runs the dvc of this environment
    cmd = [sys.executable, "-m", "dvc", "push", "--remote", name]
    if jobs is not None:
        cmd += ["--jobs", str(jobs)]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        # dvc's error lines without its "Having any troubles? Hit us up at ..." footer
        lines = [ln for ln in (done.stderr or done.stdout).splitlines() if ln.strip() and "dvc.org/support" not in ln]
        err = _redact("\n".join(lines)[-2000:], section)
        url = mask_url(section.get("url", "?"))
        raise LoopError(f"`dvc push` to remote {name!r} ({url}) failed: {err}\n"
                        f"the cycle's commit is kept; rerun `dvc push` once the remote is reachable")
    return {"remote": name, "pushed": True, "seconds": round(seconds, 3)}
