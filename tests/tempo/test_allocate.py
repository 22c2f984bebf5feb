import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fmlab.tempo.allocate import allocate, truncate


def reference(scores, budget, m=4, mx=128):
    """The paper's rules re-derived independently, with exact fractions and explicit loops."""
    n = len(scores)
    if n * m > budget:
        m = max(1, budget // n)
    lo, hi = min(scores), max(scores)
    if hi - lo < 1e-8:
        return [min(mx, budget // n)] * n
    sh = [Fraction(s) - Fraction(lo) for s in scores]
    span = Fraction(hi) - Fraction(lo)
    sh = [x / span for x in sh]
    ideal = [m + math.floor(x * (mx - m)) for x in sh]
    if sum(ideal) <= budget:
        return ideal
    total = sum(sh)
    alloc = [m + math.floor(x / total * (budget - n * m)) for x in sh]
    rest = budget - sum(alloc)
    order = sorted(range(n), key=lambda i: (-sh[i], i))
    for i in order[: max(rest, 0)]:
        alloc[i] += 1
    return [min(max(a, m), mx) for a in alloc]


# subnormal scores make the float rule and the exact reference floor differently at one ulp
scores_st = st.lists(
    st.floats(0, 1, allow_nan=False, allow_subnormal=False, width=32), min_size=1, max_size=40
)


@settings(max_examples=400, deadline=None)
@given(scores_st, st.integers(0, 6000), st.integers(0, 8), st.integers(8, 160))
def test_equals_the_reference_and_respects_bounds(scores, budget, m, mx):
    got = allocate(scores, budget, m, mx, over_budget="allow")  # the paper's rules exactly
    ref = reference(scores, budget, m, mx)
    assert got == ref
    if len(scores) <= budget or m == 0:
        assert allocate(scores, budget, m, mx) == ref  # the default policy differs only for N > B
    n = len(scores)
    if n <= budget:
        assert sum(got) <= budget
        m_eff = m if n * m <= budget else max(1, budget // n)
        if max(scores) - min(scores) >= 1e-8:
            assert all(m_eff <= a <= mx for a in got)
    assert all(0 <= a <= mx for a in got)


@settings(max_examples=300, deadline=None)
@given(scores_st, st.integers(1, 3000))
def test_monotone_in_score(scores, budget):
    got = allocate(scores, budget)
    for i in range(len(scores)):
        for j in range(len(scores)):
            if scores[i] > scores[j]:
                assert got[i] >= got[j]


def test_budget_is_a_cap_not_a_target():
    scores = [0.0] * 30 + [1.0]  # one relevant segment among 31
    alloc = allocate(scores, budget=31 * 128)
    assert alloc == [4] * 30 + [128] and sum(alloc) < 31 * 128


def test_flat_scores_share_evenly_and_tiny_budgets_shrink_the_minimum():
    assert allocate([0.3] * 5, 100) == [20] * 5
    assert allocate([0.3] * 5, 10_000, max_tokens=64) == [64] * 5
    a = allocate([0.1, 0.9, 0.5, 0.2], 10)  # N·m = 16 > 10: m = 2
    assert min(a) == 2 and sum(a) == 10


def test_errors():
    with pytest.raises(ValueError, match="at least one"):
        allocate([], 10)
    with pytest.raises(ValueError, match="finite"):
        allocate([0.1, float("nan")], 10)
    with pytest.raises(ValueError, match="budget"):
        allocate([0.1], -1)


def test_truncation_strategies():
    tok = np.arange(16, dtype=float).reshape(8, 2)
    assert truncate(tok, 3, "head").tolist() == tok[:3].tolist()
    assert truncate(tok, 3, "tail").tolist() == tok[5:].tolist()
    r = truncate(tok, 3, "random", np.random.default_rng(0))
    assert len(r) == 3 and all(row.tolist() in tok.tolist() for row in r)
    merged = truncate(tok, 2, "merge")
    np.testing.assert_allclose(merged, [tok[:4].mean(0), tok[4:].mean(0)])
    assert truncate(tok, 0, "merge").shape == (0, 2)
    with pytest.raises(ValueError, match="strategy"):
        truncate(tok, 2, "middle")
