"""The pretrained-model transfer bench's plumbing on a tiny in-process model (quick config)."""

import json

import pytest

from fmlab.core.models import build_model, train_bpe_tokenizer
from fmlab.param_delta.pretrained import ARMS, PretrainedConfig, make_splits, run_pretrained


def test_splits_are_disjoint_and_seeded():
    a, b = make_splits(0, 6, 50, 10), make_splits(0, 6, 50, 10)
    assert a == b
    assert not {x["prompt"] for x in a["train"]} & {x["prompt"] for x in a["test"]}


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
    again = run_pretrained(tmp_path / "out2", cfg, work=tmp_path / "work", log=lambda *_: None)
    assert again.metrics["score"] == rec.metrics["score"]  # resumed from the memo
