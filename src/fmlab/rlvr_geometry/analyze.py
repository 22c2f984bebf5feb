"""Stream a base and N checkpoints tensor by tensor and measure every update's geometry.

plan → compute → write, as in ``param_delta``: :func:`plan` opens every checkpoint and checks
architectures, tensor names, shapes, ``k`` and ``alpha`` before any work, reporting every
problem at once (:class:`GeometryError`); :func:`analyze` then streams; :func:`write_report`
writes plots and the JSON atomically only after the whole analysis succeeded.

Memory. A 2-D tensor W (m × n) is handled in its tall orientation A (W, or Wᵀ when m < n;
p × q with q = min(m, n)). Tall tensors larger than ``CACHE_BYTES`` (in practice the
vocabulary embedding and LM head) are never loaded whole: each pass reads blocks of about
``block_elems`` entries of rows through :class:`~fmlab.core.checkpoint.TensorSource`. The
spectral metrics come from a streamed QR (TSQR) of ``[A₀, ΔA]``, whose R is 2q × 2q float64
per checkpoint; M_princ / M_low thresholds come from an exact streamed radix selection (four
passes over 16-bit digits of the float64 bit patterns). Wide tensors (m < n: k/v and down
projections in Llama models, never the largest tensor) are loaded whole, once per tensor.
Peak memory is therefore a few blocks plus O(q²), whatever the model size.
"""

from __future__ import annotations

import math
import os
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from fmlab.core.checkpoint import TensorSource
from fmlab.core.io import atomic_write_json
from fmlab.rlvr_geometry.metrics import (
    INT64_MAX,
    bf16_changed,
    exact_changed,
    jaccard_random,
    select_count,
    spectral_metrics,
)

__all__ = [
    "ALPHA_SWEEP",
    "DEFAULT_KS",
    "LAYER_TYPES",
    "GeometryError",
    "GeometryPlan",
    "analyze",
    "check_outputs",
    "layer_type",
    "parse_ks",
    "plan",
    "plot_report",
    "summarize",
    "write_report",
]

DEFAULT_KS = (1, 4, 16, 64)
DEFAULT_ALPHA = 0.5
ALPHA_SWEEP = (0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9)  # recorded for the overlaps-vs-α plot
BLOCK_ELEMS = 1 << 19  # entries of A per streamed block (4 MiB in float64)
CACHE_BYTES = 32 << 20  # tensors up to this size are read once per tensor and kept meanwhile
# Config fields that must agree for the comparison to mean anything.
ARCH_KEYS = (
    "model_type",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "intermediate_size",
    "head_dim",
    "vocab_size",
)
LAYER_TYPES = ("q", "k", "v", "o", "gate", "up", "down", "embed", "lm_head", "other")
_TYPE_PATTERNS = tuple(
    (t, re.compile(rf"(^|\.)({pat})(\.weight)?$"))
    for t, pat in (
        ("q", r"q_proj|query|wq|to_q"),
        ("k", r"k_proj|key|wk|to_k"),
        ("v", r"v_proj|value|wv|to_v"),
        ("o", r"o_proj|out_proj|wo|to_out"),
        ("gate", r"gate_proj|w1"),
        ("up", r"up_proj|w3"),
        ("down", r"down_proj|w2"),
        ("embed", r"embed_tokens|wte|embed_in|word_embeddings|tok_embeddings"),
        ("lm_head", r"lm_head|embed_out"),
    )
)
_LAYER = re.compile(r"(?:^|\.)(?:layers|h|blocks|layer)\.(\d+)\.")
_HEAD, _EMBED = "lm_head.weight", "model.embed_tokens.weight"
_SHIFTS = (48, 32, 16, 0)  # radix digits of the (non-negative) int64 keys


