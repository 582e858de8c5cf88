"""One real cycle: `dvc repro` on a tiny configuration in a fresh git repo, every stage for real
(GGUF conversion, vLLM service on loopback for synthesis and judging, QLoRA training, vLLM inference)."""

import json
import os
import subprocess
import sys
from pathlib import Path
from statistics import fmean, stdev

import pytest
import yaml

from conftest import ROOT, copy_project
from llamaduo import intervals, tables

# one group: under `pytest -n` the module-scoped pipeline run must happen once, on one worker
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("pipeline_e2e")]

TINY = {
    "data": {"max_rows_per_task": 30, "train_ratio": 0.9},
    "synth": {"volume": 4, "pairs_per_request": 2, "max_requests": 3, "max_tokens": 400},
    "train": {"max_steps": 2, "batch_size": 2, "max_length": 256},
    # a fixed 1 GiB KV cache (VLLM_CPU_KVCACHE_SPACE) rather than vLLM's share of the node (0.3 of 24 GiB): the suite
    # runs beside other tests (`pytest -n 2`), and vLLM refuses to start when that share is not free at that moment
    # vLLM's own core binding (`auto`: one core for the model) rather than the shipped `all`: beside another test
    # process, OpenMP threads on both cores would each wait for the core that process holds
    "infer": {"k": 2, "max_new_tokens": 32, "cpu_kvcache_gib": 1, "cpu_threads_bind": "auto"},
    "judge": {"m": 2, "max_tokens": 150},
}


def dvc(proj: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}", HF_HUB_OFFLINE="1")
    res = subprocess.run(["dvc", *args], cwd=proj, env=env, capture_output=True, text=True, timeout=1800)
    # the root cause can sit far above the last lines (vLLM's worker processes print it before the tracebacks)
    causes = "\n".join([ln for ln in res.stderr.splitlines() if "Error:" in ln or "Exception:" in ln][-12:])
    assert res.returncode == 0, f"dvc {' '.join(args)} failed:\n{res.stdout[-3000:]}\n{res.stderr[-5000:]}\ncauses:\n{causes}"
    return res


def ran(res) -> list[str]:
    return [line.split("'")[1] for line in res.stdout.splitlines() if line.startswith("Running stage")]


