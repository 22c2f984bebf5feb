"""The batch-1 decode kernel: one pass over the input channels that reads only what it needs.

For one token x (d_in), with Wᵀ stored row-major (d_in × d_out, so input channel j's weights
are one contiguous row) and the low-rank factors stored as Vᵀ (d_in × r) and US (d_out × r):

    for j in 0..d_in:                     # pass 1
        if |x_j| · c_j > τ:  kept.append(j)
        else:                z += x_j · Vᵀ[j]     (the complement: r numbers)
    for j in kept: y += x_j · Wᵀ[j]               # pass 2: only the kept rows of Wᵀ
    y += US · z                                   (the thin low-rank product)

Bytes of weights read: k·d_out + (d_in − k)·r + d_out·r floats instead of d_in·d_out. Nothing is
gathered into a temporary (``index_select`` + ``mv`` copies the kept rows first and is no faster
than dense ``mv`` at these shapes); the loop is compiled by numba and runs on one thread (numba's
parallel launch costs more than a whole GEMV here). Pass 2 walks four kept rows at once: with
weights out of cache, four concurrent streams read faster than one row at a time, and a
separate index pass avoids a data-dependent branch in the inner loop (both measured). The result is written into ``y``.
"""

from __future__ import annotations

import numpy as np

try:
    from numba import njit
except ImportError:  # pragma: no cover - numba is a dependency; the torch path still works
    njit = None

__all__ = ["AVAILABLE", "sparse_lowrank_gemv"]


def _kernel(x, wt, col_norm, tau, vt, us, y):  # pragma: no cover - compiled by numba
    d_in, d_out = wt.shape
    r = vt.shape[1]
    z = np.zeros(r, dtype=np.float32)
    kept = np.empty(d_in, dtype=np.int64)
    n = 0
    for j in range(d_in):  # pass 1: decide, and fold the complement into z (r floats per channel)
        xj = x[j]
        if abs(xj) * col_norm[j] > tau:
            kept[n] = j
            n += 1
        elif r > 0:
            vrow = vt[j]
            for i in range(r):
                z[i] += xj * vrow[i]
    for o in range(d_out):
        y[o] = 0.0
    t = 0
    while t + 4 <= n:  # pass 2: kept rows of Wᵀ, four streams at once (keeps memory busy)
        a, b, c, e = kept[t], kept[t + 1], kept[t + 2], kept[t + 3]
        xa, xb, xc, xe = x[a], x[b], x[c], x[e]
        ra, rb, rc, re = wt[a], wt[b], wt[c], wt[e]
        for o in range(d_out):
            y[o] += xa * ra[o] + xb * rb[o] + xc * rc[o] + xe * re[o]
        t += 4
    while t < n:
        j = kept[t]
        xj, row = x[j], wt[j]
        for o in range(d_out):
            y[o] += xj * row[o]
        t += 1
    if r > 0:  # the thin low-rank product US · z
        for o in range(d_out):
            acc = np.float32(0.0)
            urow = us[o]
            for i in range(r):
                acc += urow[i] * z[i]
            y[o] += acc


AVAILABLE = njit is not None
sparse_lowrank_gemv = njit(fastmath=True, cache=True, nogil=True)(_kernel) if AVAILABLE else None


def reference(x, wt, col_norm, tau, vt, us) -> np.ndarray:
    """The same computation in numpy (for tests)."""
    keep = np.abs(x) * col_norm > tau
    y = (x * keep) @ wt
    if vt.shape[1]:
        y = y + us @ ((x * ~keep) @ vt)
    return y
