"""The streaming analyzer: equal to the in-memory metrics, end to end through the CLI on
tiny HF Llama checkpoints (one sharded), and every bad input refused before any output."""

import json
import os

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from fmlab.cli import app
from fmlab.core.models import build_model
from fmlab.rlvr_geometry import GeometryError, analyze, layer_type, pair_metrics
from fmlab.rlvr_geometry.analyze import _RadixSelect

V = 96
KS = "1,2,4,8"
runner = CliRunner()

TENSOR_KEYS = {
    "name",
    "shape",
    "sparsity_bf16",
    "sparsity_exact",
    "nss",
    "principal_angle_max_deg",
    "overlap_principal",
    "overlap_low",
    "alpha",
    "rho_princ",
    "update_rank_ratio",
}


def _sparse_update(model, seed, frac, eps=0.02):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            mask = torch.rand(p.shape, generator=g) < frac
            p.add_(eps * torch.randn(p.shape, generator=g) * mask)
    return model


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("geometry")
    base = build_model("llama-tiny", V, seed=0)
    base.save_pretrained(root / "base")
    a = _sparse_update(build_model("llama-tiny", V, seed=0), 1, 0.3)
    a.save_pretrained(root / "rl_a", max_shard_size="40KB")  # sharded, with an index
    b = _sparse_update(build_model("llama-tiny", V, seed=0), 2, 0.3)
    b.save_pretrained(root / "rl_b")
    assert (root / "rl_a" / "model.safetensors.index.json").is_file()
    return root


