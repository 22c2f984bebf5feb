"""The delta as a PEFT LoRA adapter: per-tensor truncated SVD of α(Θ_post − Θ_base), streamed.

For every linear weight W (out, in): Δ = U S Vᵀ, kept to rank r, written as
``lora_B = U_r √S_r`` (out, r) and ``lora_A = √S_r V_rᵀ`` (r, in), with ``lora_alpha = r`` so
PEFT's scaling is 1 and W + B·A is the rank-r ParamΔ weight. The input embedding gets PEFT's
embedding LoRA (``lora_embedding_A`` (r, vocab), ``lora_embedding_B`` (hidden, r)); a tied LM
head gets a linear LoRA with the same factors, so the tied tensor's delta reaches both uses.

Tensors that are not matrices (RMSNorm weights, biases) have no low-rank form. With a
``new_base`` they are stored whole, as their ParamΔ value Θ'_base + α·Δ, under PEFT's
``modules_to_save`` (then the adapter is specific to that new base); without one they are left
out and listed in ``fmlab_lora.json`` with their share of ‖Δ‖². Rank-r truncation is the
best rank-r approximation in Frobenius norm (Eckart–Young), so the error of every rank
follows from the singular values: err(r)² = Σ_{i>r} sᵢ². Peak memory is one tensor's SVD.

Llama-like models (``nn.Linear`` projections, untransposed weights) are what this handles.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

import torch

from fmlab.core.checkpoint import SafetensorsStreamWriter, TensorSource, TensorSpec
from fmlab.core.io import atomic_dir, atomic_write_json
from fmlab.param_delta.delta import (
    _EMBED,
    _HEAD,
    CHUNK_BYTES,
    FiniteCheck,
    ParamDeltaError,
    Term,
    _as_source,
    _compute,
    _Workspace,
    plan,
)
from fmlab.param_delta.files import progress_bar

__all__ = ["ADAPTER_WEIGHTS", "LORA_MANIFEST", "extract_lora", "lora_error_by_rank"]

ADAPTER_WEIGHTS = "adapter_model.safetensors"
LORA_MANIFEST = "fmlab_lora.json"
_PREFIX = "base_model.model."
_EMBEDDINGS = ("embed_tokens.weight", "wte.weight", "embed_in.weight")


def _kind(name: str, shape: tuple[int, ...]) -> str:
    if len(shape) == 2 and name.endswith(_EMBEDDINGS):
        return "embedding"
    if len(shape) == 2 and name.endswith(".weight"):
        return "linear"
    return "full"


def _factors(delta: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(U_r √S_r (out, r), √S_r V_rᵀ (r, in), all singular values) of a float32/64 matrix."""
    u, s, vh = torch.linalg.svd(delta, full_matrices=False)
    r = min(rank, s.numel())
    root = s[:r].sqrt()
    return u[:, :r] * root, root[:, None] * vh[:r], s


def lora_error_by_rank(spectra: dict[str, torch.Tensor], left_out_sq: float, ranks) -> dict:
    """Relative Frobenius error of the adapter's ΔW at each rank, over all tensors.

    ``spectra``: tensor -> singular values; ``left_out_sq``: Σ‖Δ‖² of tensors left out."""
    total = sum(float((s.double() ** 2).sum()) for s in spectra.values()) + left_out_sq
    out = {}
    for r in ranks:
        err = sum(float((s.double()[r:] ** 2).sum()) for s in spectra.values())
        worst = max(
            (
                math.sqrt(
                    float((s.double()[r:] ** 2).sum()) / max(float((s.double() ** 2).sum()), 1e-300)
                )
                for s in spectra.values()
            ),
            default=0.0,
        )
        out[str(r)] = {
            "rel_frob_error_linear": math.sqrt(err / max(total - left_out_sq, 1e-300)),
            "rel_frob_error_all": math.sqrt((err + left_out_sq) / max(total, 1e-300)),
            "max_tensor_rel_frob_error": worst,
        }
    return out


