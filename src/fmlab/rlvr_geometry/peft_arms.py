"""The PEFT arms of the RL-vs-SFT study: LoRA with the default, PiSSA and MiLoRA inits, and
fixed-mask sparse RL on principal or off-principal weights.

LoRA arms (:func:`wrap_lora`, :func:`merge_lora`) put a rank-r adapter on every block linear
(``q, k, v, o, gate, up, down``) through ``peft``; only the adapter trains (fp32, its own
master weights). Inits, for a block weight ``W = U S Vᵀ`` (``(out, in)``) and peft's scaling
``s = lora_alpha / r``:

- ``lora``: peft's default (A Kaiming-uniform, B = 0): the function is unchanged at init.
- ``pissa``: peft's ``init_lora_weights="pissa"`` (exact SVD): the r LARGEST components,
  ``A = sqrt(S_r / s) V_rᵀ``, ``B = U_r sqrt(S_r / s)``, and the frozen base becomes the
  residual ``W − s·BA``.
- ``milora``: the same with the r SMALLEST components (MiLoRA; peft 0.21.2 has no such option:
  its ``"mica"`` init is another method, B from the minor vectors with A = 0 and B frozen), by
  :func:`milora_init`, written like peft's ``pissa_init``.

Precision: the frozen base is held in fp32 while the adapter trains. Its values are the bf16
base's exactly, but PiSSA's and MiLoRA's residual ``W − s·BA`` is not representable in bf16:
rounding it would move the merged model off the base before any training, noise the geometry
would count as update (a one-off check on SmolLM2's layer-3 block weights at r = 8 while this
was built, not a result record: PiSSA moved 11–14% of the entries, MiLoRA 0.2–7%). With an fp32 residual, ``merge_and_unload`` (fp32)
followed by one cast to bf16 gives back the base bit for bit at init (:func:`merge_lora`;
tested), so the merged checkpoint is measured against the original base like every other arm.

Fixed masks (:func:`fixed_masks`): the principal mask of a block weight is the top-α fraction
of entries of |rank-k₀ reconstruction of W₀|, analyze's M_princ (:func:`principal_mask`; ties
at the threshold, which ``analyze`` shares fractionally, are broken by flat index here because a
mask must be boolean); the off-principal mask is its complement. Only the block linears train
under their masks; every other parameter (embeddings, norms) is frozen.
"""

from __future__ import annotations

import torch

from fmlab.rlvr_geometry.metrics import INT64_MAX, magnitude_keys, select_count

__all__ = [
    "ADAPTER_INITS",
    "LORA_TARGETS",
    "MASK_KINDS",
    "block_linears",
    "fixed_masks",
    "max_logit_change",
    "merge_lora",
    "milora_init",
    "principal_mask",
    "wrap_lora",
]

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
ADAPTER_INITS = ("lora", "pissa", "milora")
MASK_KINDS = ("principal", "offprincipal")


def block_linears(model, targets=LORA_TARGETS) -> dict[str, torch.nn.Parameter]:
    """``{name: weight}`` of every ``nn.Linear`` whose module name ends in one of ``targets``."""
    out = {}
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear) and name.rsplit(".", 1)[-1] in targets:
            out[f"{name}.weight"] = mod.weight
    if not out:
        raise ValueError(f"the model has no linear layers named {', '.join(targets)}")
    return out


def wrap_lora(model, init: str, rank: int, alpha: float, targets=LORA_TARGETS):
    """A peft LoRA model on ``targets`` with the ``init`` of :data:`ADAPTER_INITS`.

    ``model`` is cast to float32 first (in place; see the module docstring for why the frozen
    residual must not be rounded to bf16). Only the adapter's ``lora_A``/``lora_B`` are
    trainable. Returns the ``PeftModelForCausalLM``."""
    from peft import LoraConfig, get_peft_model

    if init not in ADAPTER_INITS:
        raise ValueError(
            f"unknown adapter init {init!r}; choose one of: {', '.join(ADAPTER_INITS)}"
        )
    if rank < 1:
        raise ValueError(f"lora rank must be >= 1, got {rank}")
    model.float()
    peft_init = {"lora": True, "pissa": "pissa", "milora": True}[init]
    cfg = LoraConfig(r=rank, lora_alpha=alpha, target_modules=list(targets), lora_dropout=0.0,
                     init_lora_weights=peft_init, task_type="CAUSAL_LM")  # fmt: skip
    pm = get_peft_model(model, cfg)
    if init == "milora":
        milora_init(pm)
    return pm


def _lora_layers(peft_model, adapter: str):
    from peft.tuners.lora import LoraLayer

    return [m for m in peft_model.modules() if isinstance(m, LoraLayer) and adapter in m.lora_A]


