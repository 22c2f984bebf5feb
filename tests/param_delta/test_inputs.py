"""Issue 25, input checks: every bad input is a clear error, exit code 2, nothing written."""

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from fmlab.cli import app
from fmlab.core.models import build_model, train_bpe_tokenizer
from fmlab.param_delta import ParamDeltaError, diagnose, param_delta, param_delta_state_dict
from fmlab.param_delta.delta import MANIFEST

V = 300
TEXTS = ["the cat sat on the mat and the dog ran", "a quick brown fox jumps over the lazy dog"] * 20


@pytest.fixture(scope="module")
def tokenizer():
    return train_bpe_tokenizer(TEXTS, vocab_size=V)


def _triplet(root, tok=None):
    dirs = {}
    for name, seed in (("base", 0), ("post", 1), ("new", 2)):
        m = build_model("llama-tiny", V, seed=0)
        if seed:
            g = torch.Generator().manual_seed(seed)
            with torch.no_grad():
                for p in m.parameters():
                    p.add_(0.05 * torch.randn(p.shape, generator=g))
        dirs[name] = root / name
        m.save_pretrained(dirs[name])
        if tok is not None:
            tok.save_pretrained(dirs[name])
    return dirs


def _rewrite(d, fn):
    sd = load_file(str(d / "model.safetensors"))
    fn(sd)
    save_file(sd, str(d / "model.safetensors"))


def _cli(dirs, out, *extra):
    args = ["param-delta", "--post", str(dirs["post"]), "--base", str(dirs["base"])]
    args += ["--new-base", str(dirs["new"]), "--out", str(out), *extra]
    return CliRunner().invoke(app, args)


def _nothing_written(root, allowed=("base", "new", "post")):
    left = sorted(os.listdir(root))
    assert left == sorted(allowed), left  # no output, no .partial temp directory


Q = "model.layers.1.self_attn.q_proj.weight"


def test_nan_and_inf_named_exit_2_nothing_written(tmp_path):
    dirs = _triplet(tmp_path)

    def nan(sd):
        sd[Q][3, 5] = float("nan")

    def inf(sd):
        sd["model.norm.weight"][0] = float("inf")

    _rewrite(dirs["post"], nan)
    _rewrite(dirs["new"], inf)
    res = _cli(dirs, tmp_path / "out")
    assert res.exit_code == 2, res.output
    assert "post (" in res.output and Q in res.output and "1 NaN" in res.output
    assert (
        "new base (" in res.output and "model.norm.weight" in res.output and "1 Inf" in res.output
    )
    assert "first at row 3" in res.output and "Traceback" not in res.output
    _nothing_written(tmp_path)
    # the dry run reads the inputs too and finds the same problems
    res = _cli(dirs, tmp_path / "out", "--dry-run")
    assert res.exit_code == 2 and Q in res.output
    _nothing_written(tmp_path)
    # explicitly switched off, the NaN flows through (the user asked for it)
    res = _cli(dirs, tmp_path / "out", "--no-check-finite")
    assert res.exit_code == 0, res.output


def test_nan_in_the_base_is_named_exit_2_nothing_written(tmp_path):
    dirs = _triplet(tmp_path)
    _rewrite(dirs["base"], lambda sd: sd[Q].__setitem__((1, 2), float("nan")))
    res = _cli(dirs, tmp_path / "out")
    assert res.exit_code == 2, res.output
    assert "base (" in res.output and Q in res.output and "1 NaN" in res.output
    assert "Traceback" not in res.output
    _nothing_written(tmp_path)


def test_a_tensor_missing_from_an_input_is_named_exit_2_nothing_written(tmp_path):
    dirs = _triplet(tmp_path)
    _rewrite(dirs["new"], lambda sd: sd.pop(Q))
    res = _cli(dirs, tmp_path / "out")
    assert res.exit_code == 2, res.output
    assert "missing from new base (" in res.output and Q in res.output
    assert "new base (new base" not in res.output
    assert "Traceback" not in res.output
    _nothing_written(tmp_path)