class GeometryError(ValueError):
    """The checkpoints or settings cannot be analysed; the message lists every problem."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"cannot analyse these checkpoints ({len(problems)} problem(s)):\n{lines}")


def layer_type(name: str) -> str:
    """q/k/v/o/gate/up/down/embed/lm_head/other from a Hugging Face parameter name."""
    for t, pat in _TYPE_PATTERNS:
        if pat.search(name):
            return t
    return "other"


def layer_index(name: str) -> int | None:
    """The transformer block index in ``...layers.12....`` names, else None."""
    m = _LAYER.search(name)
    return int(m.group(1)) if m else None


def parse_ks(text: str | Sequence[int]) -> tuple[int, ...]:
    """``"1,4,16,64"`` (or a sequence) → sorted unique positive ints; errors say the fix."""
    items = [x.strip() for x in text.split(",")] if isinstance(text, str) else list(text)
    items = [x for x in items if x != ""]
    if not items:
        raise GeometryError(["--k is empty; pass subspace sizes such as --k 1,4,16,64"])
    try:
        ks = sorted({int(x) for x in items})
    except (TypeError, ValueError):
        raise GeometryError([f"--k {text!r}: not a comma-separated list of integers"]) from None
    if ks[0] < 1:
        raise GeometryError([f"--k {text!r}: subspace sizes must be ≥ 1"])
    return tuple(ks)


@dataclass(frozen=True)
class Item:
    """One analysed 2-D weight: its key in the base and in each checkpoint."""

    name: str
    base_key: str
    keys: tuple[str, ...]
    shape: tuple[int, int]
    layer_type: str
    layer: int | None


@dataclass
class GeometryPlan:
    items: list[Item]
    skipped: list[dict]
    notes: list[str]
    ks: tuple[int, ...]
    k0: int
    alpha: float
    alphas: tuple[float, ...]
    labels: list[str] = field(default_factory=list)


def _as_source(x, role: str, allow_pickle: bool) -> tuple[TensorSource, str]:
    if isinstance(x, TensorSource):
        return x, x.name
    if isinstance(x, Mapping):
        return TensorSource.from_state_dict(x, name=role), role
    src = TensorSource.open(x, allow_pickle=allow_pickle)
    return src, str(x)


def _resolve(src: TensorSource, key: str) -> str | None:
    """The key holding ``key`` in ``src``; a tied checkpoint's head is its embedding."""
    if key in src:
        return key
    if key.endswith(_HEAD) and src.tied_embeddings:
        emb = key[: -len(_HEAD)] + _EMBED
        return emb if emb in src else None
    return None


def _check_settings(ks, alpha, alphas, problems: list[str]) -> int | None:
    k0 = min((k for k in ks if k > 1), default=None)
    if not ks:
        problems.append("--k is empty; pass subspace sizes such as --k 1,4,16,64")
    elif k0 is None:
        problems.append(
            f"--k {','.join(map(str, ks))} has no value above 1; k₀ (the rank of the "
            "principal-weight reconstruction and of the ρ_princ projectors) is the smallest k "
            "above 1, so add one, e.g. --k 1,4"
        )
    for name, a in [("--alpha", alpha), *(("alpha sweep value", a) for a in alphas)]:
        if not (isinstance(a, (int, float)) and 0 < a < 1):
            problems.append(f"{name} must lie strictly between 0 and 1, got {a!r}")
    return k0


def _check_configs(srcs: list[tuple[TensorSource, str]], problems: list[str]) -> None:
    cfgs = {label: s.config for s, label in srcs if s.config is not None}
    for k in ARCH_KEYS:
        vals = {label: c.get(k) for label, c in cfgs.items()}
        if len({repr(v) for v in vals.values()}) > 1:
            shown = ", ".join(f"{n}: {v!r}" for n, v in vals.items())
            problems.append(
                f"config field {k!r} differs ({shown}): the checkpoints are different "
                "architectures; compare checkpoints fine-tuned from the same base"
            )


