"""The decode kernel: one call per layer and step, reading only the weights it needs, on every
thread it is given.

For B single-token rows x_b (B × d_in), with Wᵀ stored row-major (d_in × d_out: input channel
j's weights are one contiguous row) and the low-rank factors Vᵀ (d_in × r) and US (d_out × r):

    serial pre-pass (cheap, d_in·B compares):
        m_bj = |x_bj| · c_j > τ;  kept = the channels some row keeps (their union)
        coef[b, u] = x_b,kept[u] · m_b,kept[u]            (0 where row b dropped the channel)
        z_b = Σ_{j: ¬m_bj} x_bj · Vᵀ[j]                   (r numbers per row)
    parallel over kept-channel blocks (prange, one block per thread):
        part[t]_b = Σ_{u in block t} coef[b, u] · Wᵀ[kept[u]]      (each kept row read whole)
    parallel over output-column blocks (cache-line aligned):
        y_b[o0:o1] = Σ_t part[t]_b[o0:o1] + US[o0:o1] · z_b

So each kept row of Wᵀ is streamed once per step whatever B is, by one thread, as one
contiguous run (splitting by output columns instead gave each thread short strided pieces of
every row: 17.5 against 22.5 GB/s on a 576×576 layer at 2 threads, measured); the reduction
adds T·B·d_out floats. Nothing is gathered into a temporary (``index_select`` + ``mv`` copies
the kept rows first and is no faster than dense ``mv``). Four kept rows are walked at once (four
concurrent streams read faster than one). All scratch (kept list, coefficients, z, the fp32
partial sums) comes from a per-thread workspace that grows only when a larger layer, batch or
thread count appears, never per token.

Weights, x and y are fp32 or bf16; bf16 travels as its uint16 bit pattern (numba has no bf16
type), widened to fp32 in registers (a shift) and rounded back to nearest-even on the store, as
torch does. Accumulation is fp32.

The kernel counts what it does in ``counts`` (int64, see ``C_*``): rows, channels seen, channels
kept, weight rows streamed and the bytes of weights actually read, so a bench measures the kept
fraction and the traffic of a real decode instead of computing them from the budget.
"""

from __future__ import annotations

import threading
import types as types_

import numpy as np

try:
    import numba
    from llvmlite import ir
    from numba import njit, prange, types
    from numba.extending import intrinsic, overload
except ImportError:  # pragma: no cover - numba is a dependency; the torch path still works
    numba = None

__all__ = [
    "AVAILABLE",
    "COUNTERS",
    "C_BYTES",
    "C_CALLS",
    "C_KEPT",
    "C_ROWS",
    "C_SEEN",
    "C_STREAMED",
    "TORCH_COUNTS",
    "count",
    "counters",
    "reference",
    "reset_counters",
    "sparse_lowrank_gemm",
]

# the counter slots of ``counts``
C_CALLS, C_ROWS, C_SEEN, C_KEPT, C_STREAMED, C_BYTES = range(6)
COUNTER_NAMES = ("calls", "rows", "channels_seen", "channels_kept", "rows_streamed", "bytes_read")
COUNTERS = np.zeros(len(COUNTER_NAMES), dtype=np.int64)  # the process-wide counts
# what the torch paths read, counted in plain ints (a numpy scalar update costs ~0.2 µs, six of
# them per layer call were a measurable part of a fast bf16 prefill); counters() adds both
TORCH_COUNTS = [0] * len(COUNTER_NAMES)
AVAILABLE = numba is not None
_FASTMATH = {"contract", "reassoc", "nsz", "arcp"}  # no nnan/ninf: τ may be ±inf

if AVAILABLE:

    @intrinsic
    def _bits_f32(typingctx, v):
        """uint16 bf16 bits -> float32 (a shift and a bitcast); float32 passes through."""
        if v == types.float32:

            def ident(context, builder, sig, args):
                return args[0]

            return types.float32(v), ident
        if v == types.uint16:

            def widen(context, builder, sig, args):
                u = builder.zext(args[0], ir.IntType(32))
                u = builder.shl(u, ir.Constant(ir.IntType(32), 16))
                return builder.bitcast(u, ir.FloatType())

            return types.float32(v), widen
        return None

    @intrinsic
    def _f32_bits(typingctx, v):
        """float32 -> its uint32 bit pattern."""
        if v == types.float32:

            def cast(context, builder, sig, args):
                return builder.bitcast(args[0], ir.IntType(32))

            return types.uint32(v), cast
        return None

    def _store(y, b, o, val):  # pragma: no cover - replaced by the overload below
        y[b, o] = val

    @overload(_store, inline="always")
    def _store_ov(y, b, o, val):
        if y.dtype == types.float32:

            def f32(y, b, o, val):
                y[b, o] = val

            return f32
        if y.dtype == types.uint16:

            def bf16(y, b, o, val):  # round to nearest even, as torch's .to(torch.bfloat16)
                u = _f32_bits(np.float32(val))
                if (u & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000):  # NaN stays NaN
                    y[b, o] = np.uint16((u >> np.uint32(16)) | np.uint32(0x40))
                else:
                    u = u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))
                    y[b, o] = np.uint16(u >> np.uint32(16))

            return bf16
        return None