def test_zero_dim_tensors_through_files_and_the_cli(tmp_path):
    dirs = _triplet(tmp_path)
    for name, v in (("base", 2.0), ("post", 5.0), ("new", 1.0)):
        _rewrite(dirs[name], lambda sd, v=v: sd.__setitem__("logit_scale", torch.tensor(v)))
    res = _cli(dirs, tmp_path / "out")
    assert res.exit_code == 0, res.output
    got = load_file(str(tmp_path / "out" / "model.safetensors"))
    assert got["logit_scale"].shape == () and got["logit_scale"].item() == pytest.approx(4.0)
    # a NaN in a 0-dim tensor is named like any other, and nothing is written
    _rewrite(dirs["post"], lambda sd: sd.__setitem__("logit_scale", torch.tensor(float("nan"))))
    res = _cli(dirs, tmp_path / "out2")
    assert res.exit_code == 2 and "logit_scale" in res.output and "1 NaN" in res.output
    assert not (tmp_path / "out2").exists()


def test_output_overflow_is_refused(tmp_path):
    dirs = _triplet(tmp_path)
    _rewrite(dirs["post"], lambda sd: sd[Q].__setitem__((0, 0), 1e6))
    res = _cli(dirs, tmp_path / "out", "--dtype", "float16")
    assert res.exit_code == 2 and "overflow" in res.output and "float16" in res.output
    _nothing_written(tmp_path)


def test_tokenizer_mismatch_error_then_allowed(tmp_path, tokenizer):
    dirs = _triplet(tmp_path, tokenizer)
    other = train_bpe_tokenizer(["completely different words here zebra quartz"] * 30, V)
    other.save_pretrained(dirs["post"])
    res = _cli(dirs, tmp_path / "out")
    assert res.exit_code == 2, res.output
    assert "tokenizer of post" in res.output and "vocabularies differ" in res.output
    assert "--tokenizer-policy allow" in res.output
    _nothing_written(tmp_path)
    res = _cli(dirs, tmp_path / "out", "--tokenizer-policy", "allow")
    assert res.exit_code == 0, res.output
    notes = json.loads((tmp_path / "out" / MANIFEST).read_text())["notes"]
    assert any("differs" in n and "allowed" in n for n in notes)


def test_out_inside_an_input_is_refused(tmp_path):
    dirs = _triplet(tmp_path)
    res = _cli(dirs, dirs["base"] / "merged")
    assert res.exit_code == 2 and "inside the input directory of base" in res.output
    assert sorted(os.listdir(dirs["base"])) == [
        "config.json",
        "generation_config.json",
        "model.safetensors",
    ]


def test_several_problems_reported_at_once(tmp_path, tokenizer):
    dirs = _triplet(tmp_path, tokenizer)
    train_bpe_tokenizer(["zebra quartz yak"] * 30, V).save_pretrained(dirs["base"])
    _rewrite(dirs["post"], lambda sd: sd.pop(Q))
    with pytest.raises(ParamDeltaError) as ei:
        param_delta(dirs["post"], dirs["base"], dirs["new"], dirs["new"] / "o")
    msg = str(ei.value)
    assert "3 problem(s)" in msg and "missing from post" in msg
    assert "tokenizer of base" in msg and "inside the input directory" in msg


