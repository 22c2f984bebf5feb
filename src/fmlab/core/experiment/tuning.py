"""Equal-budget tuning of every arm on a validation split, widening a numeric axis whose best
point lies on the grid's edge.

The rule, the same for every arm:

1. Each arm whose grid has more than one point is evaluated at exactly ``budget`` points: its
   whole grid when the grid has ``budget`` points, a seeded random sample of ``budget`` points
   when it has more. A grid with fewer points than the budget is an error (that arm would get
   less tuning effort than the others); a one-point grid (an arm with nothing to tune) is
   evaluated once and marked ``fixed``.
2. Widening: while an arm's best point lies on the lower or upper edge of a numeric axis (all
   values int/float, two or more of them), a ``GridEdgeWarning`` is issued and one value is
   added beyond that edge (geometric step on log-scaled axes, linear step otherwise), evaluated
   with the other axes held at the best point. At most ``max_widen`` values are added per axis.
   These extra evaluations are the same allowance for every arm and are recorded per arm
   (``evaluated`` = budget + widened). Categorical axes are never widened, and an edge that is
   a bound of the axis (``bounds``; 0 for an axis whose values are all >= 0) is not an edge.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from fmlab.core.experiment.splits import SealedSplitError, Split, content_hash

__all__ = ["ArmTuning", "GridEdgeWarning", "Tuning", "tune"]


class GridEdgeWarning(UserWarning):
    """An arm's best setting lies on the edge of a numeric grid axis (the optimum may lie
    beyond it); :func:`tune` widens the axis."""


@dataclass
class ArmTuning:
    """One arm's tuning: the (widened) grid, every evaluated point and the choice."""

    arm: str
    grid: dict[str, list[Any]]
    points: list[dict[str, Any]]  # {"params", "score", "phase": "grid" | "widen"}
    chosen: dict[str, Any]
    best: float
    fixed: bool = False
    sampled: bool = False  # the grid had more points than the budget
    widened: list[dict[str, Any]] = field(default_factory=list)  # {"axis", "side", "value"}
    on_edge: list[str] = field(default_factory=list)  # axes still on an edge at the end

    @property
    def evaluated(self) -> int:
        return len(self.points)


@dataclass
class Tuning:
    """The result of :func:`tune`; :meth:`to_record` is the record's ``tuning`` field."""

    arms: dict[str, ArmTuning]
    budget: int
    mode: str
    max_widen: int
    split: dict[str, Any] | None

    @property
    def chosen(self) -> dict[str, dict[str, Any]]:
        """arm -> chosen settings (what :func:`run_arms` takes)."""
        return {name: dict(a.chosen) for name, a in self.arms.items()}

    def to_record(self) -> dict[str, Any]:
        arms = {}
        for name, a in self.arms.items():
            arms[name] = {**asdict(a), "evaluated": a.evaluated}
            del arms[name]["arm"]
        return {
            "rule": "equal budget per arm; edge-of-grid axes widened, same allowance for every arm",
            "budget": self.budget,
            "mode": self.mode,
            "max_widen": self.max_widen,
            "split": self.split,
            "chosen": self.chosen,
            "arms": arms,
        }


def _is_numeric_axis(values: Sequence[Any]) -> bool:
    return len(values) >= 2 and all(
        isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)
        for v in values
    )


def _scale(values: Sequence[float], given: str | None) -> str:
    if given is not None:
        if given not in ("log", "linear"):
            raise ValueError(f"unknown axis scale {given!r}; choose one of: log, linear")
        return given
    lo, hi = min(values), max(values)
    return "log" if lo > 0 and hi / lo >= 10 else "linear"


def _extend(values, side, scale, bounds) -> Any | None:
    """The value one step beyond ``side`` ("lower" / "upper") of a numeric axis, or None when
    the edge is a bound of the axis."""
    v = sorted(float(x) for x in values)
    edge, nb = (v[0], v[1]) if side == "lower" else (v[-1], v[-2])
    new = edge * edge / nb if scale == "log" else 2 * edge - nb
    lo, hi = bounds
    if (side == "lower" and lo is not None and edge <= lo) or (
        side == "upper" and hi is not None and edge >= hi
    ):
        return None
    new = max(new, lo) if lo is not None else new
    new = min(new, hi) if hi is not None else new
    if all(isinstance(x, (int, np.integer)) for x in values):
        new = round(new)
        new = new if new != edge else int(edge) + (1 if side == "upper" else -1)
        return int(new)
    return float(f"{new:.12g}")


