"""End to end through the stage scripts: train 2 sub-models (different data orders), merge them, generate from the result."""

import json

import pytest

from conftest import run_stage
from llamaduo import tables

pytestmark = pytest.mark.slow


def project(tmp_path, base_model_dir, merge: str):
    rows = [{"id": f"summarize-{i}", "task": "summarize", "instruction": f"Summarize: item {i} is red and round.",
             "response": f"Item {i}: red, round.", "category": "Summarize", "split": "train"} for i in range(10)]
    tables.write(tmp_path / "train.parquet", "split", rows)
    tables.write(tmp_path / "curated.parquet", "synthetic", [])
    (tmp_path / "params.yaml").write_text(f"""
train: {{quantize: true, max_steps: 2, batch_size: 2, max_length: 128, learning_rate: 0.001, val_ratio: 0.2,
         submodels: 2, threads: 1}}
merge: {merge}
""")
    return ["--train-rows", "train.parquet"], ["--base", str(base_model_dir)]


def test_two_submodels_merge_into_a_model_that_generates(tmp_path, base_model_dir):
    data, base = project(tmp_path, base_model_dir, "{method: parameter_selection, resample: 2, seed: 0}")
    res = run_stage("train.py", *data, "--curated", "curated.parquet", *base, "--out", "adapter",
                    "--metrics-out", "train.json", "--loss-out", "loss.json", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    tm = json.loads((tmp_path / "train.json").read_text())
    assert [s["data_seed"] for s in tm["submodels"]] == [42, 43] and tm["val_rows"] == 2
    assert tm["submodels"][0]["train_loss"] != tm["submodels"][1]["train_loss"]  # other order, other run
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()  # sub-model 0 stays a plain adapter

    res = run_stage("merge.py", *data, *base, "--adapter", "adapter", "--out", "merged", "--metrics-out", "merge.json",
                    cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    mm = json.loads((tmp_path / "merge.json").read_text())
    assert mm["method"] == "parameter_selection" and mm["submodels"] == 2 and len(mm["submodel_val_loss"]) == 2
    assert mm["submodel_val_loss_best"] <= mm["submodel_val_loss_mean"] and mm["merged_val_loss"] > 0
    assert not (tmp_path / ".llamaduo" / "merge").exists()  # scratch full models are removed

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tmp_path / "merged")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "merged", dtype=torch.float32)
    enc = tok.apply_chat_template([{"role": "user", "content": "Summarize: item 3 is red."}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)
    out = model.generate(**enc, max_new_tokens=8, do_sample=False)
    assert out.shape[1] > enc["input_ids"].shape[1] and tok.decode(out[0, enc["input_ids"].shape[1]:]).strip()


def test_merge_off_writes_only_a_note(tmp_path, base_model_dir):
    data, base = project(tmp_path, base_model_dir, "{method: null}")
    (tmp_path / "params.yaml").write_text((tmp_path / "params.yaml").read_text().replace("submodels: 2", "submodels: 1"))
    (tmp_path / "adapter").mkdir()
    res = run_stage("merge.py", *data, *base, "--adapter", "adapter", "--out", "merged", "--metrics-out", "merge.json",
                    cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert json.loads((tmp_path / "merge.json").read_text()) == {"method": None}
    assert [f.name for f in (tmp_path / "merged").iterdir()] == ["merge.json"]


def test_submodels_without_a_merge_method_is_an_error_naming_the_keys(tmp_path, base_model_dir):
    data, base = project(tmp_path, base_model_dir, "{method: null}")
    (tmp_path / "adapter").mkdir()
    res = run_stage("merge.py", *data, *base, "--adapter", "adapter", "--out", "merged", "--metrics-out", "merge.json",
                    cwd=tmp_path)
    assert res.returncode == 2 and "`train.submodels` is 2 but `merge.method` is null" in res.stderr
