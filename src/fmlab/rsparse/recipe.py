"""Per-module recipes (s, α) for a model-level sparsity target, and the two searches that make
them: TEAL's block-wise greedy (the baseline) and an evolutionary search (R-Sparse's; the
paper's search code was never released, so this one is ours).

Model-level sparsity is parameter-weighted over the sparsified block linears:
``1 − Σ p_i (1 − s_i) / Σ p_i`` with p_i = d_in·d_out, i.e. the share of those layers' weight
reads a token saves. Embeddings and the LM head are not counted (they are never sparsified).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fmlab.core.io import atomic_write_text
from fmlab.rsparse.sparse import RSparseLinear, rsparse_modules

__all__ = [
    "GROUPS",
    "Recipe",
    "decoder_layers",
    "evolutionary_search",
    "evolve",
    "model_sparsity",
    "repair",
    "shipped_recipe",
    "teal_greedy",
]

FORMAT = "fmlab-rsparse-recipe/1"
RECIPES_DIR = Path(__file__).parent / "recipes"  # shipped with the package, read-only
S_MAX = 0.95  # no module goes sparser than this in a search
# projections that read the same input share one sparsity in TEAL's greedy
GROUPS = {
    "qkv": ("q_proj", "k_proj", "v_proj"),
    "o": ("o_proj",),
    "gate_up": ("gate_proj", "up_proj"),
    "down": ("down_proj",),
}


@dataclass
class Recipe:
    """Per-module (sparsity, alpha) for one model-level target."""

    modules: dict[str, tuple[float, float]]
    target: float
    method: str  # "rsparse" | "teal" | "rsparse-uniform" ...
    weighted: bool = True  # channel score |x|·‖W_j‖ (R-Sparse) or |x| (TEAL)
    model: str = ""
    meta: dict = field(default_factory=dict)

    def save(self, path: str | Path) -> Path:
        doc = {
            "format": FORMAT,
            "model": self.model,
            "method": self.method,
            "target": self.target,
            "weighted": self.weighted,
            "meta": self.meta,
            "modules": {k: [round(s, 6), round(a, 6)] for k, (s, a) in self.modules.items()},
        }
        return atomic_write_text(Path(path), json.dumps(doc, indent=1))

    @classmethod
    def load(cls, path: str | Path) -> Recipe:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such recipe file")
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not JSON ({e}); expected an fmlab R-Sparse recipe") from e
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise ValueError(f"{path}: not an fmlab R-Sparse recipe (format {FORMAT!r} missing)")
        modules = {}
        for name, pair in doc["modules"].items():
            if not (isinstance(pair, list) and len(pair) == 2):
                raise ValueError(f"{path}: module {name!r} needs [sparsity, alpha], got {pair!r}")
            s, a = float(pair[0]), float(pair[1])
            if not (0 <= s <= 1 and 0 <= a <= 1):
                raise ValueError(f"{path}: module {name!r} has sparsity/alpha outside [0, 1]")
            modules[name] = (s, a)
        return cls(
            modules,
            float(doc["target"]),
            str(doc["method"]),
            bool(doc.get("weighted", True)),
            str(doc.get("model", "")),
            dict(doc.get("meta", {})),
        )

    def sparsity(self, params: dict[str, int]) -> float:
        return model_sparsity(self.modules, params)


def module_params(model: nn.Module) -> dict[str, int]:
    return {n: m.params for n, m in rsparse_modules(model).items()}


def model_sparsity(modules: dict[str, tuple[float, float]], params: dict[str, int]) -> float:
    """Parameter-weighted sparsity of a recipe over the modules of ``params``."""
    missing = set(params) - set(modules)
    if missing:
        raise ValueError(f"recipe lacks modules: {sorted(missing)[:3]}")
    total = sum(params.values())
    return 1.0 - sum(p * (1.0 - modules[n][0]) for n, p in params.items()) / total


def repair(s: np.ndarray, p: np.ndarray, target: float, s_max: float = S_MAX) -> np.ndarray:
    """Shift all sparsities by one constant (then clip to [0, s_max]) so the parameter-weighted
    mean equals ``target`` exactly (bisection; the weighted mean is monotone in the shift)."""
    if not 0 <= target <= s_max:
        raise ValueError(f"target {target} outside [0, {s_max}]")
    w = p / p.sum()
    lo, hi = -1.0, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if float(w @ np.clip(s + mid, 0, s_max)) < target:
            lo = mid
        else:
            hi = mid
    return np.clip(s + hi, 0, s_max)


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The transformer blocks of a Llama/Mistral/Qwen2-style HF model."""
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise ValueError("expected a Llama/Mistral/Qwen2-style model with .model.layers")
    return layers


def _apply(mods: dict[str, RSparseLinear], modules: dict[str, tuple[float, float]]) -> None:
    for name, m in mods.items():
        m.configure(*modules[name])