def plan(
    base: TensorSource,
    ckpts: Sequence[TensorSource],
    ks: Sequence[int] = DEFAULT_KS,
    alpha: float = DEFAULT_ALPHA,
    alphas: Sequence[float] = ALPHA_SWEEP,
    labels: Sequence[str] | None = None,
) -> GeometryPlan:
    """Match every 2-D weight of ``base`` to each checkpoint and validate the settings.

    Raises :class:`GeometryError` listing every problem: settings (empty ``ks``, no k above
    1, α outside (0, 1), a k above min(m, n) of some tensor), architecture fields of the
    configs, tensors missing from a checkpoint or only in one, shape mismatches.
    Non-2-D and non-float tensors are skipped and listed; a head tied to the embedding is
    analysed once, as the embedding.
    """
    base_label, labels = (labels[0], list(labels[1:])) if labels else ("base", [])
    labels = labels or [c.name for c in ckpts]
    problems: list[str] = []
    notes: list[str] = []
    skipped: list[dict] = []
    ks = tuple(sorted(set(ks)))
    k0 = _check_settings(ks, alpha, alphas, problems)
    if not ckpts:
        problems.append("no checkpoint to compare with the base; pass one or more CKPT paths")
    _check_configs([(base, base_label), *zip(ckpts, labels, strict=True)], problems)
    names = sorted(base.keys())
    base_tied = base.tied_embeddings and _EMBED in base
    if base_tied and _HEAD in base:
        names.remove(_HEAD)
        skipped.append(
            {
                "name": _HEAD,
                "shape": list(base.spec(_HEAD).shape),
                "reason": f"tied to {_EMBED} (tie_word_embeddings); analysed once, as the embedding",
            }
        )
    elif _HEAD not in base and any(_HEAD in c and not c.tied_embeddings for c in ckpts):
        names.append(_HEAD)  # an untied head fine-tuned from a tied base: compare with W_embed
        notes.append(
            f"the base ties {_HEAD} to {_EMBED}; untied checkpoint heads are compared with it"
        )
    items: list[Item] = []
    used: list[set[str]] = [set() for _ in ckpts]
    for name in names:
        bk = _resolve(base, name)
        spec = base.spec(bk)
        if len(spec.shape) != 2 or not spec.dtype.is_floating_point or 0 in spec.shape:
            why = "not floating point" if not spec.dtype.is_floating_point else "not a 2-D matrix"
            skipped.append({"name": name, "shape": list(spec.shape), "reason": why})
            for u in used:
                u.add(name)
            continue
        keys = []
        for i, (c, lab) in enumerate(zip(ckpts, labels, strict=True)):
            ck = _resolve(c, name)
            if ck is None:
                problems.append(
                    f"tensor {name!r} is in the base ({base_label}) but missing from {lab}; "
                    "the checkpoint is incomplete or of another architecture"
                )
                continue
            used[i].add(ck)
            if c.spec(ck).shape != spec.shape:
                problems.append(
                    f"shape mismatch at {name!r}: base {list(spec.shape)}, {lab} "
                    f"{list(c.spec(ck).shape)}; compare checkpoints of one architecture"
                )
            keys.append(ck)
        if len(keys) == len(ckpts):
            shape = (int(spec.shape[0]), int(spec.shape[1]))
            items.append(Item(name, bk, tuple(keys), shape, layer_type(name), layer_index(name)))
    for i, (c, lab) in enumerate(zip(ckpts, labels, strict=True)):
        for k in sorted(set(c.keys()) - used[i] - set(base.keys())):
            if k.endswith(_HEAD) and c.tied_embeddings:
                notes.append(f"{lab}: {k} is tied to the embedding and is not analysed twice")
                continue
            problems.append(
                f"tensor {k!r} is in {lab} but not in the base ({base_label}): different "
                "architectures; compare checkpoints fine-tuned from the same base"
            )
    if ks and items:
        small = min(items, key=lambda it: min(it.shape))
        if max(ks) > min(small.shape):
            problems.append(
                f"--k {max(ks)} exceeds min(m, n) = {min(small.shape)} of {small.name!r} "
                f"{list(small.shape)}; use subspace sizes ≤ {min(small.shape)}"
            )
    if not items and not problems:
        problems.append(f"the base ({base_label}) has no 2-D floating-point weights to analyse")
    if problems:
        raise GeometryError(problems)
    return GeometryPlan(items, skipped, notes, ks, k0, float(alpha), tuple(alphas), labels)


class _Reader:
    """Row blocks of A (W, or Wᵀ for wide W) of one tensor in one checkpoint, stored dtype."""

    def __init__(self, src: TensorSource, key: str, item: Item, rows: int):
        self.src, self.key, self.rows = src, key, rows
        self.transposed = item.shape[0] < item.shape[1]
        self.p = max(item.shape)
        nbytes = src.spec(key).nbytes
        self._full = src.get(key) if self.transposed or nbytes <= CACHE_BYTES else None

    def blocks(self) -> Iterator[torch.Tensor]:
        for start in range(0, self.p, self.rows):
            stop = min(self.p, start + self.rows)
            if self._full is None:
                yield self.src.get(self.key, rows=(start, stop))
            elif self.transposed:
                yield self._full[:, start:stop].T
            else:
                yield self._full[start:stop]


