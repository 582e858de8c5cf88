"""The report stage's summary: the figures of every stage, and the gate decided once, against the champion."""

import json

import pytest

from conftest import judgment as J
from llamaduo.config import GateParams
from llamaduo.reporting.summary import score_points, summary


@pytest.fixture
def metrics(tmp_path):
    files = {
        "prepare": {"summarize": {"train": 9, "test": 2}},
        "curate": {"rows_in": 5, "rows_out": 3, "dropped": {"refusal": 2}},
        "train": {"rows": 12, "train_loss": 1.25},
        "infer": {"tokens_per_s": 80.5},
        "eval": {"precision": {"mean": 72.0, "ci95_low": 65.0, "ci95_high": 79.0},
                 "similarity": {"mean": 40.0}, "failed_judgments": 1, "scored_fraction": 0.95},
        "champion": {},
    }
    for name, body in files.items():
        (tmp_path / f"{name}.json").write_text(json.dumps(body))
    return {name: str(tmp_path / f"{name}.json") for name in files}


def test_summary_gathers_every_stage_and_passes_without_a_champion(metrics):
    s = summary(**metrics, p=GateParams(mode="point", threshold=70))
    assert s["split"] == {"summarize": {"train": 9, "test": 2}} and s["synthetic_curated"] == 3 and s["train_rows"] == 12
    assert s["train_loss"] == 1.25 and s["infer_tokens_per_s"] == 80.5 and s["failed_judgments"] == 1
    gate = {k: v for k, v in s["gate"].items() if k not in ("test", "power_warning")}
    assert gate == {"metric": "precision", "mode": "point", "threshold": 70, "score": 72.0, "ci95": [65.0, 79.0],
                    "passed": True, "scored_fraction": 0.95, "reason": "precision 72.00 passes (threshold 70)"}


def test_below_the_champions_interval_is_no_pass_even_above_the_threshold(metrics, tmp_path):
    (tmp_path / "champion.json").write_text(json.dumps({"version": "4", "cycle": 2, "score": 80.0, "ci_low": 75.0}))
    s = summary(**metrics, p=GateParams(mode="point", threshold=70, no_regression=True))
    assert s["gate"]["passed"] is False and s["gate"]["reason"] == "precision 72.00 is below champion v4's 95% interval (from 75.00)"
    assert summary(**metrics, p=GateParams(mode="point", threshold=70, no_regression=False))["gate"]["passed"] is True
    assert summary(**metrics, p=GateParams(mode="point", threshold=75, no_regression=False))["gate"]["reason"] == \
        "precision 72.00 is below the threshold 75"


def test_score_points_are_the_primary_judges_per_answer_means():
    rows = [J("a", 0, 80, 40), J("a", 0, 60, 60), J("a", 0, 0, 0, judge="j2"), J("b", 1, 50, 10)]
    assert score_points(rows) == [{"prompt_id": "a", "sample": 0, "precision": 70.0, "similarity": 50.0},
                                  {"prompt_id": "b", "sample": 1, "precision": 50.0, "similarity": 10.0}]


def test_the_gate_reads_a_reference_metric_and_its_interval(metrics, tmp_path):
    ev = json.loads((tmp_path / "eval.json").read_text())
    ev["reference"] = {"metrics": ["rouge_l", "chrf", "exact_match"], "answers": 4, "scored_fraction": 1.0,
                       "rouge_l": {"mean": 41.5, "ci95_low": 35.0, "ci95_high": 48.0}, "chrf": {"mean": 50.0},
                       "exact_match": {"mean": 25.0, "ci95_low": 0.0, "ci95_high": 50.0}, "judge_agreement": {}}
    (tmp_path / "eval.json").write_text(json.dumps(ev))
    s = summary(**metrics, p=GateParams(mode="point", metric="rouge_l", threshold=40))
    gate = {k: v for k, v in s["gate"].items() if k not in ("test", "power_warning")}
    assert gate == {"metric": "rouge_l", "mode": "point", "threshold": 40, "score": 41.5, "ci95": [35.0, 48.0],
                    "passed": True, "scored_fraction": 1.0, "reason": "rouge_l 41.50 passes (threshold 40)"}
    assert s["reference"]["exact_match"] == {"mean": 25.0, "ci95_low": 0.0, "ci95_high": 50.0}
    assert s["precision"]["mean"] == 72.0
    (tmp_path / "champion.json").write_text(json.dumps({"version": "5", "metric": "rouge_l", "score": 50.0, "ci_low": 44.0}))
    assert summary(**metrics, p=GateParams(mode="point", metric="rouge_l", threshold=40))["gate"]["reason"] == \
        "rouge_l 41.50 is below champion v5's 95% interval (from 44.00)"


