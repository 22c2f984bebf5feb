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

Protocols (what is sparse; :data:`PROTOCOLS`):
- ``all``: every token of every forward (the quality protocol; the default).
- ``tail``: only the last 10% of the tokens of each forward (what the official evaluation code
  does: a dense prefix, a sparse "decode").
- ``decode``: the serving protocol. A forward of several tokens per sequence (prefill) runs
  the dense layer, where sparsity cannot pay (GEMM is compute-bound and masking skips no
  work); single-token forwards (decode) are sparse through the kernel while the batch is at
  most ``max_kernel_batch``, and dense above it (the union of the rows' kept channels then
  covers nearly every weight row). So no path is slower than dense.

Which code runs: single-token rows (decode, batch ≤ ``max_kernel_batch``) go through the
compiled kernel of ``fmlab.rsparse.kernel`` (fp32 or bf16, on ``torch.get_num_threads()``
threads), which reads only the kept rows of Wᵀ and the thin low-rank factors. Under ``all`` and
``tail`` other inputs take the masked torch path (dense GEMM on m ⊙ x plus the low-rank
product: the sparse numerics at dense cost, for evaluation).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable

import numpy as np
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
    "set_max_kernel_batch",
    "set_protocol",
    "sparsify",
]

PROTOCOLS = ("all", "tail", "decode")
TAIL_FRACTION = 0.1
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
CALIB_SAMPLES = 16384  # scores kept per module (a reservoir sample, sorted after calibration)
# Decode batches up to this size go through the kernel. It reads the union of the rows' kept
# channels, which at 50% and batch 4 is already ~90% of the rows: at batch 4 and 2 threads
# the bf16 kernel measured 0.86-0.87x of dense in two runs, fp32 0.93x in one and 1.11x in the
# other, against 0.96-0.99x for the dense fallback (docs/rsparse.md, by_dtype of the speed
# records); set_max_kernel_batch changes it.
MAX_KERNEL_BATCH = 1
_KERNEL_DTYPES = (torch.float32, torch.bfloat16)


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

    The weight is the linear's own, in torch's layout. The decode kernel reads Wᵀ row-major
    (input channel j's column as one contiguous row) and gets its own transposed copy on first
    use (one more copy of the weight, only where the kernel runs). Storing the weight
    transposed in place instead slowed every dense path that runs on it: bf16 GEMM was 12×
    slower for a 512-token prefill on an AVX2 CPU (719 against 61.5 ms), and fp32 decode at
    batch 4 and 2 threads fell to 0.93× dense through the dense fallback.
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
        self._wt: torch.Tensor | None = None  # the kernel's Wᵀ (a copy), made on first use
        self._wt_key: tuple[int, int] | None = None
        self.bias = linear.bias
        self.weighted = bool(weighted)
        w = self.weight.detach()
        # channel weights in fp32 whatever the model's dtype: the kernel and the torch path
        # then take the same keep/drop decisions
        cn = w.float().norm(dim=0) if weighted else torch.ones(self.in_features)
        self.register_buffer("col_norm", cn.float().contiguous(), persistent=False)
        self.register_buffer("threshold", torch.tensor(math.inf), persistent=False)
        self._tau = math.inf
        self.calib: torch.Tensor | None = None  # sorted calibration scores
        self._svd: tuple[torch.Tensor, torch.Tensor] | None = None  # full (US, V), if kept
        self.keep_svd = keep_svd
        self.lr_us: torch.Tensor | None = None  # (d_out, r)
        self.lr_vt: torch.Tensor | None = None  # (d_in, r)
        self.protocol = "all"
        self.max_kernel_batch = MAX_KERNEL_BATCH
        self.fast = kernel.AVAILABLE
        self._collect: _Reservoir | None = None
        self._kstate: tuple | None = None
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
        """τ, rounded to a float32 value (scores are float32, so both code paths compare the
        same numbers)."""
        tau = float(np.float32(tau))
        self.threshold.fill_(tau)
        self._tau = tau
        self._kstate = None  # numpy views for the decode kernel, rebuilt on first use

    def _threshold_for(self, k: int) -> float:
        if k >= self.in_features:
            return -math.inf
        if k <= 0:
            return math.inf
        if self.calib is None:
            return math.inf  # uncalibrated: nothing passes (calibrate() sets τ)
        return float(torch.quantile(self.calib, 1.0 - k / self.in_features))

    def set_calibration(self, scores: torch.Tensor) -> None:
        """τ from calibration scores (any shape; more than ``CALIB_SAMPLES`` are subsampled)."""
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
        """Weights read per token at the budget (floats): k rows of Wᵀ plus the low-rank part.
        The budget, not a measurement (the kernel's counters measure; see ``kernel``)."""
        r, k = self.rank, self.k
        if self._tau == -math.inf:
            return float(self.params)
        return float(k * self.out_features + (self.in_features - k) * r + self.out_features * r)

    # -- forward ----------------------------------------------------------------------------
    def scores(self, x: torch.Tensor) -> torch.Tensor:
        """|x_j|·c_j in float32 (c_j = ‖W[:, j]‖₂, or 1 for magnitude scores)."""
        return x.abs().float() * self.col_norm

    def _dense(self, x: torch.Tensor, rows: int) -> torch.Tensor:
        _count_dense(self, rows, rows * self.in_features)
        return nn.functional.linear(x, self.weight, self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._collect is not None:  # calibrating: record scores of dense activations
            self._collect.add(self.scores(x.detach()))
            return nn.functional.linear(x, self.weight, self.bias)
        rows = x.numel() // self.in_features
        if self._tau == -math.inf:  # everything kept: the dense layer exactly
            return self._dense(x, rows)
        per_seq = x.shape[-2] if x.dim() >= 3 else 1  # tokens per sequence in this forward
        if per_seq == 1:  # decode
            if rows <= self.max_kernel_batch and self._kernel_ok(x):
                return self._decode(x, rows)
            if self.protocol == "decode":  # sparsity cannot pay at this batch
                return self._dense(x, rows)
        elif self.protocol == "decode":  # prefill: dense
            return self._dense(x, rows)
        return self._masked(x, rows)

    def _kernel_ok(self, x: torch.Tensor) -> bool:
        return (
            self.fast
            and x.is_cpu
            and x.dtype is self.weight.dtype
            and x.dtype in _KERNEL_DTYPES
            and not (torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad))
        )

    def _masked(self, x: torch.Tensor, rows: int) -> torch.Tensor:
        """The sparse numerics with torch ops: dense GEMM on m ⊙ x plus the low-rank part."""
        keep = self.scores(x) > self._tau
        if self.protocol == "tail" and x.dim() == 3:
            t = x.shape[1]
            keep[:, : t - math.ceil(TAIL_FRACTION * t)] = True
        xs = x * keep
        y = nn.functional.linear(xs, self.weight, self.bias)
        if self.lr_vt is not None:
            y = y + (x - xs) @ self.lr_vt @ self.lr_us.t()
        _count_dense(self, rows, int(keep.sum()))
        return y

    def _kernel_args(self) -> tuple:
        """(Wᵀ, c, Vᵀ, US) as numpy arrays for the kernel (bf16 as its uint16 bits)."""
        if self._wt is not None and self._wt_key != (self.weight.data_ptr(), self.weight._version):
            self._kstate = None  # the weight changed under the kernel's copy
        if self._kstate is None:
            r, d_in, d_out = self.rank, self.in_features, self.out_features
            w = self.weight.detach()
            if w.t().is_contiguous():  # a weight already stored transposed: no copy needed
                wt = w.t()
            else:  # a transposed copy, remade only when the weight itself changes
                key = (w.data_ptr(), self.weight._version)
                if self._wt is None or self._wt_key != key:
                    self._wt, self._wt_key = w.t().contiguous(), key
                wt = self._wt
            if wt.dtype is torch.bfloat16:
                wt = wt.view(torch.int16).numpy().view(np.uint16)
            else:
                wt = wt.numpy()
            if r:
                vt = self.lr_vt.detach().float().contiguous().numpy()
                us = self.lr_us.detach().float().contiguous().numpy()
            else:
                vt, us = np.zeros((d_in, 0), np.float32), np.zeros((d_out, 0), np.float32)
            self._kstate = (wt, self.col_norm.numpy(), vt, us)
        return self._kstate

    def _decode(self, x: torch.Tensor, rows: int) -> torch.Tensor:
        wt, cn, vt, us = self._kernel_args()
        x2 = x.detach().reshape(rows, self.in_features).contiguous()
        y = torch.empty((rows, self.out_features), dtype=x.dtype)
        if x.dtype is torch.bfloat16:
            xv, yv = x2.view(torch.int16).numpy().view(np.uint16), y.view(torch.int16).numpy()
            yv = yv.view(np.uint16)
        else:
            xv, yv = x2.numpy(), y.numpy()
        kernel.sparse_lowrank_gemm(xv, wt, cn, self._tau, vt, us, yv, torch.get_num_threads())
        if self.bias is not None:
            y += self.bias.detach()
        return y.view(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return (
            f"{self.in_features}->{self.out_features}, s={self.sparsity:g}, "
            f"alpha={self.alpha:g}, k={self.k}, r={self.rank}, weighted={self.weighted}"
        )


def _count_dense(m: RSparseLinear, rows: int, kept: int) -> None:
    """Count a torch-path call in the kernel's counters: it reads every weight row."""
    c = kernel.TORCH_COUNTS
    c[kernel.C_CALLS] += 1
    c[kernel.C_ROWS] += rows
    c[kernel.C_SEEN] += rows * m.in_features
    c[kernel.C_KEPT] += kept
    c[kernel.C_STREAMED] += m.in_features
    c[kernel.C_BYTES] += m.params * m.weight.element_size()


class _Reservoir:
    """A uniform sample of at most ``size`` of the values seen, in ``size`` floats however much
    text calibration reads. Per batch of m values after n seen, a random ``size·m/(n+m)`` of
    the slots (the batch's expected share of a uniform sample of all n + m) take random values
    of the batch: O(size) work per batch instead of O(m) random draws (Algorithm R)."""

    def __init__(self, size: int, generator: torch.Generator):
        self.buf = torch.empty(size)
        self.size, self.seen, self.gen = size, 0, generator

    def add(self, values: torch.Tensor) -> None:
        v = values.reshape(-1).float()
        m = v.numel()
        if m == 0:
            return
        n = self.seen + m
        have, target = min(self.seen, self.size), min(n, self.size)
        c = max(target - have, min(m, round(target * m / n)))
        take = v if c >= m else v[torch.randint(m, (c,), generator=self.gen)]
        grow = target - have
        if grow:
            self.buf[have:target] = take[:grow]
            take = take[grow:]
        if take.numel() and have:
            slots = torch.randperm(have, generator=self.gen)[: take.numel()]
            self.buf[slots] = take[: slots.numel()]
        self.seen = n

    def sample(self) -> torch.Tensor:
        return self.buf[: min(self.seen, self.size)]


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
def calibrate(
    model: nn.Module,
    batches: Iterable[torch.Tensor],
    samples: int = CALIB_SAMPLES,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> None:
    """Set every RSparseLinear's τ so that k of d_in channels pass on the calibration tokens.

    The calibration forward runs dense, so every layer's τ comes from dense activations. Each
    module keeps a seeded reservoir sample of ``samples`` channel scores (not every score), so
    memory is bounded whatever the amount of calibration text. ``progress`` gets one line per
    batch."""
    mods = rsparse_modules(model)
    if not mods:
        raise ValueError("the model has no RSparseLinear layers; call sparsify() first")
    gen = torch.Generator().manual_seed(seed)
    for m in mods.values():
        m._collect = _Reservoir(samples, gen)
    batches = list(batches)
    try:
        for i, ids in enumerate(batches):
            t0 = time.perf_counter()
            model(input_ids=ids)
            if progress:
                progress(
                    f"calibration batch {i + 1}/{len(batches)} "
                    f"({ids.numel()} tokens, {time.perf_counter() - t0:.1f} s)"
                )
    finally:
        collected = {n: m._collect for n, m in mods.items()}
        for m in mods.values():
            m._collect = None
    for name, m in mods.items():
        if collected[name].seen == 0:
            raise ValueError(f"{name}: no calibration activations (were any batches given?)")
        m.set_calibration(collected[name].sample())


def set_protocol(model: nn.Module, protocol: str) -> None:
    """``all`` | ``tail`` | ``decode`` for every RSparseLinear (see the module docstring)."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
    for m in rsparse_modules(model).values():
        m.protocol = protocol


def set_max_kernel_batch(model: nn.Module, batch: int) -> None:
    """Decode batches up to ``batch`` rows use the kernel (0: never); larger ones the dense
    layer (protocol ``decode``) or the masked torch path (``all`` / ``tail``)."""
    if batch < 0:
        raise ValueError(f"max kernel batch must be >= 0, got {batch}")
    for m in rsparse_modules(model).values():
        m.max_kernel_batch = int(batch)
