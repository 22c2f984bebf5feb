"""R-Sparse: y ≈ W (m ⊙ x) + W_r ((1 − m) ⊙ x) for every linear layer of the transformer blocks.

- Channel score |x_j| · ‖W[:, j]‖₂; m_j = 1 where the score passes a per-tensor threshold τ.
- W_r = U_r S_r V_rᵀ, the rank-r truncated SVD of W (computed once in float64).
- Budget for module sparsity s and split α: k = d_in (1 − s) α kept channels on average and
  r = (d_in d_out (1 − s) − k d_out) / (d_in + d_out). α = 1 is magnitude sparsity (TEAL-like),
  α = 0 pure low rank.
- τ is calibrated so that, on calibration activations, k of d_in channels pass on average.

Protocols: ``all`` sparsifies every token; ``tail`` only the last 10% of the tokens of each
forward (what the official evaluation code does: a dense prefix, a sparse "decode").
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

__all__ = ["PROTOCOLS", "RSparseLinear", "budget", "calibrate", "rsparse_modules", "sparsify"]

PROTOCOLS = ("all", "tail")
TAIL_FRACTION = 0.1
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def budget(d_in: int, d_out: int, sparsity: float, alpha: float) -> tuple[int, int]:
    """(kept channels k, rank r) for module sparsity ``sparsity`` and split ``alpha``."""
    if not 0.0 <= sparsity <= 1.0 or not 0.0 <= alpha <= 1.0:
        raise ValueError(f"sparsity and alpha must lie in [0, 1], got {sparsity}, {alpha}")
    k = round(d_in * (1.0 - sparsity) * alpha)
    low_rank = d_in * d_out * (1.0 - sparsity) - k * d_out
    r = max(0, math.floor(low_rank / (d_in + d_out) + 1e-9))
    return k, min(r, min(d_in, d_out))


class RSparseLinear(nn.Module):
    """Drop-in for ``nn.Linear`` (same weight and bias, same output when nothing is sparse)."""

    def __init__(self, linear: nn.Linear, sparsity: float = 0.0, alpha: float = 1.0):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = linear.weight
        self.bias = linear.bias
        self.sparsity, self.alpha = float(sparsity), float(alpha)
        self.k, self.rank = budget(self.in_features, self.out_features, sparsity, alpha)
        w = self.weight.detach()
        self.register_buffer("col_norm", w.float().norm(dim=0).to(w.dtype), persistent=False)
        self.register_buffer(
            "threshold", torch.tensor(-math.inf if self.k >= self.in_features else math.inf)
        )
        if self.rank > 0:
            u, s, vh = torch.linalg.svd(w.double(), full_matrices=False)
            self.register_buffer("lr_us", (u[:, : self.rank] * s[: self.rank]).to(w.dtype))
            self.register_buffer("lr_v", vh[: self.rank].contiguous().to(w.dtype))
        else:
            self.lr_us = self.lr_v = None
        self.protocol = "all"
        self._collect: list[torch.Tensor] | None = None

    @property
    def keep_fraction(self) -> float:
        return self.k / self.in_features

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        return x.abs() * self.col_norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._collect is not None:  # calibrating: record scores of dense activations
            self._collect.append(self.scores(x.detach()).reshape(-1, self.in_features).float())
            return nn.functional.linear(x, self.weight, self.bias)
        if self.threshold.item() == -math.inf:  # everything kept: the dense layer exactly
            return nn.functional.linear(x, self.weight, self.bias)
        keep = self.scores(x) > self.threshold
        if self.protocol == "tail" and x.dim() == 3:
            t = x.shape[1]
            dense = t - math.ceil(TAIL_FRACTION * t)
            keep[:, :dense] = True
        xs = x * keep
        y = nn.functional.linear(xs, self.weight, self.bias)
        if self.lr_v is not None:
            y = y + (x - xs) @ self.lr_v.T @ self.lr_us.T
        return y

    def extra_repr(self) -> str:
        return f"{self.in_features}->{self.out_features}, s={self.sparsity:g}, alpha={self.alpha:g}, k={self.k}, r={self.rank}"


def rsparse_modules(model: nn.Module) -> dict[str, RSparseLinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, RSparseLinear)}


def sparsify(
    model: nn.Module,
    sparsity: float = 0.5,
    alpha: float = 1.0,
    recipe: dict[str, tuple[float, float]] | None = None,
    targets: Iterable[str] = TARGETS,
) -> dict[str, RSparseLinear]:
    """Replace the block linears (q/k/v/o/gate/up/down) in place; ``recipe`` maps a module name
    to its own (sparsity, alpha), the others get (``sparsity``, ``alpha``)."""
    targets = tuple(targets)
    recipe = dict(recipe or {})
    found = []
    for name, mod in list(model.named_modules()):
        for child_name, child in list(mod.named_children()):
            full = f"{name}.{child_name}" if name else child_name
            if isinstance(child, nn.Linear) and child_name in targets:
                s, a = recipe.pop(full, (sparsity, alpha))
                setattr(mod, child_name, RSparseLinear(child, s, a))
                found.append(full)
    if recipe:
        raise ValueError(f"recipe names modules the model lacks: {sorted(recipe)[:5]}")
    if not found:
        raise ValueError(f"no linear layers named {targets} in the model")
    return rsparse_modules(model)


@torch.no_grad()
def calibrate(
    model: nn.Module, batches: Iterable[torch.Tensor], max_scores: int = 2_000_000
) -> None:
    """Set every RSparseLinear's τ so that k of d_in channels pass on the calibration tokens.

    The calibration forward runs dense, so every layer's τ comes from dense activations."""
    mods = rsparse_modules(model)
    if not mods:
        raise ValueError("the model has no RSparseLinear layers; call sparsify() first")
    for m in mods.values():
        m._collect = []
    try:
        for ids in batches:
            model(input_ids=ids)
    finally:
        collected = {n: m._collect for n, m in mods.items()}
        for m in mods.values():
            m._collect = None
    for name, m in mods.items():
        if m.k >= m.in_features:
            m.threshold.fill_(-math.inf)
            continue
        if m.k == 0:
            m.threshold.fill_(math.inf)
            continue
        s = torch.cat(collected[name]).reshape(-1)
        if s.numel() == 0:
            raise ValueError(f"{name}: no calibration activations")
        if s.numel() > max_scores:  # quantile of a strided subsample: same distribution
            s = s[:: math.ceil(s.numel() / max_scores)]
        m.threshold.fill_(float(torch.quantile(s, 1.0 - m.keep_fraction)))


def set_protocol(model: nn.Module, protocol: str) -> None:
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    for m in rsparse_modules(model).values():
        m.protocol = protocol
