"""The loop's volume schedule and its refusal to pay for rows the training cap never reads."""

import json

import pytest

from llamaduo.config import LoopParams, Params
from llamaduo.cycle import driver
from llamaduo.errors import LoopError


def test_growth_schedule_doubles_from_start_and_caps():
    p = LoopParams(start_volume=1000, growth_factor=2, max_volume=256000)
    assert [driver.volume_for(c, p) for c in range(11)] == [0, 1000, 2000, 4000, 8000, 16000, 32000, 64000, 128000, 256000, 256000]


def params(**train) -> Params:
    return Params.model_validate({"train": {"batch_size": 2, "val_ratio": 0.05, **train}})


def test_volume_doubles_from_the_start_volume_and_stops_at_the_max():
    p = Params.model_validate({"loop": {"start_volume": 1000, "growth_factor": 2, "max_volume": 3000}}).loop
    assert [driver.volume_for(c, p) for c in range(5)] == [0, 1000, 2000, 3000, 3000]


@pytest.fixture
def project(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "metrics").mkdir()
    # 40 coverage train rows over two tasks: 38 after the 5% validation slice (2 rows)
    (tmp_path / "metrics" / "prepare.json").write_text(json.dumps({"a": {"train": 30, "test": 3}, "b": {"train": 10, "test": 1}}))
    return tmp_path


def test_a_cap_that_leaves_rows_unread_stops_the_loop_naming_both_keys(project):
    # 10 steps x 2 rows = 20 rows read of 38 + 100
    with pytest.raises(LoopError) as err:
        driver._check_readable(params(max_steps=10), 100)
    msg = str(err.value)
    assert "`train.max_steps` (10) and `train.epochs` (3) let training read 20" in msg and "138 training rows" in msg
    assert "`loop.allow_unread_rows: true`" in msg


def test_no_cap_an_ample_cap_or_the_users_consent_let_the_volume_grow(project):
    driver._check_readable(params(max_steps=None), 10_000)
    with pytest.raises(LoopError):  # half an epoch, uncapped, still leaves rows unread
        driver._check_readable(params(max_steps=None, epochs=0.5), 100)
    driver._check_readable(params(max_steps=69), 100)  # 69 x 2 = 138 rows: every row read once
    with pytest.raises(LoopError):
        driver._check_readable(params(max_steps=68), 100)
    p = Params.model_validate({"train": {"max_steps": 1}, "loop": {"allow_unread_rows": True}})
    driver._check_readable(p, 10_000)


def test_the_gates_error_is_spent_in_shares_recorded_in_the_loop_state_across_a_restart(project):
    """Each cycle tests at what the earlier cycles left over the cycles left; the share lands in params.yaml (what the
    report stage reads) and, with the decision, in the loop state on disk; a restarted cycle tests at the same share."""
    from llamaduo import paths
    from llamaduo.atomic import write_json
    from llamaduo.config import load_params
    from llamaduo.intervals import cycle_alpha

    (project / "params.yaml").write_text("gate:\n  alpha: 0.05\nloop:\n  max_cycles: 4\nsynth:\n  volume: 0\n")
    state, shares = {"cycles": {}}, []
    for cycle in range(4):
        share = cycle_alpha(0.05, driver.alpha_spent(state), cycle, 4)
        driver._set_cycle_params("params.yaml", cycle=cycle, volume=cycle, previous=list(range(cycle)), cycle_alpha=share)
        assert load_params("params.yaml").gate.cycle_alpha == share
        if cycle == 2:  # killed before the decision was recorded: the restart reads the state and tests at the same share
            state = json.loads(paths.LOOP_STATE.read_text())
            assert cycle_alpha(0.05, driver.alpha_spent(state), cycle, 4) == share
        state["cycles"][str(cycle)] = {"gate": False, "alpha": share}
        write_json(paths.LOOP_STATE, state)
        shares.append(share)
    assert shares == pytest.approx([0.0125] * 4) and driver.alpha_spent(json.loads(paths.LOOP_STATE.read_text())) == pytest.approx(0.05)
    # a loop whose `loop.max_cycles` is raised after two cycles spreads what is left over the cycles now left
    two = {"cycles": {"0": {"alpha": 0.0125}, "1": {"alpha": 0.0125}}}
    assert cycle_alpha(0.05, driver.alpha_spent(two), 2, 6) == pytest.approx(0.025 / 4)
