"""Export to ExecuTorch: ``torch.export`` -> XNNPACK-lowered ``.pte``, with parity checks.

ExecuTorch's generic Llama export takes one FFN width and head count for the whole model, so a
non-uniform arch is exported as our own module, in two programs:

- **prefill** (:func:`export`): :class:`FlashForCausalLM`'s forward over a fixed prompt length,
  no KV cache;
- **decode** (:func:`export_decode`): one token at a given position over a static KV cache of
  ``max_len`` positions, one transformers ``StaticLayer`` per attention layer (with that layer's
  own KV-head count; ``skip`` layers have no slot), its K/V held as module buffers that the
  step updates in place (torch.export records them as buffer mutations; ExecuTorch keeps them
  in the loaded method between calls). A ``window:W`` layer keeps the full-length cache and
  the window is applied by its mask (memory and compute are those of a full layer). The
  program also carries the llama runner's metadata methods (``get_max_seq_len`` ...).

transformers' own recipe (``TorchExportableModuleWithStaticCache``) does not fit: it sizes
every cache layer from the config's single ``num_key_value_heads`` (``get_head_shapes``; our
per-layer counts are not in ``per_layer_config``) and makes one slot per hidden layer while
skip layers have none, so the first layer with fewer KV heads fails in ``index_copy_``. Its
``StaticLayer`` is what is used here, with per-layer head counts.

Each ``.pte`` runs in the ExecuTorch runtime and its logits are compared with eager ones.
Per-token decode cost of a static cache grows with ``max_len`` (every step attends over the
whole buffer, masked), not with the filled context.

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
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fmlab.core.io import atomic_write_bytes

__all__ = [
    "ExportError",
    "executorch_available",
    "export",
    "export_decode",
    "measure_pte",
    "measure_pte_many",
    "run_pte",
    "run_pte_decode",
]

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


def _cache_heads(config) -> list[int]:
    """KV heads of each KV-cache slot: one slot per attention layer, in layer order (a
    :class:`FlashConfig`'s ``skip`` layers have none; a Llama config has one per layer)."""
    if getattr(config, "flash_attention", None) is not None:
        return [k for k, a in zip(config.flash_kv_heads, config.flash_attention, strict=True)
                if a != "skip"]  # fmt: skip
    types = set(getattr(config, "layer_types", None) or ["full_attention"])
    if types != {"full_attention"}:
        raise ExportError(f"decode export supports FlashForCausalLM and full-attention Llama "
                          f"models; this config has layer types {sorted(types)}")  # fmt: skip
    return [config.num_key_value_heads or config.num_attention_heads] * config.num_hidden_layers


class _Decode(nn.Module):
    """``(input_ids (1, 1), input_pos (1,)) -> logits (1, 1, V)``: one decode step at position
    ``input_pos`` over a static KV cache of ``max_len`` positions (the llama runner's kv-cache
    signature). Slot ``i``'s keys and values are the buffers ``key_cache_i`` / ``value_cache_i``
    of shape ``(1, kv_i, max_len, head_dim)``, written in place at ``input_pos``; positions
    after ``input_pos`` are masked, so stale entries from an earlier sequence are never read."""

    def __init__(self, model: nn.Module, max_len: int):
        from transformers.cache_utils import Cache, StaticLayer

        from fmlab.flash.arch import BackboneShape

        super().__init__()
        self.model, self.max_len = model, max_len
        heads = _cache_heads(model.config)
        self.cache = Cache(layers=[StaticLayer(max_len) for _ in heads]) if heads else None
        if self.cache is not None:
            hd = BackboneShape.of(model.config).head_dim
            self.cache.early_initialization(1, heads, hd, model.dtype, model.device)
            for i, layer in enumerate(self.cache.layers):
                self.register_buffer(f"key_cache_{i}", layer.keys, persistent=False)
                self.register_buffer(f"value_cache_{i}", layer.values, persistent=False)

    def forward(self, input_ids: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor:
        if self.cache is not None:
            for i, layer in enumerate(self.cache.layers):
                # read the buffers through the module: non-strict torch.export swaps module
                # buffers for traced ones, and a tensor reached only through the Cache object
                # would be lifted as a constant (its in-place update lost)
                layer.keys = getattr(self, f"key_cache_{i}")
                layer.values = getattr(self, f"value_cache_{i}")
                layer.cumulative_length = input_pos[0].clone()  # where this step writes
        out = self.model(input_ids=input_ids, position_ids=input_pos[None], cache=self.cache,
                         use_cache=True)  # fmt: skip
        return out.logits


def _lower(module: nn.Module, args: tuple, config, constant_methods: dict | None = None) -> bytes:
    """``torch.export`` ``module`` on ``args`` (sdpa attention), lower to XNNPACK; the bytes."""
    _use_executorch()
    import warnings

    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    module = module.eval()
    old = config._attn_implementation
    config._attn_implementation = "sdpa"
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # pytree deprecations, once per node
            ep = torch.export.export(module, args, strict=False)
            prog = to_edge_transform_and_lower(ep, partitioner=[XnnpackPartitioner()],
                                               constant_methods=constant_methods)  # fmt: skip
            prog = prog.to_executorch()
    except Exception as e:  # a tracing or lowering failure names the op; keep its message
        raise ExportError(f"export to ExecuTorch failed: {type(e).__name__}: {e}") from e
    finally:
        config._attn_implementation = old
    return prog.buffer


def _seeded_ids(vocab: int, n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (1, n), generator=g)


def _program(path: str | Path):
    _use_executorch()
    from executorch.runtime import Runtime

    return Runtime.get().load_program(str(path))


def run_pte(path: str | Path, ids: torch.Tensor) -> torch.Tensor:
    """Run a prefill ``.pte`` written by :func:`export` on ``ids`` in the ExecuTorch runtime."""
    return _program(path).load_method("forward").execute([ids])[0]


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
    ids = _seeded_ids(model.config.vocab_size, seq_len, seed)
    model = model.eval()
    buf = _lower(_Prefill(model, last_only), (ids,), model.config)
    path = Path(path)
    atomic_write_bytes(path, buf)
    rep: dict[str, Any] = {"path": str(path), "bytes": len(buf), "seq_len": seq_len,
                           "last_only": last_only, "atol": atol}  # fmt: skip
    if check:
        with torch.no_grad():
            ref = _Prefill(model, last_only)(ids).float()
        got = run_pte(path, ids).float()
        diff = float((got - ref).abs().max())
        rep.update(max_abs_diff=diff, parity=diff <= atol)
        if diff > atol:
            raise ExportError(f"{path}: .pte logits differ from eager by {diff:.2e} > {atol:g}")
    return rep


def _decode_bytes(model: nn.Module, max_len: int) -> bytes:
    if max_len < 1:
        raise ValueError(f"max_len {max_len}: the static KV cache needs at least 1 position")
    c = model.config
    meta = {"get_max_seq_len": max_len, "get_max_context_len": max_len,
            "get_vocab_size": c.vocab_size, "get_n_layers": c.num_hidden_layers,
            "use_kv_cache": True, "use_sdpa_with_kv_cache": False,
            "enable_dynamic_shape": False}  # fmt: skip
    ids, pos = torch.zeros(1, 1, dtype=torch.long), torch.zeros(1, dtype=torch.long)
    return _lower(_Decode(model.eval(), max_len), (ids, pos), c, meta)


def export_decode(
    model: nn.Module,
    path: str | Path,
    max_len: int = 128,
    *,
    check: bool = True,
    steps: int = 8,
    atol: float = 1e-3,
    seed: int = 0,
) -> dict[str, Any]:
    """Write ``model``'s decode step with a static KV cache of ``max_len`` positions to ``path``
    (an XNNPACK ``.pte``: ``forward(input_ids (1, 1), input_pos (1,)) -> logits (1, 1, V)``).

    With ``check``: ``steps`` seeded random tokens are fed one by one through the ``.pte`` at
    positions ``0 .. steps - 1`` (the prompt is decoded token by token: no separate prefill),
    and ``max |logits_pte - logits_eager| <= atol`` is required against the eager model's
    no-cache forward over the same tokens (:class:`ExportError` otherwise).

    Returns ``{"path", "bytes", "max_len", "steps", "max_abs_diff", "atol", "parity"}``."""
    if check and not 1 <= steps <= max_len:
        raise ValueError(f"steps {steps}: the parity check needs 1 <= steps <= max_len {max_len}")
    buf = _decode_bytes(model, max_len)
    path = Path(path)
    atomic_write_bytes(path, buf)
    rep: dict[str, Any] = {"path": str(path), "bytes": len(buf), "max_len": max_len,
                           "atol": atol}  # fmt: skip
    if check:
        ids = _seeded_ids(model.config.vocab_size, steps, seed)
        with torch.no_grad():
            ref = model.eval()(input_ids=ids, use_cache=False).logits[0].float()  # (T, V)
        got = run_pte_decode(path, ids).float()
        diff = float((got - ref).abs().max())
        rep.update(steps=steps, max_abs_diff=diff, parity=diff <= atol)
        if diff > atol:
            raise ExportError(f"{path}: decode .pte logits over {steps} steps differ from eager "
                              f"by {diff:.2e} > {atol:g}")  # fmt: skip
    return rep


def _decode_method(path: str | Path):
    """The loaded ``forward`` of a decode ``.pte`` and its static cache length."""
    prog = _program(path)
    if "get_max_seq_len" not in prog.method_names:
        raise ValueError(f"{path} is not a decode program (write one with export_decode)")
    max_len = int(prog.load_method("get_max_seq_len").execute([])[0])
    return prog.load_method("forward"), max_len


def _check_fits(start: int, n: int, max_len: int, what: str) -> None:
    if start < 0 or start + n > max_len:
        raise ValueError(f"{what} needs cache positions {start} .. {start + n - 1}, but the "
                         f"static KV cache holds {max_len} (0 .. {max_len - 1}); export the "
                         f"decode step with a larger max_len")  # fmt: skip


def run_pte_decode(path: str | Path, ids: torch.Tensor, start: int = 0) -> torch.Tensor:
    """Feed ``ids`` (1, T) one token at a time through a decode ``.pte`` (:func:`export_decode`)
    at positions ``start .. start + T - 1``; the logits ``(T, V)``. Positions below ``start``
    must have been written by earlier calls on the same loaded method, so a fresh run starts
    at 0. More positions than the static cache holds is a ``ValueError``."""
    method, max_len = _decode_method(path)
    _check_fits(start, ids.shape[1], max_len, f"decoding {ids.shape[1]} tokens from {start}")
    out = [method.execute([ids[:, t : t + 1], torch.tensor([start + t])])[0][0]
           for t in range(ids.shape[1])]  # fmt: skip
    return torch.cat(out)


def _pte_decode_fn(method, vocab: int, context: int, tokens: int):
    """Fill the cache to ``context`` positions (decode steps, untimed), then a callable that
    decodes ``tokens`` tokens at positions ``context ..``: every call rewrites the same slots,
    so each starts from the same state (as the eager measurement's cache crop)."""
    ids = _seeded_ids(vocab, context + tokens, seed=1)  # the eager measurement's tokens
    steps = [[ids[:, t : t + 1], torch.tensor([t])] for t in range(context + tokens)]
    for x in steps[:context]:
        method.execute(x)
    timed = steps[context:]

    def run():
        for x in timed:
            method.execute(x)

    return run


def measure_pte_many(
    models: Mapping[str, nn.Module],
    prefill_lengths: Sequence[int] = (),
    decode_contexts: Sequence[int] = (),
    *,
    threads: int = 1,
    repeats: int = 5,
    warmup: int = 1,
    decode_tokens: int = 4,
    max_len: int | None = None,
) -> dict[str, Any]:
    """ExecuTorch (XNNPACK) latency of every model on every target, the models interleaved
    per target (:func:`timeit_interleaved`, ``threads`` XNNPACK threads, median of repeats).

    ``prefill@L``: one prefill program per length, last-token logits (as eager). ``decode@C``:
    seconds per token of :func:`export_decode`'s step after the cache is filled to ``C``
    positions, with a static cache of ``max_len`` positions (default ``C + decode_tokens``
    per target; a fixed ``max_len`` must hold every context plus the timed tokens). Returns
    the shape of :func:`~fmlab.flash.latency.measure_many`: ``{"latency": {model: {target:
    s}}, "timing": {target: record}, "threads", "repeats", "warmup", "decode_tokens",
    "max_len"}``."""
    from fmlab.flash.latency import targets, time_targets

    if threads < 1 or repeats < 1 or decode_tokens < 1:
        raise ValueError("measure needs threads >= 1, repeats >= 1 and decode_tokens >= 1")
    if max_len is not None:
        for c in decode_contexts:
            _check_fits(c, decode_tokens, max_len, f"decode@{c} with {decode_tokens} timed tokens")
    _use_executorch()
    from executorch.extension.pybindings.portable_lib import _unsafe_reset_threadpool

    _unsafe_reset_threadpool(threads)
    with tempfile.TemporaryDirectory() as d:

        def fns_for(kind: str, n: int) -> dict[str, Any]:
            fns = {}
            for k, (name, m) in enumerate(models.items()):
                p = Path(d) / f"{k}-{kind}{n}.pte"
                if kind == "prefill":
                    export(m, p, n, last_only=True, check=False)
                    method = _program(p).load_method("forward")
                    ids = _seeded_ids(m.config.vocab_size, n, seed=0)
                    fns[name] = lambda f=method, x=ids: f.execute([x])
                else:
                    atomic_write_bytes(p, _decode_bytes(m, max_len or n + decode_tokens))
                    method, _ = _decode_method(p)
                    fns[name] = _pte_decode_fn(method, m.config.vocab_size, n, decode_tokens)
            return fns

        lat, timing = time_targets(
            list(models), targets(prefill_lengths, decode_contexts), fns_for,
            threads=threads, repeats=repeats, warmup=warmup, decode_tokens=decode_tokens,
        )  # fmt: skip
    return {"latency": lat, "timing": timing, "threads": threads, "repeats": repeats,
            "warmup": warmup, "decode_tokens": decode_tokens, "max_len": max_len}  # fmt: skip


def measure_pte(
    model: nn.Module,
    prefill_lengths: Sequence[int] = (),
    decode_contexts: Sequence[int] = (),
    **kw,
) -> dict[str, float]:
    """``{target: median seconds}`` of one model in ExecuTorch (decode: seconds per token);
    the arguments of :func:`measure_pte_many`."""
    return measure_pte_many({"model": model}, prefill_lengths, decode_contexts, **kw)["latency"][
        "model"
    ]