def _load(d):
    out = {}
    for f in sorted(d.glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


def test_streamed_equals_in_memory_reference_tall_and_wide():
    g = torch.Generator().manual_seed(0)
    sd0 = {
        "model.layers.0.mlp.up_proj.weight": torch.randn(120, 16, generator=g),  # tall
        "model.layers.0.mlp.down_proj.weight": torch.randn(16, 120, generator=g),  # wide
        "model.norm.weight": torch.ones(16),
    }
    sds = [
        {
            k: v + 0.05 * torch.randn(v.shape, generator=g) * (torch.rand(v.shape, generator=g) < f)
            for k, v in sd0.items()
        }
        for f in (0.2, 0.4)
    ]
    kw = dict(ks=(1, 2, 4, 8), alpha=0.3, alphas=(0.1, 0.5))
    rep = analyze(sd0, sds, block_elems=200, **kw)  # many blocks: streamed QR and selection
    for i, sd in enumerate(sds):
        for e in rep["checkpoints"][i]["tensors"]:
            ref = pair_metrics(sd0[e["name"]], sd[e["name"]], **kw)
            for key, want in ref.items():
                got = e[key]
                if isinstance(want, dict):
                    if key == "alpha_sweep":
                        for sk in want:
                            np.testing.assert_allclose(got[sk], want[sk], rtol=1e-9, atol=1e-12)
                    else:
                        for k in want:
                            assert got[k] == pytest.approx(want[k], rel=1e-6, abs=1e-9), (key, k)
                elif isinstance(want, float):
                    assert got == pytest.approx(want, rel=1e-9, abs=1e-12), key
                else:
                    assert got == want, key
    assert [s["name"] for s in rep["skipped"]] == ["model.norm.weight"]
    # pairs by hand: pooled over both matrices
    pair = rep["pairs"][0]
    masks = [
        torch.cat(
            [
                (sd[k].to(torch.bfloat16) != sd0[k].to(torch.bfloat16)).reshape(-1)
                for k in sorted(sd0)
                if sd0[k].ndim == 2
            ]
        )
        for sd in sds
    ]
    inter, union = (masks[0] & masks[1]).sum().item(), (masks[0] | masks[1]).sum().item()
    p, q = masks[0].double().mean().item(), masks[1].double().mean().item()
    assert pair["jaccard"] == pytest.approx(inter / union)
    assert pair["jaccard_random"] == pytest.approx(p * q / (p + q - p * q))
    assert pair["a"] == "checkpoint 1" and pair["b"] == "checkpoint 2"


def test_radix_select_matches_sort_with_ties():
    g = torch.Generator().manual_seed(1)
    keys = torch.randint(0, 50, (1000,), generator=g).double().view(torch.int64)
    counts = [0, 1, 137, 500, 999, 1000]
    sel = _RadixSelect(counts)
    while not sel.done:
        for blk in keys.split(77):
            sel.feed(blk)
        sel.advance()
    srt = torch.sort(keys).values
    for k, (t, n_less, n_eq) in zip(counts, sel.result, strict=True):
        if k == 0:
            assert t is None
            continue
        assert t == srt[k - 1].item()
        assert n_less == (keys < t).sum().item() and n_eq == (keys == t).sum().item()


def test_layer_types():
    names = {
        "model.layers.3.self_attn.q_proj.weight": "q",
        "model.layers.3.self_attn.k_proj.weight": "k",
        "model.layers.3.self_attn.v_proj.weight": "v",
        "model.layers.3.self_attn.o_proj.weight": "o",
        "model.layers.3.mlp.gate_proj.weight": "gate",
        "model.layers.3.mlp.up_proj.weight": "up",
        "model.layers.3.mlp.down_proj.weight": "down",
        "model.embed_tokens.weight": "embed",
        "lm_head.weight": "lm_head",
        "model.layers.3.mlp.router.weight": "other",
    }
    for n, t in names.items():
        assert layer_type(n) == t, n


def test_cli_end_to_end_on_tiny_llamas(ckpts, tmp_path):
    out, plots = tmp_path / "geo.json", tmp_path / "plots"
    args = [
        "rlvr-geometry",
        "analyze",
        str(ckpts / "base"),
        str(ckpts / "rl_a"),
        str(ckpts / "rl_b"),
        "--json",
        str(out),
        "--plots",
        str(plots),
        "--k",
        KS,
        "--alpha",
        "0.4",
        "--no-progress",
    ]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    rep = json.loads(out.read_text())
    base_sd = _load(ckpts / "base")
    two_d = sorted(k for k, v in base_sd.items() if v.ndim == 2)
    assert "lm_head.weight" not in base_sd  # tied: stored once
    assert len(rep["checkpoints"]) == 2
    for c in rep["checkpoints"]:
        names = [e["name"] for e in c["tensors"]]
        assert sorted(names) == two_d  # the tied head is not counted twice
        for e in c["tensors"]:
            assert set(e) >= TENSOR_KEYS, TENSOR_KEYS - set(e)
            assert set(e["principal_angle_max_deg"]) == {"1", "2", "4", "8"}
            assert e["alpha"] == 0.4
        s = c["summary"]
        assert TENSOR_KEYS - {"name", "shape"} <= set(s["overall"])
        assert {"q", "k", "v", "o", "gate", "up", "down", "embed"} <= set(s["by_type"])
        assert 0.6 < s["overall"]["sparsity_bf16"] < 0.8  # 30% of entries were updated
    assert {s["name"] for s in rep["skipped"]} == {k for k, v in base_sd.items() if v.ndim != 2}
    (pair,) = rep["pairs"]
    assert {"a", "b", "jaccard", "jaccard_random"} <= set(pair)
    assert pair["jaccard"] == pytest.approx(pair["jaccard_random"], abs=0.03)  # independent
    assert rep["settings"]["k0"] == 2
    for f in ("sparsity_by_layer", "nss_by_layer", "angles_vs_k", "overlaps_vs_alpha"):
        assert (plots / f"{f}.png").stat().st_size > 0
    # one tensor from the files against the in-memory reference
    sd_a = _load(ckpts / "rl_a")
    name = "model.layers.1.self_attn.o_proj.weight"
    ref = pair_metrics(base_sd[name], sd_a[name], ks=(1, 2, 4, 8), alpha=0.4)
    got = next(e for e in rep["checkpoints"][0]["tensors"] if e["name"] == name)
    for key in (
        "sparsity_bf16",
        "sparsity_exact",
        "nss",
        "overlap_principal",
        "overlap_low",
        "rho_princ",
        "update_rank_ratio",
    ):
        assert got[key] == pytest.approx(ref[key], rel=1e-9, abs=1e-12), key


def _bad(tmp_path, args, match):
    out = tmp_path / "o" / "geo.json"
    plots = tmp_path / "o" / "plots"
    res = runner.invoke(
        app,
        [
            "rlvr-geometry",
            "analyze",
            *args,
            "--json",
            str(out),
            "--plots",
            str(plots),
            "--no-progress",
        ],
    )
    assert res.exit_code == 2, res.output
    assert match in res.output, res.output
    assert "Traceback" not in res.output
    assert not out.exists() and not plots.exists()
    assert not (tmp_path / "o").exists() or not os.listdir(tmp_path / "o")


def _variant(ckpts, tmp_path, name, edit):
    """A copy of rl_b with its weights edited by ``edit(state_dict)`` (config unchanged)."""
    d = tmp_path / name
    d.mkdir()
    (d / "config.json").write_text((ckpts / "rl_b" / "config.json").read_text())
    sd = _load(ckpts / "rl_b")
    edit(sd)
    save_file(sd, str(d / "model.safetensors"), metadata={"format": "pt"})
    return d


def test_bad_inputs_fail_cleanly(ckpts, tmp_path):
    base, a = str(ckpts / "base"), str(ckpts / "rl_a")
    other = tmp_path / "wide"
    build_model("llama-tiny", V, seed=0, hidden_size=96).save_pretrained(other)
    _bad(tmp_path, [base, str(other), "--k", KS], "config field 'hidden_size' differs")

    name = "model.layers.0.mlp.up_proj.weight"

    def reshape(sd):
        sd[name] = sd[name][:-1].contiguous()

    d = _variant(ckpts, tmp_path, "shape", reshape)
    _bad(tmp_path, [base, str(d), "--k", KS], f"shape mismatch at '{name}'")

    d = _variant(ckpts, tmp_path, "missing", lambda sd: sd.pop(name))
    _bad(tmp_path, [base, a, str(d), "--k", KS], f"tensor '{name}' is in the base")

    trunc = tmp_path / "trunc"
    trunc.mkdir()
    for f in (ckpts / "rl_a").iterdir():
        (trunc / f.name).write_bytes(f.read_bytes())
    shard = sorted(trunc.glob("model-*.safetensors"))[1]
    shard.write_bytes(shard.read_bytes()[:-100])
    _bad(tmp_path, [base, str(trunc), "--k", KS], shard.name)

    _bad(tmp_path, [base, a, "--k", ""], "--k is empty")
    _bad(tmp_path, [base, a, "--k", "1"], "no value above 1")
    _bad(tmp_path, [base, a, "--k", "1,64"], "--k 64 exceeds min(m, n) = 32")
    _bad(tmp_path, [base, a, "--k", KS, "--alpha", "1.5"], "--alpha must lie strictly between")
    _bad(tmp_path, [base, a, "--k", KS, "--alpha", "0"], "--alpha must lie strictly between")
    _bad(tmp_path, [base, str(tmp_path / "nope"), "--k", KS], "no such checkpoint")


def test_non_finite_weights_name_the_tensor(ckpts, tmp_path):
    name = "model.layers.1.mlp.down_proj.weight"

    def poison(sd):
        sd[name][0, 0] = float("nan")

    d = _variant(ckpts, tmp_path, "nan", poison)
    with pytest.raises(GeometryError, match="NaN or Inf"):
        analyze(ckpts / "base", [d], ks=(1, 2))


def test_untied_checkpoint_head_is_compared_with_the_tied_base_embedding(ckpts, tmp_path):
    base_sd = _load(ckpts / "base")
    sd = {k: v.clone() for k, v in base_sd.items()}
    sd["lm_head.weight"] = base_sd["model.embed_tokens.weight"] + 0.1
    cfg = json.loads((ckpts / "base" / "config.json").read_text())
    cfg["tie_word_embeddings"] = False
    d = tmp_path / "untied"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(cfg))
    save_file(sd, str(d / "model.safetensors"), metadata={"format": "pt"})
    rep = analyze(ckpts / "base", [d], ks=(1, 2))
    by_name = {e["name"]: e for e in rep["checkpoints"][0]["tensors"]}
    assert by_name["lm_head.weight"]["sparsity_exact"] == 0.0
    assert by_name["model.embed_tokens.weight"]["sparsity_exact"] == 1.0
    assert any("ties lm_head.weight" in n for n in rep["notes"])