class _RadixSelect:
    """Exact K-th smallest of non-negative int64 keys seen in blocks, for several K at once:
    one pass per 16-bit digit (4 passes); each target keeps the prefix of its answer."""

    def __init__(self, counts: Sequence[int]):
        self.k = list(counts)
        self.prefix = [0] * len(self.k)
        self.below = [0] * len(self.k)
        self.result: list[tuple[int | None, int, int] | None] = [
            (None, 0, 0) if k == 0 else None for k in self.k
        ]
        self.level = 0
        self._hist: dict[int, torch.Tensor] = {}

    @property
    def done(self) -> bool:
        return self.level == len(_SHIFTS)

    def feed(self, keys) -> None:
        """Count one block of keys (a numpy int64 array or tensor) at the current digit."""
        shift = _SHIFTS[self.level]
        keys = np.asarray(keys).reshape(-1)
        prefixes = sorted({p for p, r in zip(self.prefix, self.result, strict=True) if r is None})
        if not prefixes:
            return
        digit = (keys >> shift) & 0xFFFF
        if self.level == 0:
            slot = np.zeros(1, dtype=np.int64)
        else:  # one histogram per distinct prefix, all in one bincount
            hi = keys >> (shift + 16)
            table = np.asarray(prefixes, dtype=np.int64)
            slot = np.minimum(np.searchsorted(table, hi), len(prefixes) - 1)
            hit = table[slot] == hi
            slot, digit = slot[hit], digit[hit]
        h = np.bincount(slot * (1 << 16) + digit, minlength=len(prefixes) << 16)
        for i, prefix in enumerate(prefixes):
            hp = h[i << 16 : (i + 1) << 16]
            self._hist[prefix] = hp if prefix not in self._hist else self._hist[prefix] + hp

    def advance(self) -> None:
        """Fix the current digit of every target's answer; after the last, ``result[j]`` is
        ``(K-th smallest key, #keys below it, #keys equal to it)``."""
        for j, k in enumerate(self.k):
            if self.result[j] is not None:
                continue
            h = self._hist.get(self.prefix[j], np.zeros(1 << 16, dtype=np.int64))
            cum = np.cumsum(h)
            d = int(np.searchsorted(cum, k - self.below[j]))  # first digit reaching rank
            self.below[j] += int(cum[d - 1]) if d else 0
            self.prefix[j] = (self.prefix[j] << 16) | d
            if self.level == len(_SHIFTS) - 1:
                self.result[j] = (self.prefix[j], self.below[j], int(h[d]))
        self.level += 1
        self._hist = {}

    def weight_sum(self, j: int, keys: np.ndarray) -> float:
        """Σ over ``keys`` of their membership weight in target j's bottom-K set (ties at the
        K-th key share the remaining places fractionally)."""
        t, n_less, n_eq = self.result[j]
        if t is None:
            return 0.0
        below = int(np.count_nonzero(keys < t))
        return below + (int(np.count_nonzero(keys == t)) * (self.k[j] - n_less) / n_eq)


