import pydantic
import pytest

from llamaduo.config import GateParams
from llamaduo.reporting.gate import decide, figures


def test_threshold():
    p = GateParams(mode="point", metric="precision", threshold=70)
    assert decide({"score": 71.0, "scored_fraction": 1.0}, None, p)[0]
    ok, why = decide({"score": 69.5, "scored_fraction": 1.0}, None, p)
    assert not ok and "below the threshold 70" in why


def test_no_scores_never_passes():
    ok, why = decide({"score": None, "scored_fraction": 1.0}, None, GateParams(mode="point", threshold=None))
    assert not ok and "every judgment failed" in why


def test_no_regression_against_champion_interval():
    p = GateParams(mode="point", threshold=50, no_regression=True)
    champ = {"version": "3", "ci_low": "80.0"}
    ok, why = decide({"score": 75.0, "scored_fraction": 1.0}, champ, p)
    assert not ok and "champion v3" in why
    assert decide({"score": 81.0, "scored_fraction": 1.0}, champ, p)[0]
    assert decide({"score": 75.0, "scored_fraction": 1.0}, champ, GateParams(mode="point", threshold=50, no_regression=False))[0]


def test_reference_metric_gate_and_a_champion_gated_on_another_metric():
    p = GateParams(mode="point", metric="rouge_l", threshold=30)
    assert decide({"score": 31.0, "scored_fraction": 1.0}, None, p) == (True, "rouge_l 31.00 passes (threshold 30)")
    assert decide({"score": 29.0, "scored_fraction": 1.0}, None, p) == (False, "rouge_l 29.00 is below the threshold 30")
    ok, why = decide({"score": None, "scored_fraction": 1.0}, None, p)
    assert not ok and why == "no scored answers for `rouge_l` (no answers)"
    champ = {"version": "2", "metric": "rouge_l", "ci_low": 35.0}
    assert decide({"score": 34.0, "scored_fraction": 1.0}, champ, p)[1] == "rouge_l 34.00 is below champion v2's 95% interval (from 35.00)"
    assert decide({"score": 36.0, "scored_fraction": 1.0}, champ, p)[0]
    # a champion gated on precision has no rouge_l interval to compare with: no silent pass
    ok, why = decide({"score": 99.0, "scored_fraction": 1.0}, {"version": "2", "metric": "precision", "ci_low": 35.0}, p)
    assert not ok and "gated on precision" in why


def test_a_mean_over_too_few_scored_judgments_never_passes():
    """Before `gate.min_scored_fraction` a 95 over the 10% of judgments the judge could grade passed."""
    p = GateParams(mode="point", metric="precision", threshold=70)
    assert p.min_scored_fraction == 0.9
    assert decide({"score": 95.0, "scored_fraction": 0.1}, None, p) == \
        (False, "only 10% of judgments scored for `precision`, `gate.min_scored_fraction` is 0.9")
    # rounded down: 89.99% does not read as the bar it misses
    assert decide({"score": 95.0, "scored_fraction": 0.8999}, None, p)[1].startswith("only 89.9% of judgments")
    assert decide({"score": 95.0, "scored_fraction": 0.9}, None, p)[0]
    assert decide({"score": 95.0, "scored_fraction": 0.1}, None, GateParams(mode="point", threshold=70, min_scored_fraction=0.05))[0]
    # an eval.json from before the fraction was recorded is no evidence either (unless the bar is off)
    assert decide({"score": 95.0, "scored_fraction": None}, None, p) == \
        (False, "eval.json records no `scored_fraction` (written before `gate.min_scored_fraction` existed): rerun the judge stage")
    assert decide({"score": 95.0}, None, GateParams(mode="point", threshold=70, min_scored_fraction=0))[0]
    # reference metrics: the share of answers with their metrics, from eval.json's `reference`
    ev = {"precision": {"mean": 95.0}, "scored_fraction": 0.4,
          "reference": {"metrics": ["rouge_l"], "rouge_l": {"mean": 50.0, "ci95_low": 40.0}, "scored_fraction": 1.0}}
    assert figures(ev, "precision") == {"mean": 95.0, "scored_fraction": 0.4}
    assert figures(ev, "rouge_l") == {"mean": 50.0, "ci95_low": 40.0, "scored_fraction": 1.0}
    assert decide({"score": 50.0, "scored_fraction": 0.5}, None, GateParams(mode="point", metric="rouge_l", threshold=30))[1] == \
        "only 50% of answers scored for `rouge_l`, `gate.min_scored_fraction` is 0.9"


def test_min_scored_fraction_is_a_share():
    for bad in (-0.1, 1.5):
        with pytest.raises(pydantic.ValidationError, match="min_scored_fraction"):
            GateParams(mode="point", min_scored_fraction=bad)
