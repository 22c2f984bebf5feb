"""Decode kernel, recipes and searches, CATS, and saving a sparsified model."""

import json

import numpy as np
import pytest
import torch
from torch import nn

from fmlab.core.models import build_model
from fmlab.rsparse import RSparseLinear, calibrate, kernel, rsparse_modules, set_protocol, sparsify
from fmlab.rsparse.cats import CATSMLP, calibrate_cats, cats_sparsify, gate_sparsity_for
from fmlab.rsparse.recipe import (
    Recipe,
    evolutionary_search,
    model_sparsity,
    module_params,
    repair,
    teal_greedy,
    uniform,
)
from fmlab.rsparse.store import load_sparse, save_sparse


@pytest.mark.parametrize("alpha,bias", [(1.0, False), (0.7, True), (0.0, False)])
def test_decode_kernel_equals_torch_path(alpha, bias):
    torch.manual_seed(0)
    lin = nn.Linear(96, 40, bias=bias)
    rs = RSparseLinear(lin, sparsity=0.5, alpha=alpha)
    rs.set_calibration(rs.scores(torch.randn(500, 96)))
    assert kernel.AVAILABLE
    with torch.no_grad():
        for _ in range(5):
            x = torch.randn(1, 1, 96)
            fast = rs(x)
            rs.fast = False
            ref = rs(x)
            rs.fast = True
            torch.testing.assert_close(fast, ref, atol=1e-5, rtol=1e-5)
    # and the numpy reference of the same formula
    x = np.random.default_rng(0).standard_normal((1, 96)).astype(np.float32)
    wt, cn, vt, us = rs._kernel_args()
    y = np.empty((1, 40), np.float32)
    kernel.sparse_lowrank_gemm(x, wt, cn, rs.threshold.item(), vt, us, y)
    np.testing.assert_allclose(
        y, kernel.reference(x, wt, cn, rs.threshold.item(), vt, us), atol=1e-5
    )


def test_kernel_is_not_used_with_grad():
    lin = nn.Linear(16, 8)
    rs = RSparseLinear(lin, sparsity=0.5, alpha=1.0)
    rs.set_calibration(rs.scores(torch.randn(100, 16)))
    x = torch.randn(1, 16, requires_grad=True)
    rs(x).sum().backward()  # torch path: gradients flow
    assert x.grad is not None


def _tiny(seed=0):
    torch.manual_seed(seed)
    model = build_model("llama-tiny", vocab_size=64, seed=seed).eval()
    return model


def test_repair_hits_the_budget():
    rng = np.random.default_rng(0)
    p = rng.integers(100, 1000, 50).astype(float)
    s = rng.uniform(0, 1, 50)
    for target in (0.3, 0.5, 0.7):
        r = repair(s, p, target)
        assert abs(float(p @ r / p.sum()) - target) < 1e-9
        assert r.min() >= 0 and r.max() <= 0.95


def test_greedy_and_evolutionary_recipes_respect_the_budget(tmp_path):
    model = _tiny()
    sparsify(model, 0.0, 1.0, weighted=False, keep_svd=True)
    calibrate(model, [torch.randint(0, 64, (2, 48))])
    params = module_params(model)
    path = teal_greedy(model, torch.randint(0, 64, (1, 32)), [0.3, 0.5], block_step=0.05)
    for t, rec in path.items():
        assert abs(model_sparsity(rec, params) - t) < 1e-9
        # q/k/v share one sparsity (one input), as do gate/up
        layer0 = {n.rsplit(".", 1)[-1]: s for n, (s, _) in rec.items() if ".layers.0." in n}
        assert layer0["q_proj"] == layer0["k_proj"] == layer0["v_proj"]
        assert layer0["gate_proj"] == layer0["up_proj"]
    ids = torch.randint(0, 64, (1, 33))
    init = [path[0.5], uniform(model, 0.5, 0.8)]
    best, hist = evolutionary_search(model, ids, 0.5, init, population=4, generations=2, seed=0)
    assert abs(model_sparsity(best, params) - 0.5) < 1e-9
    assert hist[-1]["best"] <= hist[0]["best"]  # elitist: never worse on the search text
    assert all(0 <= a <= 1 for _, a in best.values())
    # round trip through JSON
    r = Recipe(best, 0.5, "rsparse", True, "tiny", {"generations": 2})
    r.save(tmp_path / "r.json")
    back = Recipe.load(tmp_path / "r.json")
    assert back.target == 0.5 and back.method == "rsparse"
    assert abs(back.sparsity(params) - 0.5) < 1e-5


