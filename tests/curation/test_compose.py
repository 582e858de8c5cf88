import hashlib

import pyarrow.parquet as pq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llamaduo import tables
from llamaduo.config import CurateParams
from llamaduo.curation import curate, normalize
from llamaduo.curation.dedup import MinHashLSH
from llamaduo.curation.tokens import tokenize

WORDS = ("river mountain engine garden letter window market doctor planet castle violin pepper silver "
         "harbor lantern meadow rocket teacher puzzle candle forest bridge island thunder").split()


def pair(i, ins, res, cycle=1, task="summarize"):
    return {"id": f"s{i}", "task": task, "instruction": ins, "response": res, "seed_id": "x", "provider": "p",
            "model": "m", "request_id": "r", "cycle": cycle}


TRAIN = [{"id": "t1", "task": "summarize", "instruction": "Summarize the train text please.", "response": "Train."}]
TEST = [{"id": "e1", "task": "summarize", "instruction": "Summarize the secret test text.", "response": "Secret summary."}]
LONG = ("the quick brown fox jumps over the lazy dog while the farmer watches from the porch and drinks his "
        "coffee slowly in the warm morning sun before he goes to the market")


def test_normalize_folds_case_space_punctuation():
    assert normalize("  Hello,   WORLD!! ") == normalize("hello world") == "hello world"
    assert normalize("Don’t stop—now") == "don t stop now"


def test_tokens_do_not_depend_on_position_or_neighbours():
    t = tokenize(["x y the cat", "the cat", "", "The, CAT!"])
    assert t.counts.tolist() == [4, 2, 0, 2]
    assert (t.row(0)[2:] == t.row(1)).all() and (t.row(1) == t.row(3)).all()
    assert t.text_hash()[1] == t.text_hash()[3] != t.text_hash()[0]


def test_duplicates_keep_first_and_never_drop_both():
    raw = [pair(1, "Explain the tides to me.", "Moon."), pair(2, "explain the TIDES to me!", "moon"),
           pair(3, "Explain volcanoes to me.", "Magma.")]
    kept, dropped, counts = curate(raw, train=TRAIN, test=TEST, p=CurateParams())
    assert [r["id"] for r in kept] == ["s1", "s3"]
    assert dropped[0]["id"] == "s2" and dropped[0]["reason"] == "exact_duplicate"
    assert counts["rows_in"] == 3 and counts["rows_out"] == 2 and counts["dropped"] == {"exact_duplicate": 1}


def test_near_duplicate_earlier_cycle_wins():
    raw = [pair(1, "Tell me a story about " + LONG, "A story of a fox, a dog and a farmer."),
           pair(0, "Tell me a story about " + LONG.replace("coffee", "tea"), "A story of a fox, a dog and a farmer.", cycle=0)]
    kept, dropped, counts = curate(raw, train=TRAIN, test=TEST, p=CurateParams())
    assert [r["id"] for r in kept] == ["s0"] and dropped[0]["reason"] == "near_duplicate"
    assert counts["per_cycle"]["1"]["dropped"] == {"near_duplicate": 1}


def test_two_questions_on_one_passage_are_not_duplicates():
    passage = " ".join([LONG] * 4)
    q1 = pair(1, f"When did the farmer drink coffee? Use this text: {passage}", "In the warm morning sun, before the market.")
    q2 = pair(2, f"What did the fox jump over? Use this text: {passage}", "The fox jumped over the lazy dog.")
    copy = pair(3, f"when did the farmer drink coffee?? use this text: {passage}", "In the warm morning sun, before he went to market.")
    kept, dropped, counts = curate([q1, q2, copy], train=TRAIN, test=TEST, p=CurateParams())
    assert [r["id"] for r in kept] == ["s1", "s2"]  # different answers: two examples, though the pair scores ~0.95
    assert [(d["id"], d["reason"]) for d in dropped] == [("s3", "near_duplicate")]
    assert counts["examples"]["near_duplicate"][0]["matched"].endswith("with s1")
    kept, _, _ = curate([q1, q2], train=TRAIN, test=TEST, p=CurateParams(min_response_rouge_l=None))
    assert [r["id"] for r in kept] == ["s1"]  # the pair score alone made them duplicates


def test_copy_of_train_is_a_duplicate():
    kept, dropped, _ = curate([pair(1, "Summarize the train text, please", "train")], train=TRAIN, test=TEST, p=CurateParams())
    assert kept == [] and dropped[0]["reason"] == "exact_duplicate_train"


def test_test_rows_never_reach_curated_output():
    raw = [pair(1, "Summarize the SECRET test text", "other"), pair(2, "Something new to do here", "Secret summary"),
           pair(3, "Something else to do here", "fine"),
           pair(4, "Please tell me about it: " + LONG, "fine"), pair(5, "Another thing to do here", "yes indeed")]
    test = TEST + [{"id": "e2", "task": "summarize", "instruction": "Read this. " + LONG + " Now summarize.", "response": "x"}]
    kept, dropped, counts = curate(raw, train=TRAIN, test=test, p=CurateParams())
    assert [r["id"] for r in kept] == ["s3", "s5"]
    assert {d["id"]: d["reason"] for d in dropped} == {"s1": "test_contamination_exact", "s2": "test_contamination_exact",
                                                         "s4": "test_contamination_ngram"}
    assert {(x["id"], x["test_id"]) for x in counts["decontaminated"]} == {("s1", "e1"), ("s2", "e1"), ("s4", "e2")}
    kept, _, _ = curate(raw, train=TRAIN, test=test, p=CurateParams(decontaminate=False))
    assert len(kept) == 5


