"""Streaming a merge over safetensors checkpoints: one tensor name at a time, read from every model with safe_open.

Memory holds the base tensor and the k sub-model tensors of one name, plus the merged tensors waiting for
their shard (at most `shard_mb`). Shards and the index follow the layout transformers reads
(`model.safetensors`, or `model-0000i-of-0000n.safetensors` + `model.safetensors.index.json`).
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path

from safetensors import safe_open
from safetensors.torch import save_file

from llamaduo.merging.base import Merger

SINGLE = "model.safetensors"
INDEX = "model.safetensors.index.json"


def weight_map(model_dir: str | Path) -> dict[str, Path]:
    """Tensor name -> the safetensors file holding it, for a single-file or sharded checkpoint."""
    model_dir = Path(model_dir)
    if (model_dir / INDEX).is_file():
        index = json.loads((model_dir / INDEX).read_text())["weight_map"]
        return {name: model_dir / f for name, f in index.items()}
    if (model_dir / SINGLE).is_file():
        with safe_open(model_dir / SINGLE, framework="pt") as f:
            return {name: model_dir / SINGLE for name in f.keys()}
    raise FileNotFoundError(f"{model_dir} holds no {SINGLE} or {INDEX}")


class _Handles:
    """Open safetensors files, each opened once, by path."""

    def __init__(self, stack: ExitStack):
        self.stack, self.open = stack, {}

    def tensor(self, path: Path, name: str):
        if path not in self.open:
            self.open[path] = self.stack.enter_context(safe_open(path, framework="pt"))
        return self.open[path].get_tensor(name)


class _ShardWriter:
    def __init__(self, out_dir: Path, shard_bytes: int):
        self.out_dir, self.shard_bytes = out_dir, shard_bytes
        self.buffer, self.size, self.files, self.names, self.total = {}, 0, [], {}, 0

    def add(self, name: str, tensor) -> None:
        nbytes = tensor.numel() * tensor.element_size()
        if self.buffer and self.size + nbytes > self.shard_bytes:
            self.flush()
        self.buffer[name] = tensor.contiguous()
        self.size += nbytes
        self.total += nbytes

    def flush(self) -> None:
        if not self.buffer:
            return
        path = self.out_dir / f"shard-{len(self.files):05d}.safetensors"
        save_file(self.buffer, path, metadata={"format": "pt"})
        self.files.append(path)
        self.names.update({n: path for n in self.buffer})
        self.buffer, self.size = {}, 0

    def close(self) -> None:
        self.flush()
        if len(self.files) == 1:
            self.files[0].rename(self.out_dir / SINGLE)
            return
        n = len(self.files)
        final = {p: f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i, p in enumerate(self.files)}
        for p, name in final.items():
            p.rename(self.out_dir / name)
        index = {"metadata": {"total_size": self.total}, "weight_map": {t: final[p] for t, p in sorted(self.names.items())}}
        (self.out_dir / INDEX).write_text(json.dumps(index, indent=1))


def merge_checkpoints(base_dir: str | Path, model_dirs: Sequence[str | Path], out_dir: str | Path, merger: Merger,
                      *, shard_mb: int = 2000) -> dict:
    """Merge full checkpoints `model_dirs` (same tensors as `base_dir`) into `out_dir`; the other files come from the first."""
    if not model_dirs:
        raise ValueError("nothing to merge: no sub-models")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    base_map = weight_map(base_dir)
    maps = [weight_map(d) for d in model_dirs]
    for d, m in zip(model_dirs, maps):
        if set(m) != set(base_map):
            diff = sorted(set(m) ^ set(base_map))[:5]
            raise ValueError(f"{d} and the base {base_dir} hold different tensors (e.g. {diff}): not fine-tunes of one base")
    start = time.perf_counter()
    writer = _ShardWriter(out_dir, shard_mb * 2**20)
    params = 0
    with ExitStack() as stack:
        files = _Handles(stack)
        for name in sorted(base_map):
            base = files.tensor(base_map[name], name)
            models = [files.tensor(m[name], name) for m in maps]
            if any(t.shape != base.shape for t in models):
                raise ValueError(f"tensor {name}: shapes {[tuple(t.shape) for t in models]} differ from the base's {tuple(base.shape)}")
            # integer buffers (ids, masks) are not fine-tuned: they are copied, never averaged
            merged = merger.merge(base, models, name) if models[0].is_floating_point() else models[0]
            writer.add(name, merged)
            params += merged.numel()
    writer.close()
    # config, generation config and tokenizer: the sub-models' own (identical across them)
    for f in Path(model_dirs[0]).iterdir():
        if f.is_file() and f.suffix != ".safetensors" and f.name != INDEX:
            shutil.copy2(f, out_dir / f.name)
    return {"tensors": len(base_map), "params": params, "merge_s": round(time.perf_counter() - start, 3)}