def _kernel(
    x, wt, col_norm, tau, vt, us, y, kept, coef, z, part, counts, nblocks
):  # pragma: no cover
    B, d_in = x.shape
    d_out = wt.shape[1]
    r = vt.shape[1]
    # -- serial pre-pass: decisions, the union of kept channels, the low-rank inputs z
    for b in range(B):
        for i in range(r):
            z[b, i] = 0.0
    nu = 0
    kept_total = 0
    low_rows = 0
    for j in range(d_in):
        cj = col_norm[j]
        any_kept = False
        any_dropped = False
        for b in range(B):
            xv = _bits_f32(x[b, j])
            if abs(xv) * cj > tau:
                any_kept = True
            else:
                any_dropped = True
        if any_kept:
            for b in range(B):
                xv = _bits_f32(x[b, j])
                if abs(xv) * cj > tau:
                    coef[b, nu] = xv
                    kept_total += 1
                else:
                    coef[b, nu] = 0.0
            kept[nu] = j
            nu += 1
        if any_dropped and r > 0:
            low_rows += 1
            vrow = vt[j]
            for b in range(B):
                xv = _bits_f32(x[b, j])
                if not abs(xv) * cj > tau:
                    for i in range(r):
                        z[b, i] += xv * vrow[i]
    # -- the counts of what this call reads (exact, not the budget)
    esz = wt.itemsize
    counts[0] += 1
    counts[1] += B
    counts[2] += B * d_in
    counts[3] += kept_total
    counts[4] += nu
    lr_bytes = low_rows * r * 4 + (d_out * r * 4 if low_rows > 0 else 0)
    counts[5] += nu * d_out * esz + lr_bytes
    # -- parallel over kept-channel blocks: thread t streams the t-th share of the kept rows of
    # Wᵀ, each row whole and contiguous, into its own partial sum part[t] (no shared writes)
    per = (nu + nblocks - 1) // nblocks
    for t in prange(nblocks):
        u0 = t * per
        u1 = min(nu, u0 + per)
        for b in range(B):
            a = part[t, b]
            for o in range(d_out):
                a[o] = 0.0
        u = u0
        while u + 4 <= u1:
            ra, rb, rc, rd = wt[kept[u]], wt[kept[u + 1]], wt[kept[u + 2]], wt[kept[u + 3]]
            for b in range(B):
                a = part[t, b]
                ca, cb, cc, cd = coef[b, u], coef[b, u + 1], coef[b, u + 2], coef[b, u + 3]
                for o in range(d_out):
                    a[o] += (
                        ca * _bits_f32(ra[o])
                        + cb * _bits_f32(rb[o])
                        + cc * _bits_f32(rc[o])
                        + cd * _bits_f32(rd[o])
                    )
            u += 4
        while u < u1:
            row = wt[kept[u]]
            for b in range(B):
                a = part[t, b]
                c = coef[b, u]
                for o in range(d_out):
                    a[o] += c * _bits_f32(row[o])
            u += 1
    # -- the partial sums reduced, the low-rank term added and y stored, parallel over
    # output-column blocks (cache-line aligned); inner loops run over slices from 0 to n:
    # indexing part[t, b, o0 + o] directly halves the speed (LLVM then fails to vectorize)
    step = (d_out + nblocks - 1) // nblocks
    step = (step + 15) // 16 * 16
    for t in prange(nblocks):
        o0 = t * step
        o1 = min(d_out, o0 + step)
        if o0 >= o1:
            continue
        n = o1 - o0
        for b in range(B):
            a = part[0, b, o0:o1]
            for q in range(1, nblocks):
                p = part[q, b, o0:o1]
                for o in range(n):
                    a[o] += p[o]
            if low_rows > 0:
                zb = z[b]
                for o in range(n):
                    urow = us[o0 + o]
                    lr = np.float32(0.0)
                    for i in range(r):
                        lr += urow[i] * zb[i]
                    a[o] += lr
            for o in range(n):
                _store(y, b, o0 + o, a[o])


def _named(fn, name: str):
    """A copy of ``fn`` under another name. numba's on-disk cache is keyed by the function's
    qualified name and first line, not by the compile flags: the serial and the parallel build
    of one function share a cache entry, and whichever compiled first was loaded as both (the
    "parallel" kernel then ran on one thread, found by measuring it at 2 threads)."""
    code = fn.__code__.replace(co_name=name, co_qualname=name)
    return types_.FunctionType(code, fn.__globals__, name, fn.__defaults__, fn.__closure__)