def _prefer_mmap() -> None:
    """Have glibc serve buffers over 1 MiB by mmap, so freed blocks go back to the OS.

    The streamed QR allocates ~30 MB blocks in turn; under glibc's adaptive mmap threshold
    they are carved from the heap instead and fragment it (measured: +100 MB of RSS on the
    SmolLM2 embedding). Process-wide and harmless elsewhere; a no-op off glibc."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD = 1 MiB
    except (OSError, AttributeError):
        pass


def _check_finite(block: torch.Tensor, name: str, label: str) -> None:
    if not torch.isfinite(block).all():
        raise GeometryError(
            [f"tensor {name!r} of {label} holds NaN or Inf values; the checkpoint is corrupt"]
        )


class _TSQR:
    """R of ``[A₀, ΔA]`` (p × 2q, float64) accumulated block by block of rows.

    One preallocated buffer holds the previous R on top and the next block of rows below it;
    ΔA is formed in place there, so a step allocates only what the QR itself needs."""

    def __init__(self, q: int, rows: int):
        self.q = q
        self.buf = torch.empty(2 * q + rows, 2 * q, dtype=torch.float64)
        self.top = 0  # rows of R currently at the top of the buffer

    def update(self, w0: torch.Tensor, w1: torch.Tensor) -> None:
        """Add the rows ``w0`` (of A₀) and ``w1`` (of A₊), ``(b, q)`` each, any float dtype."""
        b, q, t = w0.shape[0], self.q, self.top
        blk = self.buf[t : t + b]
        blk[:, :q].copy_(w0)
        blk[:, q:].copy_(w1).sub_(blk[:, :q])  # ΔA, exact in float64
        r = torch.linalg.qr(self.buf[: t + b], mode="r").R  # (min(t + b, 2q), 2q)
        self.top = r.shape[0]
        self.buf[: self.top].copy_(r)

    @property
    def r(self) -> torch.Tensor:
        return self.buf[: self.top]


def _analyze_item(
    it: Item, base: TensorSource, ckpts: Sequence[TensorSource], p: GeometryPlan, block_elems: int
) -> tuple[list[dict], list[list[int]]]:
    """All metrics of one tensor for every checkpoint, plus pairwise mask intersections."""
    m, n = it.shape
    transposed, q = m < n, min(m, n)
    rows = max(2 * q, math.ceil(block_elems / q))
    readers = [_Reader(base, it.base_key, it, rows)]
    readers += [_Reader(c, k, it, rows) for c, k in zip(ckpts, it.keys, strict=True)]
    nc = len(ckpts)
    labels = ["base", *p.labels]
    rs = [_TSQR(q, rows) for _ in range(nc)]
    changed, changed_exact = [0] * nc, [0] * nc
    inter = [[0] * nc for _ in range(nc)]
    for blocks in zip(*(r.blocks() for r in readers), strict=True):  # pass 1
        for b, lab in zip(blocks, labels, strict=True):
            _check_finite(b, it.name, lab)
        w0 = blocks[0]
        masks = []
        for i, w1 in enumerate(blocks[1:]):
            mask = bf16_changed(w0, w1)
            masks.append(mask)
            changed[i] += int(mask.sum())
            changed_exact[i] += int(exact_changed(w0, w1).sum())
            rs[i].update(w0, w1)
        for i in range(nc):
            for j in range(i + 1, nc):
                inter[i][j] += int((masks[i] & masks[j]).sum())
    specs = [spectral_metrics(r.r, q, it.shape, transposed, p.ks, p.k0) for r in rs]
    del rs
    v = specs[0][1]  # top-k0 right singular vectors of A0 (the base's; same for every i)
    alphas = (p.alpha, *p.alphas)
    counts = [select_count(m * n, a) for a in alphas]
    sel_low, sel_princ = _RadixSelect(counts), _RadixSelect(counts)

    def base_keys(w0: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        # numpy: its integer kernels are several times faster here than torch's on 2 cores
        a0 = w0.double()
        low = np.abs(a0.numpy()).view(np.int64)
        recon = (a0 @ v @ v.T).numpy()
        return low, INT64_MAX - np.abs(recon).view(np.int64)

    while not sel_low.done:  # passes 2-5: the M_low and M_princ thresholds, one digit each
        for w0 in readers[0].blocks():
            kl, kp = base_keys(w0)
            sel_low.feed(kl)
            sel_princ.feed(kp)
        sel_low.advance()
        sel_princ.advance()
    sums = np.zeros((nc, 2, len(alphas)))
    for blocks in zip(*(r.blocks() for r in readers), strict=True):  # pass 6: the overlaps
        kl, kp = base_keys(blocks[0])
        for i, w1 in enumerate(blocks[1:]):
            mask = bf16_changed(blocks[0], w1).numpy()
            ml, mp = kl[mask], kp[mask]
            for a in range(len(counts)):
                sums[i, 0, a] += sel_princ.weight_sum(a, mp)
                sums[i, 1, a] += sel_low.weight_sum(a, ml)
    entries = []
    for i in range(nc):
        nm = changed[i]
        ov = (sums[i] / nm).tolist() if nm else [[None] * len(alphas)] * 2
        rnd = [k / (m * n) for k in counts]
        e = {
            "name": it.name,
            "shape": [m, n],
            "layer_type": it.layer_type,
            "layer": it.layer,
            "numel": m * n,
            "changed": nm,
            "changed_exact": changed_exact[i],
            "sparsity_bf16": 1.0 - nm / (m * n),
            "sparsity_exact": 1.0 - changed_exact[i] / (m * n),
            **specs[i][0],
            "overlap_principal": ov[0][0],
            "overlap_low": ov[1][0],
            "overlap_random": rnd[0],
            "alpha": p.alpha,
            "k0": p.k0,
            "alpha_sweep": {
                "alpha": list(p.alphas),
                "overlap_principal": ov[0][1:],
                "overlap_low": ov[1][1:],
                "overlap_random": rnd[1:],
            },
        }
        entries.append(e)
    return entries, inter


def _mean(xs) -> float | None:
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None


def _pooled(entries: list[dict], get) -> float | None:
    """Σ value·|M| / Σ|M| over tensors with a non-empty mask (an entry-level pooled ratio)."""
    num = sum(get(e) * e["changed"] for e in entries if e["changed"] and get(e) is not None)
    den = sum(e["changed"] for e in entries if e["changed"] and get(e) is not None)
    return num / den if den else None


def _aggregate(entries: list[dict]) -> dict:
    numel = sum(e["numel"] for e in entries)
    changed = sum(e["changed"] for e in entries)
    ks = list(entries[0]["principal_angle_max_deg"]) if entries else []
    sw = entries[0]["alpha_sweep"]["alpha"] if entries else []
    return {
        "n_tensors": len(entries),
        "numel": numel,
        "changed": changed,
        "sparsity_bf16": 1.0 - changed / numel,
        "sparsity_exact": 1.0 - sum(e["changed_exact"] for e in entries) / numel,
        "nss": _mean(e["nss"] for e in entries),
        "nss_max": max((e["nss"] for e in entries if e["nss"] is not None), default=None),
        "principal_angle_max_deg": {
            k: _mean(e["principal_angle_max_deg"][k] for e in entries) for k in ks
        },
        "principal_angle_max_deg_max": {
            k: max(e["principal_angle_max_deg"][k] for e in entries) for k in ks
        },
        "overlap_principal": _pooled(entries, lambda e: e["overlap_principal"]),
        "overlap_low": _pooled(entries, lambda e: e["overlap_low"]),
        "overlap_random": _pooled(entries, lambda e: e["overlap_random"]),
        "alpha": entries[0]["alpha"] if entries else None,
        "rho_princ": _mean(e["rho_princ"] for e in entries),
        "update_rank_ratio": _mean(e["update_rank_ratio"] for e in entries),
        "alpha_sweep": {
            "alpha": sw,
            **{
                key: [
                    _pooled(entries, lambda e, a=a, key=key: e["alpha_sweep"][key][a])
                    for a in range(len(sw))
                ]
                for key in ("overlap_principal", "overlap_low", "overlap_random")
            },
        },
    }


def summarize(entries: list[dict]) -> dict:
    """``{"overall": ..., "by_type": {layer type: ...}}`` of per-tensor entries.

    Sparsities are pooled over entries; overlaps pooled over changed entries (Σ|M ∩ M_x| /
    Σ|M|); NSS, angles (per k), ρ_princ and the rank ratio are means over tensors, with the
    largest NSS and angle beside them.
    """
    by_type = {t: [e for e in entries if e["layer_type"] == t] for t in LAYER_TYPES}
    return {
        "overall": _aggregate(entries),
        "by_type": {t: _aggregate(es) for t, es in by_type.items() if es},
    }


def _pair(a: int, b: int, labels, per_ckpt, inter) -> dict:
    rows = []
    for ea, eb, x in zip(per_ckpt[a], per_ckpt[b], inter, strict=True):
        union = ea["changed"] + eb["changed"] - x
        pa, pb = ea["changed"] / ea["numel"], eb["changed"] / eb["numel"]
        rows.append(
            {
                "name": ea["name"],
                "layer_type": ea["layer_type"],
                "inter": x,
                "union": union,
                "jaccard": x / union if union else None,
                "jaccard_random": jaccard_random(pa, pb),
            }
        )

    def pooled(rs: list[dict]) -> dict:
        numel = sum(e["numel"] for e in per_ckpt[a] if e["name"] in {r["name"] for r in rs})
        ca = sum(e["changed"] for e in per_ckpt[a] if e["name"] in {r["name"] for r in rs})
        cb = sum(e["changed"] for e in per_ckpt[b] if e["name"] in {r["name"] for r in rs})
        i, u = sum(r["inter"] for r in rs), sum(r["union"] for r in rs)
        p, q = ca / numel, cb / numel
        # the independence baseline tensor by tensor, pooled the same way as the Jaccard
        strat = sum(
            (ea["changed"] * eb["changed"] / ea["numel"])
            for ea, eb in zip(per_ckpt[a], per_ckpt[b], strict=True)
            if ea["name"] in {r["name"] for r in rs}
        )
        strat_u = ca + cb - strat
        return {
            "p": p,
            "q": q,
            "jaccard": i / u if u else None,
            "jaccard_random": jaccard_random(p, q),
            "jaccard_random_per_tensor": strat / strat_u if strat_u else None,
        }

    types = {t: [r for r in rows if r["layer_type"] == t] for t in LAYER_TYPES}
    return {
        "a": labels[a],
        "b": labels[b],
        "a_index": a,
        "b_index": b,
        **pooled(rows),
        "by_type": {t: pooled(rs) for t, rs in types.items() if rs},
        "tensors": [{k: r[k] for k in ("name", "jaccard", "jaccard_random")} for r in rows],
    }


DEFINITIONS = {
    "sparsity_bf16": "fraction of entries with bf16(W+) == bf16(W0), both cast to bfloat16 and compared bitwise",
    "sparsity_exact": "fraction of entries with identical stored bits (cast to the promoted dtype if the dtypes differ)",
    "nss": "||sigma(W+) - sigma(W0)||_2 / ||sigma(W0)||_2 over the full spectrum, float64",
    "principal_angle_max_deg": "k -> largest principal angle (degrees) between the top-k left singular subspaces of W0 and W+",
    "overlap_principal": "|M & M_princ| / |M|; M = changed entries (bf16 criterion), M_princ = the round(alpha*mn) entries of largest |rank-k0 reconstruction of W0|, ties at the threshold shared fractionally",
    "overlap_low": "|M & M_low| / |M|; M_low = the round(alpha*mn) entries of smallest |W0|, ties shared fractionally",
    "overlap_random": "expected overlap of a mask independent of W0: round(alpha*mn)/mn",
    "k0": "the smallest k above 1 in --k",
    "rho_princ": "||P_U dW P_V||_F / ||dW||_F, P_U, P_V projectors on W0's top-k0 left/right singular vectors",
    "update_rank_ratio": "rank(dW)/min(m,n); rank = #singular values > sigma_max(dW)*max(m,n)*eps(float64) (numpy matrix_rank default)",
    "jaccard": "|M_a & M_b| / |M_a | M_b| of two checkpoints' changed masks, pooled over all analysed entries",
    "jaccard_random": "pq/(p+q-pq) for the masks' densities p, q (independent masks)",
    "jaccard_random_per_tensor": "the same independence baseline applied tensor by tensor and pooled like the Jaccard",
    "summary": "sparsities pooled over entries, overlaps pooled over changed entries, other metrics are means over tensors (with maxima beside them)",
}


def analyze(
    base,
    ckpts: Sequence,
    ks: Sequence[int] | str = DEFAULT_KS,
    alpha: float = DEFAULT_ALPHA,
    alphas: Sequence[float] = ALPHA_SWEEP,
    progress: bool = False,
    allow_pickle: bool = False,
    block_elems: int = BLOCK_ELEMS,
    threads: int | None = None,
) -> dict:
    """Every metric of every 2-D weight for each checkpoint against ``base``.

    Args:
        base, ckpts: checkpoint directories (sharded or single safetensors), weight files,
            the bundled model name, :class:`TensorSource` s or in-memory state dicts.
        ks: subspace sizes for the principal angles (k₀ = the smallest above 1).
        alpha: fraction of entries in M_princ and M_low; ``alphas``: the sweep for the plot.
        progress: a rich progress bar on stderr.
        block_elems: entries per streamed block of a large tensor.
        threads: torch threads for the call (restored after). On a machine whose cores are
            busy with other jobs, MKL's multi-threaded SVD slows down by orders of magnitude;
            ``threads=1`` avoids it.

    Sets glibc's mmap threshold to 1 MiB for the process (see ``_prefer_mmap``).

    Returns:
        The report: ``checkpoints[i].tensors[j]`` (per-tensor metrics), ``checkpoints[i].summary``
        (overall and per layer type), ``pairs`` (with two or more checkpoints), ``skipped``,
        ``notes``, ``settings``, ``definitions``.
    """
    if threads is not None:
        if threads < 1:
            raise GeometryError([f"threads must be ≥ 1, got {threads}"])
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            return analyze(base, ckpts, ks, alpha, alphas, progress, allow_pickle, block_elems)
        finally:
            torch.set_num_threads(before)
    t0 = time.perf_counter()
    _prefer_mmap()
    ks = parse_ks(ks) if isinstance(ks, str) else tuple(ks)
    problems, srcs = [], []
    for i, x in enumerate([base, *ckpts]):
        try:
            srcs.append(_as_source(x, "base" if i == 0 else f"checkpoint {i}", allow_pickle))
        except (OSError, ValueError) as e:
            problems.append(str(e))
    if problems:
        raise GeometryError(problems)
    labels = [lab for _, lab in srcs]
    bsrc, csrcs = srcs[0][0], [s for s, _ in srcs[1:]]
    p = plan(bsrc, csrcs, ks, alpha, alphas, labels=labels)
    per_ckpt: list[list[dict]] = [[] for _ in csrcs]
    inters: list[list[list[int]]] = []
    bar, task = _progress(len(p.items)) if progress else (None, None)
    try:
        for it in p.items:
            if bar is not None:
                bar.update(task, description=it.name)
            entries, inter = _analyze_item(it, bsrc, csrcs, p, block_elems)
            for i, e in enumerate(entries):
                per_ckpt[i].append(e)
            inters.append(inter)
            if bar is not None:
                bar.advance(task)
    finally:
        if bar is not None:
            bar.stop()
    pairs = [
        _pair(a, b, p.labels, per_ckpt, [x[a][b] for x in inters])
        for a in range(len(csrcs))
        for b in range(a + 1, len(csrcs))
    ]
    from fmlab import __version__

    return {
        "tool": "fmlab rlvr-geometry analyze",
        "fmlab_version": __version__,
        "base": labels[0],
        "settings": {
            "k": list(p.ks),
            "k0": p.k0,
            "alpha": p.alpha,
            "alpha_sweep": list(p.alphas),
            "block_elems": block_elems,
            "torch_threads": torch.get_num_threads(),
        },
        "definitions": DEFINITIONS,
        "skipped": p.skipped,
        "notes": p.notes,
        "checkpoints": [
            {"path": lab, "index": i, "summary": summarize(es), "tensors": es}
            for i, (lab, es) in enumerate(zip(p.labels, per_ckpt, strict=True))
        ],
        "pairs": pairs,
        "wall_s": time.perf_counter() - t0,
    }


def _progress(total: int):
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    bar = Progress(
        TextColumn("[bold]geometry"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.description}"),
        TimeRemainingColumn(),
        console=Console(stderr=True),
    )
    task = bar.add_task("", total=total)
    bar.start()
    return bar, task


def check_outputs(json_out: str | os.PathLike, plots_dir: str | os.PathLike | None = None):
    """Fail before any work if the outputs cannot be written where asked."""
    problems = []
    j = Path(json_out)
    if j.is_dir():
        problems.append(
            f"--json {j} is a directory; give a file path such as {j / 'geometry.json'}"
        )
    if plots_dir is not None and Path(plots_dir).exists() and not Path(plots_dir).is_dir():
        problems.append(f"--plots {plots_dir} exists and is not a directory; choose a directory")
    if problems:
        raise GeometryError(problems)


def _short(labels: list[str]) -> list[str]:
    names = [Path(lab).name or lab for lab in labels]
    return names if len(set(names)) == len(names) else [f"{i}:{n}" for i, n in enumerate(names)]


def _by_layer(entries: list[dict], key: str) -> dict[int, float]:
    layers = sorted({e["layer"] for e in entries if e["layer"] is not None})
    out = {}
    for layer in layers:
        es = [e for e in entries if e["layer"] == layer]
        if key == "sparsity_bf16":
            out[layer] = 1.0 - sum(e["changed"] for e in es) / sum(e["numel"] for e in es)
        else:
            out[layer] = _mean(e[key] for e in es)
    return out


def plot_report(report: dict, plots_dir: str | os.PathLike) -> list[Path]:
    """Sparsity by layer, NSS by layer, angles vs k, overlaps vs α (PNG files)."""
    from fmlab.core.results import line_plot

    d = Path(plots_dir)
    d.mkdir(parents=True, exist_ok=True)
    cks = report["checkpoints"]
    names = _short([c["path"] for c in cks])
    out = []
    layered = [_by_layer(c["tensors"], "sparsity_bf16") for c in cks]
    if layered and layered[0]:
        xs = list(layered[0])
        out.append(
            line_plot(
                d / "sparsity_by_layer.png",
                xs,
                {nm: [s[x] for x in xs] for nm, s in zip(names, layered, strict=True)},
                "layer",
                "bf16 update sparsity",
                "Update sparsity by layer (pooled over its 2-D weights)",
            )
        )
        nss = [_by_layer(c["tensors"], "nss") for c in cks]
        vals = [v for s in nss for v in s.values()]
        out.append(
            line_plot(
                d / "nss_by_layer.png",
                xs,
                {nm: [s[x] for x in xs] for nm, s in zip(names, nss, strict=True)},
                "layer",
                "NSS (mean over the layer's weights)",
                "Normalized spectral shift",
                logy=bool(vals) and all(v is not None and v > 0 for v in vals),
            )
        )
    ks = report["settings"]["k"]
    out.append(
        line_plot(
            d / "angles_vs_k.png",
            ks,
            {
                nm: [c["summary"]["overall"]["principal_angle_max_deg"][str(k)] for k in ks]
                for nm, c in zip(names, cks, strict=True)
            },
            "k",
            "largest principal angle (deg, mean over tensors)",
            "Top-k left subspace rotation",
            logx=True,
        )
    )
    sweep = cks[0]["summary"]["overall"]["alpha_sweep"]
    alphas = sweep["alpha"]
    if alphas:
        series = {}
        for nm, c in zip(names, cks, strict=True):
            sw = c["summary"]["overall"]["alpha_sweep"]
            if all(v is not None for v in sw["overlap_principal"]):
                series[f"{nm}: M_princ"] = sw["overlap_principal"]
                series[f"{nm}: M_low"] = sw["overlap_low"]
        series["random mask"] = sweep["overlap_random"]
        out.append(
            line_plot(
                d / "overlaps_vs_alpha.png",
                alphas,
                series,
                "α (fraction of entries in M_princ / M_low)",
                "|M ∩ M_x| / |M|",
                f"Changed-mask overlaps (k₀ = {report['settings']['k0']})",
            )
        )
    return out


def write_report(
    report: dict, json_out: str | os.PathLike, plots_dir: str | os.PathLike | None = None
) -> dict[str, list[str]]:
    """Write the plots (if asked), then the JSON, each atomically; returns what was written."""
    plots = [str(p) for p in plot_report(report, plots_dir)] if plots_dir is not None else []
    atomic_write_json(json_out, report)
    return {"json": [str(json_out)], "plots": plots}
