"""Parameter-level geometry of one weight update W₀ → W₊ (pure functions on tensors).

Every metric of issue 22, defined exactly as there (W₀ the base tensor, W₊ the checkpoint's,
both ``(m, n)``, ΔW = W₊ − W₀ computed in float64, which is exact for bf16/fp16/fp32 inputs):

- ``sparsity_bf16``: fraction of entries with ``bf16(W₊) == bf16(W₀)``, both rounded to
  bfloat16 (round-to-nearest-even, torch's cast) and compared bitwise;
  ``sparsity_exact``: fraction of entries whose stored bits are identical (when the two
  tensors are stored in different dtypes, both are first cast to their promoted dtype).
- ``nss``: ‖σ(W₊) − σ(W₀)‖₂ / ‖σ(W₀)‖₂ over all min(m, n) singular values, float64.
- ``principal_angle_max_deg[k]``: the largest principal angle, in degrees, between the top-k
  left singular subspaces of W₀ and W₊ (cos θᵢ = σᵢ(U₀,ₖᵀ U₊,ₖ); small angles are taken from
  the sines, σᵢ((I − U₀,ₖU₀,ₖᵀ) U₊,ₖ), which are accurate where the cosines round to 1).
- ``overlap_principal`` / ``overlap_low``: |M ∩ M_princ| / |M| and |M ∩ M_low| / |M|, with M
  the changed-entry mask under the bf16 criterion, M_princ the K = ⌊αmn + ½⌋ entries with the
  largest |rank-k₀ reconstruction of W₀| and M_low the K entries with the smallest |W₀|.
  Entries tied with the K-th value share the remaining places fractionally (each gets
  weight (K − #beyond) / #tied): the expectation under random tie-breaking, so |M_low| is
  exactly K even for bf16 weights, which have many equal magnitudes. A mask M independent of
  W₀ has expected overlap K/mn ≈ α (``overlap_random``). Undefined (None) when M is empty.
- ``rho_princ``: ‖P_U ΔW P_V‖_F / ‖ΔW‖_F, P_U = U₀,ₖ₀U₀,ₖ₀ᵀ and P_V = V₀,ₖ₀V₀,ₖ₀ᵀ the
  projectors on W₀'s top-k₀ left and right singular vectors (None when ΔW = 0).
- ``update_rank_ratio``: rank(ΔW) / min(m, n), with numpy's default ``matrix_rank``
  tolerance on ΔW in float64: singular values above σ_max(ΔW) · max(m, n) · eps(float64).

k₀ is the smallest k above 1 in the requested list (k = 1 is kept for the angles, where it is
informative, but a rank-1 reconstruction is too coarse a notion of "principal weights").

The spectral metrics are computed from a QR reduction: with A = W (or Wᵀ when m < n, so
that A is tall, p × q with q = min(m, n)), ``[A₀, ΔA] = Q R`` and B₀ = R[:, :q],
B_Δ = R[:, q:]. Q has orthonormal columns, so singular values, right singular vectors, left
subspaces (mapped by Q) and every norm above are those of B₀, B_Δ and B₀ + B_Δ, which are
only 2q × q. :func:`reduce_pair` computes R in memory; ``analyze`` accumulates the same R
block by block (TSQR) so a vocabulary-sized embedding is never held whole.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

__all__ = [
    "bf16_changed",
    "bottom_k_threshold",
    "exact_changed",
    "fraction_weights",
    "jaccard",
    "jaccard_random",
    "magnitude_keys",
    "max_principal_angle_deg",
    "nss",
    "numerical_rank",
    "pair_metrics",
    "reduce_pair",
    "select_count",
    "sparsity_bf16",
    "sparsity_exact",
    "spectral_metrics",
]

INT64_MAX = (1 << 63) - 1
_INT_OF_SIZE = {8: torch.int64, 4: torch.int32, 2: torch.int16, 1: torch.uint8}


def _bits(t: torch.Tensor) -> torch.Tensor:
    """The raw bits of a float tensor as an integer tensor of the same element size."""
    return t.contiguous().view(_INT_OF_SIZE[t.element_size()])


def bf16_changed(w0: torch.Tensor, w1: torch.Tensor) -> torch.Tensor:
    """Changed-entry mask M under the bf16 criterion: ``bf16(w1) != bf16(w0)`` bitwise.

    ``w0``, ``w1``: same shape, any float dtypes. Returns a bool tensor of that shape.
    """
    return _bits(w0.to(torch.bfloat16)) != _bits(w1.to(torch.bfloat16))


def exact_changed(w0: torch.Tensor, w1: torch.Tensor) -> torch.Tensor:
    """Entries whose stored bits differ (both cast to the promoted dtype if dtypes differ)."""
    if w0.dtype != w1.dtype:
        dt = torch.promote_types(w0.dtype, w1.dtype)
        w0, w1 = w0.to(dt), w1.to(dt)
    return _bits(w0) != _bits(w1)


def sparsity_bf16(w0: torch.Tensor, w1: torch.Tensor) -> float:
    """Fraction of entries unchanged after rounding both tensors to bfloat16."""
    return 1.0 - bf16_changed(w0, w1).double().mean().item()


def sparsity_exact(w0: torch.Tensor, w1: torch.Tensor) -> float:
    """Fraction of entries exactly equal in the stored dtype."""
    return 1.0 - exact_changed(w0, w1).double().mean().item()


def nss(s0: torch.Tensor, s1: torch.Tensor) -> float | None:
    """Normalized spectral shift ‖s1 − s0‖₂ / ‖s0‖₂ of two spectra (float64); None if s0 = 0."""
    s0, s1 = s0.double(), s1.double()
    den = torch.linalg.vector_norm(s0).item()
    return torch.linalg.vector_norm(s1 - s0).item() / den if den > 0 else None


def max_principal_angle_deg(q0: torch.Tensor, q1: torch.Tensor) -> float:
    """Largest principal angle (degrees) between span(q0) and span(q1).

    ``q0``, ``q1``: ``(d, k)`` with orthonormal columns. Uses the cosine σ_min(q0ᵀq1) for
    angles above 45° and the sine σ_max((I − q0q0ᵀ) q1) below, as in Knyazev & Argentati
    (2002) and ``scipy.linalg.subspace_angles``.
    """
    c = q0.T @ q1  # (k, k)
    sin_max = torch.linalg.matrix_norm(q1 - q0 @ c, ord=2).item()
    if sin_max**2 < 0.5:
        theta = math.asin(min(1.0, sin_max))
    else:
        cos_min = torch.linalg.svdvals(c).min().item()
        theta = math.acos(max(0.0, min(1.0, cos_min)))
    return math.degrees(theta)


def numerical_rank(s: torch.Tensor, shape: Sequence[int]) -> int:
    """numpy's default ``matrix_rank``: #{σ > σ_max · max(shape) · eps(float64)}."""
    if s.numel() == 0:
        return 0
    smax = s.max().item()
    tol = smax * max(shape) * torch.finfo(torch.float64).eps
    return int((s > tol).sum().item())


