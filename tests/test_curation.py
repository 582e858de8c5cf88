from llamaduo.config import CurateParams
from llamaduo.curation import curate, normalize


def pair(i, ins, res):
    return {"id": f"s{i}", "task": "summarize", "instruction": ins, "response": res, "seed_id": "x", "provider": "p",
            "model": "m", "request_id": "r", "cycle": 1}


TRAIN = [{"id": "t1", "task": "summarize", "instruction": "Summarize the train text please.", "response": "Train."}]
TEST = [{"id": "e1", "task": "summarize", "instruction": "Summarize the secret test text.", "response": "Secret summary."}]


def test_normalize_folds_case_space_punctuation():
    assert normalize("  Hello,   WORLD!! ") == normalize("hello world")


def test_duplicates_keep_first_and_never_drop_both():
    raw = [pair(1, "Explain the tides to me.", "Moon."), pair(2, "explain the TIDES to me!", "moon"),
           pair(3, "Explain volcanoes to me.", "Magma.")]
    kept, dropped, counts = curate(raw, train=TRAIN, test=TEST, p=CurateParams())
    assert [r["id"] for r in kept] == ["s1", "s3"]
    assert dropped[0]["id"] == "s2" and dropped[0]["reason"] == "exact_duplicate"
    assert counts == {"rows_in": 3, "rows_out": 2, "dropped": {"exact_duplicate": 1}}


def test_copy_of_train_is_a_duplicate():
    kept, dropped, _ = curate([pair(1, "Summarize the train text, please", "train")], train=TRAIN, test=TEST, p=CurateParams())
    assert kept == [] and dropped[0]["reason"] == "exact_duplicate"


def test_test_rows_never_reach_curated_output():
    raw = [pair(1, "Summarize the SECRET test text", "other"), pair(2, "Something new to do here", "Secret summary"),
           pair(3, "Something else to do here", "fine")]
    kept, dropped, counts = curate(raw, train=TRAIN, test=TEST, p=CurateParams())
    assert [r["id"] for r in kept] == ["s3"]
    assert counts["dropped"] == {"test_contamination": 2}
    kept, _, _ = curate(raw, train=TRAIN, test=TEST, p=CurateParams(decontaminate=False))
    assert len(kept) == 3


def test_length_rules():
    raw = [pair(1, "short", "ok"), pair(2, "A long enough instruction", "")]
    kept, _, counts = curate(raw, train=TRAIN, test=TEST, p=CurateParams(min_instruction_chars=10, min_response_chars=1))
    assert kept == [] and counts["dropped"] == {"instruction_too_short": 1, "response_too_short": 1}
