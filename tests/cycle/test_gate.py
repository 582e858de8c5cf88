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
