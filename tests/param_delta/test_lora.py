"""The delta as a PEFT LoRA adapter: format, reconstruction error, parity with full ParamΔ."""

import itertools
import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM
from typer.testing import CliRunner

from fmlab.cli import app
from fmlab.core.models import build_model
from fmlab.param_delta.lora import LORA_MANIFEST, extract_lora
from fmlab.param_delta.lora_bench import _diffs, _logits, prompt_ids, run_lora_record

peft = pytest.importorskip("peft")
V = 300


def _triplet(root, tie=True, low_rank_post=None):
    dirs = {}
    for name, seed in (("base", 0), ("post", 1), ("new", 2)):
        m = build_model("llama-tiny", V, seed=0, tie_word_embeddings=tie)
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in m.parameters():
                if seed:
                    p.add_(0.05 * torch.randn(p.shape, generator=g))
        dirs[name] = root / name
        m.save_pretrained(dirs[name])
    return dirs


@pytest.fixture(scope="module")
def record(tmp_path_factory):
    root = tmp_path_factory.mktemp("lora")
    dirs = _triplet(root)
    rec = run_lora_record(root / "rec", dirs["post"], dirs["base"], dirs["new"], ranks=(2, 8, 64))
    return dirs, json.loads((root / "rec" / "lora.json").read_text()), rec


@pytest.mark.parametrize("rank", [2, 8, 64])
def test_peft_loaded_adapter_reproduces_paramdelta_within_the_recorded_error(
    tmp_path, record, rank
):
    """Must show: the adapter loaded with peft gives the full ParamΔ model's logits within the
    error the record states for that rank (and exactly, up to float error, at full rank)."""
    from fmlab.param_delta import param_delta

    dirs, rec, _ = record
    stated = rec["metrics"]["by_rank"][str(rank)]["max_abs_logit_diff"]
    param_delta(dirs["post"], dirs["base"], dirs["new"], tmp_path / "full", hash_inputs=False)
    extract_lora(dirs["post"], dirs["base"], tmp_path / "ad", rank, new_base=dirs["new"])
    full = AutoModelForCausalLM.from_pretrained(tmp_path / "full").eval()
    pm = peft.PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(dirs["new"]), tmp_path / "ad"
    ).eval()
    prompts = prompt_ids(dirs["new"], V)
    diff, _ = _diffs(_logits(pm, prompts), _logits(full, prompts))
    assert diff <= stated * 1.001 + 1e-5
    if rank == 64:  # 64 >= every matrix dimension of llama-tiny: the adapter is exact
        assert diff < 1e-4
    else:
        assert diff > 1e-3  # truncation really dropped something: the check is not vacuous
    # On prompts neither of the record's sets holds (another seed, other lengths) the error
    # is of the size the record states: docs/param_delta.md claims within 2x of the larger
    # of its fixed- and held-out-prompt errors.
    row = rec["metrics"]["by_rank"][str(rank)]
    fresh = prompt_ids(dirs["new"], V, n=6, heldout=True, seed=7)
    assert not any(len(f) == len(q) and torch.equal(f, q) for f in fresh for q in prompts)
    fmax, fmean = _diffs(_logits(pm, fresh), _logits(full, fresh))
    assert fmax <= 2 * max(row["max_abs_logit_diff"], row["heldout_max_abs_logit_diff"]) + 1e-5
    assert fmean <= 2 * max(row["mean_abs_logit_diff"], row["heldout_mean_abs_logit_diff"]) + 1e-6