# ---- properties -------------------------------------------------------------------------------------------

def sentence(draw, n):
    return " ".join(draw(st.lists(st.sampled_from(WORDS), min_size=n, max_size=n)))


@st.composite
def dataset(draw):
    test = [{"id": f"e{k}", "task": "summarize", "instruction": "summarize " + sentence(draw, 16), "response": sentence(draw, 14)}
            for k in range(draw(st.integers(1, 3)))]
    raw = []
    for i in range(draw(st.integers(1, 12))):
        kind = draw(st.sampled_from(["new", "leak_ins", "leak_res", "dup"]))
        if kind == "leak_ins":
            t = draw(st.sampled_from(test))
            raw.append(pair(i, t["instruction"].upper() + "!", sentence(draw, 5)))
        elif kind == "leak_res":
            t = draw(st.sampled_from(test))
            raw.append(pair(i, sentence(draw, 6), t["response"] + "."))
        elif kind == "dup" and raw:
            src = draw(st.sampled_from(raw))
            raw.append(pair(i, src["instruction"] + " ok", src["response"]))
        else:
            raw.append(pair(i, sentence(draw, 18), sentence(draw, 10)))
    return raw, test


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(dataset())
def test_no_curated_row_is_within_the_decontamination_threshold_of_a_test_row(data):
    raw, test = data
    p = CurateParams(min_stopword_ratio=None)
    kept, _, _ = curate(raw, train=TRAIN, test=test, p=p)
    lsh = MinHashLSH(num_perm=p.num_perm, threshold=p.decontam_minhash_threshold, seed=p.minhash_seed)
    fields = [r[f] for r in kept for f in ("instruction", "response")]
    tests = [t[f] for t in test for f in ("instruction", "response")]
    for text in fields:
        toks = normalize(text).split()
        grams = {tuple(toks[k:k + p.decontam_ngram]) for k in range(len(toks) - p.decontam_ngram + 1)}
        for t in tests:
            tt = normalize(t).split()
            assert normalize(text) != normalize(t)
            assert not grams & {tuple(tt[k:k + p.decontam_ngram]) for k in range(len(tt) - p.decontam_ngram + 1)}
    if fields:
        docs = tokenize(tests + fields).windows(p.shingle_size, short=True)
        import numpy as np

        sig = lsh.signatures(docs, np.arange(len(tests) + len(fields)))
        sims = (sig[len(tests):, None, :] == sig[None, :len(tests), :]).mean(-1)
        assert (sims < p.decontam_minhash_threshold).all()


@settings(max_examples=25, deadline=None)
@given(st.lists(st.sampled_from(WORDS), min_size=25, max_size=40), st.lists(st.integers(0, 10_000), min_size=2, max_size=8),
       st.integers(0, 20))
def test_planted_near_duplicate_set_collapses_to_one_row(words, edits, where):
    base = " ".join(words)
    copies = [base]
    for e in edits:  # each copy: the base with one word changed, case and punctuation noise
        w = list(words)
        w[e % len(w)] = "zebra"
        copies.append((" ".join(w)).upper() if e % 2 else " ".join(w) + "!")
    others = [pair(100 + k, f"Describe the {WORDS[k]} and the {WORDS[k + 1]} in one short line", f"It is a {WORDS[k]}.")
              for k in range(3)]
    dups = [pair(k, c, "the answer stays the same here") for k, c in enumerate(copies)]
    raw = others[:1] + dups + others[1:]
    kept, dropped, _ = curate(raw, train=TRAIN, test=TEST, p=CurateParams(min_stopword_ratio=None))
    assert [r["id"] for r in kept if r["id"] in {d["id"] for d in dups}] == ["s0"]
    assert len(kept) == 1 + len(others)


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(dataset())
def test_rerun_gives_byte_identical_parquet(tmp_path_factory, data):
    raw, test = data
    digests = []
    for _ in range(2):
        d = tmp_path_factory.mktemp("run")
        kept, dropped, _ = curate([dict(r) for r in raw], train=TRAIN, test=test, p=CurateParams())
        tables.write(d / "curated.parquet", "synthetic", kept)
        tables.write(d / "dropped.parquet", "dropped", [{k: r.get(k) for k in tables.columns("dropped")} for r in dropped])
        digests.append([hashlib.sha256((d / f).read_bytes()).hexdigest() for f in ("curated.parquet", "dropped.parquet")])
        assert pq.read_table(d / "curated.parquet").num_rows == len(kept)
    assert digests[0] == digests[1]


def test_adding_rows_never_changes_earlier_decisions():
    raw = [pair(i, f"Describe the {WORDS[i]} and the {WORDS[i + 1]} briefly", f"A {WORDS[i]}.") for i in range(10)]
    raw[5] = pair(5, raw[2]["instruction"] + "!", raw[2]["response"])
    more = raw + [pair(50 + i, r["instruction"].upper(), r["response"]) for i, r in enumerate(raw[:4])]
    small, _, _ = curate(raw, train=TRAIN, test=TEST, p=CurateParams())
    large, _, _ = curate(more, train=TRAIN, test=TEST, p=CurateParams())
    assert large[:len(small)] == small
