"""Multi-turn coverage rows with a system prompt, end to end: OpenAI-format coverage rows with a system prompt and two earlier
turns go through prepare, train, infer, baseline and judge, and the system prompt reaches every model that sees the
row: the training text the trainer tokenized, the chat template inference rendered, the service's request and the
judge's prompt (on a loopback OpenAI-compatible fake)."""

import json
import shutil

import pytest
import yaml

from conftest import ROOT, run_baseline_and_judge, run_stage, write_jsonl
from fakes.judge_server import JudgeFake, fixed_answers
from llamaduo import tables

SYSTEM = "You are Captain Gull, a terse pirate. Answer in one line."
HISTORY = [{"role": "user", "content": "Ahoy, who are you?"}, {"role": "assistant", "content": "Captain Gull, matey."},
           {"role": "user", "content": "Where do you sail?"}, {"role": "assistant", "content": "The seven seas."}]


def chat_row(i: int) -> dict:
    return {"messages": [{"role": "system", "content": SYSTEM}, *HISTORY,
                         {"role": "user", "content": f"Name the ship of crew {i}."},
                         {"role": "assistant", "content": f"The Black Gull {i}, arr."}]}


# the judge grades alike; the baseline: the service answers the test prompt
service = fixed_answers("The Sea Gull, arr.")


def project(tmp_path, base_url: str | None = None):
    proj = tmp_path / "proj"
    shutil.copytree(ROOT / "prompts", proj / "prompts")
    write_jsonl(proj / "coverage" / "chat.jsonl", [chat_row(i) for i in range(6)])
    params = {"data": {"coverage_dir": "coverage", "tasks": ["chat"], "train_ratio": 0.5, "seed": 0},
              "cache": {"path": str(tmp_path / "calls.sqlite")}}
    if base_url:
        params |= {
            "providers": {"fake": {"kind": "openai_compatible", "model": "fake-judge", "base_url": base_url, "max_retries": 0}},
            "synth": {"provider": "fake"},
            "judge": {"provider": "fake", "m": 1, "retries": 0, "bootstrap": 100},
        }
    (proj / "params.yaml").write_text(yaml.safe_dump(params))
    res = run_stage("prepare.py", "--train-out", "train.parquet", "--test-out", "test.parquet", "--metrics-out", "prepare.json",
                    cwd=proj)
    assert res.returncode == 0, res.stderr[-3000:]
    return proj


def baseline_and_judge(proj, fake):
    run_baseline_and_judge(proj)
    by_kind = {}
    for body in fake.requests:
        kind = (body.get("response_format") or {}).get("json_schema", {}).get("name", "answer")
        by_kind.setdefault(kind, []).append(body)
    return by_kind


def check_service_and_judge(by_kind, test):
    # the service answers in the same conversation the local model gets: system message, the two earlier turns, the instruction
    answers = by_kind["answer"]
    assert len(answers) == len(test)
    for body in answers:
        assert body["messages"][:5] == [{"role": "system", "content": SYSTEM}, *HISTORY]
        assert body["messages"][5]["role"] == "user" and body["messages"][5]["content"].startswith("Name the ship of crew")
    # the judge reads the system prompt and the history as the instruction's context, before the instruction
    prompts = [b["messages"][0]["content"] for kind in ("grade", "verdict") for b in by_kind[kind]]
    assert prompts and len(by_kind["grade"]) == 2 * len(test) and by_kind["verdict"]
    for text in prompts:
        assert f"[system]\n{SYSTEM}" in text and "[assistant]\nThe seven seas." in text
        assert text.index(SYSTEM) < text.index("Where do you sail?") < text.index("Instruction:\n<<<")  # the marker carries a per-request tag


def test_prepare_keeps_the_context_and_the_services_see_it(tmp_path):
    """Fast: prepare, then baseline and judge on the fake, with hand-written local answers."""
    with JudgeFake(answer=service) as fake:
        proj = project(tmp_path, fake.base_url)
        test = tables.read(proj / "test.parquet", "split")
        assert len(test) == 3 and all(r["system"] == SYSTEM and r["history"] == HISTORY for r in test)
        tables.write(proj / "responses.parquet", "responses", [
            {"prompt_id": r["id"], "task": "chat", "sample": 0, "answer": "Arr.", "tokens": 1, "finish_reason": "stop",
             "engine": "x", "latency_s": 0.1} for r in test])
        check_service_and_judge(baseline_and_judge(proj, fake), test)
    ev = json.loads((proj / "eval.json").read_text())
    assert ev["precision"]["mean"] == 60.0 and ev["failed_judgments"] == 0


@pytest.mark.slow
def test_the_system_prompt_reaches_training_inference_the_service_and_the_judge(tmp_path, base_model_dir, monkeypatch):
    from transformers import PreTrainedTokenizerBase, TrainerCallback

    from llamaduo.config import InferParams, TrainParams
    from llamaduo.inference import generate
    from llamaduo.training import train

    with JudgeFake(answer=service) as fake:
        proj = project(tmp_path, fake.base_url)
        train_rows, test = tables.read(proj / "train.parquet", "split"), tables.read(proj / "test.parquet", "split")

        # training: what the trainer tokenized, split by its labels (-100 on the prompt: the loss is on the last answer only)
        seen = {}

        class Spy(TrainerCallback):
            def on_train_begin(self, args, state, control, train_dataloader=None, processing_class=None, **kw):
                ds = train_dataloader.dataset
                seen["prompt"] = [processing_class.decode([t for t, lab in zip(ex["input_ids"], ex["labels"]) if lab == -100])
                                  for ex in ds]
                seen["completion"] = [processing_class.decode([lab for lab in ex["labels"] if lab != -100]) for ex in ds]

        p = TrainParams(quantize=False, max_steps=1, batch_size=1, max_length=256, checkpoint_dir=str(tmp_path / "ckpt"))
        train(rows=train_rows, base_dir=str(base_model_dir), out_dir=str(tmp_path / "adapter"), p=p, callbacks=[Spy()])
        assert len(seen["prompt"]) == len(train_rows) == 3
        for prompt, completion in zip(seen["prompt"], seen["completion"]):
            assert prompt.index(SYSTEM) < prompt.index("Ahoy, who are you?") < prompt.index("The seven seas.") \
                < prompt.index("Name the ship of crew")
            # SmolLM2's template has a system role: the row's prompt replaces its default one
            assert "SmolLM" not in prompt
            assert "The Black Gull" in completion and SYSTEM not in completion and "seven seas" not in completion

        # inference: the text SmolLM2's chat template rendered for each test prompt
        rendered = []
        real = PreTrainedTokenizerBase.apply_chat_template

        def spy(self, conversation, *a, **kw):
            out = real(self, conversation, *a, **kw)
            if kw.get("tokenize") is False and "llamaduo-system-probe" not in str(conversation):
                rendered.append(out)
            return out

        monkeypatch.setattr(PreTrainedTokenizerBase, "apply_chat_template", spy)
        rows, _ = generate(test=test, base_dir=str(base_model_dir), adapter_dir=str(tmp_path / "adapter"),
                           p=InferParams(engine="transformers", k=1, max_new_tokens=6, temperature=0.0))
        monkeypatch.undo()
        assert len(rendered) == len(test) and len(rows) == len(test)
        for text, r in zip(rendered, test):
            assert text.startswith(f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\nAhoy, who are you?")
            assert text.endswith(f"<|im_start|>user\n{r['instruction']}<|im_end|>\n<|im_start|>assistant\n")

        tables.write(proj / "responses.parquet", "responses", rows)
        check_service_and_judge(baseline_and_judge(proj, fake), test)
