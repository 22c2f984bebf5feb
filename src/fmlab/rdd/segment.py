"""RDD's optimal partition of a demonstration, and the baselines that share its output type.

Score of an interval [s, e) (end exclusive, L = e - s frames), to maximise:

    J(s, e) = -L * ( d_NN + alpha * |1 - L / dur_NN| + beta * |s - s_UVD(e)| / L )

with d_NN the distance of the interval's key to its nearest prior key, dur_NN that neighbour's
duration and s_UVD(e) the start of the UVD segment holding frame e - 1. The partition maximises
the sum of scores over segments of min_len..max_len frames by exact dynamic programming,

    dp[0] = 0,  dp[e] = max_{min_len <= L <= max_len, L <= e} dp[e - L] + J(e - L, e),

with every candidate's retrieval done in one batched search before the (cheap) recursion.
"""

from __future__ import annotations

import warnings
from itertools import pairwise

import numpy as np

from fmlab.rdd.prior import Prior, RDDError, RDDWarning, check_features
from fmlab.rdd.segmentation import Segmentation
from fmlab.rdd.uvd import uvd_segment

__all__ = [
    "Segmentation",
    "brute_force_segment",
    "default_max_len",
    "interval_scores",
    "random_segment",
    "segment",
    "uniform_segment",
]


def default_max_len(prior: Prior, min_len: int = 2) -> int:
    """Twice the prior's longest interval (at least ``min_len``): room for a sub-task done
    slower than any prior example, without the fixed 100 frames that cut longer ones in half."""
    return max(min_len, 2 * int(prior.durations.max()))


def _check_lengths(n: int, min_len: int, max_len: int, prior: Prior) -> None:
    if max_len < int(prior.durations.max()):
        warnings.warn(
            f"max_len={max_len} is shorter than the prior's longest interval "
            f"({int(prior.durations.max())} frames): such sub-tasks will be cut in pieces; "
            "leave max_len unset (it defaults to twice that) or raise it",
            RDDWarning,
            stacklevel=3,
        )
    if min_len < 1:
        raise RDDError(f"min_len must be >= 1, got {min_len}")
    if prior.motion and min_len < 2:
        raise RDDError(f"the prior has motion keys, which need min_len >= 2 (got {min_len})")
    if min_len > max_len:
        raise RDDError(f"min_len ({min_len}) > max_len ({max_len}); pass min_len <= max_len")
    if n < min_len:
        raise RDDError(f"the demo has {n} frames, fewer than min_len={min_len}; lower --min-len")


def _uvd_starts(features: np.ndarray, uvd_kwargs: dict | None) -> np.ndarray:
    """s_UVD(e) for e = 1..N: the start of the UVD segment holding frame e - 1 (index e)."""
    seg = uvd_segment(features, **(uvd_kwargs or {}))
    starts = np.zeros(len(features) + 1, dtype=np.int64)
    for s, e in seg.boundaries:
        starts[s + 1 : e + 1] = s
    return starts


def interval_scores(
    features: np.ndarray,
    prior: Prior,
    starts: np.ndarray,
    ends: np.ndarray,
    alpha: float,
    beta: float = 0.0,
    uvd_starts: np.ndarray | None = None,
):
    """J(s, e) for arrays of intervals; returns (scores, nearest prior index)."""
    d, nn = prior.search(features, starts, ends)
    length = (ends - starts).astype(np.float64)
    cost = d + alpha * np.abs(1.0 - length / prior.durations[nn])
    if beta:
        cost = cost + beta * np.abs(starts - uvd_starts[ends]) / length
    return -length * cost, nn


def _resolve_alpha(alpha: float | None, prior: Prior) -> float:
    if alpha is None:  # the paper: "ood" mode drops the duration term
        return 0.0 if prior.mode == "ood" else 1.0
    return float(alpha)


def segment(
    features,
    prior: Prior,
    alpha: float | None = None,
    beta: float = 0.0,
    min_len: int = 2,
    max_len: int | None = None,
    uvd_kwargs: dict | None = None,
    k: int | None = None,
) -> Segmentation:
    """The partition of an (N x D) demo maximising the summed interval scores (exact DP).

    ``alpha`` defaults to 1 in "default" mode and 0 in "ood" mode; ``beta > 0`` runs UVD on
    the demo (``uvd_kwargs``) for the s_UVD term; ``max_len`` defaults to twice the prior's
    longest interval (:func:`default_max_len`). ``k`` fixes the number of segments (the best
    partition into exactly ``k``; an ablation that gives RDD the oracle K uniform cutting gets)."""
    f = check_features(features, "demo", prior.dim)
    n = len(f)
    if max_len is None:
        max_len = default_max_len(prior, min_len)
    _check_lengths(n, min_len, max_len, prior)
    alpha = _resolve_alpha(alpha, prior)
    hi = min(max_len, n)
    lengths = np.arange(min_len, hi + 1)
    ends = np.arange(1, n + 1)
    e_grid = np.broadcast_to(ends[:, None], (n, len(lengths)))
    s_grid = e_grid - lengths[None, :]
    valid = s_grid >= 0
    es, ss = e_grid[valid], s_grid[valid]
    uvd = _uvd_starts(f, uvd_kwargs) if beta else None
    sc, nn = interval_scores(f, prior, ss, es, alpha, beta, uvd)
    score = np.full((n, len(lengths)), -np.inf)
    score[valid] = sc
    nn_grid = np.zeros((n, len(lengths)), dtype=np.int64)
    nn_grid[valid] = nn
    if k is not None:
        return _segment_k(n, int(k), lengths, score, nn_grid, prior, min_len, max_len)
    # The recursion: O(N) steps of one vectorised max over the length band.
    dp = np.full(n + 1, -np.inf)
    dp[0] = 0.0
    choice = np.zeros(n + 1, dtype=np.int64)
    for e in range(min_len, n + 1):
        k = min(len(lengths), e - min_len + 1)  # lengths that fit: min_len .. min(hi, e)
        cand = dp[e - lengths[:k]] + score[e - 1, :k]
        j = int(np.argmax(cand))
        dp[e], choice[e] = cand[j], j
    if not np.isfinite(dp[n]):
        raise RDDError(
            f"{n} frames cannot be cut into segments of {min_len}..{max_len} frames; widen the range"
        )
    segs, labels, scores = [], [], []
    e = n
    while e > 0:
        j = choice[e]
        s = e - int(lengths[j])
        segs.append((s, e))
        labels.append(str(prior.labels[nn_grid[e - 1, j]]))
        scores.append(float(score[e - 1, j]))
        e = s
    return Segmentation(segs[::-1], labels[::-1], scores[::-1], "rdd")


