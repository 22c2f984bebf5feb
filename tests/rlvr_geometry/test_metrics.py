"""Metric definitions against independent numpy/scipy computations with known answers."""

import math

import numpy as np
import pytest
import scipy.linalg
import torch

from fmlab.rlvr_geometry import (
    bf16_changed,
    jaccard,
    jaccard_random,
    max_principal_angle_deg,
    numerical_rank,
    pair_metrics,
    sparsity_bf16,
    sparsity_exact,
)


def _planted(m, n, seed=0, decay=0.7):
    """W = U diag(s) Vᵀ with known orthonormal U, V and distinct decaying s (numpy float64)."""
    rng = np.random.default_rng(seed)
    u, _ = np.linalg.qr(rng.standard_normal((m, m)))
    v, _ = np.linalg.qr(rng.standard_normal((n, n)))
    q = min(m, n)
    s = 3.0 * decay ** np.arange(q) + 0.05
    return u, s, v, (u[:, :q] * s) @ v[:, :q].T


def _t(x):
    return torch.from_numpy(np.ascontiguousarray(x))


def test_planted_sparse_update_bf16_vs_exact():
    rng = np.random.default_rng(1)
    m, n = 64, 48
    # weights exactly on the bf16 grid, so a sub-ULP change rounds back to the same bf16
    w0 = torch.randn(m, n, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16).float()
    idx = rng.permutation(m * n)
    big, tiny = idx[:300], idx[300:700]  # 300 visible changes, 400 sub-ULP ones
    w1 = w0.clone().reshape(-1)
    w1[big] *= 1.25  # well above half a bf16 ULP (2⁻⁹ relative)
    w1[tiny] *= 1 + 2.0**-12  # below half a bf16 ULP, exact in float32
    w1 = w1.reshape(m, n)
    assert sparsity_bf16(w0, w1) == pytest.approx(1 - 300 / (m * n), abs=1e-12)
    assert sparsity_exact(w0, w1) == pytest.approx(1 - 700 / (m * n), abs=1e-12)
    # an independent count: float32 bit patterns through numpy
    b0, b1 = w0.numpy().view(np.uint32), w1.numpy().view(np.uint32)
    assert (b0 != b1).sum() == 700
    mask = bf16_changed(w0, w1).numpy().reshape(-1)
    assert set(np.flatnonzero(mask)) == set(big.tolist())
    res = pair_metrics(w0, w1, ks=(1, 4), alpha=0.5)
    assert res["changed"] == 300 and res["sparsity_exact"] == pytest.approx(1 - 700 / (m * n))


def test_exact_sparsity_across_dtypes_compares_in_the_promoted_dtype():
    w0 = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    w1 = w0.to(torch.bfloat16)  # the same values, stored in bf16
    assert sparsity_exact(w0, w1) == 1.0
    w1[0, 0] = 1.5
    assert sparsity_exact(w0, w1) == 0.75 and sparsity_bf16(w0, w1) == 0.75


@pytest.mark.parametrize("shape", [(40, 24), (24, 40)])
def test_planted_rotation_gives_the_principal_angle(shape):
    m, n = shape
    u, _s, _v, w0 = _planted(m, n, seed=2)
    theta = 0.3  # radians, in the plane (u₄, u₅): rotates the 4th direction out of the top 4
    c, sn = math.cos(theta), math.sin(theta)
    rot = np.eye(m)
    rot += np.outer(u[:, 3], u[:, 3]) * (c - 1) + np.outer(u[:, 4], u[:, 4]) * (c - 1)
    rot += np.outer(u[:, 4], u[:, 3]) * sn - np.outer(u[:, 3], u[:, 4]) * sn
    w1 = rot @ w0
    res = pair_metrics(_t(w0), _t(w1), ks=(1, 2, 4, 8), alpha=0.5)
    ang = res["principal_angle_max_deg"]
    assert ang["4"] == pytest.approx(math.degrees(theta), abs=1e-9)
    for k in ("1", "2", "8"):  # subspaces the rotation leaves invariant
        assert ang[k] == pytest.approx(0.0, abs=1e-6)
    assert res["nss"] == pytest.approx(0.0, abs=1e-12)  # a rotation keeps the spectrum
    # independent: scipy's subspace angles between numpy's singular subspaces
    ua = np.linalg.svd(w0)[0][:, :4]
    ub = np.linalg.svd(w1)[0][:, :4]
    assert math.degrees(scipy.linalg.subspace_angles(ua, ub).max()) == pytest.approx(
        ang["4"], abs=1e-9
    )


def test_principal_angles_random_perturbation_match_scipy():
    rng = np.random.default_rng(3)
    _, _, _, w0 = _planted(50, 30, seed=3)
    w1 = w0 + 0.05 * rng.standard_normal(w0.shape)
    res = pair_metrics(_t(w0), _t(w1), ks=(1, 3, 10), alpha=0.5)
    u0, u1 = np.linalg.svd(w0)[0], np.linalg.svd(w1)[0]
    for k in (1, 3, 10):
        ref = math.degrees(scipy.linalg.subspace_angles(u0[:, :k], u1[:, :k]).max())
        assert res["principal_angle_max_deg"][str(k)] == pytest.approx(ref, rel=1e-7, abs=1e-9)


