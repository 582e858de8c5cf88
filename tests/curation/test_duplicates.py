"""The steps' contracts: a row step gives each row the same verdict however the rows are cut into batches, the
order-dependent steps carry their state across batches, and the LSH's shares of the bands add up to the whole."""

import random

import numpy as np
import pyarrow as pa

from llamaduo.config import CurateParams
from llamaduo.curation import curate, local
from llamaduo.curation.duplicates import ExactDuplicates, NearDuplicates
from llamaduo.curation.pipeline import Batch, Codes, Notes
from llamaduo.curation.steps import Plan

WORDS = ("river mountain engine garden letter window market doctor planet castle violin pepper silver harbor lantern "
         "meadow rocket teacher puzzle candle forest bridge island thunder the a of and to in").split()
TRAIN = [{"id": f"t{k}", "task": "summarize", "instruction": f"Summarize train text number {k} for me please",
          "response": f"Train summary {k}."} for k in range(3)]


def rows(n, seed=0):
    """Rows with exact copies (of rows and of train) and near copies (a word changed) of earlier rows."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        roll = rng.random()
        if out and roll < 0.15:
            src = rng.choice(out)
            words = src["instruction"].split()
            for _ in range(rng.randrange(1, 6)):  # a word or a few changed: some copies share few LSH bands
                words[rng.randrange(len(words))] = rng.choice(WORDS)
            row = dict(src, instruction=" ".join(words))
        elif out and roll < 0.25:
            row = dict(rng.choice(out))
        elif roll < 0.28:
            row = dict(rng.choice(TRAIN))
        else:
            row = {"task": "summarize", "instruction": " ".join(rng.choice(WORDS) for _ in range(25)),
                   "response": " ".join(rng.choice(WORDS) for _ in range(12))}
        out.append(row | {"id": f"r{i}", "seed_id": "s", "provider": "p", "model": "m", "request_id": f"q{i}",
                          "cycle": rng.randrange(2)})
    return out


P = CurateParams(min_stopword_ratio=None)


def test_any_batch_size_gives_the_same_result(monkeypatch):
    data = rows(300)
    kept, dropped, counts = curate(data, train=TRAIN, test=[], p=P)
    assert {"exact_duplicate", "exact_duplicate_train", "near_duplicate"} <= set(counts["dropped"])
    monkeypatch.setattr(local, "BATCH_ROWS", 7)  # duplicates across many batches: the state carries them
    assert curate(data, train=TRAIN, test=[], p=P) == (kept, dropped, counts)


def test_the_exact_step_keeps_the_first_of_each_key_across_batches():
    keys = np.array([5, 9, 5, 7, 9, 9, 3], dtype=np.uint64)
    reason = np.full(len(keys), None, dtype=object)
    reason[3] = "refusal"  # a dropped row is no one's first
    notes = Notes(10)
    step = ExactDuplicates(np.array([3, 3], dtype=np.uint64), notes)  # train: two rows with key 3
    batches = [Batch(2 + s, None, reason[s:e], key=keys[s:e]) for s, e in ((0, 2), (2, 5), (5, 7))]
    out = np.concatenate([b.reason for b in step.run(batches)])
    assert out.tolist() == [None, None, "exact_duplicate", "refusal", "exact_duplicate", "exact_duplicate",
                            "exact_duplicate_train"]
    # what each matched: the first row with the key (row 7's key 7 was never seen: its row was dropped)
    assert {row: names for row, (_, names) in notes.text.items()} == {2: 2, 4: 3, 5: 3, 6: 0}


def test_the_shares_of_the_bands_add_up_to_all_of_them():
    plan = Plan(P, TRAIN, [])
    batch = next(plan.run([Batch.of(len(TRAIN), pa.Table.from_pylist(rows(200, seed=1)))]))
    sig, places = batch.sig, len(TRAIN) + np.arange(len(batch))
    step = NearDuplicates(P, n_train=len(TRAIN), n=len(batch), codes=Codes(NearDuplicates.reasons), notes=Notes(0))
    whole = step.buckets(sig, places)
    assert len(whole) > 10 and (np.diff(whole) > 0).all()  # each pair once, in the walk's order
    shares = [step.buckets(sig, places, rank, 3) for rank in range(3)]
    assert np.array_equal(np.unique(np.concatenate(shares)), whole)
    assert any(len(s) < len(whole) for s in shares)  # a share searches only its bands