def _grids_for(arms: Sequence[str], grid: Mapping[str, Any]) -> dict[str, dict[str, list[Any]]]:
    if grid and all(isinstance(v, Mapping) for v in grid.values()):
        missing = [a for a in arms if a not in grid]
        extra = [g for g in grid if g not in arms]
        if missing or extra:
            raise ValueError(
                f"per-arm grids do not match the arms: missing {missing}, unknown {extra}; "
                f"give one grid per arm in {list(arms)}"
            )
        per = {a: grid[a] for a in arms}
    else:
        per = {a: grid for a in arms}
    out = {}
    for a, g in per.items():
        out[a] = {}
        for axis, vals in g.items():
            vals = list(vals)
            if not vals:
                raise ValueError(f"arm {a!r}: grid axis {axis!r} has no values")
            if len({json.dumps(v, sort_keys=True, default=repr) for v in vals}) < len(vals):
                raise ValueError(f"arm {a!r}: grid axis {axis!r} repeats a value: {vals}")
            out[a][axis] = vals
    return out


def _points(grid: Mapping[str, list[Any]]) -> list[dict[str, Any]]:
    axes = list(grid)
    return [dict(zip(axes, combo, strict=True)) for combo in itertools.product(*grid.values())]


class _Scorer:
    """Evaluates points of one arm (through the memo when given) and keeps the best."""

    def __init__(self, arm, evaluate, val, mode, memo, context: str = ""):
        self.arm, self.evaluate, self.val, self.memo = arm, evaluate, val, memo
        self.context = context
        self.sign = 1.0 if mode == "max" else -1.0
        self.points: list[dict[str, Any]] = []
        self.best_i = -1

    def rank(self, score: float) -> float:
        return -math.inf if math.isnan(score) else self.sign * score

    def __call__(self, params: dict[str, Any], phase: str) -> float:
        def compute() -> float:
            return float(self.evaluate(self.arm, dict(params), self.val))

        if self.memo is not None:
            what = [self.arm, params] if not self.context else [self.context, self.arm, params]
            name = "tune|" + json.dumps(what, sort_keys=True, default=repr)
            score = float(self.memo.get_or_compute(name, compute))
        else:
            score = compute()
        self.points.append({"params": dict(params), "score": score, "phase": phase})
        if self.best_i < 0 or self.rank(score) > self.rank(self.best["score"]):  # ties: first
            self.best_i = len(self.points) - 1
        return score

    @property
    def best(self) -> dict[str, Any]:
        return self.points[self.best_i]


def _widen(arm, grid, scorer, max_widen, scale, bounds) -> tuple[list[dict], list[str]]:
    """Widen edge axes of ``grid`` in place (see the module docstring); return (widenings,
    axes still on an edge)."""
    numeric = [a for a, v in grid.items() if _is_numeric_axis(v)]
    counts = dict.fromkeys(numeric, 0)
    widened: list[dict] = []
    warned: set[str] = set()
    while True:
        best = scorer.best["params"]
        edges = []
        for axis in numeric:
            v = best[axis]
            side = "lower" if v == min(grid[axis]) else "upper" if v == max(grid[axis]) else None
            if side is None:
                continue
            new = _extend(
                grid[axis],
                side,
                _scale(grid[axis], scale.get(axis)),
                _bounds(grid[axis], bounds.get(axis)),
            )
            if new is not None:
                edges.append((axis, side, v, new))
        todo = [e for e in edges if counts[e[0]] < max_widen]
        if not todo:
            if edges:
                warnings.warn(
                    f"tune: arm {arm!r} is still on the edge of {[e[0] for e in edges]} after "
                    f"{max_widen} added values per axis; widen its grid by hand",
                    GridEdgeWarning,
                    stacklevel=4,
                )
            return widened, [e[0] for e in edges]
        axis, side, v, new = todo[0]
        if axis not in warned:
            warned.add(axis)
            warnings.warn(
                f"tune: arm {arm!r} has its best {axis}={v!r} on the {side} edge of its grid "
                f"({min(grid[axis])!r} … {max(grid[axis])!r}); widening to {new!r} (at most "
                f"{max_widen} added values per axis, the same rule for every arm)",
                GridEdgeWarning,
                stacklevel=4,
            )
        grid[axis].append(new)
        counts[axis] += 1
        widened.append({"axis": axis, "side": side, "value": new})
        scorer({**best, axis: new}, "widen")


def _bounds(values, given) -> tuple[float | None, float | None]:
    if given is not None:
        return tuple(given)
    return (0, None) if min(values) >= 0 else (None, None)


def _split_info(val: Any) -> dict[str, Any] | None:
    if isinstance(val, Split):
        return {"name": val.name, "n": len(val), "digest": val.digest}
    try:
        return {"name": None, "n": len(val), "digest": content_hash(list(val))}
    except TypeError:
        return None


