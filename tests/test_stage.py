"""Bad input stops a stage with one clear line and a non-zero exit, and leaves no partial outputs."""

import json

import pytest

from conftest import no_robots_row, run_stage, write_jsonl

OUTS = ["--train-out", "out/train.parquet", "--test-out", "out/test.parquet", "--metrics-out", "out/prepare.json"]


def project(tmp_path, params: str, rows=None):
    (tmp_path / "params.yaml").write_text(params)
    if rows is not None:
        write_jsonl(tmp_path / "data/coverage/summarize.jsonl", rows)
    else:
        (tmp_path / "data/coverage").mkdir(parents=True)
        (tmp_path / "data/coverage/summarize.jsonl").write_text("")
    return tmp_path


@pytest.mark.parametrize("params,rows,message", [
    ("data:\n  tasks: [summarize]\n", [no_robots_row(0), {"prompt": "no response here"}],
     "summarize.jsonl:2: missing column(s) ['response']"),
    ("data:\n  tasks: [summarize]\n", None, "has 0 row(s)"),
    ("data:\n  tasks: [summarize]\n  trian_ratio: 0.5\n", [no_robots_row(i) for i in range(4)], "`data.trian_ratio`: unknown key"),
    ("data:\n  train_ratio: 1.0\n", [no_robots_row(i) for i in range(4)], "`data.train_ratio`: Input should be less than 1"),
])
def test_prepare_rejects_bad_input(tmp_path, params, rows, message):
    proj = project(tmp_path, params, rows)
    res = run_stage("prepare.py", *OUTS, cwd=proj)
    assert res.returncode == 2, res.stderr
    assert message in res.stderr
    assert "Traceback" not in res.stderr
    assert not (proj / "out").exists() or list((proj / "out").iterdir()) == []


def test_prepare_writes_outputs(tmp_path):
    proj = project(tmp_path, "data:\n  train_ratio: 0.75\n", [no_robots_row(i) for i in range(8)])
    res = run_stage("prepare.py", *OUTS, cwd=proj)
    assert res.returncode == 0, res.stderr
    # each row's side is a seeded hash of its id (coverage.split): 8 rows at phi 0.75 and seed 42 fall 5 / 3
    assert json.loads((proj / "out/prepare.json").read_text()) == {"summarize": {"train": 5, "test": 3}}


def test_judge_with_unknown_answers_is_rejected(tmp_path):
    from llamaduo import tables

    proj = project(tmp_path, "judge:\n  m: 1\n", [no_robots_row(i) for i in range(4)])
    tables.write(proj / "r.parquet", "responses", [{"prompt_id": "ghost", "task": "summarize", "sample": 0, "answer": "a",
                                                   "tokens": 1, "finish_reason": "stop", "engine": "x"}])
    tables.write(proj / "t.parquet", "split", [])
    res = run_stage("judge.py", "--responses", "r.parquet", "--test", "t.parquet", "--out", "j.parquet",
                    "--metrics-out", "e.json", cwd=proj)
    assert res.returncode == 2 and "refer to prompts not in the test split" in res.stderr
    assert not (proj / "j.parquet").exists() and not (proj / "e.json").exists()


def in_process(tmp_path, monkeypatch, main, *paths, argv=()):
    from llamaduo import stage

    (tmp_path / "params.yaml").write_text("gate:\n  threshold: 55\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.argv", ["stage", *argv])
    stage.run(main, *paths)


def test_the_runner_passes_params_and_the_declared_paths(tmp_path, monkeypatch):
    seen = {}

    def main(params, out, metrics_out):
        seen.update(threshold=params.gate.threshold, out=out, metrics_out=metrics_out)

    in_process(tmp_path, monkeypatch, main, "out", "metrics_out", argv=["--out", "a.parquet", "--metrics-out", "m.json"])
    assert seen == {"threshold": 55, "out": "a.parquet", "metrics_out": "m.json"}


def test_a_user_error_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys):
    from llamaduo.errors import CoverageError

    def main(params, out):
        raise CoverageError("data/coverage/x.jsonl:3: not valid JSON")

    with pytest.raises(SystemExit) as stop:
        in_process(tmp_path, monkeypatch, main, "out", argv=["--out", "o"])
    assert stop.value.code == 2
    assert capsys.readouterr().err == "error: data/coverage/x.jsonl:3: not valid JSON\n"


def test_a_bug_keeps_its_traceback(tmp_path, monkeypatch):
    def main(params, out):
        return {}["missing"]  # a KeyError is a bug, not a user's mistake: it must not be flattened to one line

    with pytest.raises(KeyError):
        in_process(tmp_path, monkeypatch, main, "out", argv=["--out", "o"])
