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
from pathlib import Path

from llamaduo.atomic import replacing_dir, write_json
from llamaduo.errors import ParamsError
from llamaduo.hardware import torch_dtype
from llamaduo.merging import from_params
from llamaduo.merging.checkpoint import merge_checkpoints
from llamaduo.merging.submodels import read_submodels, validation_loss
from llamaduo.training import holdout
from llamaduo.weights import save_folded

MANIFEST = "merge.json"


SCRATCH_MARK = ".llamaduo-scratch"


def scratch(folder: str | Path) -> Path:
    """Empty `merge.work_dir` for this run and return it. It is deleted whole after a merge, so only a folder this
    function created (it holds the mark file) or an empty one is ever emptied: `work_dir: .llamaduo` or `.` would
    otherwise delete the paid call cache, the MLflow database or the project."""
    work = Path(folder)
    if work.exists():
        if not work.is_dir():
            raise ParamsError(f"`merge.work_dir` {str(folder)!r} is a file: give a folder llamaduo may empty")
        if not (work / SCRATCH_MARK).is_file():
            present = sorted(x.name for x in work.iterdir())
            if present:
                raise ParamsError(f"`merge.work_dir` {str(folder)!r} holds files llamaduo did not write ({', '.join(present[:3])}"
                                  f"{' ...' if len(present) > 3 else ''}); it is emptied on every merge: give an empty or new folder")
        shutil.rmtree(work)
    work.mkdir(parents=True)
    (work / SCRATCH_MARK).write_text("llamaduo's merge scratch folder: emptied on every merge\n")
    return work


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
    work = scratch(p.work_dir)
    full = []
    for i, a in enumerate(subs):
        full.append(work / f"sub-{i}")
        # the compute dtype: the folded sub-models and so the merged model are in it
        save_folded(base, a, full[-1], dtype=torch_dtype(params.compute.dtype))
    with replacing_dir(out_path) as tmp:  # a failed merge leaves no half-written folder
        stats = merge_checkpoints(base, full, tmp, from_params(p), shard_mb=p.shard_mb)
        metrics = {"method": p.method, "resample": p.resample, "seed": p.seed, "submodels": len(subs), **stats}
        (tmp / MANIFEST).write_text(json.dumps({**metrics, "base": base, "adapters": [str(a) for a in subs]}, indent=1))
        if val:
            sub_losses = [validation_loss(d, val, t, dtype=params.compute.dtype) for d in full]
            metrics.update(val_rows=len(val), submodel_val_loss=sub_losses,
                           submodel_val_loss_mean=statistics.fmean(sub_losses), submodel_val_loss_best=min(sub_losses),
                           merged_val_loss=validation_loss(tmp, val, t, dtype=params.compute.dtype))
    shutil.rmtree(work, ignore_errors=True)
    return metrics