def test_error_falls_with_rank_and_matches_the_adapter(record, tmp_path):
    dirs, rec, _ = record
    by = rec["metrics"]["by_rank"]
    errs = [by[r]["rel_frob_error_all"] for r in ("2", "8", "64")]
    assert errs[0] > errs[1] > errs[2] and errs[2] < 1e-6
    # the stated ΔW error is the error of the written factors
    m = extract_lora(dirs["post"], dirs["base"], tmp_path / "ad", 8)
    ad = load_file(str(tmp_path / "ad" / "adapter_model.safetensors"))
    p, b = (load_file(str(dirs[k] / "model.safetensors")) for k in ("post", "base"))
    num = den = 0.0
    for k in p:
        if k.endswith(".weight") and p[k].ndim == 2 and "embed" not in k:
            mod = "base_model.model." + k[: -len(".weight")]
            rec_w = ad[mod + ".lora_B.weight"] @ ad[mod + ".lora_A.weight"]
        elif "embed" in k:
            mod = "base_model.model." + k[: -len(".weight")]
            rec_w = ad[mod + ".lora_embedding_A"].T @ ad[mod + ".lora_embedding_B"].T
        else:
            rec_w = 0
        d = p[k] - b[k]
        num += float(((d - rec_w) ** 2).sum())
        den += float((d**2).sum())
    assert (num / den) ** 0.5 == pytest.approx(m["error_at_rank"]["rel_frob_error_all"], rel=1e-3)
    assert m["left_out"] and all("norm" in k for k in m["left_out"])  # no new base: norms out


def test_adapter_format_and_untied_head(tmp_path):
    dirs = _triplet(tmp_path, tie=False)
    extract_lora(dirs["post"], dirs["base"], tmp_path / "ad", 4, new_base=dirs["new"])
    cfg = json.loads((tmp_path / "ad" / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and cfg["r"] == cfg["lora_alpha"] == 4
    assert "lm_head" in cfg["target_modules"] and "q_proj" in " ".join(cfg["target_modules"])
    assert any("norm" in m for m in cfg["modules_to_save"])
    keys = load_file(str(tmp_path / "ad" / "adapter_model.safetensors"))
    assert "base_model.model.lm_head.lora_A.weight" in keys
    assert not any("base_layer" in k for k in keys)  # no full copy of any weight
    man = json.loads((tmp_path / "ad" / LORA_MANIFEST).read_text())
    assert man["left_out"] == [] and man["error_by_rank"]["4"]


def test_cli_extract_lora_and_errors(tmp_path):
    dirs = _triplet(tmp_path)
    args = ["param-delta", "extract-lora", "--post", str(dirs["post"]), "--base", str(dirs["base"])]
    r = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "ad"), "--rank", "4"])
    assert r.exit_code == 0, r.output
    assert "relative Frobenius error" in r.output and "left out" in r.output
    r = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "ad2"), "--rank", "0"])
    assert r.exit_code == 2 and "rank must be a positive integer" in r.output
    assert not (tmp_path / "ad2").exists()


def test_committed_smollm2_record_holds_together():
    """The committed record (SmolLM2, the pretrained bench's seed-0 delta): every rank it was
    asked for is there, the ΔW error falls with rank, the logit error at the top rank is far
    below the new base's own distance from ParamΔ, and on the held-out prompts the mean error
    is within 1.25x of the fixed prompts' at every rank, the max within 2x at every rank from
    16 up (at rank 1 it was 2.7x: the max is a worst case over a prompt set). That is what
    docs/param_delta.md states."""
    from pathlib import Path

    path = Path(__file__).parents[2] / "docs" / "results" / "param_delta" / "lora.json"
    rec = json.loads(path.read_text())
    by, ranks = rec["metrics"]["by_rank"], rec["setup"]["ranks"]
    assert sorted(by, key=int) == [str(r) for r in sorted(ranks)]
    errs = [by[str(r)]["rel_frob_error_all"] for r in sorted(ranks)]
    assert all(a > b for a, b in itertools.pairwise(errs))
    top = by[str(max(ranks))]
    assert top["max_abs_logit_diff"] < 0.1 * rec["metrics"]["new_base_vs_full_max_abs_logit_diff"]
    for r in ranks:
        row = by[str(r)]
        assert row["heldout_mean_abs_logit_diff"] <= 1.25 * row["mean_abs_logit_diff"]
        if r >= 16:
            assert row["heldout_max_abs_logit_diff"] <= 2 * row["max_abs_logit_diff"]