@torch.no_grad()
def milora_init(peft_model, adapter: str = "default") -> int:
    """MiLoRA: initialise every LoRA layer of ``adapter`` from the r smallest singular
    components of its base weight ``W`` (``(out, in)``, SVD in float32 as peft's PiSSA):
    ``A = sqrt(S_r / s) V_rᵀ`` ``(r, in)``, ``B = U_r sqrt(S_r / s)`` ``(out, r)`` and
    ``W ← W − s·BA``, so the layer's function is unchanged. Returns the number of layers."""
    layers = _lora_layers(peft_model, adapter)
    for layer in layers:
        base = layer.get_base_layer()
        if getattr(layer, "fan_in_fan_out", False):
            raise ValueError("milora_init supports nn.Linear-style (out, in) weights only")
        w = base.weight
        r, s = layer.r[adapter], layer.scaling[adapter]
        u, sv, vh = torch.linalg.svd(w.float(), full_matrices=False)  # (out,q) (q,) (q,in)
        sr = sv[-r:] / s
        a = torch.diag(sr.sqrt()) @ vh[-r:]  # (r, in)
        b = u[:, -r:] @ torch.diag(sr.sqrt())  # (out, r)
        layer.lora_A[adapter].weight.data = a.to(layer.lora_A[adapter].weight.dtype).contiguous()
        layer.lora_B[adapter].weight.data = b.to(layer.lora_B[adapter].weight.dtype).contiguous()
        base.weight.data = (w.float() - s * b @ a).to(w.dtype)
    if not layers:
        raise ValueError(f"no LoRA layers with adapter {adapter!r} to initialise")
    return len(layers)


@torch.no_grad()
def merge_lora(peft_model, dtype: torch.dtype = torch.bfloat16):
    """The plain model with every adapter merged (peft's ``merge_and_unload``, in the frozen
    base's fp32), then cast to ``dtype`` (one rounding): tensor names and shapes are the
    base's. ``peft_model`` is consumed."""
    merged = peft_model.merge_and_unload()
    return merged.to(dtype)


@torch.no_grad()
def max_logit_change(model, before: torch.Tensor, probe: torch.Tensor) -> float:
    """max |logits(probe) − before| of ``model`` in float32 (a function-preservation check)."""
    was = model.training
    model.eval()
    after = model(input_ids=probe).logits.float()
    model.train(was)
    return float((after - before).abs().max())


def principal_mask(w0: torch.Tensor, k0: int, alpha: float) -> torch.Tensor:
    """analyze's M_princ as a boolean mask: the K = ⌊α·mn + ½⌋ entries of ``w0`` ``(m, n)``
    with the largest |rank-k₀ reconstruction| (float64, reconstructed in the tall orientation
    as :func:`fmlab.rlvr_geometry.metrics.pair_metrics` does), ties broken by flat index."""
    if w0.ndim != 2 or not 1 <= k0 <= min(w0.shape):
        raise ValueError(f"need a 2-D weight and 1 <= k0 <= {min(w0.shape)}, got "
                         f"{tuple(w0.shape)} and k0 = {k0}")  # fmt: skip
    m, n = w0.shape
    transposed = m < n
    a0 = (w0.T if transposed else w0).double()  # (p, q), p >= q
    v = torch.linalg.svd(a0, full_matrices=False).Vh[:k0].T  # (q, k0)
    recon = a0 @ v @ v.T
    keys = INT64_MAX - magnitude_keys(recon.T if transposed else recon)  # ascending = largest
    k = select_count(m * n, alpha)
    order = torch.argsort(keys.reshape(-1), stable=True)[:k]
    mask = torch.zeros(m * n, dtype=torch.bool)
    mask[order] = True
    return mask.view(m, n)


def fixed_masks(model, kind: str, k0: int, alpha: float, targets=LORA_TARGETS) -> dict:
    """``{parameter: bool mask}`` for fixed-mask sparse fine-tuning of the block linears:
    ``principal`` = :func:`principal_mask` of each weight's current values, ``offprincipal`` =
    its complement. Every other parameter is frozen (``requires_grad`` False), so an optimizer
    that skips frozen parameters (:class:`fmlab.core.rl.MasterAdamW`) leaves them untouched."""
    if kind not in MASK_KINDS:
        raise ValueError(f"unknown mask {kind!r}; choose one of: {', '.join(MASK_KINDS)}")
    weights = block_linears(model, targets)
    keep = {id(p) for p in weights.values()}
    for p in model.parameters():
        p.requires_grad_(id(p) in keep)
    out = {}
    for p in weights.values():
        m = principal_mask(p.detach().cpu(), k0, alpha)
        out[p] = m if kind == "principal" else ~m
    return out
