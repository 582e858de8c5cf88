import math

import pytest
from safetensors.torch import load_file

from llamaduo.config import TrainParams
from llamaduo.training import count_truncated, to_examples, train

pytestmark = pytest.mark.slow

ROWS = [{"id": str(i), "task": "summarize", "instruction": f"Summarize: item {i} is red and round.",
         "response": f"Item {i}: red, round."} for i in range(6)]


@pytest.mark.parametrize("quantize", [True, False])
def test_training_changes_the_adapter_and_loss_is_finite(tmp_path, base_model_dir, quantize):
    out = tmp_path / "adapter"
    m = train(rows=ROWS, base_dir=str(base_model_dir), out_dir=str(out),
              p=TrainParams(quantize=quantize, max_steps=2, batch_size=2, max_length=128, learning_rate=1e-3))
    assert m["steps"] == 2 and m["quantized"] is quantize
    assert all(math.isfinite(x["loss"]) for x in m["loss_curve"]) and len(m["loss_curve"]) == 2
    weights = load_file(out / "adapter_model.safetensors")
    lora_b = [t for k, t in weights.items() if "lora_B" in k]
    assert lora_b and any(t.abs().sum() > 0 for t in lora_b)  # peft starts B at zero: non-zero means it trained
    assert (out / "tokenizer_config.json").is_file()


def test_truncation_is_counted(base_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base_model_dir)
    long = to_examples([{"instruction": "word " * 300, "response": "ok"}, ROWS[0]])
    over, total = count_truncated(tok, long, 64)
    assert over == 1 and total <= 128


def test_empty_training_set_is_an_error(tmp_path, base_model_dir):
    with pytest.raises(ValueError, match="no training rows"):
        train(rows=[], base_dir=str(base_model_dir), out_dir=str(tmp_path / "a"), p=TrainParams())
