"""CATS-style baseline: threshold the MLP's gate activation |act(gate(x))| at a calibrated
percentile; an intermediate channel below the threshold skips its row of up_proj and its column
of down_proj. Attention and gate_proj stay dense.

So CATS saves only up/down weight reads: its model-level sparsity (over all block linears, as
for R-Sparse and TEAL) is ``c · P_up+down / P_blocks`` for gate sparsity c. On SmolLM2 up+down
are half the block weights, so 50% model-level needs c = 100% (every MLP channel dropped), and
more is unreachable; ``gate_sparsity_for`` says so instead of silently capping.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

from fmlab.rsparse.sparse import TAIL_FRACTION, TARGETS

__all__ = ["CATSMLP", "calibrate_cats", "cats_sparsify", "gate_sparsity_for", "set_cats_protocol"]


class CATSMLP(nn.Module):
    def __init__(self, mlp: nn.Module, gate_sparsity: float):
        super().__init__()
        for attr in ("gate_proj", "up_proj", "down_proj", "act_fn"):
            if not hasattr(mlp, attr):
                raise ValueError(
                    f"CATS needs a gated MLP with {attr}; {type(mlp).__name__} lacks it"
                )
        self.gate_proj, self.up_proj, self.down_proj = mlp.gate_proj, mlp.up_proj, mlp.down_proj
        self.act_fn = mlp.act_fn
        self.gate_sparsity = float(gate_sparsity)
        self.register_buffer("threshold", torch.tensor(-math.inf), persistent=False)
        self.protocol = "all"
        self._collect: list[torch.Tensor] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = self.act_fn(self.gate_proj(x))
        if self._collect is not None:
            self._collect.append(g.detach().abs().reshape(-1).float())
        else:
            keep = g.abs() > self.threshold
            if self.protocol == "tail" and x.dim() == 3:
                t = x.shape[1]
                keep[:, : t - math.ceil(TAIL_FRACTION * t)] = True
            g = g * keep
        return self.down_proj(g * self.up_proj(x))


def _block_params(model: nn.Module) -> tuple[int, int]:
    total = updown = 0
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear) and name.rsplit(".", 1)[-1] in TARGETS:
            total += m.weight.numel()
            if name.endswith(("up_proj", "down_proj")):
                updown += m.weight.numel()
    if not updown:
        raise ValueError("no up_proj/down_proj linears: CATS needs a gated MLP")
    return total, updown


def gate_sparsity_for(model: nn.Module, model_sparsity: float) -> float:
    """The gate sparsity c that gives ``model_sparsity`` over the block linears."""
    total, updown = _block_params(model)
    c = model_sparsity * total / updown
    if c > 1 + 1e-9:
        raise ValueError(
            f"CATS cannot reach model-level sparsity {model_sparsity:g}: it sparsifies only "
            f"up/down ({updown / total:.0%} of block weights), so at most {updown / total:.0%}"
        )
    return min(c, 1.0)


def cats_sparsify(model: nn.Module, model_sparsity: float) -> list[CATSMLP]:
    """Wrap every block's MLP in place (call ``calibrate_cats`` next)."""
    c = gate_sparsity_for(model, model_sparsity)
    out = []
    for _name, mod in list(model.named_modules()):
        for child_name, child in list(mod.named_children()):
            if child_name == "mlp" and hasattr(child, "gate_proj"):
                wrapped = CATSMLP(child, c)
                setattr(mod, child_name, wrapped)
                out.append(wrapped)
    if not out:
        raise ValueError("no '.mlp' modules with gate_proj found")
    return out


@torch.no_grad()
def calibrate_cats(model: nn.Module, batches: Iterable[torch.Tensor]) -> None:
    """τ = the c-quantile of |act(gate)| on dense calibration tokens."""
    mlps = [m for m in model.modules() if isinstance(m, CATSMLP)]
    if not mlps:
        raise ValueError("the model has no CATS MLPs; call cats_sparsify() first")
    for m in mlps:
        m._collect = []
    try:
        for ids in batches:
            model(input_ids=ids)
    finally:
        collected = [m._collect for m in mlps]
        for m in mlps:
            m._collect = None
    for m, vals in zip(mlps, collected, strict=True):
        s = torch.cat(vals)
        if s.numel() > 1 << 20:
            s = s[:: math.ceil(s.numel() / (1 << 20))]
        if m.gate_sparsity >= 1.0:
            m.threshold.fill_(math.inf)
        elif m.gate_sparsity <= 0.0:
            m.threshold.fill_(-math.inf)
        else:
            m.threshold.fill_(float(torch.quantile(s, m.gate_sparsity)))


def set_cats_protocol(model: nn.Module, protocol: str) -> None:
    from fmlab.rsparse.sparse import PROTOCOLS

    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    for m in model.modules():
        if isinstance(m, CATSMLP):
            m.protocol = protocol
