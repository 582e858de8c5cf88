"""The compiled token, window and lookup kernels against plain-Python references."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from llamaduo.curation import hashindex
from llamaduo.curation.tokens import Tokens, normalize, tokenize

WORD = st.sampled_from("a b c the cat Dog élan naïve x_1 42 don’t re-use".split())
TEXT = st.lists(WORD, max_size=30).map(" ".join)


def tokens_of(rows: list[list[int]]) -> Tokens:
    offsets = np.concatenate([[0], np.cumsum([len(r) for r in rows])]).astype(np.int64)
    return Tokens(np.array([h for r in rows for h in r], dtype=np.uint64), offsets)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.integers(0, 2**64 - 1), max_size=20), min_size=1, max_size=6), st.integers(1, 6), st.booleans())
def test_each_window_hashes_like_those_tokens_alone(rows, k, short):
    w = tokens_of(rows).windows(k, short=short)
    for i, r in enumerate(rows):
        expect = [r[j:j + k] for j in range(len(r) - k + 1)] or ([r] if short and r else [])
        alone = tokens_of(expect).windows(k, short=True)  # each expected window as a text of its own
        assert w.row(i).tolist() == alone.hashes.tolist()


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(TEXT, TEXT), min_size=1, max_size=8))
def test_paired_tokenize_interleaves_and_pairs_join(pairs):
    a, b = [x for x, _ in pairs], [y for _, y in pairs]
    both = tokenize(a, b)
    ta, tb = tokenize(a), tokenize(b)
    for i in range(len(pairs)):
        assert both.row(2 * i).tolist() == ta.row(i).tolist() and both.row(2 * i + 1).tolist() == tb.row(i).tolist()
        assert both.pairs().row(i).tolist() == tokenize([a[i] + " " + b[i]]).hashes.tolist()
        assert len(ta.row(i)) == len(normalize(a[i]).split())
    tail = both.slice(2)
    assert tail.offsets[0] == 0 and [tail.row(j).tolist() for j in range(len(tail))] == [both.row(j).tolist() for j in range(2, len(both))]


def test_tokenize_rejects_unequal_pairs():
    try:
        tokenize(["a", "b"], ["c"])
    except ValueError as exc:
        assert "2 texts but 1 paired" in str(exc)
    else:
        raise AssertionError("no error")


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 40), max_size=50), st.lists(st.lists(st.integers(0, 60), max_size=8), min_size=1, max_size=6))
def test_hash_index_finds_first_position_and_nothing_else(keys, rows):
    keys_arr = np.array(keys, dtype=np.uint64)
    slots, values = hashindex.build(keys_arr)
    first = {}
    for pos, k in enumerate(keys):
        first.setdefault(k, pos)
    for probe in range(61):
        assert hashindex.find(slots, values, np.uint64(probe)) == first.get(probe, -1)
    t = tokens_of(rows)
    alive = np.array([i % 3 != 2 for i in range(len(rows))])
    assert hashindex.count_per_row(t.hashes, t.offsets, slots, values).tolist() == [sum(h in first for h in r) for r in rows]
    expect = [next((first[h] for h in r if h in first), -1) if alive[i] else -1 for i, r in enumerate(rows)]
    assert hashindex.first_per_row(t.hashes, t.offsets, slots, values, alive).tolist() == expect