def test_recipe_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no\.json"):
        Recipe.load(tmp_path / "no.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not JSON"):
        Recipe.load(bad)
    bad.write_text(json.dumps({"format": "other"}))
    with pytest.raises(ValueError, match="not an fmlab R-Sparse recipe"):
        Recipe.load(bad)
    doc = {
        "format": "fmlab-rsparse-recipe/1",
        "target": 0.5,
        "method": "x",
        "modules": {"a": [2, 0]},
    }
    bad.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="outside"):
        Recipe.load(bad)
    model = _tiny()
    with pytest.raises(ValueError, match="lacks"):
        sparsify(model, recipe={"model.layers.9.mlp.up_proj": (0.5, 1.0)})


def test_cats_matches_dense_at_zero_and_refuses_unreachable_targets():
    model = _tiny()
    ids = torch.randint(0, 64, (2, 30))
    dense = model(input_ids=ids).logits
    # tiny llama: up+down are 2/3 of the MLP; the MLP's share of block weights bounds CATS
    with pytest.raises(ValueError, match="cannot reach"):
        cats_sparsify(_tiny(), 0.9)
    c = gate_sparsity_for(model, 0.3)
    assert 0 < c < 1
    mlps = cats_sparsify(model, 0.0)
    calibrate_cats(model, [torch.randint(0, 64, (2, 30))])
    torch.testing.assert_close(model(input_ids=ids).logits, dense)
    model2 = _tiny()
    cats_sparsify(model2, 0.3)
    calibrate_cats(model2, [torch.randint(0, 64, (4, 64))])
    m = next(x for x in model2.modules() if isinstance(x, CATSMLP))
    assert 0 < m.threshold.item() < float("inf")
    assert not torch.allclose(model2(input_ids=ids).logits, dense)
    assert len(mlps) == model.config.num_hidden_layers


def test_save_and_load_a_sparsified_model(tmp_path, bpe_tokenizer):
    model = build_model("llama-tiny", len(bpe_tokenizer), seed=0).eval()
    sparsify(model, 0.5, 0.8)
    calibrate(model, [torch.randint(0, len(bpe_tokenizer), (2, 48))])
    set_protocol(model, "tail")
    ids = torch.randint(0, len(bpe_tokenizer), (1, 20))
    with torch.no_grad():
        ref = model(input_ids=ids).logits
        ref1 = model(input_ids=ids[:, :1]).logits  # one token: the decode kernel
    save_sparse(model, tmp_path / "sp", bpe_tokenizer, meta={"note": "test"})
    with pytest.raises(FileExistsError):
        save_sparse(model, tmp_path / "sp", bpe_tokenizer)
    loaded, _tok, meta = load_sparse(tmp_path / "sp")
    assert meta == {"note": "test"}
    mods = rsparse_modules(loaded)
    assert {m.protocol for m in mods.values()} == {"tail"}
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids).logits, ref)
        torch.testing.assert_close(loaded(input_ids=ids[:, :1]).logits, ref1)
    with pytest.raises(Exception, match="not a sparsified model"):
        load_sparse(tmp_path)


def test_bench_memo_resumes_with_the_same_settings_only(tmp_path):
    from dataclasses import asdict

    from fmlab.core.io import Memo
    from fmlab.rsparse.bench import QualityConfig

    cfg = QualityConfig()  # holds tuples, which JSON stores as lists
    m = Memo(tmp_path / "memo.json", asdict(cfg))
    m.put("teal|0.5|all", 29.0)
    again = Memo(tmp_path / "memo.json", asdict(cfg))
    assert again.resumed == 1 and again.get("teal|0.5|all") == 29.0
    other = Memo(tmp_path / "memo.json", asdict(QualityConfig(seed=1)))
    assert other.resumed == 0 and other.get("teal|0.5|all") is None


def test_works_on_a_qwen2_style_model_with_biases():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cfg = Qwen2Config(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
    )  # fmt: skip
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(cfg).eval()
    mods = sparsify(model, 0.5, 0.8)
    assert len(mods) == 14 and mods["model.layers.0.self_attn.q_proj"].bias is not None
    calibrate(model, [torch.randint(0, 64, (2, 32))])
    ids = torch.randint(0, 64, (1, 1))
    with torch.no_grad():
        fast = model(input_ids=ids).logits
        for m in mods.values():
            m.fast = False
        torch.testing.assert_close(fast, model(input_ids=ids).logits, atol=1e-5, rtol=1e-5)