def test_tiny_angles_are_accurate():
    """Where cos θ rounds to 1 in float64, the sine branch still resolves the angle."""
    q0 = torch.eye(6, 2, dtype=torch.float64)
    eps = 1e-9
    q1 = q0.clone()
    q1[:, 1] = torch.tensor([0, math.cos(eps), math.sin(eps), 0, 0, 0], dtype=torch.float64)
    assert max_principal_angle_deg(q0, q1) == pytest.approx(math.degrees(eps), rel=1e-6)


@pytest.mark.parametrize("j", [2, 7])
def test_planted_spectrum_change_nss_closed_form(j):
    m, n = 36, 20
    u, s, v, w0 = _planted(m, n, seed=4)
    s1 = s.copy()
    s1[j] *= 1.1  # small enough that the order of the singular values is kept
    w1 = (u[:, :n] * s1) @ v.T
    res = pair_metrics(_t(w0), _t(w1), ks=(1, 4), alpha=0.5)
    assert res["nss"] == pytest.approx(0.1 * s[j] / np.linalg.norm(s), rel=1e-10)
    # independent: numpy singular values
    ref = np.linalg.norm(np.linalg.svd(w1, compute_uv=False) - np.linalg.svd(w0, compute_uv=False))
    assert res["nss"] == pytest.approx(ref / np.linalg.norm(s), rel=1e-10)
    # ΔW = 0.1 s_j u_j v_jᵀ: rank one, inside the top-4 directions iff j < 4
    assert res["update_rank_ratio"] == pytest.approx(1 / n)
    assert res["rho_princ"] == pytest.approx(1.0 if j < 4 else 0.0, abs=1e-9)


@pytest.mark.parametrize("shape", [(30, 18), (18, 30)])
def test_rho_princ_inside_orthogonal_and_random(shape):
    m, n = shape
    rng = np.random.default_rng(5)
    u, _s, v, w0 = _planted(m, n, seed=5)
    k0 = 4
    inside = u[:, :k0] @ rng.standard_normal((k0, k0)) @ v[:, :k0].T
    outside = u[:, k0:] @ rng.standard_normal((m - k0, n - k0)) @ v[:, k0:].T
    for dw, want in ((inside, 1.0), (outside, 0.0)):
        res = pair_metrics(_t(w0), _t(w0 + 1e-3 * dw), ks=(1, k0), alpha=0.5)
        assert res["rho_princ"] == pytest.approx(want, abs=1e-8)
    dw = rng.standard_normal((m, n))
    res = pair_metrics(_t(w0), _t(w0 + 0.01 * dw), ks=(1, k0), alpha=0.5)
    uu, _, vh = np.linalg.svd(w0)
    pu, pv = uu[:, :k0] @ uu[:, :k0].T, vh[:k0].T @ vh[:k0]
    d = 0.01 * dw
    assert res["rho_princ"] == pytest.approx(
        np.linalg.norm(pu @ d @ pv) / np.linalg.norm(d), rel=1e-8
    )


@pytest.mark.parametrize("r", [1, 3, 9])
def test_update_rank_ratio_of_a_rank_r_update(r):
    m, n = 40, 25
    rng = np.random.default_rng(6)
    w0 = rng.standard_normal((m, n))
    dw = rng.standard_normal((m, r)) @ rng.standard_normal((r, n)) * 1e-2
    res = pair_metrics(_t(w0), _t(w0 + dw), ks=(1, 4), alpha=0.5)
    assert res["update_rank"] == r == np.linalg.matrix_rank(dw)
    assert res["update_rank_ratio"] == pytest.approx(r / n)
    assert numerical_rank(torch.tensor([1.0, 1e-20, 0.0], dtype=torch.float64), (3, 3)) == 1


def test_overlaps_match_numpy_ranking():
    rng = np.random.default_rng(7)
    m, n, k0, alpha = 30, 20, 4, 0.3
    w0 = rng.standard_normal((m, n)).astype(np.float32)
    w1 = w0.copy()
    chosen = rng.random((m, n)) < 0.2
    w1[chosen] += 0.5
    res = pair_metrics(_t(w0), _t(w1), ks=(1, k0, 8), alpha=alpha, alphas=(0.1, 0.5))
    uu, ss, vh = np.linalg.svd(w0.astype(np.float64))
    recon = (uu[:, :k0] * ss[:k0]) @ vh[:k0]
    big = round(alpha * m * n)

    def expect(a):
        k = math.floor(a * m * n + 0.5)
        princ = np.zeros(m * n, bool)
        princ[np.argsort(-np.abs(recon).ravel(), kind="stable")[:k]] = True
        low = np.zeros(m * n, bool)
        low[np.argsort(np.abs(w0).ravel(), kind="stable")[:k]] = True
        mk = chosen.ravel()
        return (mk & princ).sum() / mk.sum(), (mk & low).sum() / mk.sum()

    assert big == math.floor(alpha * m * n + 0.5)
    op, ol = expect(alpha)
    assert res["overlap_principal"] == pytest.approx(op, abs=1e-12)
    assert res["overlap_low"] == pytest.approx(ol, abs=1e-12)
    assert res["overlap_random"] == pytest.approx(big / (m * n))
    for i, a in enumerate((0.1, 0.5)):
        op, ol = expect(a)
        assert res["alpha_sweep"]["overlap_principal"][i] == pytest.approx(op, abs=1e-12)
        assert res["alpha_sweep"]["overlap_low"][i] == pytest.approx(ol, abs=1e-12)


