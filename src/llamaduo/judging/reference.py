"""Reference metrics: each answer scored against the test row's reference response, with no judge in the loop.

The judge is the only other quality signal, and offline it is a 135M model whose pairwise verdicts mostly flip
with the order; these figures cannot be talked round. All three are on the judge's 0-100 scale:

- `rouge_l`: ROUGE-L F1 from `rouge-score` (Google's reference implementation; its default tokenizer: lowercase,
  runs of [a-z0-9], no stemming; text with no such characters has no tokens and scores 0);
- `chrf`: sentence-level chrF from sacrebleu (character 6-grams, beta 2: its defaults);
- `exact_match`: 100 when the answer equals the reference after SQuAD's normalisation (lowercase, punctuation and
  the articles a/an/the removed, whitespace collapsed), else 0.
"""

from __future__ import annotations

import re
import string

from llamaduo.errors import DataError
from llamaduo.judging.names import LOCAL

REFERENCE_METRICS = ("rouge_l", "chrf", "exact_match")

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD v1.1's `normalize_answer` (its official evaluate script): lowercase, drop punctuation, drop the
    articles, collapse whitespace. The order is the script's: punctuation goes before the articles are matched."""
    return " ".join(_ARTICLES.sub(" ", text.lower().translate(_PUNCT)).split())


class Scorer:
    """The three metrics for one (answer, reference) pair; holds the libraries' scorer objects, built once."""

    def __init__(self):
        from rouge_score import rouge_scorer
        from sacrebleu.metrics import CHRF

        self._rouge = rouge_scorer.RougeScorer(["rougeL"])
        self._chrf = CHRF()

    def __call__(self, answer: str, reference: str) -> dict[str, float]:
        return {
            "rouge_l": 100.0 * self._rouge.score(reference, answer)["rougeL"].fmeasure,
            "chrf": float(self._chrf.sentence_score(answer, [reference]).score),
            "exact_match": 100.0 * (normalize_answer(answer) == normalize_answer(reference)),
        }


def reference_scores(answers: list[dict], test: list[dict], *, answerer: str | None = None,
                     scorer: Scorer | None = None) -> list[dict]:
    """Rows of the `reference` table: each answer's three scores against its test row's `response`.

    `answers` are rows of `responses` (the local model's; `answerer` None = LOCAL) or of `baseline_responses`
    (each row's `service` is its answerer). An answer to a prompt the test split does not hold is an error."""
    scorer = scorer or Scorer()
    reference = {r["id"]: r["response"] for r in test}
    rows = []
    for a in answers:
        ref = reference.get(a["prompt_id"])
        if ref is None:
            raise DataError(f"answer to prompt {a['prompt_id']!r} (sample {a['sample']}): no test row with that id; "
                            "the answers and the test split come from different runs")
        who = answerer or a.get("service") or LOCAL
        rows.append({"answerer": who, "prompt_id": a["prompt_id"], "task": a["task"], "sample": a["sample"],
                     **scorer(a["answer"], ref)})
    return rows
