"""Paired differences with intervals: per seed (Student t) and per item (bootstrap).

A headline difference is stated only with its interval: :meth:`Paired.format` and
:func:`format_delta` write "Δ = +0.019 [−0.001, +0.041]", and :meth:`Paired.to_dict` is what
the record's ``intervals`` field holds (``fmlab report`` prints it beside the difference).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import stats

from fmlab.core.results import delta_text, format_interval

__all__ = [
    "Interval",
    "Paired",
    "bootstrap_interval",
    "compare",
    "format_delta",
    "paired",
    "ratio_interval",
    "t_interval",
]


@dataclass(frozen=True)
class Interval:
    """An estimate of a mean difference with a two-sided ``level`` interval and p-value."""

    estimate: float
    lo: float
    hi: float
    level: float
    method: str  # "per-seed t" | "per-item bootstrap" | "per-repeat t on log ratio"
    n: int  # seeds or items
    p: float
    std: float | None = None  # sample std of the differences (per-seed t)
    resamples: int | None = None  # bootstrap
    seed: int | None = None  # bootstrap

    def contains(self, x: float) -> bool:
        return self.lo <= x <= self.hi

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def t_interval(d: Sequence[float], level: float = 0.95) -> Interval:
    """Mean of paired differences ``d`` with the Student-t interval (n − 1 degrees of freedom)
    and two-sided p-value of a zero mean. Needs two or more differences."""
    d = np.asarray(d, dtype=float).reshape(-1)
    n = len(d)
    if n < 2:
        raise ValueError(f"a per-seed t interval needs at least 2 seeds, got {n}; add seeds")
    mean, sd = float(d.mean()), float(d.std(ddof=1))
    se = sd / np.sqrt(n)
    if se == 0.0:  # every seed gave the same difference
        return Interval(mean, mean, mean, level, "per-seed t", n, 1.0 if mean == 0 else 0.0, sd)
    half = float(stats.t.ppf((1 + level) / 2, n - 1)) * se
    p = float(2 * stats.t.sf(abs(mean) / se, n - 1))
    return Interval(mean, mean - half, mean + half, level, "per-seed t", n, p, sd)


def ratio_interval(num: Sequence[float], den: Sequence[float], level: float = 0.95) -> Interval:
    """Geometric-mean ratio ``num / den`` of paired repeats (e.g. dense seconds over sparse
    seconds of the same interleaved round: a speed-up) with a Student-t interval on the log
    ratios, exponentiated. ``estimate`` is the geometric mean of the per-repeat ratios and the
    p-value is that of a ratio of 1. Needs two or more pairs of positive values."""
    a, b = np.asarray(num, dtype=float).reshape(-1), np.asarray(den, dtype=float).reshape(-1)
    if a.shape != b.shape:
        raise ValueError(f"ratio needs paired values: {a.shape} vs {b.shape}")
    if len(a) < 2 or not (np.all(a > 0) and np.all(b > 0)):
        raise ValueError("a ratio interval needs 2+ pairs of positive values")
    t = t_interval(np.log(a / b), level)
    ex = float(np.exp(t.estimate)), float(np.exp(t.lo)), float(np.exp(t.hi))
    return Interval(*ex, level, "per-repeat t on log ratio", t.n, t.p, t.std)


def bootstrap_interval(
    d: Sequence[float], level: float = 0.95, resamples: int = 2000, seed: int = 0
) -> Interval:
    """Mean of per-item paired differences ``d`` with a percentile bootstrap interval over
    items (``resamples`` seeded resamples) and the two-sided bootstrap p-value of a zero mean,
    ``min(1, 2 · min(P*(mean ≤ 0), P*(mean ≥ 0)))`` with the +1 correction.

    Written with numpy rather than ``scipy.stats.bootstrap`` so that the interval and the
    p-value come from the same resamples, identically across scipy versions."""
    d = np.asarray(d, dtype=float).reshape(-1)
    n = len(d)
    if n < 2:
        raise ValueError(f"a per-item bootstrap needs at least 2 items, got {n}")
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    chunk = max(1, 2_000_000 // n)  # bound memory: chunk x n indices at a time
    for start in range(0, resamples, chunk):
        stop = min(resamples, start + chunk)
        means[start:stop] = d[rng.integers(0, n, size=(stop - start, n))].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    below = (np.sum(means <= 0) + 1) / (resamples + 1)
    above = (np.sum(means >= 0) + 1) / (resamples + 1)
    p = float(min(1.0, 2 * min(below, above)))
    return Interval(
        float(d.mean()),
        float(lo),
        float(hi),
        level,
        "per-item bootstrap",
        n,
        p,
        resamples=resamples,
        seed=seed,
    )


@dataclass(frozen=True)
class Paired:
    """``a − b`` for one metric: per-seed and/or per-item intervals."""

    a: str
    b: str
    metric: str
    per_seed: Interval | None
    per_item: Interval | None
    headline: bool = True

    @property
    def label(self) -> str:
        return f"{self.metric}: {self.a} − {self.b}" if self.metric else f"{self.a} − {self.b}"

    @property
    def main(self) -> Interval:
        """The per-item interval when there is one (more units), else the per-seed one."""
        return self.per_item or self.per_seed  # type: ignore[return-value]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["estimate"] = self.main.estimate
        return d

    def format(self) -> str:
        """E.g. ``Δ dtrpo − sft (acc): +0.019 [−0.001, +0.041] (per-item bootstrap, 95%, …)``."""
        return format_interval(self.to_dict())


def paired(
    a: Sequence[float] | None = None,
    b: Sequence[float] | None = None,
    *,
    items_a: Sequence | np.ndarray | None = None,
    items_b: Sequence | np.ndarray | None = None,
    names: tuple[str, str] = ("a", "b"),
    metric: str = "",
    level: float = 0.95,
    resamples: int = 2000,
    seed: int = 0,
    headline: bool = True,
    items_across_seeds: str = "same",
) -> Paired:
    """Paired differences ``a − b``.

    Args:
        a, b: per-seed values, aligned by seed (same seeds, same order): a t interval on the
            per-seed differences (needs 2+ seeds).
        items_a, items_b: per-item scores aligned by item, shape ``(items,)`` or
            ``(seeds, items)``; for the latter the per-item difference is averaged over seeds
            first, then items are resampled (the test items are the unit of the bootstrap).
        items_across_seeds: ``"same"`` when column j is the same test item at every seed (the
            averaging above); ``"distinct"`` when every seed has its own items (e.g. each seed
            generates its own test demos): the (seeds, items) differences are then flattened
            and every scored item is resampled on its own.
        names: the two arms' names; metric: the metric's name (both for the record).
        headline: whether ``fmlab report --readme`` shows it in the results table.
    """
    per_seed = per_item = None
    if (a is None) != (b is None) or (items_a is None) != (items_b is None):
        raise ValueError("give both a and b (per seed) and/or both items_a and items_b")
    if a is not None:
        a_, b_ = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
        if a_.shape != b_.shape:
            raise ValueError(f"per-seed values differ in shape: {a_.shape} vs {b_.shape}")
        per_seed = t_interval(a_ - b_, level) if len(a_) >= 2 else None
    if items_a is not None:
        ia, ib = np.asarray(items_a, dtype=float), np.asarray(items_b, dtype=float)
        if ia.shape != ib.shape or ia.ndim not in (1, 2):
            raise ValueError(
                f"per-item scores must have the same shape (items,) or (seeds, items); got "
                f"{ia.shape} vs {ib.shape}"
            )
        d = ia - ib
        if items_across_seeds not in ("same", "distinct"):
            raise ValueError(
                f"items_across_seeds must be 'same' or 'distinct', got {items_across_seeds!r}"
            )
        if d.ndim == 2:
            d = d.mean(axis=0) if items_across_seeds == "same" else d.reshape(-1)
        per_item = bootstrap_interval(d, level, resamples, seed)
    if per_seed is None and per_item is None:
        raise ValueError(
            "no interval can be computed: give per-seed values for 2+ seeds or per-item scores"
        )
    return Paired(names[0], names[1], metric, per_seed, per_item, headline)


def compare(
    runs,
    a: str,
    b: str,
    metric: str,
    items: str | None = None,
    **kw: Any,
) -> Paired:
    """:func:`paired` on two arms of a :class:`~fmlab.core.experiment.ArmRuns`: per-seed
    values of ``metric`` and, when ``items`` names a per-item list metric, its
    ``(seeds, items)`` scores."""
    ia = np.asarray(runs.per_seed(a, items), dtype=float) if items else None
    ib = np.asarray(runs.per_seed(b, items), dtype=float) if items else None
    return paired(
        runs.per_seed(a, metric),
        runs.per_seed(b, metric),
        items_a=ia,
        items_b=ib,
        names=(a, b),
        metric=metric,
        **kw,
    )


def format_delta(x: Interval | Paired, digits: int | None = None) -> str:
    """``"Δ = +0.019 [−0.001, +0.041]"``: a difference never written without its interval."""
    iv = x.main if isinstance(x, Paired) else x
    return "Δ = " + delta_text(iv.estimate, iv.lo, iv.hi, digits)