def test_overlap_low_shares_ties_fractionally():
    """All magnitudes equal: M_low picks K of N tied entries, each with weight K/N."""
    w0 = torch.ones(10, 8)
    w0[::2] = -1.0
    w1 = w0.clone()
    w1[0, :4] = 2.0
    res = pair_metrics(w0, w1, ks=(1, 2), alpha=0.25)
    assert res["overlap_low"] == pytest.approx(20 / 80)


def test_no_change_gives_undefined_ratios():
    w0 = torch.randn(12, 8)
    res = pair_metrics(w0, w0.clone(), ks=(1, 2), alpha=0.5)
    assert res["sparsity_bf16"] == res["sparsity_exact"] == 1.0
    assert res["overlap_principal"] is None and res["rho_princ"] is None
    assert res["nss"] == 0.0 and res["update_rank_ratio"] == 0.0


def test_jaccard_by_hand():
    a = torch.tensor([1, 1, 0, 0], dtype=torch.bool)
    b = torch.tensor([1, 0, 1, 0], dtype=torch.bool)
    assert jaccard(a, b) == pytest.approx(1 / 3)
    assert jaccard_random(0.5, 0.5) == pytest.approx(0.25 / 0.75)
    assert jaccard_random(0.2, 0.5) == pytest.approx(0.1 / 0.6)
    assert jaccard(torch.zeros(3, dtype=torch.bool), torch.zeros(3, dtype=torch.bool)) is None
    assert jaccard_random(0.0, 0.0) is None


def test_bad_ks_in_memory():
    with pytest.raises(ValueError, match="must lie in"):
        pair_metrics(torch.randn(5, 4), torch.randn(5, 4), ks=(1, 8))


def test_magnitude_and_random_update_nulls():
    from fmlab.rlvr_geometry.metrics import magnitude_null

    g = torch.Generator().manual_seed(0)
    w0 = torch.randn(64, 48, generator=g).to(torch.bfloat16)
    mags = w0.float().abs().flatten()
    # a uniform tiny update: bf16 rounding alone changes exactly the smallest-|w0| entries,
    # so the magnitude-threshold mask is the changed mask itself
    w1 = (w0.double() + 2e-3).float()
    out = magnitude_null(w0, w1, k0=4, alpha=0.5)
    changed = bf16_changed(w0, w1)
    assert out["jaccard_threshold"] == pytest.approx(1.0, abs=0.02)
    assert mags[changed.flatten()].max() < mags[~changed.flatten()].min() + 1e-6
    # the random update of the same RMS: its size by hand, and a Gaussian update of that RMS
    # leaves the same kind of mask (overlaps agree with those of the update itself)
    d = 1e-2 * torch.randn(64, 48, generator=g, dtype=torch.float64)
    w2 = (w0.double() + d).float()
    out = magnitude_null(w0, w2, k0=4, alpha=0.5, seed=3)
    ref = np.linalg.norm(w2.double() - w0.double()) / np.linalg.norm(w0.double())
    assert out["update_norm_rel"] == pytest.approx(ref, rel=1e-9)
    c = bf16_changed(w0, w2)
    low = mags <= mags.median()  # M_low, alpha = 0.5 (ties aside)
    assert out["random_update_overlap_low"] == pytest.approx(
        float(low[c.flatten()].float().mean()), abs=0.04)  # fmt: skip
    assert out["random_update_sparsity_bf16"] == pytest.approx(
        1 - c.float().mean().item(), abs=0.04)  # fmt: skip
    # an update planted only in the principal mask departs from the random update's overlap
    recon = torch.linalg.svd(w0.double(), full_matrices=False)
    r4 = (recon.U[:, :4] * recon.S[:4]) @ recon.Vh[:4]
    princ = r4.abs() >= r4.abs().flatten().median()
    w3 = torch.where(princ, w0.double() + 0.05 * torch.sign(w0.double()), w0.double()).float()
    out = magnitude_null(w0, w3, k0=4, alpha=0.5)
    assert out["random_update_overlap_principal"] < 0.7 and out["null_overlap_principal"] < 0.7
    # nothing changed: the nulls are undefined, the size is 0
    out = magnitude_null(w0, w0.float(), k0=4, alpha=0.5)
    assert out["update_norm_rel"] == 0 and out["random_update_overlap_low"] is None
