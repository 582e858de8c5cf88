import pytest

from llamaduo.config import InferParams, TrainParams
from llamaduo.inference import generate, pick_engine
from llamaduo.training import train

pytestmark = pytest.mark.slow

TEST = [{"id": f"p{i}", "task": "summarize", "instruction": f"Summarize: the sky {i} is blue.", "response": "Blue sky."}
        for i in range(3)]


@pytest.fixture(scope="module")
def adapter(tmp_path_factory, base_model_dir):
    out = tmp_path_factory.mktemp("adapter") / "a"
    train(rows=TEST, base_dir=str(base_model_dir), out_dir=str(out), p=TrainParams(quantize=False, max_steps=1, batch_size=1, max_length=64))
    return out


def test_transformers_engine_gives_k_answers_per_prompt(base_model_dir, adapter):
    rows, stats = generate(test=TEST, base_dir=str(base_model_dir), adapter_dir=str(adapter),
                           p=InferParams(engine="transformers", k=2, max_new_tokens=8, temperature=0.9))
    assert [(r["prompt_id"], r["sample"]) for r in rows] == [(f"p{i}", k) for i in range(3) for k in range(2)]
    assert all(0 < r["tokens"] <= 8 and r["finish_reason"] in {"stop", "length"} and r["engine"] == "transformers" for r in rows)
    assert stats["answers"] == 6 and stats["tokens"] == sum(r["tokens"] for r in rows)


def test_engine_choice():
    assert pick_engine("transformers") == "transformers"
    assert pick_engine("auto") in {"vllm", "transformers"}
