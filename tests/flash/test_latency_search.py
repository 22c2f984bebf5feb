"""Latency measurement, latency-model fit on synthetic measurements, proxies, search, recovery."""

import math
import random

import numpy as np
import pytest
import torch

from fmlab.core.train import causal_lm_loss
from fmlab.flash import BackboneShape, FlashArch
from fmlab.flash.latency import (
    LatencyModel,
    arch_features,
    flops_per_token,
    measure,
    measure_many,
    params_nonembedding,
)
from fmlab.flash.prune import prune
from fmlab.flash.recover import recover
from fmlab.flash.search import SearchSpace, hypervolume_2d, pareto_front, search

SHAPE = BackboneShape(
    num_layers=30, hidden_size=576, intermediate_size=1536, num_heads=9, num_kv_heads=3, head_dim=64
)  # fmt: skip  (SmolLM2-135M's shape)


def test_measure_reports_every_target_at_fixed_threads(backbone, scores):
    small = prune(backbone, FlashArch([0], 32, 1), scores=scores)
    r = measure_many({"base": backbone, "small": small}, (16,), (8,), threads=1, repeats=2,
                     warmup=1, decode_tokens=2)  # fmt: skip
    assert set(r["latency"]["base"]) == {"prefill@16", "decode@8"}
    assert r["threads"] == 1 and r["timing"]["decode@8"]["threads"] == 1
    assert all(v > 0 for m in r["latency"].values() for v in m.values())
    # interleaved: every repeat ran both models, the order rotating
    assert r["timing"]["prefill@16"]["orders"] == [["base", "small"], ["small", "base"]]
    assert measure(small, (16,), (), repeats=1)["prefill@16"] > 0
    with pytest.raises(ValueError, match="runtime"):
        measure(small, (16,), (), runtime="onnx")


def _synthetic(n: int, seed: int):
    """Archs of SmolLM2's shape and a made-up latency law (affine in work, with noise)."""
    rng = random.Random(seed)
    imp_like = type("I", (), {})()
    imp_like.block = [rng.random() for _ in range(30)]
    imp_like.attention = [rng.random() for _ in range(30)]
    space = SearchSpace(min_layers=8)
    archs = [space.sample(SHAPE, imp_like, rng) for _ in range(n)]
    noise = np.random.default_rng(seed)

    def law(a, t):
        f = dict(zip(("layers", "attn", "ffn_l", "q", "kv", "ffn", "qc", "kvc"),
                     arch_features(a, SHAPE, t), strict=True))  # fmt: skip
        base = 2e-4 * f["layers"] + 1e-6 * f["ffn"] + 3e-5 * f["q"] + 2e-8 * f["qc"] + 1e-3
        return base * (1 + 0.01 * noise.standard_normal())  # 1% measurement noise

    lat = [{t: law(a, t) for t in ("prefill@128", "decode@2048")} for a in archs]
    return archs, lat


def test_latency_model_fits_synthetic_measurements():
    archs, lat = _synthetic(40, 0)
    test_archs, test_lat = _synthetic(15, 1)
    m = LatencyModel(SHAPE, kind="gp").fit(archs, lat)
    cv = m.cross_validate(folds=4)
    held = m.evaluate(test_archs, test_lat)
    assert set(cv) == {"prefill@128", "decode@2048"}
    # the smooth law is what a GP on these features should recover, in and out of sample
    assert all(cv[t]["r2"] > 0.95 and held[t]["r2"] > 0.95 for t in cv)
    assert all(cv[t]["mape"] < 0.05 for t in cv)
    assert all(0 < cv[t]["flops_spearman"] <= 1 for t in cv)
    # serialised as data, refitted on load: same predictions
    again = LatencyModel.from_dict(m.to_dict())
    a = test_archs[0]
    assert again.predict(a) == pytest.approx(m.predict(a))
    gbr = LatencyModel(SHAPE, kind="gbr").fit(archs, lat).evaluate(test_archs, test_lat)
    assert all(gbr[t]["r2"] > 0.5 for t in gbr)  # coarser, but it learns the law
    with pytest.raises(ValueError, match="not fitted"):
        LatencyModel(SHAPE).predict(archs[0])


