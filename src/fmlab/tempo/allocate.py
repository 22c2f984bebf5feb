"""Adaptive Token Allocation (ATA): how many of each segment's M memory tokens to keep.

The rules, exactly as the paper's released inference code applies them (N segments, relevance
scores s, budget B visual tokens, minimum m, maximum Mx):

1. if N·m > B: m = max(1, ⌊B/N⌋)
2. if max(s) − min(s) < 1e-8: every segment gets min(Mx, ⌊B/N⌋)
3. else ŝ = min-max normalised s and ideal_i = m + ⌊ŝ_i (Mx − m)⌋
4. if Σ ideal ≤ B: use ideal (B is a cap, not a target)
5. else alloc_i = m + ⌊(ŝ_i / Σŝ)(B − N·m)⌋; the remainder goes one token at a time to the
   highest-weighted segments (ties: earlier segment first); everything clamped to [m, Mx].

The result never exceeds B when N ≤ B. When N > B (fewer tokens than segments) the paper's
rule 1 still gives every segment one token, N > B in all. fmlab's default policy
(``over_budget="drop"``) keeps the budget instead, with a warning: the B most relevant segments
keep one token each and the other N − B get none (equal scores: B segments evenly spaced in
time); every segment keeps its timestamp, so the timeline stays whole. ``over_budget="allow"``
is the paper's rule. Time is O(N) (the remainder's recipients are found by
selection, not sorting), independent of B and M.

Truncation: segment i keeps ``alloc_i`` of its memory tokens: the first ones (``head``, the
paper), the last ones (``tail``), a random subset (``random``) or ``merge`` (the M tokens
average-pooled into alloc_i contiguous groups).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np

__all__ = ["OVER_BUDGET", "STRATEGIES", "OverBudgetWarning", "allocate", "truncate"]

STRATEGIES = ("head", "tail", "random", "merge")


OVER_BUDGET = ("drop", "allow")


class OverBudgetWarning(UserWarning):
    """More segments than budget tokens: some segments keep no memory token."""


def allocate(
    scores: Sequence[float] | np.ndarray,
    budget: int,
    min_tokens: int = 4,
    max_tokens: int = 128,
    over_budget: str = "drop",
) -> list[int]:
    """Tokens to keep per segment (see the module doc): N scores → N ints summing to ≤ B
    (``over_budget="allow"``: ≤ max(B, N))."""
    if over_budget not in OVER_BUDGET:
        raise ValueError(f"over_budget must be one of {OVER_BUDGET}, got {over_budget!r}")
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    n = len(s)
    if n == 0:
        raise ValueError("allocate needs at least one segment score")
    if not np.isfinite(s).all():
        raise ValueError("relevance scores must be finite")
    if budget < 0 or min_tokens < 0 or max_tokens < 1 or min_tokens > max_tokens:
        raise ValueError(
            f"need budget >= 0 and 0 <= min_tokens <= max_tokens >= 1, got budget={budget}, "
            f"min_tokens={min_tokens}, max_tokens={max_tokens}"
        )
    m, mx, b = int(min_tokens), int(max_tokens), int(budget)
    if n > b and m > 0 and over_budget == "drop":
        return _drop(s, b)
    if n * m > b:  # rule 1
        m = max(1, b // n)
    lo, hi = float(s.min()), float(s.max())
    if hi - lo < 1e-8:  # rule 2
        return [min(mx, b // n)] * n
    sh = (s - lo) / (hi - lo)  # rule 3
    ideal = m + np.floor(sh * (mx - m)).astype(np.int64)
    if int(ideal.sum()) <= b:  # rule 4
        return ideal.tolist()
    free = b - n * m  # rule 5
    alloc = m + np.floor(sh / sh.sum() * free).astype(np.int64)
    rest = b - int(alloc.sum())
    if rest > 0:
        alloc[_top(sh, rest)] += 1
    return np.clip(alloc, m, mx).tolist()


def _drop(s: np.ndarray, b: int) -> list[int]:
    """N > B: one token for the B most relevant segments (evenly spaced when all are equal)."""
    import warnings

    n = len(s)
    warnings.warn(
        f"{n} segments but a budget of {b} tokens: {n - b} least relevant segment(s) keep no "
        "memory token (timestamps stay); raise the budget, lower --max-frames, or allow the "
        "overrun (over_budget='allow', --allow-over-budget)",
        OverBudgetWarning,
        stacklevel=3,
    )
    alloc = np.zeros(n, dtype=np.int64)
    if b == 0:
        return alloc.tolist()
    if float(s.max() - s.min()) < 1e-8:
        alloc[np.linspace(0, n - 1, b).round().astype(int)] = 1
    else:
        alloc[_top(s, b)] = 1
    return alloc.tolist()


def _top(w: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest weights, ties to the earlier index, in O(N)."""
    k = min(k, len(w))
    thr = np.partition(w, len(w) - k)[len(w) - k]  # the k-th largest value
    above = np.flatnonzero(w > thr)
    at = np.flatnonzero(w == thr)[: k - len(above)]
    return np.concatenate([above, at])


def truncate(
    tokens: np.ndarray, keep: int, strategy: str = "head", rng: np.random.Generator | None = None
) -> np.ndarray:
    """Keep ``keep`` of a segment's (M, d) memory tokens by ``strategy`` (see module doc)."""
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    m = len(tokens)
    if not 0 <= keep <= m:
        raise ValueError(f"keep must be in [0, {m}], got {keep}")
    if strategy == "head":
        return tokens[:keep]
    if strategy == "tail":
        return tokens[m - keep :]
    if strategy == "random":
        rng = rng if rng is not None else np.random.default_rng(0)
        return tokens[np.sort(rng.choice(m, keep, replace=False))]
    if keep == 0:
        return tokens[:0]
    edges = np.linspace(0, m, keep + 1).round().astype(int)
    return np.stack([tokens[a:b].mean(axis=0) for a, b in itertools.pairwise(edges)])
