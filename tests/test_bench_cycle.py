"""bench/cycle.py's helpers that need no engine: a stage's command run again with its outputs moved aside, and
each stage's rate over its own peak. (Recording a stage's own requests is checked on a real cycle in
test_pipeline_e2e.py.)"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cycle_bench():
    spec = importlib.util.spec_from_file_location("bench_cycle", ROOT / "bench" / "cycle.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_stage_argv_moves_every_output_and_keeps_every_input(cycle_bench, tmp_path):
    spec = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["judge"]
    argv = cycle_bench.stage_argv(spec, tmp_path)
    assert argv[0] == "stages/judge.py"
    outs = {next(iter(o)) if isinstance(o, dict) else o for o in spec["outs"]}
    values = dict(zip(argv[1::2], argv[2::2]))
    moved = {v for v in values.values() if v.startswith(str(tmp_path))}
    # every declared output (parquet tables and metrics files alike) lands under the temp folder, its parent made
    assert moved == {str(tmp_path / o) for o in outs} and len(outs) >= 5
    assert all(Path(v).parent.is_dir() for v in moved)
    # the inputs are the cycle's own
    assert values["--responses"] == "data/eval/responses.parquet" and values["--test"] == "data/prepared/test.parquet"


def test_ratios_divide_each_stage_by_its_own_peak(cycle_bench):
    rates = {"judge": {"tokens_per_s": 30.0, "computed_tokens_per_s": 300.0},
             "infer": {"tokens_per_s": 110.0, "computed_tokens_per_s": 200.0},
             "synthesize": {"tokens_per_s": None, "computed_tokens_per_s": None}}
    peaks = {"judge": {"tokens_per_s": 60.0, "computed_tokens_per_s": 400.0},
             "infer": {"tokens_per_s": 100.0, "computed_tokens_per_s": 0.0}}
    r = cycle_bench.ratios(rates, peaks)
    assert r["gen_ratio_to_own_peak"] == {"judge": 0.5, "infer": 1.1, "synthesize": None}
    # a zero or missing peak gives no ratio, never a division error
    assert r["work_ratio_to_own_peak"] == {"judge": 0.75, "infer": None, "synthesize": None}