def _block_output(out) -> torch.Tensor:
    return out[0] if isinstance(out, tuple) else out


@torch.no_grad()
def teal_greedy(
    model: nn.Module,
    calib_ids: torch.Tensor,
    targets: list[float],
    block_step: float = 0.025,
    progress: Callable[[str], None] | None = None,
) -> dict[float, dict[str, tuple[float, float]]]:
    """TEAL's block-wise greedy: per block, from all-dense, repeatedly raise the sparsity of the
    projection group (q/k/v, o, gate/up, down) whose step adds the least block-output error;
    every candidate step raises the block's parameter-weighted sparsity by ``block_step``.
    Blocks are scored on their dense calibration inputs, so they are independent. One greedy
    run to the largest target gives every target's recipe (the path is recorded). α = 1."""
    mods = rsparse_modules(model)
    if not mods:
        raise ValueError("call sparsify() and calibrate() before the greedy search")
    layers = decoder_layers(model)
    inputs: dict[int, tuple] = {}

    def hook(i):
        def f(_mod, args, kwargs):
            inputs[i] = (args, kwargs)

        return f

    handles = [
        layer.register_forward_pre_hook(hook(i), with_kwargs=True) for i, layer in enumerate(layers)
    ]
    dense = {n: (0.0, 1.0) for n in mods}
    try:
        _apply(mods, dense)
        model(input_ids=calib_ids)
    finally:
        for h in handles:
            h.remove()
    result: dict[float, dict[str, tuple[float, float]]] = {t: {} for t in targets}
    top = max(targets)
    for i, layer in enumerate(layers):
        prefix = next(n for n, m in model.named_modules() if m is layer) + "."
        groups = {
            g: [n for n in mods if n.startswith(prefix) and n.rsplit(".", 1)[-1] in names]
            for g, names in GROUPS.items()
        }
        groups = {g: ns for g, ns in groups.items() if ns}
        gp = {g: sum(mods[n].params for n in ns) for g, ns in groups.items()}
        total = sum(gp.values())
        args, kwargs = inputs[i]
        ref = _block_output(layer(*args, **kwargs))
        s = dict.fromkeys(groups, 0.0)
        level = 0.0
        pending = sorted(targets)
        while pending:
            best = None
            for g, names in groups.items():
                new = s[g] + block_step * total / gp[g]
                if new > S_MAX:
                    continue
                for n in names:
                    mods[n].configure(new, 1.0)
                err = float((_block_output(layer(*args, **kwargs)) - ref).pow(2).mean())
                for n in names:
                    mods[n].configure(s[g], 1.0)
                if best is None or err < best[0]:
                    best = (err, g, new)
            if best is None:
                raise ValueError(f"block {i}: cannot reach sparsity {top} with S_MAX={S_MAX}")
            _, g, new = best
            s[g] = new
            for n in groups[g]:
                mods[n].configure(new, 1.0)
            level = sum(gp[g] * s[g] for g in groups) / total
            while pending and level >= pending[0] - 1e-9:
                t = pending.pop(0)
                # scale the path point down to exactly t (it overshoots by < one step)
                for gg, names in groups.items():
                    for n in names:
                        result[t][n] = (s[gg] * t / level if level > 0 else 0.0, 1.0)
        for n in (n for ns in groups.values() for n in ns):
            mods[n].configure(0.0, 1.0)
        if progress:
            progress(f"greedy block {i + 1}/{len(layers)}")
    return result


@torch.no_grad()
def recipe_loss(model: nn.Module, ids: torch.Tensor, modules: dict[str, tuple[float, float]]):
    """Mean next-token loss of the model under ``modules`` on ``ids`` (1 × T)."""
    _apply(rsparse_modules(model), modules)
    logits = model(input_ids=ids[:, :-1]).logits
    return float(
        nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
    )


