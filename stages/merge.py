"""merge: the `train.submodels` adapters (same data, different orders) -> one full model in models/merged/.

Off by default (`merge.method: null`): the stage then only writes `models/merged/merge.json` saying so, and
infer keeps reading models/base + models/adapter. On, each sub-model's adapter is folded into the base
(scratch in `merge.work_dir`), their task vectors are merged tensor by tensor, and the validation loss of every
sub-model and of the merged model goes to the metrics, all computed the same way on the same held-out rows.
"""

import json
import shutil
import statistics
import tempfile
from pathlib import Path

from llamaduo import tables
from llamaduo.atomic import write_json
from llamaduo.merging import from_params, merge_checkpoints
from llamaduo.stage import run
from llamaduo.training import holdout, merge_adapter, read_submodels, validation_loss

MANIFEST = "merge.json"


def merge(*, params, train_rows: str, base: str, adapter: str, out: str) -> dict:
    p, t = params.merge, params.train
    subs = read_submodels(adapter)
    if p.method is None:
        if t.submodels > 1:
            raise ValueError(f"`train.submodels` is {t.submodels} but `merge.method` is null: set a method "
                             "(weighted_average, parameter_selection) or `train.submodels: 1`")
        return {"method": None}
    if len(subs) < 2:
        raise ValueError(f"`merge.method` is {p.method!r} but {adapter} holds {len(subs)} sub-model: set `train.submodels` >= 2")
    _, val = holdout(tables.read(train_rows, "split"), t)
    out_path = Path(out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    work = Path(p.work_dir)
    shutil.rmtree(work, ignore_errors=True)
    full = []
    for i, a in enumerate(subs):
        full.append(work / f"sub-{i}")
        merge_adapter(base, a, full[-1])
    tmp = Path(tempfile.mkdtemp(dir=out_path.parent, prefix=".merged-"))
    stats = merge_checkpoints(base, full, tmp, from_params(p), shard_mb=p.shard_mb)
    metrics = {"method": p.method, "resample": p.resample, "seed": p.seed, "submodels": len(subs), **stats}
    (tmp / MANIFEST).write_text(json.dumps({**metrics, "base": base, "adapters": [str(a) for a in subs]}, indent=1))
    if val:
        sub_losses = [validation_loss(d, val, t) for d in full]
        metrics.update(val_rows=len(val), submodel_val_loss=sub_losses, submodel_val_loss_mean=statistics.fmean(sub_losses),
                       submodel_val_loss_best=min(sub_losses), merged_val_loss=validation_loss(tmp, val, t))
    if out_path.exists():
        shutil.rmtree(out_path)
    tmp.replace(out_path)
    shutil.rmtree(work, ignore_errors=True)
    return metrics


def main(params, train_rows, base, adapter, out, metrics_out):
    metrics = merge(params=params, train_rows=train_rows, base=base, adapter=adapter, out=out)
    if metrics["method"] is None:
        # a DVC out must exist: the folder holds only this note, and infer keeps base + adapter
        shutil.rmtree(out, ignore_errors=True)
        Path(out).mkdir(parents=True)
        write_json(Path(out) / MANIFEST, {"method": None, "note": "merging is off: infer uses models/base + models/adapter"})
    write_json(metrics_out, metrics)


if __name__ == "__main__":
    run(main, "train_rows", "base", "adapter", "out", "metrics_out")
