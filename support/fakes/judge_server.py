"""An OpenAI-wire fake for judging: it bills prompt tokens by counting them (whitespace-separated words, the
same count for every request shape) and can refuse by script. The answers themselves come from `answer`,
as in FakeOpenAI; a prompt containing `refuse_marker` gets a refusal for every sample."""

from __future__ import annotations

import json

from fakes.openai_server import FakeOpenAI
from fakes.server import prompt_text


def count_tokens(text: str) -> int:
    return len(text.split())


def fixed_answers(baseline: str):
    """An `answer` for the fake that grades every answer alike (precision 60, similarity 50), calls every pairwise
    verdict a tie, and answers any other request (the baseline's test prompt) with `baseline`."""

    def answer(body, k):
        schema = (body.get("response_format") or {}).get("json_schema", {}).get("name")
        if schema == "verdict":
            return json.dumps({"reason": "same", "winner": "tie"})
        if schema == "grade":
            return json.dumps({"reason": "fine", "similarity": 50, "precision": 60})
        return baseline

    return answer


class JudgeFake(FakeOpenAI):
    def __init__(self, *args, refuse_marker: str | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.refuse_marker = refuse_marker
        self.billed_input = 0   # prompt tokens over every answered request
        self.billed_output = 0

    def respond(self, body: dict, index: int, mode: str | None) -> dict:
        text = prompt_text(body)
        if self.refuse_marker and self.refuse_marker in text and mode is None:
            mode = "refusal"
        out = super().respond(body, index, mode)
        prompt = sum(count_tokens(m["content"]) for m in body["messages"])
        completion = sum(count_tokens(c["message"]["content"] or "") for c in out["choices"])
        with self.lock:
            self.billed_input += prompt
            self.billed_output += completion
        out["usage"] = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
        return out