def reduce_pair(a0: torch.Tensor, da: torch.Tensor) -> torch.Tensor:
    """R of the QR factorization ``[a0, da] = Q R`` in float64.

    ``a0``, ``da``: ``(p, q)`` with p ≥ q (a tall orientation of W₀ and ΔW). Returns
    ``(min(p, 2q), 2q)``.
    """
    return torch.linalg.qr(torch.cat([a0.double(), da.double()], dim=1), mode="r").R


def spectral_metrics(
    r: torch.Tensor,
    q: int,
    shape: Sequence[int],
    transposed: bool,
    ks: Sequence[int],
    k0: int,
) -> tuple[dict, torch.Tensor]:
    """NSS, principal angles, ρ_princ and the rank ratio from the reduced factor ``r``.

    ``r``: ``(r, 2q)`` from :func:`reduce_pair` (or its streamed equivalent); ``shape``: the
    original ``(m, n)``; ``transposed``: whether A = Wᵀ (m < n), in which case W's left
    singular vectors are A's right ones. Returns the metrics and V₀,ₖ₀ — the top-k₀ right
    singular vectors of A₀, ``(q, k0)`` — which give the rank-k₀ reconstruction A₀V₀V₀ᵀ.
    """
    b0, bd = r[:, :q], r[:, q:]  # (r, q) each; b0 is zero below row q
    b1 = b0 + bd
    u0, s0, v0h = torch.linalg.svd(b0, full_matrices=False)  # (r,q) (q,) (q,q)
    u1, s1, v1h = torch.linalg.svd(b1, full_matrices=False)
    left0, left1 = (v0h.T, v1h.T) if transposed else (u0, u1)
    angles = {str(k): max_principal_angle_deg(left0[:, :k], left1[:, :k]) for k in ks}
    dnorm = torch.linalg.matrix_norm(bd).item()  # ‖ΔW‖_F
    core = u0[:, :k0].T @ bd @ v0h[:k0].T  # (k0, k0): U₀ᵀ ΔW V₀
    rho = torch.linalg.matrix_norm(core).item() / dnorm if dnorm > 0 else None
    rank = numerical_rank(torch.linalg.svdvals(bd), shape)
    out = {
        "nss": nss(s0, s1),
        "principal_angle_max_deg": angles,
        "rho_princ": rho,
        "update_rank_ratio": rank / min(shape),
        "update_rank": rank,
        "delta_fro": dnorm,
    }
    return out, v0h[:k0].T.contiguous()