if AVAILABLE:
    _serial = njit(fastmath=_FASTMATH, cache=True, nogil=True)(_named(_kernel, "_kernel_serial"))
    _parallel = njit(fastmath=_FASTMATH, cache=True, nogil=True, parallel=True)(
        _named(_kernel, "_kernel_parallel")
    )
else:  # pragma: no cover
    _serial = _parallel = None

_threads_set = [0]
_local = threading.local()


def _workspace(b: int, d_in: int, d_out: int, r: int, blocks: int):
    """C-contiguous scratch for one call, carved from per-thread flat buffers that grow only
    when a larger layer, batch or thread count appears (so never per token). The views of each
    shape are kept, so a decode step costs one dict lookup here."""
    key = (b, d_in, d_out, r, blocks)
    views = getattr(_local, "views", None)
    if views is not None and key in views:
        return views[key]
    need = (d_in, b * d_in, b * max(r, 1), blocks * b * d_out)
    ws = getattr(_local, "ws", None)
    if ws is None or any(n > len(a) for n, a in zip(need, ws, strict=True)):
        old = ws or (np.empty(0, np.int32),) + (np.empty(0, np.float32),) * 3
        ws = tuple(np.empty(max(n, len(a)), a.dtype) for n, a in zip(need, old, strict=True))
        _local.ws, _local.views = ws, {}  # the old views keep the old buffers alive: drop them
    kept, coef, z, part = ws
    out = (
        kept[:d_in],
        coef[: b * d_in].reshape(b, d_in),
        z[: b * r].reshape(b, r),
        part[: blocks * b * d_out].reshape(blocks, b, d_out),
    )
    _local.views[key] = out
    return out


def max_threads() -> int:
    return numba.config.NUMBA_NUM_THREADS if AVAILABLE else 1


_MAX_THREADS = max_threads()


def sparse_lowrank_gemm(x, wt, col_norm, tau, vt, us, y, threads: int = 1, counts=None) -> None:
    """``y = (x ⊙ m) Wᵀ + US · ((x ⊙ ¬m) Vᵀ)ᵀ`` for B single-token rows, written into ``y``.

    Args:
        x: (B, d_in) float32, or uint16 holding bf16 bits (same for ``wt`` and ``y``).
        wt: (d_in, d_out) Wᵀ, C-contiguous. col_norm: (d_in,) float32 channel weights c_j.
        tau: threshold on |x_j|·c_j (a float32 value; ±inf allowed).
        vt, us: (d_in, r), (d_out, r) float32 low-rank factors (r may be 0).
        y: (B, d_out) output. threads: blocks run in parallel (1: a serial build, no launch).
        counts: int64 array of 6 counters (default the process-wide ``COUNTERS``).
    """
    b, d_in = x.shape
    counts = COUNTERS if counts is None else counts
    threads = max(1, min(threads, _MAX_THREADS))
    kept, coef, z, part = _workspace(b, d_in, wt.shape[1], vt.shape[1], threads)
    if threads == 1:
        _serial(x, wt, col_norm, tau, vt, us, y, kept, coef, z, part, counts, 1)
        return
    if _threads_set[0] != threads:  # numba's count is per calling thread; cheap to keep
        numba.set_num_threads(threads)
        _threads_set[0] = threads
    _parallel(x, wt, col_norm, tau, vt, us, y, kept, coef, z, part, counts, threads)


def count(slot: int) -> int:
    """One process-wide count so far: the kernel's plus the torch paths' (``C_*`` slot)."""
    return int(COUNTERS[slot]) + TORCH_COUNTS[slot]


def counters() -> dict[str, int]:
    """The process-wide counts so far, kernel and torch paths (see the module docstring)."""
    return {n: count(i) for i, n in enumerate(COUNTER_NAMES)}


def reset_counters() -> None:
    COUNTERS[:] = 0
    TORCH_COUNTS[:] = [0] * len(COUNTER_NAMES)


def bf16_bits_to_f32(a: np.ndarray) -> np.ndarray:
    """uint16 bf16 bit patterns as float32 values (numpy, for references and tests)."""
    return (a.astype(np.uint32) << 16).view(np.float32)


def reference(x, wt, col_norm, tau, vt, us) -> np.ndarray:
    """The same computation in numpy, fp32 or bf16 bits in, fp32 out (for tests)."""
    if x.dtype == np.uint16:
        x = bf16_bits_to_f32(x)
    if wt.dtype == np.uint16:
        wt = bf16_bits_to_f32(wt)
    keep = np.abs(x) * col_norm > np.float32(tau)
    y = (x * keep) @ wt
    if vt.shape[1]:
        y = y + ((x * ~keep) @ vt) @ us.T
    return y
