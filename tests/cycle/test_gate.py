from llamaduo.config import GateParams, LoopParams
from llamaduo.cycle.driver import volume_for
from llamaduo.cycle.gate import decide


def test_threshold():
    p = GateParams(metric="precision", threshold=70)
    assert decide({"score": 71.0}, None, p)[0]
    ok, why = decide({"score": 69.5}, None, p)
    assert not ok and "below the threshold 70" in why


def test_no_scores_never_passes():
    ok, why = decide({"score": None}, None, GateParams(threshold=None))
    assert not ok and "every judgment failed" in why


def test_no_regression_against_champion_interval():
    p = GateParams(threshold=50, no_regression=True)
    champ = {"version": "3", "ci_low": "80.0"}
    ok, why = decide({"score": 75.0}, champ, p)
    assert not ok and "champion v3" in why
    assert decide({"score": 81.0}, champ, p)[0]
    assert decide({"score": 75.0}, champ, GateParams(threshold=50, no_regression=False))[0]


def test_growth_schedule_doubles_from_start_and_caps():
    p = LoopParams(start_volume=1000, growth_factor=2, max_volume=256000)
    assert [volume_for(c, p) for c in range(11)] == [0, 1000, 2000, 4000, 8000, 16000, 32000, 64000, 128000, 256000, 256000]


def test_reference_metric_gate_and_a_champion_gated_on_another_metric():
    p = GateParams(metric="rouge_l", threshold=30)
    assert decide({"score": 31.0}, None, p) == (True, "rouge_l 31.00 passes (threshold 30)")
    assert decide({"score": 29.0}, None, p) == (False, "rouge_l 29.00 is below the threshold 30")
    ok, why = decide({"score": None}, None, p)
    assert not ok and why == "no scored answers for `rouge_l` (no answers)"
    champ = {"version": "2", "metric": "rouge_l", "ci_low": 35.0}
    assert decide({"score": 34.0}, champ, p)[1] == "rouge_l 34.00 is below champion v2's 95% interval (from 35.00)"
    assert decide({"score": 36.0}, champ, p)[0]
    # a champion gated on precision has no rouge_l interval to compare with: no silent pass
    ok, why = decide({"score": 99.0}, {"version": "2", "metric": "precision", "ci_low": 35.0}, p)
    assert not ok and "gated on precision" in why