def test_proxies_count_what_was_removed():
    full = FlashArch.uniform(SHAPE)
    half = FlashArch(list(range(30)), 768, 3)
    skip = FlashArch(list(range(30)), 1536, 3, ["skip"] * 10 + ["full"] * 20)
    p_full = params_nonembedding(full, SHAPE)
    assert p_full == pytest.approx(30 * (576 * 64 * 15 + 64 * 9 * 576 + 3 * 576 * 1536 + 2 * 576)
                                   + 576)  # fmt: skip
    assert params_nonembedding(half, SHAPE) < p_full
    assert flops_per_token(skip, SHAPE, "decode@2048") < flops_per_token(full, SHAPE, "decode@2048")
    w = FlashArch(list(range(30)), 1536, 3, "window:128")
    f_w, f = arch_features(w, SHAPE, "decode@2048"), arch_features(full, SHAPE, "decode@2048")
    assert f_w[-2] < f[-2]  # heads x context: a window attends to fewer keys


def test_pareto_and_hypervolume():
    pts = [(1.0, 5.0), (2.0, 3.0), (3.0, 4.0), (0.5, 9.0), (2.0, 2.5)]
    assert pareto_front(pts) == [3, 0, 4]
    # ref (4, 10): (0.5,9)->3.5x1, (1,5)->3x4, (2,2.5)->2x2.5
    assert hypervolume_2d(pts, (4.0, 10.0)) == pytest.approx(3.5 + 12 + 5)
    assert hypervolume_2d([(5.0, 1.0)], (4.0, 10.0)) == 0.0


def test_search_returns_a_pareto_set(backbone, scores, calib):
    shape = BackboneShape.of(backbone)
    space = SearchSpace(min_layers=1, modes=("full", "skip", "window:8"))
    blocks = torch.cat([calib, calib[:, :1]], 1)

    def ppl(arch):
        m = prune(backbone, arch, scores=scores)
        with torch.no_grad():
            b = {"input_ids": blocks[:, :-1], "labels": blocks[:, 1:]}
            return math.exp(float(causal_lm_loss(m, b)))

    def lat(arch):
        return flops_per_token(arch, shape, "prefill@32") / flops_per_token(
            FlashArch.uniform(shape), shape, "prefill@32"
        )

    res = search(shape, scores, lat, ppl, space=space, trials=12, population=4, seed=0)
    assert len(res.trials) == 12 and res.pareto and res.hypervolume > 0
    pts = [(t["latency"], t["ppl"]) for t in res.trials]
    for i in res.pareto:  # nothing dominates a front member
        assert not any(q[0] <= pts[i][0] and q[1] <= pts[i][1] and q != pts[i] for q in pts)
    for i in set(range(12)) - set(res.pareto):  # and every other point is dominated
        assert any(pts[j][0] <= pts[i][0] and pts[j][1] <= pts[i][1] for j in res.pareto)
    assert all(a.validate(shape) for a in res.pareto_archs())


def test_recover_distils_and_resumes(backbone, scores, calib, tmp_path):
    blocks = torch.randint(0, 97, (16, 17), generator=torch.Generator().manual_seed(5))
    student = prune(backbone, FlashArch([0, 3], [64, 64], [1, 1]), scores=scores)
    before = {k: v.clone() for k, v in student.state_dict().items()}
    half = recover(student, backbone, blocks, tokens=4 * 16 * 6, out_dir=tmp_path / "r",
                   batch_size=4, lr=1e-3, progress=False)  # fmt: skip
    assert half.steps == 6 and not half.interrupted
    assert any(not torch.equal(before[k], v) for k, v in student.state_dict().items())
    again = recover(student, backbone, blocks, tokens=4 * 16 * 6, out_dir=tmp_path / "r",
                    batch_size=4, lr=1e-3, progress=False)  # fmt: skip
    assert again.steps == 6  # resumed a finished run: no extra steps
    kl = [r["loss"] for r in half.history if "loss" in r]
    assert kl[-1] < kl[0]
