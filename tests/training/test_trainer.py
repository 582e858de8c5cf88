import json
import math

import pytest
from safetensors.torch import load_file

from llamaduo.config import TrainParams
from llamaduo.merging.submodels import read_submodels
from llamaduo.training import SUBMODELS_FILE, count_truncated, holdout, lora_shape, to_examples, train

ROWS = [{"id": str(i), "task": "summarize", "instruction": f"Summarize: item {i} is red and round.",
         "response": f"Item {i}: red, round."} for i in range(6)]


def tiny(tmp_path, **kw) -> TrainParams:
    return TrainParams(**{"max_steps": 2, "batch_size": 2, "max_length": 128, "learning_rate": 1e-3,
                          "checkpoint_dir": str(tmp_path / "ckpt"), **kw})


@pytest.mark.slow
@pytest.mark.parametrize("quantize", [True, False])
def test_training_changes_the_adapter_and_loss_is_finite(tmp_path, base_model_dir, quantize):
    out = tmp_path / "adapter"
    m = train(rows=ROWS, val_rows=ROWS[:2], base_dir=str(base_model_dir), out_dir=str(out), p=tiny(tmp_path, quantize=quantize))
    assert m["steps"] == 2 and m["quantized"] is quantize
    assert all(math.isfinite(x["loss"]) for x in m["loss_curve"]) and len(m["loss_curve"]) == 2
    assert math.isfinite(m["val_loss"]) and m["val_rows"] == 2
    assert m["tokens_seen"] > 0 and m["tokens_per_s"] > 0 and m["peak_rss_mb"] > 0
    assert (m["lora_r"], m["lora_alpha"]) == (8, 16)  # by volume: 6 rows
    weights = load_file(out / "adapter_model.safetensors")
    lora_b = [t for k, t in weights.items() if "lora_B" in k]
    assert lora_b and any(t.abs().sum() > 0 for t in lora_b)  # peft starts B at zero: non-zero means it trained
    assert (out / "tokenizer_config.json").is_file()
    assert read_submodels(out) == [out]
    assert not any((tmp_path / "ckpt").iterdir())  # checkpoints are dropped once the adapter is out


@pytest.mark.slow
def test_a_killed_run_resumes_from_its_checkpoint(tmp_path, base_model_dir, monkeypatch):
    from transformers import TrainerCallback

    from llamaduo.training import trainer as trainer_mod

    class Kill(TrainerCallback):
        def on_save(self, args, state, control, **kw):
            if state.global_step == 2:
                raise KeyboardInterrupt("killed after the second checkpoint")

    # checkpoints by time (`save_steps: null`), due at every step end here; a change of the micro-batch (runtime)
    # between the killed run and its resumption keeps the checkpoint
    monkeypatch.setattr(trainer_mod, "CHECKPOINT_INTERVAL_S", 0)
    p = tiny(tmp_path, quantize=False, max_steps=3, micro_batch_size=2)
    out = tmp_path / "adapter"
    with pytest.raises(KeyboardInterrupt):
        train(rows=ROWS, base_dir=str(base_model_dir), out_dir=str(out), p=p, callbacks=[Kill()])
    # save_total_limit 1: the second checkpoint replaced the first
    assert not out.exists() and [c.name for c in (tmp_path / "ckpt").glob("train-*/sub-0/checkpoint-*")] == ["checkpoint-2"]
    m = train(rows=ROWS, base_dir=str(base_model_dir), out_dir=str(out), p=p.model_copy(update={"micro_batch_size": 1}))
    assert m["resumed_from_step"] == 2 and m["steps"] == 3 and len(m["loss_curve"]) == 3
    assert (m["plan"]["micro_batch_size"], m["plan"]["grad_accum"]) == (1, 2)
    assert m["val_loss"] is None and m["val_rows"] == 0


@pytest.mark.slow
def test_truncation_is_counted(base_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base_model_dir)
    long = to_examples([{"instruction": "word " * 300, "response": "ok"}, ROWS[0]])
    over, total = count_truncated(tok, long, 64)
    assert over == 1 and total <= 128


def test_empty_training_set_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="no training rows"):
        train(rows=[], base_dir=str(tmp_path), out_dir=str(tmp_path / "a"), p=TrainParams())


@pytest.mark.parametrize("rows,shape", [(371, (8, 16)), (16_371, (8, 16)), (32_371, (16, 32)), (64_371, (32, 64)),
                                        (256_371, (32, 64))])
def test_lora_rank_and_alpha_follow_the_papers_volumes(rows, shape):
    assert lora_shape(TrainParams(), rows) == shape


def test_lora_rank_and_alpha_can_be_overridden():
    assert lora_shape(TrainParams(lora_r=4), 100_000) == (4, 8)
    assert lora_shape(TrainParams(lora_r=4, lora_alpha=4), 10) == (4, 4)
    assert lora_shape(TrainParams(lora_alpha=32), 10) == (8, 32)


def test_holdout_is_seeded_disjoint_and_can_be_off():
    rows = [{"id": str(i)} for i in range(40)]
    fit, val = holdout(rows, TrainParams(val_ratio=0.1))
    assert len(val) == 4 and len(fit) == 36 and not {r["id"] for r in fit} & {r["id"] for r in val}
    assert holdout(rows, TrainParams(val_ratio=0.1)) == (fit, val)
    assert holdout(rows, TrainParams(val_ratio=0.1, seed=1))[1] != val
    assert holdout(rows, TrainParams(val_ratio=0)) == (rows, [])
    assert len(holdout(rows[:3], TrainParams(val_ratio=0.01))[1]) == 1


def test_submodel_manifest_lists_folders_relative_to_the_adapter(tmp_path):
    (tmp_path / SUBMODELS_FILE).write_text(json.dumps({"submodels": [".", "submodels/1"]}))
    assert read_submodels(tmp_path) == [tmp_path, tmp_path / "submodels" / "1"]