def tune(
    arms: Sequence[str],
    grid: Mapping[str, Sequence[Any]] | Mapping[str, Mapping[str, Sequence[Any]]],
    evaluate_val: Callable[[str, dict[str, Any], Any], float],
    *,
    val: Any,
    budget: int | None = None,
    mode: str = "max",
    max_widen: int = 3,
    scale: Mapping[str, str] | None = None,
    bounds: Mapping[str, tuple[float | None, float | None]] | None = None,
    seed: int = 0,
    memo=None,
    context: str = "",
) -> Tuning:
    """Tune every arm with the same budget on ``val`` (rule in the module docstring).

    Args:
        arms: arm names.
        grid: one grid ``{axis: values}`` shared by every arm, or ``{arm: {axis: values}}``
            (``{}`` for an arm with nothing to tune).
        evaluate_val: ``(arm, params, val) -> score`` on the validation data.
        val: the validation data, ideally ``splits["val"]``: then the whole tuning runs inside
            ``splits.design()``, so touching the sealed test split raises.
        budget: points evaluated per tuned arm (default: the largest grid's size).
        mode: ``"max"`` or ``"min"`` the score. NaN scores count as the worst.
        max_widen: values that may be added beyond an edge, per axis.
        scale: per-axis ``"log"`` / ``"linear"`` widening (default: log when all values are
            positive and span a factor of 10 or more).
        bounds: per-axis ``(lo, hi)`` never crossed (default ``(0, None)`` when all values
            are >= 0).
        seed: seeds the sample when a grid has more points than the budget.
        memo: an optional :class:`fmlab.core.io.Memo` so an interrupted tuning resumes.
        context: what distinguishes this tuning from another one on the same ``memo`` (e.g.
            ``"s=0.5"`` when a bench tunes once per sparsity); part of every memo key. A second
            call on one memo with the same context raises: its points would be read back from
            the first call's scores (this happened once: every sparsity got 30%'s choices).

    Raises:
        SealedSplitError: ``val`` is a sealed split.
        ValueError: an arm's grid has fewer points than the budget, or grids and arms differ.
    """
    if mode not in ("max", "min"):
        raise ValueError(f"unknown mode {mode!r}; choose one of: max, min")
    if isinstance(val, Split) and val.sealed:
        raise SealedSplitError(
            f"tune refuses the sealed split {val.name!r}: tune on the validation split (e.g. "
            "splits['val']) and evaluate the chosen settings on test once, after open_test()"
        )
    if memo is not None:
        used = memo.__dict__.setdefault("_tune_contexts", set())
        if context in used:
            raise ValueError(
                f"tune was already called on the memo {memo.path} with context {context!r}: "
                "pass a distinct context= per tuning (e.g. the sparsity or task), or its "
                "scores would be the earlier tuning's"
            )
        used.add(context)
    grids = _grids_for(list(arms), grid)
    sizes = {a: len(_points(g)) for a, g in grids.items()}
    budget = budget if budget is not None else max(sizes.values())
    if budget < 1:
        raise ValueError(f"budget must be at least 1 grid point per arm, got {budget}")
    short = {a: n for a, n in sizes.items() if 1 < n < budget}
    if short:
        raise ValueError(
            f"arms {short} have fewer grid points than the budget {budget}: give them finer "
            "grids or lower the budget, so every arm gets the same tuning effort"
        )
    design = (
        val.owner.design(f"tune {', '.join(arms)} on {val.name!r}")
        if isinstance(val, Split)
        else contextlib.nullcontext()
    )
    rng, scale, bounds = np.random.default_rng(seed), dict(scale or {}), dict(bounds or {})
    res: dict[str, ArmTuning] = {}
    with design:
        for arm, g in grids.items():
            scorer = _Scorer(arm, evaluate_val, val, mode, memo, context)
            res[arm] = _tune_arm(arm, g, scorer, budget, rng, max_widen, scale, bounds)
    return Tuning(res, budget, mode, max_widen, _split_info(val))


def _tune_arm(arm, grid, scorer, budget, rng, max_widen, scale, bounds) -> ArmTuning:
    """Evaluate ``budget`` points of one arm's grid (all, or a seeded sample), then widen."""
    pts = _points(grid)
    sampled = len(pts) > budget
    if sampled:
        pts = [pts[i] for i in sorted(rng.choice(len(pts), size=budget, replace=False))]
    for p in pts:
        scorer(p, "grid")
    grid = {axis: list(v) for axis, v in grid.items()}
    fixed = len(pts) == 1
    widened, on_edge = ([], []) if fixed else _widen(arm, grid, scorer, max_widen, scale, bounds)
    best = scorer.best
    return ArmTuning(
        arm,
        grid,
        scorer.points,
        dict(best["params"]),
        best["score"],
        fixed=fixed,
        sampled=sampled,
        widened=widened,
        on_edge=on_edge,
    )
