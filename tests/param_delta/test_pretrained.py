"""The pretrained-model transfer bench's plumbing on a tiny in-process model (quick config)."""

import json

import pytest
import torch
from safetensors.torch import save_file

from fmlab.core.experiment import SplitError, Splits
from fmlab.core.models import build_model, train_bpe_tokenizer
from fmlab.param_delta.pretrained import (
    ARMS,
    PretrainedConfig,
    _split_key,
    build_splits,
    delta_geometry,
    make_splits,
    run_pretrained,
)


def test_splits_are_disjoint_and_seeded():
    a, b = make_splits(0, 6, 50, 10), make_splits(0, 6, 50, 10)
    assert a == b
    assert not {x["prompt"] for x in a["train"]} & {x["prompt"] for x in a["test"]}


def test_every_seed_is_checked_and_probes_count_as_trained_facts():
    cfg = PretrainedConfig(seeds=(0, 1), dev_seeds=(100,), n_entities=6, n_skill_train=50,
                           n_eval=10)  # fmt: skip
    for seed in (100, 0, 1):
        sm = build_splits(cfg, seed).summary()
        assert sm["seed"] == seed and sm["dev_seeds"] == [100] and sm["test_seeds"] == [0, 1]
        assert sm["overlaps"]["train/test"] == 0
        # every probed fact (verbatim and paraphrased) is a trained fact, and counted as such
        assert sm["overlaps"]["knowledge/knowledge_text"] == 10
        assert sm["overlaps"]["knowledge_para/knowledge_text"] == 10
    d = make_splits(0, 6, 50, 10)
    assert all(
        p["prompt"] != k["prompt"] for p, k in zip(d["knowledge_para"], d["knowledge"], strict=True)
    )


def test_a_reworded_probe_of_a_trained_fact_is_overlap():
    d = make_splits(0, 6, 50, 10)
    with pytest.raises(SplitError, match="knowledge_para"):
        Splits({"knowledge_text": d["knowledge_text"], "knowledge_para": d["knowledge_para"]},
               key=_split_key, sealed=())  # fmt: skip


def test_delta_geometry_matches_a_direct_computation(tmp_path):
    g = torch.Generator().manual_seed(0)
    base = {"a": torch.randn(4, 3, generator=g), "b": torch.randn(5, generator=g)}
    dp = {k: 0.1 * torch.randn(v.shape, generator=g) for k, v in base.items()}
    du = {k: 0.1 * torch.randn(v.shape, generator=g) for k, v in base.items()}
    do = {k: dp[k] + 0.05 * torch.randn(v.shape, generator=g) for k, v in base.items()}
    paths = []
    for name, sd in [("base", base), ("post", {k: base[k] + dp[k] for k in base}),
                     ("new", {k: base[k] + du[k] for k in base}),
                     ("oracle", {k: base[k] + du[k] + do[k] for k in base})]:  # fmt: skip
        save_file(sd, tmp_path / f"{name}.safetensors")
        paths.append(tmp_path / f"{name}.safetensors")
    out = delta_geometry(*paths)

    def flat(d):
        return torch.cat([d[k].reshape(-1) for k in sorted(d)]).double()

    fb, fp, fu, fo = flat(base), flat(dp), flat(du), flat(do)
    cos = torch.nn.functional.cosine_similarity
    assert out["tensors"] == 2
    assert out["post_delta_over_base"] == pytest.approx(float(fp.norm() / fb.norm()), rel=1e-5)
    assert out["cosine_post_update"] == pytest.approx(float(cos(fp, fu, dim=0)), abs=1e-5)
    assert out["cosine_post_oracle"] == pytest.approx(float(cos(fp, fo, dim=0)), abs=1e-5)
    assert out["oracle_delta_over_post_delta"] == pytest.approx(float(fo.norm() / fp.norm()),
                                                                rel=1e-5)  # fmt: skip


@pytest.mark.slow
def test_quick_pretrained_bench_writes_every_arm(tmp_path):
    texts = ["123+456=579 The cat lives in Oslo. <answer>12</answer>"] * 50
    tok = train_bpe_tokenizer(texts, vocab_size=300)
    build_model("llama-tiny", len(tok), seed=0).save_pretrained(tmp_path / "tiny")
    tok.save_pretrained(tmp_path / "tiny")
    cfg = PretrainedConfig.quick(str(tmp_path / "tiny"))
    rec = run_pretrained(tmp_path / "out", cfg, work=tmp_path / "work", log=lambda *_: None)
    d = json.loads((tmp_path / "out" / "pretrained_transfer.json").read_text())
    assert len(d["baselines"]) == len(ARMS) - 1
    for arm in [d["metrics"], *d["baselines"].values()]:
        assert {"skill_acc", "knowledge_acc", "score"} <= set(arm)
    assert "paramdelta_over_oracle" in d["metrics"] and d["splits"]
    assert "knowledge_para_acc" in d["metrics"]
    assert set(d["setup"]["split_checks_per_seed"]) == {"100", "0"}  # dev and test seeds
    assert set(d["setup"]["delta_geometry_per_seed"]) == {"0"}
    assert d["setup"]["train_and_merge_s_per_seed"]["0"] > 0
    again = run_pretrained(tmp_path / "out2", cfg, work=tmp_path / "work", log=lambda *_: None)
    assert again.metrics["score"] == rec.metrics["score"]  # resumed from the memo