def test_a_reference_gate_on_an_eval_without_reference_figures_says_what_to_do(metrics):
    from llamaduo.errors import DataError

    with pytest.raises(DataError, match="rerun the judge stage"):
        summary(**metrics, p=GateParams(mode="point", metric="chrf", threshold=40))
    assert "reference" not in summary(**metrics, p=GateParams(mode="point"))


def flat(d: dict, prefix: str = "") -> dict:
    """Keys as `dvc metrics show` prints them (nested dicts joined with dots)."""
    out = {}
    for k, v in d.items():
        out |= flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v}
    return out


def test_headline_is_the_few_figures_a_reviewer_compares(tmp_path):
    from report_fixtures import write_project_outputs

    head = flat(write_project_outputs(tmp_path))
    # a two-judge panel still fits a terminal in `dvc metrics diff` (one row per key)
    assert len(head) == 40
    assert {k for k in head if k.startswith("judge.j2.")} == {f"judge.j2.{m}.{f}" for m in ("precision", "similarity")
                                                              for f in ("mean", "ci95_low", "ci95_high", "coverage_50", "coverage_70", "p_match")}
    assert head["judge.j1.precision.mean"] == 62.5 and head["judge.j2.similarity.p_match"] == 0.77
    assert head["gate.passed"] is True and head["gate.reason"] == "precision 62.50 passes (threshold 60)"
    assert head["gate.scored_fraction"] == 0.97 and head["gate.metric"] == "precision"
    assert head["reference.chrf"] == 44.4 and head["rows.train"] == 102 and head["rows.synthetic_curated"] == 90
    assert head["loss.train"] == 1.25 and head["loss.validation"] == 1.5
    # synthesis 10 calls ($0.05) + the baseline's answers 7 ($0.004) and judging 7 ($0.001) + the panel 6 + 6 ($0.03)
    assert head["cost.paid_calls"] == 36 and head["cost.usd"] == 0.085


def test_usage_adds_flat_per_provider_and_total_entries():
    from llamaduo.reporting.summary import usage

    flat_u = {"usage": {"calls": 2, "cost_usd": 0.5, "input_tokens": 10}}
    per_provider = {"usage": {"answers": {"a": {"calls": 1, "cost_usd": 0.25}}, "judging": {"b": {"calls": 3, "cost_usd": 0.0}}}}
    with_total = {"usage": {"total": {"calls": 4, "cost_usd": 1.0}, "x": {"calls": 99, "cost_usd": 99.0}}}
    assert usage([flat_u, per_provider, with_total, {}]) == {"calls": 10, "cost_usd": 1.75, "input_tokens": 10}
    assert usage([]) == {"calls": 0, "cost_usd": 0.0}


def test_summary_pairs_with_a_champion_that_holds_per_prompt_scores(metrics, tmp_path):
    from llamaduo.reporting.summary import prompt_scores_record

    local = {f"p{i}": 72.0 + (i % 3) for i in range(10)}  # mean 72.9
    champ = {f"p{i}": v + 4.0 for i, v in enumerate(local.values())}  # 4 higher on every prompt
    # the champion's interval (from 70) holds the candidate's 72.0; paired, 4 points below on every prompt is a loss
    (tmp_path / "champion.json").write_text(json.dumps({"version": "4", "metric": "precision", "ci_low": 70.0,
                                                        "scores": champ}))
    p = GateParams(mode="threshold", threshold=60, margin=2)
    s = summary(**metrics, p=p, scores=(local, {}))
    assert s["gate"]["regression"] == {"version": "4", "method": "paired", "prompts": 10, "alpha": 0.05,
                                       "against": -2, "estimate": -4.0, "bound": -4.0}
    assert not s["gate"]["passed"] and "paired over 10 prompts" in s["gate"]["reason"]
    assert prompt_scores_record("precision", {"b": 1 / 3, "a": 2.0}) == \
        {"metric": "precision", "scores": {"a": 2.0, "b": 0.333333}}