def magnitude_keys(v: torch.Tensor) -> torch.Tensor:
    """int64 keys ordered like |v| (the bit patterns of non-negative float64 are monotone)."""
    return v.double().abs().contiguous().view(torch.int64)


def select_count(n: int, fraction: float) -> int:
    """K = ⌊fraction · n + ½⌋, the number of entries in a top- or bottom-fraction set."""
    return min(n, max(0, math.floor(fraction * n + 0.5)))


def fraction_weights(keys: torch.Tensor, t: int | None, n_less: int, n_eq: int, k: int):
    """Membership weights of the K smallest ``keys``: 1 below the K-th smallest key ``t``,
    (K − n_less) / n_eq at it, 0 above (float64, same shape). ``t`` None means K = 0."""
    if t is None:
        return torch.zeros(keys.shape, dtype=torch.float64)
    w = (keys < t).double()
    if n_eq:
        w += (keys == t).double() * ((k - n_less) / n_eq)
    return w


def bottom_k_threshold(keys: torch.Tensor, k: int) -> tuple[int | None, int, int]:
    """In memory: the K-th smallest key, and how many keys are below it and equal to it."""
    if k == 0:
        return None, 0, 0
    flat = keys.reshape(-1)
    t = torch.sort(flat).values[k - 1].item()
    return t, int((flat < t).sum().item()), int((flat == t).sum().item())


def jaccard(a: torch.Tensor, b: torch.Tensor) -> float | None:
    """|a ∩ b| / |a ∪ b| of two bool masks (None when both are empty)."""
    union = (a | b).sum().item()
    return (a & b).sum().item() / union if union else None


def jaccard_random(p: float, q: float) -> float | None:
    """Expected Jaccard of independent masks of densities p, q: pq / (p + q − pq)."""
    den = p + q - p * q
    return p * q / den if den > 0 else None


def pair_metrics(
    w0: torch.Tensor,
    w1: torch.Tensor,
    ks: Sequence[int] = (1, 4, 16, 64),
    alpha: float = 0.5,
    alphas: Sequence[float] = (),
) -> dict:
    """Every metric of one weight update, in memory (the reference ``analyze`` streams).

    ``w0``, ``w1``: ``(m, n)`` float tensors of equal shape; ``ks``: subspace sizes, each
    ≤ min(m, n), with at least one above 1 (k₀ is the smallest such); ``alpha`` in (0, 1);
    ``alphas``: extra fractions for an overlap sweep (``alpha_sweep`` in the result).
    """
    if w0.ndim != 2 or w0.shape != w1.shape:
        raise ValueError(f"need two 2-D tensors of one shape, got {w0.shape} and {w1.shape}")
    m, n = w0.shape
    k0 = min((k for k in ks if k > 1), default=None)
    if k0 is None or max(ks) > min(m, n) or min(ks) < 1:
        raise ValueError(f"ks {list(ks)} must lie in 1..{min(m, n)} with one above 1")
    transposed = m < n
    a0 = (w0.T if transposed else w0).double()
    da = (w1.T if transposed else w1).double() - a0
    r = reduce_pair(a0, da)
    spec, v = spectral_metrics(r, a0.shape[1], (m, n), transposed, ks, k0)
    changed = bf16_changed(w0, w1)
    keys_low = magnitude_keys(w0)
    recon = a0 @ v @ v.T  # rank-k0 reconstruction (in A's orientation; same entries)
    keys_princ = INT64_MAX - magnitude_keys(recon.T if transposed else recon)
    out = {
        "shape": [m, n],
        "sparsity_bf16": 1.0 - changed.double().mean().item(),
        "sparsity_exact": sparsity_exact(w0, w1),
        **spec,
        "alpha": alpha,
        "numel": m * n,
        "changed": int(changed.sum().item()),
    }
    nm, total = out["changed"], m * n

    def overlaps(a: float) -> tuple[float | None, float | None, float]:
        k = select_count(total, a)
        wp = fraction_weights(keys_princ, *bottom_k_threshold(keys_princ, k), k)
        wl = fraction_weights(keys_low, *bottom_k_threshold(keys_low, k), k)
        if not nm:
            return None, None, k / total
        return wp[changed].sum().item() / nm, wl[changed].sum().item() / nm, k / total

    op, ol, rnd = overlaps(alpha)
    out.update(overlap_principal=op, overlap_low=ol, overlap_random=rnd)
    if alphas:
        rows = [overlaps(a) for a in alphas]
        out["alpha_sweep"] = {
            "alpha": list(alphas),
            "overlap_principal": [r[0] for r in rows],
            "overlap_low": [r[1] for r in rows],
            "overlap_random": [r[2] for r in rows],
        }
    return out


