"""Export to ExecuTorch: ``torch.export`` -> XNNPACK-lowered ``.pte``, with a parity check.

ExecuTorch's generic Llama export takes one FFN width and head count for the whole model, so a
non-uniform arch is exported as our own module: :class:`FlashForCausalLM`'s prefill forward
(no KV cache, a fixed prompt length) traced by ``torch.export`` and lowered to XNNPACK. The
``.pte`` then runs in the ExecuTorch runtime and its logits are compared with eager ones.
A decode step with a static KV cache is not exported (yet): ExecuTorch decode is not measured.

Where ExecuTorch lives: ``executorch`` is installed in the environment; its XNNPACK backend
imports ``torchao``, which transformers then also imports at start-up (printing load warnings
in every fmlab command), so ``make setup`` installs torchao beside the venv in
``$VIRTUAL_ENV/flash-torchao`` (or ``$FMLAB_TORCHAO_PATH``) and only this module puts it on
``sys.path``.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fmlab.core.io import atomic_write_bytes

__all__ = ["ExportError", "executorch_available", "export", "measure_pte", "run_pte"]

INSTALL = (
    ".venv/bin/python -m pip install --no-deps executorch==1.5.1 flatbuffers ruamel.yaml "
    "tabulate && .venv/bin/python -m pip install --no-deps --target .venv/flash-torchao "
    "torchao==0.18.0   (or: make setup)"
)


class ExportError(RuntimeError):
    """ExecuTorch is missing, the export failed, or the ``.pte`` logits differ from eager."""


def _torchao_dirs() -> list[Path]:
    env = os.environ.get("FMLAB_TORCHAO_PATH")
    return [Path(env)] if env else [Path(sys.prefix) / "flash-torchao"]


def executorch_available() -> str | None:
    """None when ExecuTorch with XNNPACK can be used, else why not (with the install command).
    Changes nothing (:func:`_use_executorch` puts torchao on ``sys.path`` when exporting)."""
    import importlib.util

    if importlib.util.find_spec("executorch") is None:
        return f"executorch is not installed; install it with: {INSTALL}"
    if importlib.util.find_spec("torchao") is None and not any(
        (d / "torchao").is_dir() for d in _torchao_dirs()
    ):
        return f"torchao (needed by ExecuTorch's XNNPACK backend) is missing; {INSTALL}"
    return None


def _use_executorch() -> None:
    """Raise :class:`ExportError` if ExecuTorch is unusable; else make torchao importable."""
    import importlib.util

    why = executorch_available()
    if why:
        raise ExportError(why)
    if importlib.util.find_spec("torchao") is None:
        d = next(d for d in _torchao_dirs() if (d / "torchao").is_dir())
        sys.path.append(str(d))


class _Prefill(nn.Module):
    """``input_ids (1, T) -> logits``: all positions, or the last one (``last=True``)."""

    def __init__(self, model: nn.Module, last: bool):
        super().__init__()
        self.model, self.last = model, last

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        out = self.model(input_ids=input_ids, use_cache=False, logits_to_keep=1 if self.last else 0)
        return out.logits


def _lower(model: nn.Module, ids: torch.Tensor, last: bool) -> bytes:
    _use_executorch()
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    model = model.eval()
    old = model.config._attn_implementation
    model.config._attn_implementation = "sdpa"
    import warnings

    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # pytree deprecations, once per node
            ep = torch.export.export(_Prefill(model, last), (ids,), strict=False)
            prog = to_edge_transform_and_lower(ep, partitioner=[XnnpackPartitioner()])
            prog = prog.to_executorch()
    except Exception as e:  # a tracing or lowering failure names the op; keep its message
        raise ExportError(f"export to ExecuTorch failed: {type(e).__name__}: {e}") from e
    finally:
        model.config._attn_implementation = old
    return prog.buffer


def run_pte(path: str | Path, ids: torch.Tensor) -> torch.Tensor:
    """Run a ``.pte`` written by :func:`export` on ``ids`` in the ExecuTorch runtime."""
    _use_executorch()
    from executorch.runtime import Runtime

    method = Runtime.get().load_program(str(path)).load_method("forward")
    return method.execute([ids])[0]


def export(
    model: nn.Module,
    path: str | Path,
    seq_len: int = 64,
    *,
    last_only: bool = False,
    check: bool = True,
    atol: float = 1e-3,
    seed: int = 0,
) -> dict[str, Any]:
    """Write ``model``'s prefill forward for ``(1, seq_len)`` ids to ``path`` (an XNNPACK
    ``.pte``); with ``check``, run it on seeded random ids and require ``max |logits_pte -
    logits_eager| <= atol`` (:class:`ExportError` otherwise).

    Returns ``{"path", "bytes", "seq_len", "max_abs_diff", "atol", "parity"}``."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, model.config.vocab_size, (1, seq_len), generator=g)
    buf = _lower(model, ids, last_only)
    path = Path(path)
    atomic_write_bytes(path, buf)
    rep: dict[str, Any] = {"path": str(path), "bytes": len(buf), "seq_len": seq_len,
                           "last_only": last_only, "atol": atol}  # fmt: skip
    if check:
        with torch.no_grad():
            ref = _Prefill(model.eval(), last_only)(ids).float()
        got = run_pte(path, ids).float()
        diff = float((got - ref).abs().max())
        rep.update(max_abs_diff=diff, parity=diff <= atol)
        if diff > atol:
            raise ExportError(f"{path}: .pte logits differ from eager by {diff:.2e} > {atol:g}")
    return rep


def measure_pte(
    model: nn.Module,
    prefill_lengths: Sequence[int],
    *,
    threads: int = 1,
    repeats: int = 5,
    warmup: int = 1,
    **_ignored,
) -> dict[str, float]:
    """Median ExecuTorch (XNNPACK) prefill seconds at each length (last-token logits, as the
    eager measurement), one exported program per length, ``threads`` XNNPACK threads."""
    from fmlab.core.experiment import timeit_interleaved

    _use_executorch()
    from executorch.extension.pybindings.portable_lib import _unsafe_reset_threadpool
    from executorch.runtime import Runtime

    _unsafe_reset_threadpool(threads)
    out, fns = {}, {}
    with tempfile.TemporaryDirectory() as d:
        for n in prefill_lengths:
            p = Path(d) / f"prefill{n}.pte"
            export(model, p, n, last_only=True, check=False)
            method = Runtime.get().load_program(str(p)).load_method("forward")
            ids = torch.randint(0, model.config.vocab_size, (1, n))
            fns[f"prefill@{n}"] = lambda m=method, x=ids: m.execute([x])
        t = timeit_interleaved(fns, repeats=repeats, threads=threads, warmup=warmup)
        for name in fns:
            out[name] = t.median(name)
    return out
