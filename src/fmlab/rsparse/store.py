"""Save a sparsified model to a directory that loads back as the same sparse model.

The directory is an ordinary HF checkpoint (the dense weights are unchanged, so any HF tool
still reads it) plus ``rsparse.json`` (per-module sparsity, α, scoring, protocol) and
``rsparse.safetensors`` (each module's calibration scores and low-rank factors, so loading
needs neither calibration text nor an SVD). No pickle anywhere.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from fmlab.core.io import CheckpointError, atomic_dir
from fmlab.rsparse.sparse import RSparseLinear, rsparse_modules, sparsify

__all__ = ["load_sparse", "save_sparse"]

FORMAT = "fmlab-rsparse-model/1"
META, TENSORS = "rsparse.json", "rsparse.safetensors"


def save_sparse(
    model, out: str | os.PathLike, tokenizer=None, meta: dict | None = None, overwrite=False
) -> Path:
    mods = rsparse_modules(model)
    if not mods:
        raise ValueError("the model has no RSparseLinear layers; call sparsify() first")
    uncalibrated = [n for n, m in mods.items() if m.calib is None and 0 < m.k < m.in_features]
    if uncalibrated:
        raise ValueError(f"{uncalibrated[0]} is not calibrated; call calibrate() before saving")
    tensors: dict[str, torch.Tensor] = {}
    doc = {"format": FORMAT, "meta": meta or {}, "modules": {}}
    for name, m in mods.items():
        doc["modules"][name] = {
            "sparsity": m.sparsity,
            "alpha": m.alpha,
            "weighted": m.weighted,
            "protocol": m.protocol,
        }
        if m.calib is not None:
            tensors[f"{name}.calib"] = m.calib.contiguous()
        if m.rank > 0:
            tensors[f"{name}.lr_us"] = m.lr_us.contiguous()
            tensors[f"{name}.lr_vt"] = m.lr_vt.contiguous()
    with atomic_dir(out, overwrite=overwrite) as tmp:
        model.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        save_file(tensors, str(tmp / TENSORS))
        (tmp / META).write_text(json.dumps(doc, indent=1), encoding="utf-8")
    return Path(out)


def load_sparse(path: str | os.PathLike, dtype: str | None = "float32"):
    """``(model, tokenizer, meta)`` from a directory written by ``save_sparse``."""
    from fmlab.core.models import load_pretrained

    path = Path(path)
    if not (path / META).is_file() or not (path / TENSORS).is_file():
        raise CheckpointError(
            f"{path}: not a sparsified model ({META} / {TENSORS} missing); "
            "write one with `fmlab rsparse search --save DIR` or fmlab.rsparse.save_sparse"
        )
    doc = json.loads((path / META).read_text(encoding="utf-8"))
    if doc.get("format") != FORMAT:
        raise CheckpointError(f"{path / META}: unknown format {doc.get('format')!r}")
    model, tok = load_pretrained(path, dtype=dtype)
    tensors = load_file(str(path / TENSORS))
    specs = doc["modules"]
    weighted = {bool(s["weighted"]) for s in specs.values()}
    if len(weighted) != 1:
        raise CheckpointError(f"{path / META}: mixed scoring rules are not supported")
    # sparsity 0 first: no SVD is computed, the stored factors are put in place below
    mods = sparsify(model, 0.0, 1.0, weighted=weighted.pop())
    missing = set(specs) ^ set(mods)
    if missing:
        raise CheckpointError(
            f"{path / META}: modules do not match the model: {sorted(missing)[:3]}"
        )
    for name, m in mods.items():
        _restore(m, specs[name], tensors, name)
    return model, tok, doc["meta"]


def _restore(m: RSparseLinear, spec: dict, tensors: dict, name: str) -> None:
    dt = m.weight.dtype
    if f"{name}.lr_us" in tensors:
        m.lr_us = tensors[f"{name}.lr_us"].to(dt)
        m.lr_vt = tensors[f"{name}.lr_vt"].to(dt)
        m.rank = m.lr_us.shape[1]
    if f"{name}.calib" in tensors:
        m.calib = tensors[f"{name}.calib"].float()
    m.protocol = spec["protocol"]
    m.configure(float(spec["sparsity"]), float(spec["alpha"]))
    if m.rank and m.lr_us.shape[1] != m.rank:
        raise CheckpointError(f"{name}: stored rank {m.lr_us.shape[1]} != budget rank {m.rank}")