@torch.no_grad()
def evolve(
    model: nn.Module,
    search_ids: torch.Tensor,
    target: float,
    init: list[dict[str, tuple[float, float]]],
    population: int = 8,
    generations: int = 12,
    mutate_frac: float = 0.1,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> tuple[list[tuple[float, dict[str, tuple[float, float]]]], list[dict]]:
    """(μ + λ) evolution over per-module (s, α) at a fixed model-level budget.

    Fitness is the LM loss on ``search_ids`` (held apart from the evaluation text). Children
    come from per-block uniform crossover of two tournament-picked parents, then Gaussian
    mutation of a ``mutate_frac`` share of modules' s (σ 0.1) and α (σ 0.15), then ``repair``
    back onto the budget. The ``init`` recipes (e.g. uniform α and TEAL's greedy path) seed
    the population, so the result is never worse on the search text than the best seed.
    Returns the final population as (search loss, recipe), best first, and the per-generation
    history (best / median loss, seconds)."""
    mods = rsparse_modules(model)
    names = list(mods)
    p = np.array([mods[n].params for n in names], dtype=np.float64)
    block = np.array([n.split(".layers.")[-1].split(".")[0] for n in names])
    rng = np.random.default_rng(seed)
    m_count = max(1, round(mutate_frac * len(names)))

    def as_arrays(rec):
        return (
            np.array([rec[n][0] for n in names], dtype=np.float64),
            np.array([rec[n][1] for n in names], dtype=np.float64),
        )

    def as_recipe(s, a):
        return {n: (float(s[i]), float(a[i])) for i, n in enumerate(names)}

    def evaluate(s, a):
        return recipe_loss(model, search_ids, as_recipe(s, a))

    pop = []
    for rec in init:
        s, a = as_arrays(rec)
        s = repair(s, p, target)
        pop.append((evaluate(s, a), s, a))
    while len(pop) < population:
        _, s0, a0 = pop[len(pop) % len(init)]
        s, a = _mutate(s0, a0, rng, m_count)
        s = repair(s, p, target)
        pop.append((evaluate(s, a), s, a))
    pop.sort(key=lambda x: x[0])
    pop = pop[:population]
    history = [
        {"generation": 0, "best": pop[0][0], "median": float(np.median([x[0] for x in pop]))}
    ]
    t0 = time.perf_counter()
    blocks = np.unique(block)
    for gen in range(1, generations + 1):
        children = []
        for _ in range(population):
            pa, pb = (min(rng.choice(len(pop), 2, replace=False)) for _ in range(2))
            take = {b: rng.random() < 0.5 for b in blocks}
            mask = np.array([take[b] for b in block])
            s = np.where(mask, pop[pa][1], pop[pb][1])
            a = np.where(mask, pop[pa][2], pop[pb][2])
            s, a = _mutate(s, a, rng, m_count)
            s = repair(s, p, target)
            children.append((evaluate(s, a), s, a))
        pop = sorted(pop + children, key=lambda x: x[0])[:population]
        history.append(
            {
                "generation": gen,
                "best": pop[0][0],
                "median": float(np.median([x[0] for x in pop])),
                "seconds": time.perf_counter() - t0,
            }
        )
        if progress:
            progress(
                f"search s={target:g} generation {gen}/{generations}: best loss {pop[0][0]:.4f}"
            )
    ranked = [(loss, as_recipe(s, a)) for loss, s, a in pop]
    _apply(mods, ranked[0][1])
    return ranked, history


@torch.no_grad()
def evolutionary_search(
    model: nn.Module,
    search_ids: torch.Tensor,
    target: float,
    init: list[dict[str, tuple[float, float]]],
    population: int = 8,
    generations: int = 12,
    mutate_frac: float = 0.1,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> tuple[dict[str, tuple[float, float]], list[dict]]:
    """The best recipe of :func:`evolve` on ``search_ids`` and the history. The best on the
    search text can overfit it: choose among ``evolve``'s final population on other text."""
    ranked, history = evolve(
        model, search_ids, target, init, population, generations, mutate_frac, seed, progress
    )
    return ranked[0][1], history


def _mutate(s, a, rng, m_count):
    s, a = s.copy(), a.copy()
    idx = rng.choice(len(s), m_count, replace=False)
    s[idx] = np.clip(s[idx] + rng.normal(0, 0.1, m_count), 0, S_MAX)
    a[idx] = np.clip(a[idx] + rng.normal(0, 0.15, m_count), 0, 1)
    return s, a


def uniform(model: nn.Module, sparsity: float, alpha: float) -> dict[str, tuple[float, float]]:
    return dict.fromkeys(rsparse_modules(model), (sparsity, alpha))


def check_budget(modules: dict, params: dict[str, int], target: float, tol: float = 1e-6):
    got = model_sparsity(modules, params)
    if abs(got - target) > tol:
        raise ValueError(f"recipe sparsity {got:.6f} != target {target}")
    return got


def realised_sparsity(model: nn.Module) -> float:
    """1 − weights read per token / dense weights, from each module's actual (k, r)."""
    mods = rsparse_modules(model).values()
    read = sum(m.weights_read() for m in mods)
    return 1.0 - read / sum(m.params for m in mods) if mods else math.nan


def shipped_recipe(model: str, method: str, sparsity: float) -> Recipe:
    """The recipe shipped with the package for a bundled model (``method`` rsparse | teal)."""
    path = RECIPES_DIR / model / f"{method}-{round(sparsity * 100)}.json"
    if not path.is_file():
        folder = RECIPES_DIR / model
        have = sorted(p.stem for p in folder.glob("*.json")) if folder.is_dir() else []
        raise FileNotFoundError(
            f"no shipped {method} recipe for {model} at {sparsity:g} ({path.name}); shipped: "
            f"{', '.join(have) or 'none'}. Run `fmlab rsparse search --sparsity {sparsity:g} "
            "--out R.json` to make one"
        )
    return Recipe.load(path)