def set_params(proj: Path, changes: dict) -> None:
    params = yaml.safe_load((proj / "params.yaml").read_text())
    for section, values in changes.items():
        params.setdefault(section, {}).update(values)
    (proj / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


@pytest.fixture(scope="module")
def cycle(tmp_path_factory):
    proj = copy_project(tmp_path_factory.mktemp("project"))
    set_params(proj, TINY)
    params = yaml.safe_load((proj / "params.yaml").read_text())
    # the local service LLM: as infer
    params["providers"]["service"].setdefault("server", {}).update(cpu_kvcache_gib=1, cpu_threads_bind="auto")
    (proj / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    subprocess.run(["git", "init", "-q"], cwd=proj, check=True)
    try:
        first = dvc(proj, "repro")
        yield proj, first
    finally:
        # a bare `dvc repro` leaves the cycle's shared vLLM server to its idle watchdog; `llamaduo run` stops it
        # at the end, as the test does here (a server left running holds ~7 GiB of KV cache on this CPU)
        from llamaduo.providers.local import stop_all

        stop_all(proj / ".llamaduo" / "servers")


def read_json(path: Path):
    return json.loads(path.read_text())


def test_every_stage_ran_and_wrote_real_numbers(cycle):
    proj, first = cycle
    order = ran(first)
    assert set(order) == {"prepare", "base_model", "services", "synthesize", "curate", "train", "merge", "infer", "baseline", "judge",
                          "report"}
    assert order.index("infer") < order.index("judge") < order.index("report") and order.index("baseline") < order.index("judge")
    ev = read_json(proj / "metrics/eval.json")
    # the hashed split puts each of the 30 rows in test with chance 0.1: what it gave, K 2 answers each, M 2 judgments
    n_test = len(tables.read(proj / "data/prepared/test.parquet", "split"))
    assert n_test >= 2 and ev["answers"] == n_test * 2 and ev["judgments"] == n_test * 2 * 2
    assert ev["usage"]["calls"] >= 1 and ev["usage"]["cached"] == 0 and ev["usage"]["output_tokens"] > 0
    judged = [j for j in tables.read(proj / "data/eval/judgments.parquet", "judgments") if j["answerer"] == "local"]
    assert len(judged) == n_test * 4 and ev["failed_judgments"] == sum(not j["ok"] for j in judged)
    assert ev["precision"]["scored_answers"] == len({(j["prompt_id"], j["sample"]) for j in judged if j["ok"]})
    assert all((j["ok"] and 0 <= j["precision"] <= 100) or (not j["ok"] and j["error"]) for j in judged)
    syn = read_json(proj / "metrics/synthesize.json")
    assert syn["requests"] >= 1 and syn["usage"]["calls"] == syn["requests_sent"]
    tr = read_json(proj / "metrics/train.json")
    # quantize: auto -> plain LoRA on a CPU where the base fits, 4-bit on CUDA
    assert tr["steps"] == 2 and tr["quantized"] is tr["quantize_source"].endswith("cuda")
    assert (proj / "models/adapter/adapter_model.safetensors").is_file()
    responses = tables.read(proj / "data/eval/responses.parquet", "responses")
    assert len(responses) == n_test * 2 and all(r["engine"] == "vllm" for r in responses)
    inf = read_json(proj / "metrics/infer.json")
    # vLLM's own counters agree with the answers' token counts; the prompts were computed too
    assert inf["engine_tokens"]["generation"] == inf["tokens"] == sum(r["tokens"] for r in responses)
    assert inf["engine_tokens"]["computed"] > inf["tokens"] and inf["computed_tokens_per_s"] > inf["tokens_per_s"]
    summary = read_json(proj / "metrics/summary.json")
    gate = summary["gate"]
    # the shipped gate: ROUGE-L, local - service per test prompt, one-sided lower bound above -margin (2); a `dvc repro`
    # outside the loop (gate.cycle_alpha null) is one test at the whole gate.alpha; recomputed here from the reference table
    from scipy.stats import t as student

    ref = tables.read(proj / "data/eval/reference.parquet", "reference")
    local = {p: fmean(r["rouge_l"] for r in ref if r["answerer"] == "local" and r["prompt_id"] == p)
             for p in {r["prompt_id"] for r in ref if r["answerer"] == "local"}}
    service = {r["prompt_id"]: r["rouge_l"] for r in ref if r["answerer"] == "service"}
    d = [local[p] - service[p] for p in sorted(set(local) & set(service))]
    alpha = 0.05
    bound = fmean(d) - student.ppf(1 - alpha, len(d) - 1) * stdev(d) / len(d) ** 0.5
    test = gate["test"]
    assert gate["metric"] == "rouge_l" and test["mode"] == "non_inferiority" and test["alpha"] == pytest.approx(alpha)
    # the gate's bound is the lower of Student's t (recomputed here) and a skew-corrected t: never above Student's
    assert test["prompts"] == len(d) and test["bound"] <= bound + 1e-9
    assert test["bound"] == pytest.approx(intervals.lower_bound(d, alpha), abs=1e-3)
    # no champion yet (metrics/champion.json is {}): the bound alone decides
    assert gate["passed"] is (test["bound"] > -2)


def test_no_test_row_in_training_data(cycle):
    proj, _ = cycle
    test = tables.read(proj / "data/prepared/test.parquet", "split")
    train = tables.read(proj / "data/prepared/train.parquet", "split")
    curated = tables.read(proj / "data/synthetic/curated.parquet", "synthetic")
    test_texts = {r["instruction"] for r in test} | {r["response"] for r in test}
    assert not test_texts & ({r["instruction"] for r in train + curated} | {r["response"] for r in train + curated})


def test_cycle_bench_records_each_stage_s_own_calls(cycle, tmp_path):
    """bench/cycle.py's own peaks replay each generating stage's requests, recorded by running the stages again
    with their calls answered from the cycle's cache: every call the cycle paid the server for is recorded once,
    by the stage that made it, and infer's prompts with the stage's sampling. (Before any test reruns a stage:
    the cache then holds this one cycle's calls.)"""
    from llamaduo.providers.cache import CallCache

    proj, _ = cycle
    out = tmp_path / "requests.json"
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    res = subprocess.run([sys.executable, str(ROOT / "bench" / "cycle.py"), "--record", str(out), "--stages",
                          "synthesize,curate,infer,baseline,judge"], cwd=proj, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    found = json.loads(out.read_text())
    assert set(found) == {"synthesize", "infer", "baseline", "judge"}  # curate generates nothing
    with CallCache(proj / ".llamaduo/calls.sqlite") as cache:
        paid = len(cache)
    service = ("synthesize", "baseline", "judge")
    assert sum(len(found[s]["requests"]) for s in service) == paid and all(found[s]["missing"] == 0 for s in service)
    assert len(found["synthesize"]["requests"]) == read_json(proj / "metrics/synthesize.json")["requests_sent"]
    # judge: M judgments per local answer in one call (n=M), with the judgment's JSON schema
    n_test = len(tables.read(proj / "data/prepared/test.parquet", "split"))
    grading = [b for b in found["judge"]["requests"] if b["n"] == TINY["judge"]["m"]]
    assert len(grading) >= n_test * TINY["infer"]["k"] and all(b["response_format"]["type"] == "json_schema" for b in grading)
    assert all(b["max_tokens"] == TINY["judge"]["max_tokens"] for b in found["judge"]["requests"])
    assert found["judge"]["engine"] == found["baseline"]["engine"] and found["judge"]["engine"]["kind"] == "server"
    infer = found["infer"]
    assert len(infer["requests"]) == n_test and infer["engine"]["kind"] == "offline"
    assert all(r["sampling"] == {"n": 2, "temperature": 0.7, "top_p": 0.9, "max_tokens": 32} for r in infer["requests"])
    assert all(r["messages"][-1]["role"] == "user" for r in infer["requests"])


def test_second_repro_runs_nothing_and_a_judge_param_reruns_only_judge_and_report(cycle):
    proj, _ = cycle
    assert ran(dvc(proj, "repro")) == []
    # runtime knobs (how fast, not what): only `services` reruns, and its output does not change
    params = yaml.safe_load((proj / "params.yaml").read_text())
    params["providers"]["service"]["concurrency"] = 3
    params["train"]["threads"] = 1
    (proj / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert ran(dvc(proj, "repro")) == ["services"]
    set_params(proj, {"judge": {"zetas": [50, 60, 70]}})
    again = dvc(proj, "repro")
    assert sorted(ran(again)) == ["baseline", "judge", "report"]  # the baseline is judged with the same params
    ev = read_json(proj / "metrics/eval.json")
    # same requests as before: every judgment comes from the call cache, the server is not even started
    assert ev["usage"]["calls"] == 0 and ev["usage"]["cached"] >= 6
    assert "coverage_60" in ev["precision"]