NULL_KEYS = ("null_overlap_principal", "jaccard_threshold", "update_norm_rel",
             "random_update_sparsity_bf16", "random_update_overlap_low",
             "random_update_overlap_principal")  # fmt: skip


def magnitude_null(w0: torch.Tensor, w1: torch.Tensor, k0: int, alpha: float,
                   seed: int = 0) -> dict:  # fmt: skip
    """The RL-free nulls of an update's changed-entry mask M (bf16 criterion).

    - The *magnitude-threshold* mask T: the |M| smallest-magnitude entries of ``w0``, what
      bf16 rounding alone changes when every entry moves by the same small amount (Gate III):
      T's overlap with M_princ (``null_overlap_principal``; M_princ the top-``alpha`` entries
      of |rank-``k0`` reconstruction of w0|, as in :func:`pair_metrics`) and the Jaccard of M
      with T (``jaccard_threshold``); both None when nothing changed.
    - The *random update* of the same size: w0 plus Gaussian noise of the update's RMS
      (seeded), put through the same bf16 criterion. Its sparsity and its mask's overlaps with
      M_low and M_princ (``random_update_*``) are what an update that knows nothing about the
      weights would show at this size; an update is localised only where it departs from them.
    - ``update_norm_rel``: ||w1 - w0||_F / ||w0||_F, the update's size (NSS and the angles grow
      with it, so comparing arms at one lr compares their sizes too)."""
    d = w1.double() - w0.double()
    n0 = float(torch.linalg.norm(w0.double()))
    size = float(torch.linalg.norm(d)) / n0 if n0 else None
    changed = bf16_changed(w0, w1)
    c, total = int(changed.sum().item()), changed.numel()
    out = dict.fromkeys(NULL_KEYS)
    out["update_norm_rel"] = size
    if not c:
        return out
    u, sv, vh = torch.linalg.svd(w0.double(), full_matrices=False)
    recon = (u[:, :k0] * sv[:k0]) @ vh[:k0]
    keys_p = INT64_MAX - magnitude_keys(recon)
    k = select_count(total, alpha)
    wp = fraction_weights(keys_p, *bottom_k_threshold(keys_p, k), k)
    keys = magnitude_keys(w0)
    wt = fraction_weights(keys, *bottom_k_threshold(keys, c), c)
    wl = fraction_weights(keys, *bottom_k_threshold(keys, k), k)
    rms = float(d.pow(2).mean().sqrt())
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(w0.shape, generator=g, dtype=torch.float64) * rms
    rand = bf16_changed(w0, (w0.double() + noise).float())
    r = int(rand.sum().item())
    out.update({
        "null_overlap_principal": (wp * wt).sum().item() / c,
        "jaccard_threshold": jaccard(changed, wt > 0),
        "random_update_sparsity_bf16": 1.0 - r / total,
        "random_update_overlap_low": (wl * rand).sum().item() / r if r else None,
        "random_update_overlap_principal": (wp * rand).sum().item() / r if r else None,
    })  # fmt: skip
    return out
