"""R-Sparse: y ≈ W (m ⊙ x) + W_r ((1 − m) ⊙ x) for every linear layer of the transformer blocks.

- Channel score |x_j| · ‖W[:, j]‖₂ (``weighted``; TEAL-style magnitude uses |x_j|); m_j = 1
  where the score passes a per-tensor threshold τ.
- W_r = U_r S_r V_rᵀ, the rank-r truncated SVD of W (computed once in float64).
- Budget for module sparsity s and split α: k = d_in (1 − s) α kept channels on average and
  r = (d_in d_out (1 − s) − k d_out) / (d_in + d_out). α = 1 is magnitude sparsity (TEAL-like),
  α = 0 pure low rank.
- τ is calibrated so that, on calibration activations, k of d_in channels pass on average.
  Calibration keeps a sorted sample of the dense scores, so a module can be re-configured to
  any (s, α) without another forward (what the recipe search does thousands of times).

Protocols: ``all`` sparsifies every token; ``tail`` only the last 10% of the tokens of each
forward (what the official evaluation code does: a dense prefix, a sparse "decode").

A single token (batch-1 decode) goes through the compiled kernel of ``fmlab.rsparse.kernel``,
which reads only the kept rows of Wᵀ and the thin low-rank factors; longer inputs go through
torch (masked dense GEMM plus the low-rank product: no faster than dense, and said so).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

from fmlab.rsparse import kernel

__all__ = [
    "PROTOCOLS",
    "TARGETS",
    "RSparseLinear",
    "budget",
    "calibrate",
    "rsparse_modules",
    "set_protocol",
    "sparsify",
]

PROTOCOLS = ("all", "tail")
TAIL_FRACTION = 0.1
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
CALIB_SAMPLES = 16384  # sorted scores kept per module after calibration


def budget(d_in: int, d_out: int, sparsity: float, alpha: float) -> tuple[int, int]:
    """(kept channels k, rank r) for module sparsity ``sparsity`` and split ``alpha``."""
    if not 0.0 <= sparsity <= 1.0 or not 0.0 <= alpha <= 1.0:
        raise ValueError(f"sparsity and alpha must lie in [0, 1], got {sparsity}, {alpha}")
    k = round(d_in * (1.0 - sparsity) * alpha)
    low_rank = d_in * d_out * (1.0 - sparsity) - k * d_out
    r = max(0, math.floor(low_rank / (d_in + d_out) + 1e-9))
    return k, min(r, min(d_in, d_out))


class RSparseLinear(nn.Module):
    """Drop-in for ``nn.Linear`` (same weight and bias, same output when nothing is sparse).

    The weight keeps its shape and values but is stored transposed (input channel j's column is
    a contiguous row of Wᵀ), which the decode kernel needs and GEMM does not mind.
    """

    def __init__(
        self,
        linear: nn.Linear,
        sparsity: float = 0.0,
        alpha: float = 1.0,
        weighted: bool = True,
        keep_svd: bool = False,
    ):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = linear.weight
        with torch.no_grad():
            self.weight.data = self.weight.data.t().contiguous().t()
        self.bias = linear.bias
        self.weighted = bool(weighted)
        w = self.weight.detach()
        cn = w.float().norm(dim=0) if weighted else torch.ones(self.in_features)
        self.register_buffer("col_norm", cn.to(w.dtype), persistent=False)
        self.register_buffer("threshold", torch.tensor(math.inf), persistent=False)
        self.calib: torch.Tensor | None = None  # sorted calibration scores
        self._svd: tuple[torch.Tensor, torch.Tensor] | None = None  # full (US, V), if kept
        self.keep_svd = keep_svd
        self.lr_us: torch.Tensor | None = None  # (d_out, r)
        self.lr_vt: torch.Tensor | None = None  # (d_in, r)
        self.protocol = "all"
        self.fast = kernel.AVAILABLE
        self._collect: list[torch.Tensor] | None = None
        self.sparsity, self.alpha, self.k, self.rank = 0.0, 1.0, self.in_features, 0
        self.configure(sparsity, alpha)

    # -- configuration ----------------------------------------------------------------------
    def _factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._svd is not None:
            return self._svd
        w = self.weight.detach()
        u, s, vh = torch.linalg.svd(w.double(), full_matrices=False)
        us, v = (u * s).to(w.dtype).contiguous(), vh.t().to(w.dtype).contiguous()
        if self.keep_svd:
            self._svd = (us, v)
        return us, v

    def configure(self, sparsity: float, alpha: float) -> None:
        """Set (s, α): budget, low-rank factors (sliced from one SVD) and τ (from calibration)."""
        k, r = budget(self.in_features, self.out_features, sparsity, alpha)
        self.sparsity, self.alpha, self.k = float(sparsity), float(alpha), k
        if r != self.rank or (r > 0 and self.lr_us is None):
            if r > 0:
                us, v = self._factors()
                self.lr_us, self.lr_vt = us[:, :r].contiguous(), v[:, :r].contiguous()
            else:
                self.lr_us = self.lr_vt = None
            self.rank = r
        self.set_threshold(self._threshold_for(k))

    def set_threshold(self, tau: float) -> None:
        self.threshold.fill_(tau)
        self._np = None  # numpy views for the decode kernel, rebuilt on first use

    def _threshold_for(self, k: int) -> float:
        if k >= self.in_features:
            return -math.inf
        if k <= 0:
            return math.inf
        if self.calib is None:
            return math.inf  # uncalibrated: nothing passes (calibrate() sets τ)
        return float(torch.quantile(self.calib, 1.0 - k / self.in_features))

    def set_calibration(self, scores: torch.Tensor) -> None:
        s = scores.reshape(-1).float()
        if s.numel() == 0:
            raise ValueError("no calibration activations")
        if s.numel() > CALIB_SAMPLES:  # a strided subsample has the same distribution
            s = s[:: math.ceil(s.numel() / CALIB_SAMPLES)]
        self.calib = torch.sort(s).values
        self.set_threshold(self._threshold_for(self.k))

    @property
    def keep_fraction(self) -> float:
        return self.k / self.in_features

    @property
    def params(self) -> int:
        return self.in_features * self.out_features

    def weights_read(self) -> float:
        """Weights read per token at the budget (floats): k rows of Wᵀ plus the low-rank part."""
        r, k = self.rank, self.k
        if self.threshold.item() == -math.inf:
            return float(self.params)
        return float(k * self.out_features + (self.in_features - k) * r + self.out_features * r)

    # -- forward ----------------------------------------------------------------------------
    def scores(self, x: torch.Tensor) -> torch.Tensor:
        return x.abs() * self.col_norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._collect is not None:  # calibrating: record scores of dense activations
            self._collect.append(self.scores(x.detach()).reshape(-1, self.in_features).float())
            return nn.functional.linear(x, self.weight, self.bias)
        tau = self.threshold.item()
        if tau == -math.inf:  # everything kept: the dense layer exactly
            return nn.functional.linear(x, self.weight, self.bias)
        if (
            self.fast
            and x.numel() == self.in_features
            and x.dtype == torch.float32
            and x.device.type == "cpu"
            and not (torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad))
        ):
            return self._decode(x, tau)
        keep = self.scores(x) > tau
        if self.protocol == "tail" and x.dim() == 3:
            t = x.shape[1]
            keep[:, : t - math.ceil(TAIL_FRACTION * t)] = True
        xs = x * keep
        y = nn.functional.linear(xs, self.weight, self.bias)
        if self.lr_vt is not None:
            y = y + (x - xs) @ self.lr_vt @ self.lr_us.t()
        return y

    def _kernel_args(self) -> tuple:
        if self._np is None:
            r, dt = self.rank, self.weight.dtype
            vt = self.lr_vt if r else torch.zeros((self.in_features, 0), dtype=dt)
            us = self.lr_us if r else torch.zeros((self.out_features, 0), dtype=dt)
            w = self.weight.detach()
            if not w.t().is_contiguous():  # e.g. weights loaded after construction
                w.data = w.t().contiguous().t()
            self._np = (w.t().numpy(), self.col_norm.numpy(), vt.numpy(), us.numpy())
        return self._np

    def _decode(self, x: torch.Tensor, tau: float) -> torch.Tensor:
        wt, cn, vt, us = self._kernel_args()
        y = torch.empty(self.out_features, dtype=x.dtype)
        xv = x.detach().reshape(-1).contiguous().numpy()
        kernel.sparse_lowrank_gemv(xv, wt, cn, tau, vt, us, y.numpy())
        if self.bias is not None:
            y += self.bias.detach()
        return y.view(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return (
            f"{self.in_features}->{self.out_features}, s={self.sparsity:g}, "
            f"alpha={self.alpha:g}, k={self.k}, r={self.rank}, weighted={self.weighted}"
        )


def rsparse_modules(model: nn.Module) -> dict[str, RSparseLinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, RSparseLinear)}


def sparsify(
    model: nn.Module,
    sparsity: float = 0.5,
    alpha: float = 1.0,
    recipe: dict[str, tuple[float, float]] | None = None,
    targets: Iterable[str] = TARGETS,
    weighted: bool = True,
    keep_svd: bool = False,
) -> dict[str, RSparseLinear]:
    """Replace the block linears (q/k/v/o/gate/up/down) in place; ``recipe`` maps a module name
    to its own (sparsity, alpha), the others get (``sparsity``, ``alpha``). A model that is
    already sparsified is re-configured instead (thresholds come from its calibration)."""
    targets = tuple(targets)
    recipe = dict(recipe or {})
    existing = rsparse_modules(model)
    if existing:
        unknown = sorted(set(recipe) - set(existing))
        if unknown:
            raise ValueError(f"recipe names modules the model lacks: {unknown[:5]}")
        for name, m in existing.items():
            m.configure(*recipe.get(name, (sparsity, alpha)))
        return existing
    found = []
    for name, mod in list(model.named_modules()):
        for child_name, child in list(mod.named_children()):
            full = f"{name}.{child_name}" if name else child_name
            if isinstance(child, nn.Linear) and child_name in targets:
                s, a = recipe.pop(full, (sparsity, alpha))
                setattr(mod, child_name, RSparseLinear(child, s, a, weighted, keep_svd))
                found.append(full)
    if recipe:
        raise ValueError(f"recipe names modules the model lacks: {sorted(recipe)[:5]}")
    if not found:
        raise ValueError(f"no linear layers named {targets} in the model")
    return rsparse_modules(model)


@torch.no_grad()
def calibrate(model: nn.Module, batches: Iterable[torch.Tensor]) -> None:
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
        if not collected[name]:
            raise ValueError(f"{name}: no calibration activations (were any batches given?)")
        m.set_calibration(torch.cat(collected[name]))


def set_protocol(model: nn.Module, protocol: str) -> None:
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    for m in rsparse_modules(model).values():
        m.protocol = protocol
