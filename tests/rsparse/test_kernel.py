"""The decode kernel: the reference sparse math at 1 and 2 threads, batches, bf16, counters,
and the dispatch (kernel for decode, dense fallback for prefill and large batches)."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from fmlab.core.models import build_model
from fmlab.rsparse import (
    RSparseLinear,
    calibrate,
    kernel,
    rsparse_modules,
    set_max_kernel_batch,
    set_protocol,
    sparsify,
)


def _problem(b, d_in, d_out, r, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((b, d_in)).astype(np.float32)
    wt = rng.standard_normal((d_in, d_out)).astype(np.float32)
    cn = np.abs(rng.standard_normal(d_in)).astype(np.float32) + 0.1
    vt = rng.standard_normal((d_in, r)).astype(np.float32)
    us = rng.standard_normal((d_out, r)).astype(np.float32)
    tau = float(np.float32(np.median(np.abs(x) * cn)))
    return x, wt, cn, tau, vt, us


def _bits(a: np.ndarray) -> np.ndarray:
    return torch.from_numpy(a).bfloat16().view(torch.int16).numpy().view(np.uint16)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("b,r", [(1, 0), (1, 5), (3, 0), (4, 9)])
def test_kernel_equals_the_reference_sparse_math(threads, b, r):
    # 200 output columns: blocks of 112 and 88, so the block edges are exercised
    x, wt, cn, tau, vt, us = _problem(b, 131, 200, r)
    y = np.full((b, 200), np.nan, np.float32)
    counts = np.zeros(6, np.int64)
    kernel.sparse_lowrank_gemm(x, wt, cn, tau, vt, us, y, threads=threads, counts=counts)
    np.testing.assert_allclose(y, kernel.reference(x, wt, cn, tau, vt, us), rtol=1e-4, atol=1e-4)
    keep = np.abs(x) * cn > np.float32(tau)
    union = int(keep.any(axis=0).sum())
    low = int((~keep).any(axis=0).sum())
    assert counts[kernel.C_CALLS] == 1 and counts[kernel.C_ROWS] == b
    assert counts[kernel.C_KEPT] == keep.sum() and counts[kernel.C_SEEN] == b * 131
    assert counts[kernel.C_STREAMED] == union
    lr_bytes = (low * r + 200 * r) * 4 if r else 0
    assert counts[kernel.C_BYTES] == union * 200 * 4 + lr_bytes


@pytest.mark.parametrize("threads", [1, 2])
def test_kernel_at_the_extremes_of_tau(threads):
    x, wt, cn, _, vt, us = _problem(2, 64, 48, 3)
    for tau in (-1.0, math.inf):  # every channel kept / none kept (then only low rank)
        y = np.empty((2, 48), np.float32)
        kernel.sparse_lowrank_gemm(x, wt, cn, tau, vt, us, y, threads=threads)
        np.testing.assert_allclose(
            y, kernel.reference(x, wt, cn, tau, vt, us), rtol=1e-4, atol=1e-4
        )


@pytest.mark.parametrize("threads", [1, 2])
def test_bf16_kernel_equals_the_reference_on_bf16_values(threads):
    x, wt, cn, tau, vt, us = _problem(2, 96, 72, 4, seed=1)
    xb, wb = _bits(x), _bits(wt)
    y = np.empty((2, 72), np.uint16)
    kernel.sparse_lowrank_gemm(xb, wb, cn, tau, vt, us, y, threads=threads)
    # the reference on the same bf16 values, accumulated in fp32, rounded once like torch
    want = torch.from_numpy(kernel.reference(xb, wb, cn, tau, vt, us)).bfloat16()
    got = torch.from_numpy(y.view(np.int16)).view(torch.bfloat16)
    assert torch.equal(got, want) or torch.allclose(got.float(), want.float(), rtol=8e-3)


def test_bf16_layer_uses_the_kernel_and_matches_the_torch_path():
    torch.manual_seed(0)
    lin = nn.Linear(64, 40, bias=True).to(torch.bfloat16)
    rs = RSparseLinear(lin, sparsity=0.5, alpha=0.8)
    rs.set_calibration(rs.scores(torch.randn(300, 64).bfloat16()))
    x = torch.randn(1, 1, 64).bfloat16()
    kernel.reset_counters()
    with torch.no_grad():
        fast = rs(x)
        assert kernel.counters()["rows_streamed"] < 64  # the kernel ran, on kept rows only
        rs.fast = False
        ref = rs(x)
    assert fast.dtype == torch.bfloat16 and fast.shape == (1, 1, 40)
    torch.testing.assert_close(fast.float(), ref.float(), rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_weight_stays_row_major_and_the_kernel_copy_follows_changes(dtype):
    """Dense GEMM is slower on a transposed weight (bf16 prefill on AVX2, fp32 at batch 4):
    the module keeps torch's layout and gives the kernel its own Wᵀ, remade when the weight
    changes in place (a state-dict load does that)."""
    torch.manual_seed(0)
    rs = RSparseLinear(nn.Linear(64, 40, bias=False).to(dtype), sparsity=0.5)
    assert rs.weight.is_contiguous()
    rs.set_calibration(rs.scores(torch.randn(300, 64).to(dtype)))
    x = torch.randn(1, 1, 64).to(dtype)
    with torch.no_grad():
        before = rs(x)
        assert rs._wt is not None and rs._wt.is_contiguous()  # the kernel's copy
        rs.weight.mul_(2.0)  # exact in bf16
        after = rs(x)
    torch.testing.assert_close(after.float(), 2 * before.float(), rtol=1e-2, atol=1e-2)
    assert rs.weight.is_contiguous()


def _cache_kw(model, out):
    from fmlab.rsparse.speed import cache_kwarg

    return {cache_kwarg(model): out.past_key_values}


def _tiny_sparse(protocol):
    torch.manual_seed(0)
    model = build_model("llama-tiny", vocab_size=64, seed=0).eval()
    sparsify(model, 0.5, 1.0)
    calibrate(model, [torch.randint(0, 64, (2, 48))])
    set_protocol(model, protocol)
    return model


@torch.no_grad()
def test_prefill_takes_the_dense_fallback_and_decode_the_kernel():
    model = _tiny_sparse("decode")
    n = len(rsparse_modules(model))
    ids = torch.randint(0, 64, (1, 12))
    dense = build_model("llama-tiny", vocab_size=64, seed=0).eval()
    kernel.reset_counters()
    out = model(input_ids=ids, use_cache=True)
    c = kernel.counters()
    # prefill: every module read all of its weights (dense), same logits as the dense model
    assert c["channels_kept"] == c["channels_seen"]
    torch.testing.assert_close(out.logits, dense(input_ids=ids).logits, atol=1e-5, rtol=1e-5)
    kernel.reset_counters()
    step = model(input_ids=ids[:, -1:], **_cache_kw(model, out), use_cache=True)
    c = kernel.counters()
    assert c["calls"] == n and c["rows"] == n
    assert 0.3 < c["channels_kept"] / c["channels_seen"] < 0.7  # sparse through the kernel
    assert step.logits.shape == (1, 1, 64)
    # above the kernel's batch limit, decode falls back to dense too
    set_max_kernel_batch(model, 1)
    kernel.reset_counters()
    model(input_ids=torch.randint(0, 64, (3, 1)))
    c = kernel.counters()
    assert (
        c["channels_kept"]
        == c["channels_seen"]
        == 3 * sum(m.in_features for m in rsparse_modules(model).values())
    )


@torch.no_grad()
def test_batched_decode_equals_one_row_at_a_time():
    model = _tiny_sparse("all")
    ids = torch.randint(0, 64, (3, 1))
    together = model(input_ids=ids).logits
    alone = torch.cat([model(input_ids=ids[i : i + 1]).logits for i in range(3)])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-5)
    for m in rsparse_modules(model).values():
        m.fast = False
    torch.testing.assert_close(model(input_ids=ids).logits, together, atol=1e-4, rtol=1e-4)


def test_the_kernel_uses_torch_threads():
    model = _tiny_sparse("all")
    old = torch.get_num_threads()
    try:
        outs = []
        for t in (1, 2):
            torch.set_num_threads(t)
            with torch.no_grad():
                outs.append(model(input_ids=torch.tensor([[5]])).logits)
            if t == 2:
                assert kernel._threads_set[0] == min(2, kernel.max_threads())
        torch.testing.assert_close(outs[0], outs[1], atol=1e-5, rtol=1e-5)
    finally:
        torch.set_num_threads(old)


def test_calibration_memory_is_bounded():
    from fmlab.rsparse.sparse import _Reservoir

    res = _Reservoir(1000, torch.Generator().manual_seed(0))
    for row in torch.rand(50, 2000):
        res.add(row)
    assert res.seen == 100_000 and res.sample().numel() == 1000
    # a uniform sample: its quantiles are those of the data
    q = torch.tensor([0.1, 0.5, 0.9])
    torch.testing.assert_close(torch.quantile(res.sample(), q), q, atol=0.05, rtol=0)


def test_serial_and_parallel_builds_have_separate_cache_entries():
    """numba keys its on-disk cache by function name and line, not by compile flags: built
    from one function, the parallel kernel loaded the serial machine code (one thread)."""
    files = [getattr(getattr(f, "_cache", None), "_cache_file", None)
             for f in (kernel._serial, kernel._parallel)]  # fmt: skip
    if any(f is None for f in files):
        pytest.skip("numba's cache internals changed")
    assert files[0]._index_name != files[1]._index_name
