"""Write files so that a crash leaves either the old file or the new one, never half of one."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path

from llamaduo import faults

# inside a `-old-` folder: the replaced folder, parked there until the new one is in place
PARKED = "x"


@contextlib.contextmanager
def replacing(path: str | Path):
    """Yield a temp path beside `path`; on success it replaces `path`, on error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_json(path: str | Path, obj) -> None:
    with replacing(path) as tmp:
        Path(tmp).write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def pid_alive(pid: int) -> bool:
    """Whether process `pid` runs (a zombie, exited but not yet reaped, does not): who may still be writing a temp
    folder, holding a claim or serving. One check for every "is its owner gone?" question in the package."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True  # no /proc (not Linux): signal 0 succeeded


@contextlib.contextmanager
def replacing_dir(path: str | Path):
    """Yield a temp folder beside `path`; on success it replaces `path`, on error it is removed.

    The folder is named `.<name>-tmp-<pid>-...` (ignored by git, see .gitignore). A process killed with -9 runs no
    cleanup, so folders of that pattern whose process is gone are removed here first: a kill leaks nothing for long.
    A kill between the two renames leaves `path` missing and its old copy parked in a `-old-` folder: that copy is
    put back first, so the next call starts from the old folder (as if the killed writer had never begun)."""
    import shutil

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{path.name}-tmp-"
    for old in sorted(path.parent.glob(f"{prefix}*")):
        pid = old.name[len(prefix):].split("-")[0]
        if pid.isdigit() and not pid_alive(int(pid)):
            if (old / PARKED).exists() and not path.exists():
                (old / PARKED).replace(path)
            shutil.rmtree(old, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f"{prefix}{os.getpid()}-"))
    try:
        yield tmp
        if path.exists():  # out of the way first, so `path` is never a mix of old and new files
            old = Path(tempfile.mkdtemp(dir=path.parent, prefix=f"{prefix}{os.getpid()}-old-"))
            path.replace(old / PARKED)
            faults.point("atomic:between_renames")
            tmp.replace(path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.replace(path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
