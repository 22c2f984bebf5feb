"""The search space, candidate sampling and the multi-objective search.

Our search space (MobileLLM-Flash publishes none): a depth ``n`` (the ``n`` layers of highest
block importance are kept, in backbone order) and, for every backbone layer, an FFN width (a
fraction of the backbone's, rounded to ``multiple``), a KV-head count and an attention mode
(full, a sliding window, or skipped). Parameters of dropped layers are ignored, so the genome
has a fixed length and NSGA-II's crossover stays meaningful.

:func:`search` runs optuna's NSGA-II on (predicted relative latency, calibration perplexity of
the inherited candidate, no training), returns every trial, the Pareto set and its
hypervolume (:func:`hypervolume_2d`).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from fmlab.flash.arch import BackboneShape, FlashArch
from fmlab.flash.prune import Importance, rank_layers

__all__ = [
    "SearchResult",
    "SearchSpace",
    "hypervolume_2d",
    "pareto_front",
    "search",
]


@dataclass
class SearchSpace:
    """What a candidate may be. ``ffn_fractions`` of the backbone's FFN width (rounded to
    ``multiple``), ``kv_heads`` choices (None: 1..backbone), attention ``modes``."""

    min_layers: int = 1
    max_layers: int | None = None
    ffn_fractions: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0)
    multiple: int = 16
    kv_heads: tuple[int, ...] | None = None
    modes: tuple[str, ...] = ("full", "full", "window:128", "skip")

    def choices(self, shape: BackboneShape) -> dict[str, list]:
        widths = sorted({min(shape.intermediate_size,
                             max(self.multiple, round(f * shape.intermediate_size / self.multiple)
                                 * self.multiple)) for f in self.ffn_fractions})  # fmt: skip
        kvs = list(self.kv_heads or range(1, shape.num_kv_heads + 1))
        hi = self.max_layers or shape.num_layers
        if not 1 <= self.min_layers <= hi <= shape.num_layers:
            raise ValueError(f"search space depth {self.min_layers}..{hi} must lie in "
                             f"1..{shape.num_layers}")  # fmt: skip
        return {"depth": list(range(self.min_layers, hi + 1)), "ffn": widths, "kv": kvs,
                "mode": list(self.modes)}  # fmt: skip

    def build(self, shape: BackboneShape, imp: Importance, params: dict[str, Any]) -> FlashArch:
        """The arch of one genome ``{"depth", "ffn_i", "kv_i", "mode_i"}`` (i: backbone layer).
        If every kept layer would skip attention, the most important one keeps it."""
        layers = rank_layers(imp, int(params["depth"]))
        modes = [params[f"mode_{i}"] for i in layers]
        if all(m == "skip" for m in modes):
            best = max(range(len(layers)), key=lambda j: imp.attention[layers[j]])
            modes[best] = "full"
        return FlashArch(layers, [int(params[f"ffn_{i}"]) for i in layers],
                         [int(params[f"kv_{i}"]) for i in layers], modes).validate(shape)  # fmt: skip

    def sample(self, shape: BackboneShape, imp: Importance, rng: random.Random) -> FlashArch:
        """A uniformly drawn genome's arch (for measuring latency-model training data)."""
        c = self.choices(shape)
        p: dict[str, Any] = {"depth": rng.choice(c["depth"])}
        for i in range(shape.num_layers):
            p[f"ffn_{i}"] = rng.choice(c["ffn"])
            p[f"kv_{i}"] = rng.choice(c["kv"])
            p[f"mode_{i}"] = rng.choice(c["mode"])
        return self.build(shape, imp, p)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the non-dominated points (both objectives minimised), by the first one."""
    idx = sorted(range(len(points)), key=lambda i: (points[i][0], points[i][1]))
    front, best = [], math.inf
    for i in idx:
        if points[i][1] < best:
            front.append(i)
            best = points[i][1]
    return front


def hypervolume_2d(points: Sequence[tuple[float, float]], ref: tuple[float, float]) -> float:
    """Area dominated by ``points`` (minimised) and bounded by ``ref``; points beyond ``ref``
    add nothing."""
    pts = [p for p in points if p[0] < ref[0] and p[1] < ref[1]]
    front = [pts[i] for i in pareto_front(pts)]
    area, prev_y = 0.0, ref[1]
    for x, y in front:  # ascending x, descending y
        area += (ref[0] - x) * (prev_y - y)
        prev_y = y
    return area


@dataclass
class SearchResult:
    """Every trial (arch, objectives), the Pareto set and its hypervolume."""

    trials: list[dict[str, Any]]  # {"arch", "latency" (relative), "ppl", "predicted"}
    pareto: list[int]  # indices into trials
    hypervolume: float
    reference: tuple[float, float]
    settings: dict[str, Any] = field(default_factory=dict)

    def pareto_archs(self) -> list[FlashArch]:
        return [FlashArch.from_dict(self.trials[i]["arch"]) for i in self.pareto]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def search(
    shape: BackboneShape,
    imp: Importance,
    predict_latency: Callable[[FlashArch], float],
    evaluate_ppl: Callable[[FlashArch], float],
    *,
    space: SearchSpace | None = None,
    trials: int = 100,
    population: int = 20,
    seed: int = 0,
    reference: tuple[float, float] | None = None,
    log: Callable[[str], None] | None = None,
) -> SearchResult:
    """NSGA-II over (``predict_latency(arch)``, ``evaluate_ppl(arch)``), both minimised.

    ``predict_latency`` is normally the latency model's prediction relative to the backbone
    (1.0 = as slow as the backbone); ``evaluate_ppl`` the calibration perplexity of the
    inherited (pruned, untrained) candidate. ``reference``, the hypervolume's bounding point,
    defaults to 1.1 x the worst latency and the worst finite perplexity over the trials; pass
    a fixed one to compare searches.
    """
    import optuna

    space = space or SearchSpace()
    c = space.choices(shape)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = optuna.samplers.NSGAIISampler(population_size=population, seed=seed)
    study = optuna.create_study(directions=["minimize", "minimize"], sampler=sampler)
    rows: list[dict[str, Any]] = []
    seen: dict[str, tuple[float, float]] = {}

    def objective(trial) -> tuple[float, float]:
        p: dict[str, Any] = {"depth": trial.suggest_categorical("depth", c["depth"])}
        for i in range(shape.num_layers):
            p[f"ffn_{i}"] = trial.suggest_categorical(f"ffn_{i}", c["ffn"])
            p[f"kv_{i}"] = trial.suggest_categorical(f"kv_{i}", c["kv"])
            p[f"mode_{i}"] = trial.suggest_categorical(f"mode_{i}", c["mode"])
        arch = space.build(shape, imp, p)
        key = arch.to_json()  # genomes differing only in dropped layers' genes: one arch
        if key not in seen:
            seen[key] = float(predict_latency(arch)), float(evaluate_ppl(arch))
        lat, ppl = seen[key]
        rows.append({"arch": arch.to_dict(), "latency": lat, "ppl": ppl, "trial": trial.number})
        if log is not None:
            log(f"trial {trial.number + 1}/{trials}: latency {lat:.3f} ppl {ppl:.2f} "
                f"({arch.describe()})")  # fmt: skip
        return lat, ppl

    study.optimize(objective, n_trials=trials)
    pts = [(r["latency"], r["ppl"]) for r in rows]
    if reference is None:
        reference = (
            max(p[0] for p in pts) * 1.1,
            max(p[1] for p in pts if math.isfinite(p[1])) * 1.1,
        )
    front = pareto_front(pts)
    return SearchResult(
        trials=rows,
        pareto=front,
        hypervolume=hypervolume_2d(pts, reference),
        reference=tuple(reference),
        settings={
            "trials": trials,
            "population": population,
            "seed": seed,
            "space": space.to_dict(),
            "sampler": "optuna NSGAIISampler",
        },
    )
