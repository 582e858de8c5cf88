"""Near-duplicate search: ROUGE-L against the reference implementation, the band choice, and LSH candidates."""

import pytest

from llamaduo.curation import normalize, tokenize
from llamaduo.curation.dedup import MinHashLSH, _collision_errors, choose_bands, rouge_l


def test_rouge_l_matches_rouge_score():
    from rouge_score import rouge_scorer

    a, b = "the cat sat on the mat today", "a cat sat on a mat"
    ref = rouge_scorer.RougeScorer(["rougeL"]).score(a, b)["rougeL"].fmeasure
    assert abs(rouge_l(normalize(a).split(), normalize(b).split()) - ref) < 1e-9


def test_rouge_l_by_hand():
    # LCS of (a b c d) and (a c d e) is (a c d): F1 = 2 * 3 / (4 + 4)
    assert rouge_l(list("abcd"), list("acde")) == pytest.approx(0.75)
    assert rouge_l([], list("abc")) == 0.0


def test_band_choice_weighs_the_s_curve_errors():
    # values of the S-curve integrals as datasketch computes them (its private helpers), for b=16, r=8
    fp, fn = _collision_errors(0.5, 16, 8)
    assert fp == pytest.approx(0.0034190288722882834, rel=1e-9) and fn == pytest.approx(0.1664493874074326, rel=1e-9)
    # a higher threshold needs fewer, longer bands; every choice divides num_perm (rensa's requirement)
    assert [choose_bands(t, 128) for t in (0.3, 0.5, 0.7, 0.9)] == [64, 32, 16, 8]
    assert all(256 % choose_bands(t, 256) == 0 for t in (0.3, 0.5, 0.7, 0.9))


def test_lsh_finds_the_near_duplicate_and_not_the_stranger():
    texts = ["the river runs past the old mill and the bakery at dawn every single day",
             "the river runs past the old mill and the bakery at dawn every day",
             "quantum chromodynamics describes the strong interaction between quarks and gluons"]
    shingles = tokenize(texts).windows(3, short=True)
    import numpy as np

    a, b = MinHashLSH(num_perm=128, threshold=0.5, seed=0).candidates(shingles, consider=np.ones(3, dtype=bool))
    assert list(zip(a.tolist(), b.tolist())) == [(0, 1)]
    assert normalize(texts[1]) == texts[1]
