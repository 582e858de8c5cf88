"""A model folder's content hash: the call cache and the training checkpoints key on it, so they follow the weights."""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path


def fingerprint(model: str) -> str:
    """Content hash of a local model folder's config and weights, so cached answers follow the weights."""
    path = Path(model)
    if not path.is_dir():
        return model  # a Hub id: its name is all we have
    # hashing ~0.5 GB takes seconds and a stage asks several times: remember it while the files are unchanged
    stamp = tuple((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in sorted(path.iterdir()) if f.is_file())
    return _fingerprint(str(path.resolve()), stamp)


@functools.lru_cache(maxsize=8)
def _fingerprint(folder: str, stamp: tuple) -> str:
    path = Path(folder)
    h = hashlib.sha256()
    for f in sorted(path.iterdir()):
        if f.suffix in {".json", ".safetensors", ".bin", ".model", ".txt", ".jinja"} and f.is_file():
            h.update(f.name.encode())
            with f.open("rb") as fh:
                for block in iter(lambda: fh.read(1 << 22), b""):
                    h.update(block)
    return h.hexdigest()[:16]