def test_chat_template_from_post_by_default_and_every_file_hashed(tmp_path, tokenizer):
    dirs = _triplet(tmp_path, tokenizer)
    (dirs["post"] / "chat_template.jinja").write_text("POST {{ messages }}")
    gen = json.loads((dirs["post"] / "generation_config.json").read_text())
    (dirs["post"] / "generation_config.json").write_text(json.dumps({**gen, "eos_token_id": 7}))
    (dirs["new"] / "chat_template.jinja").write_text("NEW {{ messages }}")
    m = param_delta(dirs["post"], dirs["base"], dirs["new"], tmp_path / "out")
    out = tmp_path / "out"
    assert (out / "chat_template.jinja").read_text().startswith("POST")
    assert json.loads((out / "generation_config.json").read_text())["eos_token_id"] == 7
    assert m["files"]["chat_template.jinja"]["from"] == "post"
    assert m["files"]["tokenizer.json"]["from"] == "new-base"
    copied = {f for f in os.listdir(out) if not f.endswith(".safetensors") and f != MANIFEST}
    assert copied == set(m["files"]) and all(len(v["sha256"]) == 64 for v in m["files"].values())
    for inp in m["inputs"].values():  # the inputs' tokenizer files are hashed too
        assert {"tokenizer.json", "tokenizer_config.json", "config.json"} <= set(inp["sha256"])
    m2 = param_delta(
        dirs["post"], dirs["base"], dirs["new"], tmp_path / "o2", chat_template_from="new-base"
    )
    assert (tmp_path / "o2" / "chat_template.jinja").read_text().startswith("NEW")
    assert m2["files"]["generation_config.json"]["from"] == "new-base"
    res = _cli(dirs, tmp_path / "o3", "--chat-template-from", "nope")
    assert res.exit_code == 2 and "choose one of: new-base, post" in res.output
    _nothing_written(tmp_path, ("base", "new", "o2", "out", "post"))


def test_chat_template_key_in_tokenizer_config_follows_the_chat_side(tmp_path, tokenizer):
    dirs = _triplet(tmp_path, tokenizer)
    for name, tpl in (("post", "POST"), ("new", "NEW")):
        p = dirs[name] / "tokenizer_config.json"
        cfg = json.loads(p.read_text())
        p.write_text(json.dumps({**cfg, "chat_template": tpl, "eos_token": f"<{name}>"}))
    param_delta(dirs["post"], dirs["base"], dirs["new"], tmp_path / "out")
    cfg = json.loads((tmp_path / "out" / "tokenizer_config.json").read_text())
    assert cfg["chat_template"] == "POST" and cfg["eos_token"] == "<post>"


def test_zero_dim_tensors_in_the_state_dict_api():
    base = {"w": torch.ones(3, 2), "scale": torch.tensor(2.0)}
    post = {"w": torch.ones(3, 2) * 3, "scale": torch.tensor(5.0)}
    new = {"w": torch.zeros(3, 2), "scale": torch.tensor(1.0)}
    out = param_delta_state_dict(post, base, new, scale=0.5)
    assert out["scale"].shape == () and out["scale"].item() == pytest.approx(2.5)
    torch.testing.assert_close(out["w"], torch.ones(3, 2))
    with pytest.raises(ParamDeltaError, match=r"scale.*1 NaN"):
        param_delta_state_dict({**post, "scale": torch.tensor(float("nan"))}, base, new)


def test_diagnose_streamed_matches_whole_tensor_formula(tmp_path):
    dirs = _triplet(tmp_path)
    small = diagnose(dirs["post"], dirs["base"], dirs["new"], chunk_bytes=500)
    whole = diagnose(dirs["post"], dirs["base"], dirs["new"])
    sd = {k: load_file(str(d / "model.safetensors")) for k, d in dirs.items()}
    for a, b in zip(small, whole, strict=True):
        k = a["tensor"]
        dp = (sd["post"][k].double() - sd["base"][k].double()).flatten()
        du = (sd["new"][k].double() - sd["base"][k].double()).flatten()
        cos = float(dp @ du / (dp.norm() * du.norm()))
        assert a["cosine"] == pytest.approx(cos, abs=1e-9) == b["cosine"]
        assert a["post_delta_norm"] == pytest.approx(float(dp.norm()), rel=1e-9)


def test_progress_reaches_n_of_n_on_stderr(tmp_path):
    dirs = _triplet(tmp_path)
    n = len(load_file(str(dirs["new"] / "model.safetensors")))
    exe = os.path.join(os.path.dirname(sys.executable), "fmlab")
    p = subprocess.run(
        [exe, "param-delta", "--post", str(dirs["post"]), "--base", str(dirs["base"]),
         "--new-base", str(dirs["new"]), "--out", str(tmp_path / "out")],
        capture_output=True, text=True, env={**os.environ, "COLUMNS": "200"},
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert f"{n}/{n}" in p.stderr and "hashing" in p.stderr
    assert "ParamΔ" not in p.stdout
