import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from llamaduo import hardware, tables
from llamaduo.config import Params, TrainParams
from llamaduo.training import cap_message, resolve_quantize, rows_read, steps_per_epoch, total_steps, train
from llamaduo.training import trainer as trainer_mod

ROOT = Path(__file__).resolve().parents[2]
ROWS = [{"id": str(i), "task": "summarize", "instruction": f"Summarize: item {i} is red.", "response": f"Item {i}: red."}
        for i in range(6)]


def test_epochs_is_the_budget_and_max_steps_an_optional_cap():
    p = TrainParams()
    assert p.epochs == 3 and p.max_steps is None and p.quantize == "auto" and p.batch_size == 16
    # 7 rows, 6 a step: 2 steps an epoch (the last holds 1 row)
    p = TrainParams(batch_size=6, epochs=1.5)
    assert steps_per_epoch(p, 7) == 2 and total_steps(p, 7) == 3
    assert total_steps(TrainParams(batch_size=2, epochs=3, max_steps=100), 10) == 15  # the epochs end first
    assert total_steps(TrainParams(batch_size=2, epochs=3, max_steps=4), 10) == 4
    with pytest.raises(ValueError, match="max_steps"):
        Params.model_validate({"train": {"max_steps": 0}})
    with pytest.raises(ValueError, match="epochs"):
        Params.model_validate({"train": {"epochs": 0}})


@pytest.mark.parametrize("kw,n,read", [
    ({"max_steps": None}, 1000, 1000),
    ({"max_steps": 10}, 1000, 20),                 # 2 rows a step: 10 steps read 20 rows
    ({"max_steps": 10, "batch_size": 8}, 1000, 80),
    ({"max_steps": 10, "batch_size": 8, "num_processes": 4}, 1000, 80),  # four processes share each step's rows
    ({"max_steps": 10}, 15, 15),                   # 8 steps an epoch: the cap is past the first epoch
    ({"max_steps": 7}, 15, 14),
    ({"max_steps": None, "epochs": 0.5}, 100, 50),
])
def test_rows_read_is_what_the_cap_lets_training_read(kw, n, read):
    p = TrainParams(**{"batch_size": 2, **kw})
    assert rows_read(p, n) == read


def test_the_cap_message_names_the_key_and_both_counts():
    msg = cap_message(TrainParams(batch_size=2, max_steps=10), 360)
    assert "train.max_steps = 10" in msg and "20 of 360 rows" in msg and "340 rows are never read" in msg
    assert cap_message(TrainParams(batch_size=2, max_steps=180), 360) is None
    assert cap_message(TrainParams(batch_size=2), 10**6) is None


def test_quantize_auto_is_plain_lora_on_a_cpu_where_the_base_fits_and_4bit_where_not(tmp_path, monkeypatch):
    # 1000 + 24 parameters: 4096 bytes of float32 weights, which must be at most half the memory
    save_file({"a": torch.zeros(10, 100), "b": torch.zeros(2, 3, 4)}, str(tmp_path / "model.safetensors"))
    assert trainer_mod.parameter_count(str(tmp_path)) == 1024
    assert resolve_quantize(TrainParams(quantize=True), str(tmp_path), "float32") == (True, "params")
    assert resolve_quantize(TrainParams(quantize=False), str(tmp_path), "float32") == (False, "params")
    if torch.cuda.is_available():
        assert resolve_quantize(TrainParams(), str(tmp_path), "float32") == (True, "auto: cuda")
        return
    assert resolve_quantize(TrainParams(), str(tmp_path), "float32") == (False, "auto: cpu, base fits in memory")
    monkeypatch.setattr(trainer_mod, "memory_limit", lambda: 8191)
    q, why = resolve_quantize(TrainParams(), str(tmp_path), "float32")
    assert q is True and why.startswith("auto: cpu, float32 weights")
    assert resolve_quantize(TrainParams(), str(tmp_path), "bfloat16")[0] is False  # half the bytes fit


def test_a_tiny_run_reads_every_row_once_an_epoch_and_records_its_dtype(tmp_path, base_model_dir):
    p = TrainParams(epochs=2, batch_size=2, max_length=96, val_ratio=0, checkpoint_dir=str(tmp_path / "ckpt"))
    # a 7th row whose prompt alone fills max_length: trl drops it (no completion token left), and it is counted
    too_long = {"id": "long", "task": "t", "instruction": "word " * 200, "response": "short."}
    m = train(rows=[*ROWS, too_long], base_dir=str(base_model_dir), out_dir=str(tmp_path / "adapter"), p=p)
    assert m["steps"] == 6 and m["epochs_seen"] == 2.0
    assert m["unique_rows_seen"] == 6 and m["rows_available"] == 7 and m["rows_dropped_too_long"] == 1
    assert m["unique_rows_exact"] is True
    want = hardware.compute_dtype("auto")
    assert (m["dtype"], m["dtype_source"], m["cpu_flags"]) == (want["dtype"], want["source"], want["cpu_flags"])
    assert m["quantized"] is torch.cuda.is_available() and m["quantize_source"].startswith("auto")


def _stage_main():
    spec = importlib.util.spec_from_file_location("train_stage", ROOT / "stages" / "train.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.main


def test_the_stage_warns_on_stderr_when_the_cap_leaves_rows_unread(tmp_path, base_model_dir, capsys):
    split = [{**r, "category": "Summarize", "split": "train"} for r in ROWS]
    tables.write(tmp_path / "train.parquet", "split", split)
    tables.write(tmp_path / "curated.parquet", "synthetic", [])
    params = Params.model_validate({"compute": {"dtype": "float32"},
                                    "train": {"max_steps": 1, "batch_size": 2, "max_length": 96, "val_ratio": 0,
                                              "checkpoint_dir": str(tmp_path / "ckpt")}})
    _stage_main()(params, str(tmp_path / "train.parquet"), str(tmp_path / "curated.parquet"), str(base_model_dir),
                  str(tmp_path / "adapter"), str(tmp_path / "train.json"), str(tmp_path / "loss.json"))
    err = capsys.readouterr().err
    assert "train.max_steps = 1" in err and "2 of 6 rows" in err
    m = json.loads((tmp_path / "train.json").read_text())
    assert m["steps"] == 1 and m["unique_rows_seen"] == 2 and m["rows_available"] == 6
    assert m["epochs_seen"] == pytest.approx(1 / 3, abs=1e-3)
    assert m["dtype"] == "float32" and m["dtype_source"] == "params"


if __name__ == "__main__":
    sys.exit(pytest.main([__file__]))
