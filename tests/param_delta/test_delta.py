import json
import os

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM
from typer.testing import CliRunner

from fmlab.cli import app
from fmlab.core.io import CheckpointError
from fmlab.core.models import build_model
from fmlab.param_delta import ParamDeltaError, diagnose, param_delta, param_delta_state_dict
from fmlab.param_delta.delta import MANIFEST

V = 300


def _perturb(model, seed, eps=0.05):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(eps * torch.randn(p.shape, generator=g))
    return model


def _triplet(root, tie=True, shard=None, **over):
    kw = dict(tie_word_embeddings=tie, **over)
    dirs = {}
    for name, seed in (("base", None), ("post", 1), ("new", 2)):
        m = build_model("llama-tiny", V, seed=0, **kw)
        if seed is not None:
            _perturb(m, seed)
        d = root / name
        m.save_pretrained(d, max_shard_size=shard) if shard else m.save_pretrained(d)
        dirs[name] = d
    return dirs


def _load_all(d):
    out = {}
    for f in sorted(d.glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


def _assert_formula(out_dir, dirs, scale=1.0, tol=1e-6):
    o, p, b, n = (_load_all(x) for x in (out_dir, dirs["post"], dirs["base"], dirs["new"]))
    assert set(o) == set(n)
    for k in n:
        expect = n[k].float() + scale * (p[k].float() - b[k].float())
        assert (o[k].float() - expect).abs().max().item() <= tol, k


def _no_leftovers(parent, allowed):
    assert sorted(os.listdir(parent)) == sorted(allowed)


def test_formula_exact_tied_and_loads_with_transformers(tmp_path):
    dirs = _triplet(tmp_path)
    assert "lm_head.weight" not in _load_all(dirs["new"])  # tied: head not stored
    m = param_delta(dirs["post"], dirs["base"], dirs["new"], tmp_path / "out")
    _assert_formula(tmp_path / "out", dirs)
    assert m["tensors"] == len(_load_all(dirs["new"]))
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert model.config.tie_word_embeddings
    manifest = json.loads((tmp_path / "out" / "param_delta_manifest.json").read_text())
    assert (
        manifest["scale"] == 1.0
        and manifest["inputs"]["post (" + str(dirs["post"]) + ")"]["sha256"]
    )
    # the tied head got the delta exactly once: head == embedding == formula
    emb = model.model.embed_tokens.weight
    assert model.lm_head.weight.data_ptr() == emb.data_ptr()


@pytest.mark.parametrize("scale", [0.0, 0.5, 1.5])
def test_scale(tmp_path, scale):
    dirs = _triplet(tmp_path)
    param_delta(dirs["post"], dirs["base"], dirs["new"], tmp_path / "out", scale=scale)
    _assert_formula(tmp_path / "out", dirs, scale=scale)


def test_sharded_inputs_and_outputs_in_row_blocks(tmp_path):
    dirs = _triplet(tmp_path, shard="60KB")
    assert (dirs["post"] / "model.safetensors.index.json").is_file()
    # 1000-byte blocks: every matrix is computed and written a few rows at a time
    param_delta(
        dirs["post"],
        dirs["base"],
        dirs["new"],
        tmp_path / "out",
        max_shard_size="50KB",
        chunk_bytes=1000,
    )
    assert (tmp_path / "out" / "model.safetensors.index.json").is_file()
    assert len(list((tmp_path / "out").glob("*.safetensors"))) > 2
    _assert_formula(tmp_path / "out", dirs)
    AutoModelForCausalLM.from_pretrained(tmp_path / "out")


def test_untied_head_and_mixed_tying(tmp_path):
    dirs = _triplet(tmp_path, tie=False)
    param_delta(dirs["post"], dirs["base"], dirs["new"], tmp_path / "out")
    _assert_formula(tmp_path / "out", dirs)
    # post and base tied, new base untied: the head's delta is the embedding's delta
    tied = _triplet(tmp_path / "tied")
    mixed = {"post": tied["post"], "base": tied["base"], "new": dirs["new"]}
    param_delta(mixed["post"], mixed["base"], mixed["new"], tmp_path / "out2")
    o, p, b, n = (
        _load_all(x) for x in (tmp_path / "out2", tied["post"], tied["base"], dirs["new"])
    )
    e = "model.embed_tokens.weight"
    torch.testing.assert_close(
        o["lm_head.weight"], n["lm_head.weight"] + p[e] - b[e], atol=1e-6, rtol=0
    )


def test_dtype_follows_new_base_and_can_be_set(tmp_path):
    dirs = _triplet(tmp_path)
    m = build_model("llama-tiny", V, seed=0)
    _perturb(m, 2)
    m.to(torch.bfloat16).save_pretrained(tmp_path / "new_bf16")
    param_delta(dirs["post"], dirs["base"], tmp_path / "new_bf16", tmp_path / "o1")
    assert all(t.dtype == torch.bfloat16 for t in _load_all(tmp_path / "o1").values())
    param_delta(dirs["post"], dirs["base"], dirs["new"], tmp_path / "o2", dtype="float16")
    assert all(t.dtype == torch.float16 for t in _load_all(tmp_path / "o2").values())
    param_delta(dirs["post"], dirs["base"], dirs["new"], tmp_path / "o3", compute_dtype="float64")
    _assert_formula(tmp_path / "o3", dirs)


def test_mismatches_are_all_reported_and_nothing_written(tmp_path):
    dirs = _triplet(tmp_path)
    other = build_model("llama-tiny", V, seed=0, intermediate_size=96)
    other.save_pretrained(tmp_path / "wide")
    with pytest.raises(ParamDeltaError) as ei:
        param_delta(dirs["post"], dirs["base"], tmp_path / "wide", tmp_path / "out")
    msg = str(ei.value)
    assert "intermediate_size" in msg
    assert msg.count("shape mismatch") == 2 * 3  # gate/up/down in both layers, each named
    assert "model.layers.0.mlp.up_proj.weight" in msg
    _no_leftovers(tmp_path, ["base", "new", "post", "wide"])


def test_missing_tensor_is_named(tmp_path):
    dirs = _triplet(tmp_path)
    sd = _load_all(dirs["post"])
    del sd["model.layers.1.self_attn.q_proj.weight"]
    (dirs["post"] / "model.safetensors").unlink()
    save_file(sd, str(dirs["post"] / "model.safetensors"))
    with pytest.raises(
        ParamDeltaError, match=r"model\.layers\.1\.self_attn\.q_proj\.weight.*missing from post"
    ):
        param_delta(dirs["post"], dirs["base"], dirs["new"], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_vocab_mismatch_error_and_shared_rows(tmp_path):
    dirs = _triplet(tmp_path)
    big = build_model("llama-tiny", V + 20, seed=0)
    _perturb(big, 3)
    big.save_pretrained(tmp_path / "new_big")
    with pytest.raises(ParamDeltaError, match=r"vocabulary mismatch.*shared-rows"):
        param_delta(dirs["post"], dirs["base"], tmp_path / "new_big", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    m = param_delta(
        dirs["post"],
        dirs["base"],
        tmp_path / "new_big",
        tmp_path / "out",
        vocab_policy="shared-rows",
    )
    assert any("shared rows" in n for n in m["notes"])
    o, p, b, n = (
        _load_all(x) for x in (tmp_path / "out", dirs["post"], dirs["base"], tmp_path / "new_big")
    )
    e = "model.embed_tokens.weight"
    torch.testing.assert_close(o[e][:V], n[e][:V] + p[e] - b[e], atol=1e-6, rtol=0)
    assert torch.equal(o[e][V:], n[e][V:])  # the new base's extra rows are kept
    AutoModelForCausalLM.from_pretrained(tmp_path / "out")


def test_shared_rows_when_every_vocabulary_differs():
    base = build_model("llama-tiny", V, seed=0).state_dict()
    post = build_model("llama-tiny", V + 5, seed=1).state_dict()  # post added chat tokens
    new = build_model("llama-tiny", V + 9, seed=2).state_dict()
    out = param_delta_state_dict(post, base, new, vocab_policy="shared-rows")
    e = "model.embed_tokens.weight"
    torch.testing.assert_close(out[e][:V], new[e][:V] + post[e][:V] - base[e], atol=1e-6, rtol=0)
    assert torch.equal(out[e][V:], new[e][V:])
    k = "model.layers.0.mlp.up_proj.weight"
    torch.testing.assert_close(out[k], new[k] + post[k] - base[k], atol=1e-6, rtol=0)


def test_corrupt_input_existing_output_and_pickle(tmp_path):
    dirs = _triplet(tmp_path)
    (tmp_path / "exists").mkdir()
    with pytest.raises(FileExistsError, match="exists"):
        param_delta(dirs["post"], dirs["base"], dirs["new"], tmp_path / "exists")
    shard = dirs["base"] / "model.safetensors"
    shard.write_bytes(shard.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match=r"base/model\.safetensors.*truncated"):
        param_delta(dirs["post"], dirs["base"], dirs["new"], tmp_path / "out")
    _no_leftovers(tmp_path, ["base", "exists", "new", "post"])
    sd = _load_all(dirs["post"])
    (dirs["post"] / "model.safetensors").unlink()
    torch.save(sd, dirs["post"] / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="pickle"):
        param_delta(dirs["post"], dirs["new"], dirs["new"], tmp_path / "out")


def test_state_dict_api_does_not_mutate_inputs():
    base = build_model("llama-tiny", V, seed=0).state_dict()
    post = {k: v + 1 for k, v in base.items()}
    new = {k: v * 2 for k, v in base.items()}
    before = {k: v.clone() for k, v in new.items()}
    out = param_delta_state_dict(post, base, new, scale=0.5)
    for k in base:
        torch.testing.assert_close(out[k], new[k] + 0.5, atol=1e-6, rtol=0)
        assert torch.equal(new[k], before[k])


def test_diagnose_cosines(tmp_path):
    base = build_model("llama-tiny", V, seed=0).state_dict()
    d = {k: torch.randn_like(v) for k, v in base.items()}
    same = diagnose({k: base[k] + d[k] for k in base}, base, {k: base[k] + 2 * d[k] for k in base})
    assert all(r["cosine"] == pytest.approx(1.0) for r in same)
    assert all(r["post_over_update"] == pytest.approx(0.5) for r in same)
    opp = diagnose({k: base[k] + d[k] for k in base}, base, {k: base[k] - d[k] for k in base})
    assert all(r["cosine"] == pytest.approx(-1.0) for r in opp)


def test_cli_merge_diagnose_and_errors(tmp_path):
    dirs = _triplet(tmp_path)
    runner = CliRunner()
    args = [
        "param-delta",
        "--post",
        str(dirs["post"]),
        "--base",
        str(dirs["base"]),
        "--new-base",
        str(dirs["new"]),
    ]
    res = runner.invoke(app, [*args, "--dry-run"])
    assert res.exit_code == 0, res.output
    assert "dry run OK" in res.output and not (tmp_path / "out").exists()
    res = runner.invoke(app, [*args, "--out", str(tmp_path / "out"), "--scale", "0.5"])
    assert res.exit_code == 0, res.output
    _assert_formula(tmp_path / "out", dirs, scale=0.5)
    inputs = json.loads((tmp_path / "out" / MANIFEST).read_text())["inputs"]
    assert all("sha256" in v for v in inputs.values())
    res = runner.invoke(app, [*args, "--out", str(tmp_path / "nohash"), "--no-hash"])
    assert res.exit_code == 0, res.output
    inputs = json.loads((tmp_path / "nohash" / MANIFEST).read_text())["inputs"]
    assert not any("sha256" in v for v in inputs.values())  # --no-hash reaches the library
    res = runner.invoke(app, [*args, "--out", str(tmp_path / "out")])
    assert res.exit_code == 2 and "already exists" in res.output
    res = runner.invoke(
        app, ["param-delta", "diagnose", *args[1:], "--json", str(tmp_path / "d.json")]
    )
    assert res.exit_code == 0, res.output
    assert "median cosine" in res.output
    assert len(json.loads((tmp_path / "d.json").read_text())) == len(_load_all(dirs["new"]))
    res = runner.invoke(app, ["param-delta", "--post", str(dirs["post"])])
    assert res.exit_code == 2 and "--base" in res.output


@pytest.mark.slow
def test_matches_mergekit_task_arithmetic(tmp_path):
    """Same inputs through mergekit's task_arithmetic (normalize false): same tensors."""
    import subprocess
    import sys
    from pathlib import Path

    from fmlab.param_delta.speed import mergekit_config

    mk = Path(sys.executable).parent / "mergekit-yaml"
    if not mk.exists():
        pytest.skip("mergekit not installed (pip install -e '.[bench]')")
    dirs = _triplet(tmp_path, tie=False)
    cfg = tmp_path / "mk.yml"
    cfg.write_text(json.dumps(mergekit_config(dirs["post"], dirs["base"], dirs["new"])))
    p = subprocess.run(
        [str(mk), str(cfg), str(tmp_path / "mk_out"), "--quiet"], capture_output=True, text=True
    )
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    param_delta(dirs["post"], dirs["base"], dirs["new"], tmp_path / "ours")
    ours, theirs = _load_all(tmp_path / "ours"), _load_all(tmp_path / "mk_out")
    assert set(ours) == set(theirs)
    for k in ours:
        assert (ours[k] - theirs[k]).abs().max().item() <= 1e-6, k
