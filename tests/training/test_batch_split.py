"""The global batch is the result, its split the device's business: on the real small model, one step of 2 rows as
1 micro-batch of 2 (padded, and padding-free) and as 2 micro-batches of 1, and with trl's fused LM head or the
model's own, gives the same loss, step after step."""

import pytest

from llamaduo.config import TrainParams
from llamaduo.training import train

# completions of very different lengths: a loss averaged per micro-batch instead of per token would differ by
# far more than the tolerance
ROWS = [{"id": "a", "task": "t", "instruction": "Summarize: the red fox runs.", "response": "Fox."},
        {"id": "b", "task": "t", "instruction": "Summarize: the long story.",
         "response": "A long story about a fox that runs through the forest, crosses a river, meets a bear and goes home."},
        {"id": "c", "task": "t", "instruction": "Summarize: blue sky over the hills, and wind.", "response": "Sky and wind."},
        {"id": "d", "task": "t", "instruction": "Summarize: rain.", "response": "It rains all day over the town and the fields."}]
# float32 sums taken in another order (one matmul over 2 rows, or two of 1 accumulated)
TOLERANCE = 1e-4


@pytest.mark.slow
def test_the_same_global_batch_split_two_ways_gives_the_same_loss(tmp_path, base_model_dir):
    def run(name, **kw):
        # lora_dropout 0: the dropout masks' draws would follow the micro-batch shape
        p = TrainParams(batch_size=2, epochs=1, max_length=96, lora_dropout=0, learning_rate=1e-3, quantize=False,
                        val_ratio=0, checkpoint_dir=str(tmp_path / name / "ckpt"), **kw)
        return train(rows=ROWS, base_dir=str(base_model_dir), out_dir=str(tmp_path / name / "adapter"), p=p, dtype="float32")

    one_pass = run("2x1", micro_batch_size=2, padding_free=False)
    two_passes = run("1x2", micro_batch_size=1)
    padding_free = run("2x1-free", micro_batch_size=2, padding_free=True)
    # trl's fused LM head (a GPU's) against the model's own head at the scored positions (a CPU's)
    fused = run("fused", micro_batch_size=2, padding_free=True, fused_lm_head=True)
    assert (one_pass["plan"]["micro_batch_size"], one_pass["plan"]["grad_accum"]) == (2, 1)
    assert (two_passes["plan"]["micro_batch_size"], two_passes["plan"]["grad_accum"]) == (1, 2)
    assert padding_free["plan"]["padding_free"] and not one_pass["plan"]["padding_free"]
    assert fused["plan"]["fused_lm_head"] and not one_pass["plan"]["fused_lm_head"]
    for other in (two_passes, padding_free, fused):
        # the second step's loss follows the first update: the gradients agree too
        assert [x["step"] for x in other["loss_curve"]] == [1, 2]
        for a, b in zip(one_pass["loss_curve"], other["loss_curve"]):
            assert b["loss"] == pytest.approx(a["loss"], rel=TOLERANCE)
        assert other["tokens_seen"] == one_pass["tokens_seen"]  # padding-free counts the same tokens, padding aside
    assert one_pass["loss_curve"][0]["loss"] != pytest.approx(one_pass["loss_curve"][1]["loss"], rel=TOLERANCE)
