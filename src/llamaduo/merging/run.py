"""The merge stage: the `train.submodels` adapters (same data, different orders) -> one full model.

Off (`merge.method: null`), the output folder holds only `merge.json` saying so, and infer keeps reading
the base + adapter. On, each sub-model's adapter is folded into the base (scratch in `merge.work_dir`),
their task vectors are merged tensor by tensor, and the validation loss of every sub-model and of the
merged model goes to the metrics, all computed the same way on the same held-out rows.
"""

from __future__ import annotations

import json
import shutil
import statistics
import tempfile
from pathlib import Path

from llamaduo.atomic import write_json
from llamaduo.errors import ParamsError
from llamaduo.hardware import torch_dtype
from llamaduo.merging import from_params
from llamaduo.merging.checkpoint import merge_checkpoints
from llamaduo.merging.submodels import read_submodels, validation_loss
from llamaduo.training import holdout
from llamaduo.weights import save_folded

MANIFEST = "merge.json"


def merge(*, params, train_rows: list[dict], base: str, adapter: str, out: str) -> dict:
    """Merge the sub-models in `adapter` into `out` (or, with merging off, write only the manifest); the metrics."""
    p, t = params.merge, params.train
    subs = read_submodels(adapter)
    out_path = Path(out)
    if p.method is None:
        if t.submodels > 1:
            raise ParamsError(f"`train.submodels` is {t.submodels} but `merge.method` is null: set a method "
                              "(weighted_average, parameter_selection) or `train.submodels: 1`")
        # a DVC out must exist: the folder holds only this note, and infer keeps base + adapter
        shutil.rmtree(out_path, ignore_errors=True)
        out_path.mkdir(parents=True)
        write_json(out_path / MANIFEST, {"method": None, "note": "merging is off: infer uses models/base + models/adapter"})
        return {"method": None}
    if len(subs) < 2:
        raise ParamsError(f"`merge.method` is {p.method!r} but {adapter} holds {len(subs)} sub-model: "
                          "set `train.submodels` >= 2")
    _, val = holdout(train_rows, t)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    work = Path(p.work_dir)
    shutil.rmtree(work, ignore_errors=True)
    full = []
    for i, a in enumerate(subs):
        full.append(work / f"sub-{i}")
        # the compute dtype: the folded sub-models and so the merged model are in it
        save_folded(base, a, full[-1], dtype=torch_dtype(params.compute.dtype))
    tmp = Path(tempfile.mkdtemp(dir=out_path.parent, prefix=".merged-"))
    try:
        stats = merge_checkpoints(base, full, tmp, from_params(p), shard_mb=p.shard_mb)
        metrics = {"method": p.method, "resample": p.resample, "seed": p.seed, "submodels": len(subs), **stats}
        (tmp / MANIFEST).write_text(json.dumps({**metrics, "base": base, "adapters": [str(a) for a in subs]}, indent=1))
        if val:
            sub_losses = [validation_loss(d, val, t, dtype=params.compute.dtype) for d in full]
            metrics.update(val_rows=len(val), submodel_val_loss=sub_losses,
                           submodel_val_loss_mean=statistics.fmean(sub_losses), submodel_val_loss_best=min(sub_losses),
                           merged_val_loss=validation_loss(tmp, val, t, dtype=params.compute.dtype))
        if out_path.exists():
            shutil.rmtree(out_path)
        tmp.replace(out_path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # a failed merge leaves no half-written folder
    shutil.rmtree(work, ignore_errors=True)
    return metrics