def _segment_k(n, k, lengths, score, nn_grid, prior, min_len, max_len) -> Segmentation:
    """The best partition into exactly ``k`` segments: dp[j][e] = max_L dp[j-1][e-L] + J(e-L, e),
    one vectorised step per segment count."""
    if not 1 <= k <= n:
        raise RDDError(f"cannot cut {n} frames into {k} segments")
    e = np.arange(1, n + 1)[:, None]
    prev_idx = e - lengths[None, :]  # (n, L): where the segment ending at e starts
    ok = prev_idx >= 0
    dp = np.full((k + 1, n + 1), -np.inf)
    dp[0, 0] = 0.0
    choice = np.zeros((k + 1, n + 1), dtype=np.int64)
    for j in range(1, k + 1):
        cand = np.where(ok, dp[j - 1][np.clip(prev_idx, 0, None)] + score, -np.inf)
        choice[j, 1:] = np.argmax(cand, axis=1)
        dp[j, 1:] = cand[np.arange(n), choice[j, 1:]]
    if not np.isfinite(dp[k, n]):
        raise RDDError(
            f"{n} frames cannot be cut into {k} segments of {min_len}..{max_len} frames; "
            "widen the range"
        )
    segs, labels, scores = [], [], []
    end = n
    for j in range(k, 0, -1):
        c = int(choice[j, end])
        s = end - int(lengths[c])
        segs.append((s, end))
        labels.append(str(prior.labels[nn_grid[end - 1, c]]))
        scores.append(float(score[end - 1, c]))
        end = s
    return Segmentation(segs[::-1], labels[::-1], scores[::-1], "rdd")


def label_segments(features, prior: Prior, seg: Segmentation, alpha=None) -> Segmentation:
    """Label (and score) another method's segments by retrieval, as RDD labels its own."""
    f = check_features(features, "demo", prior.dim)
    s = np.array([a for a, _ in seg.boundaries])
    e = np.array([b for _, b in seg.boundaries])
    sc, nn = interval_scores(f, prior, s, e, _resolve_alpha(alpha, prior))
    return Segmentation(seg.boundaries, [str(prior.labels[j]) for j in nn], sc.tolist(), seg.method)


def brute_force_segment(
    features, prior: Prior, alpha: float | None = None, beta: float = 0.0, min_len: int = 2,
    max_len: int | None = None, uvd_kwargs: dict | None = None, k: int | None = None,
) -> tuple[float, list[tuple[int, int]]]:  # fmt: skip
    """Best total score and partition by enumerating every partition (small N; for tests).

    Scores each interval by direct comparison with every prior key, independent of
    :func:`segment`'s batched search."""
    from fmlab.rdd.prior import naive_distance

    f = check_features(features, "demo", prior.dim)
    n = len(f)
    if max_len is None:
        max_len = default_max_len(prior, min_len)
    _check_lengths(n, min_len, max_len, prior)
    alpha = _resolve_alpha(alpha, prior)
    uvd = _uvd_starts(f, uvd_kwargs) if beta else None

    def j(s, e):
        d, k = naive_distance(prior, f, s, e)
        length = e - s
        c = d + alpha * abs(1 - length / prior.durations[k])
        if beta:
            c += beta * abs(s - uvd[e]) / length
        return -length * c

    best = (-np.inf, [])

    def rec(s, acc, parts):
        nonlocal best
        if s == n:
            if (k is None or len(parts) == k) and acc > best[0]:
                best = (acc, list(parts))
            return
        for length in range(min_len, min(max_len, n - s) + 1):
            parts.append((s, s + length))
            rec(s + length, acc + j(s, s + length), parts)
            parts.pop()

    rec(0, 0.0, [])
    return best


def uniform_segment(n: int, k: int) -> Segmentation:
    """K equal segments (the "uniform, oracle K" baseline)."""
    if not 1 <= k <= n:
        raise RDDError(f"cannot cut {n} frames into {k} segments")
    edges = np.linspace(0, n, k + 1).round().astype(int)
    return Segmentation(list(pairwise(edges)), method="uniform")


def random_segment(n: int, k: int, rng: np.random.Generator) -> Segmentation:
    """K segments with uniformly random distinct cut points."""
    if not 1 <= k <= n:
        raise RDDError(f"cannot cut {n} frames into {k} segments")
    cuts = rng.choice(np.arange(1, n), size=k - 1, replace=False) if k > 1 else []
    return Segmentation.from_cuts(cuts, n, "random")