def extract_lora(
    post: str | os.PathLike | TensorSource,
    base: str | os.PathLike | TensorSource,
    out: str | os.PathLike,
    rank: int,
    new_base: str | os.PathLike | TensorSource | None = None,
    scale: float = 1.0,
    report_ranks: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256),
    allow_pickle: bool = False,
    progress: bool = False,
    dtype: str | torch.dtype = "float32",
) -> dict:
    """Write α(Θ_post − Θ_base) as a PEFT LoRA adapter directory (``adapter_config.json`` +
    ``adapter_model.safetensors`` + ``fmlab_lora.json``) at ``out``.

    ``peft.PeftModel.from_pretrained(new_base_model, out)`` then gives the rank-``rank``
    ParamΔ model. With ``new_base``, non-matrix tensors go in whole (``modules_to_save``);
    without, they are left out (listed). Returns the manifest, which holds the error of
    every rank in ``report_ranks`` (from the same SVDs).
    """
    if not isinstance(rank, int) or rank < 1:
        raise ValueError(f"rank must be a positive integer, got {rank!r}")
    out = Path(out)
    if out.exists():
        raise FileExistsError(f"{out} already exists; choose a new --out directory or remove it")
    ps, bs = _as_source(post, "post", allow_pickle), _as_source(base, "base", allow_pickle)
    ns = _as_source(new_base, "new base", allow_pickle) if new_base is not None else None
    p = plan(ps, bs, ns if ns is not None else bs)
    wdtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}.get(
        str(dtype).replace("torch.", "")
    )
    if wdtype is None:
        raise ValueError(f"adapter dtype must be float32, bfloat16 or float16, got {dtype!r}")
    tied = (ns if ns is not None else bs).tied_embeddings and not any(
        e.name.endswith(_HEAD) for e in p.entries
    )
    specs: list[TensorSpec] = []
    jobs = []  # (entry, kind, r)
    targets, save_modules, left_out = [], [], []
    rank_pattern = {}
    for e in p.entries:
        kind = _kind(e.name, e.out.shape)
        mod = e.name[: -len(".weight")] if e.name.endswith(".weight") else e.name
        if kind == "full":
            if ns is None or not e.name.endswith(".weight"):
                left_out.append(e.name)
                continue
            specs.append(TensorSpec(_PREFIX + e.name, wdtype, e.out.shape))
            save_modules.append(mod)
            jobs.append((e, kind, 0))
            continue
        o, i = e.out.shape
        r = min(rank, o, i)
        if r != rank:
            rank_pattern[mod] = r
        if kind == "embedding":
            specs += [
                TensorSpec(f"{_PREFIX}{mod}.lora_embedding_A", wdtype, (r, o)),
                TensorSpec(f"{_PREFIX}{mod}.lora_embedding_B", wdtype, (i, r)),
            ]
            if tied and e.name.endswith(_EMBED):
                head = e.name[: -len(_EMBED)] + _HEAD[: -len(".weight")]
                specs += [
                    TensorSpec(f"{_PREFIX}{head}.lora_A.weight", wdtype, (r, i)),
                    TensorSpec(f"{_PREFIX}{head}.lora_B.weight", wdtype, (o, r)),
                ]
                targets.append(head)
        else:
            specs += [
                TensorSpec(f"{_PREFIX}{mod}.lora_A.weight", wdtype, (r, i)),
                TensorSpec(f"{_PREFIX}{mod}.lora_B.weight", wdtype, (o, r)),
            ]
        targets.append(mod)
        jobs.append((e, kind, r))
    if not jobs:
        raise ParamDeltaError(["no matrix tensors to factorize: is this a transformer checkpoint?"])
    spectra: dict[str, torch.Tensor] = {}
    left_sq = 0.0
    finite = FiniteCheck()
    ws = _Workspace(torch.float32, finite)
    t0 = time.perf_counter()

    def tensors():
        for e, kind, r in jobs:
            if kind == "full":  # the ParamΔ value Θ'_base + α·Δ of a norm weight
                blocks = list(_compute(e, [Term(ps, bs, scale)], ns, ws, CHUNK_BYTES))
                yield e.name, _PREFIX + e.name, torch.cat(blocks).to(wdtype)
                continue
            delta = ps.get(e.post_key).float() - bs.get(e.base_key).float()
            finite.check(f"delta {ps.name} - {bs.name}", e.name, delta, None)
            delta.mul_(scale)
            b, a, s = _factors(delta, r)  # (out, r), (r, in)
            spectra[e.name] = s
            if kind == "embedding":  # ΔE ≈ Aᵀ Bᵀ in PEFT's embedding LoRA
                yield e.name, None, b.T.contiguous().to(wdtype)
                yield e.name, None, a.T.contiguous().to(wdtype)
                if tied and e.name.endswith(_EMBED):
                    yield e.name, None, a.contiguous().to(wdtype)
                    yield e.name, None, b.contiguous().to(wdtype)
            else:
                yield e.name, None, a.contiguous().to(wdtype)
                yield e.name, None, b.contiguous().to(wdtype)

    with atomic_dir(out) as tmp:
        with (
            SafetensorsStreamWriter(
                tmp / ADAPTER_WEIGHTS, specs, {"fmlab": "param_delta lora"}
            ) as w,
            progress_bar("LoRA SVD", len(jobs), progress) as advance,
        ):
            last = None
            for i, (name, _, t) in enumerate(tensors()):
                if name != last:
                    if last is not None:
                        advance(1)
                    advance(0, name)
                    last = name
                w.write(specs[i].name, t)
            advance(1)
        if finite.problems():
            raise ParamDeltaError(finite.problems())
        for name in left_out:
            d = ps.get(p_key(p, name)).double() - bs.get(b_key(p, name)).double()
            left_sq += float((scale * d).pow(2).sum())
        errors = lora_error_by_rank(spectra, left_sq, sorted({*report_ranks, rank}))
        config = {
            "peft_type": "LORA",
            "task_type": "CAUSAL_LM",
            "r": rank,
            "lora_alpha": rank,  # scaling alpha / r = 1: W + B A is the rank-r ParamΔ weight
            "rank_pattern": rank_pattern,
            "alpha_pattern": dict(rank_pattern),
            "target_modules": sorted(set(targets)),
            "modules_to_save": sorted(save_modules) or None,
            "lora_dropout": 0.0,
            "bias": "none",
            "fan_in_fan_out": False,
            "init_lora_weights": True,
            "inference_mode": True,
            "use_rslora": False,
            "use_dora": False,
            "base_model_name_or_path": str(ns.root if ns is not None and ns.root else ""),
        }
        atomic_write_json(tmp / "adapter_config.json", config)
        from fmlab import __version__

        manifest = {
            "formula": "new_base + B @ A (rank-r truncated SVD of scale * (post - base))",
            "rank": rank,
            "scale": scale,
            "adapter_dtype": str(wdtype),
            "tensors_factorized": len(spectra),
            "full_tensors_saved": save_modules,
            "left_out": left_out,
            "left_out_delta_share": left_sq
            / max(left_sq + sum(float((s.double() ** 2).sum()) for s in spectra.values()), 1e-300),
            "error_by_rank": errors,
            "error_at_rank": errors[str(rank)],
            "adapter_bytes": sum(s.nbytes for s in specs),
            "inputs": {s.name: str(s.root) if s.root else None for s in (ps, bs, ns) if s},
            "wall_s": time.perf_counter() - t0,
            "fmlab_version": __version__,
            "notes": p.notes,
        }
        atomic_write_json(tmp / LORA_MANIFEST, manifest)
    return manifest


def p_key(p, name: str) -> str:
    return next(e.post_key for e in p.entries if e.name == name)


def b_key(p, name: str) -> str:
    return next(e.base_key for e in p.entries if e.name == name)
