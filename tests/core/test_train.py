import json
import os
import subprocess
import sys

import pytest
import torch

from fmlab.core.data import pack_documents, unigram_entropy
from fmlab.core.models import build_model
from fmlab.core.train import BlockSampler, TrainConfig, causal_lm_loss, lr_at, param_checksum, train


@pytest.fixture(scope="module")
def blocks(bpe_tokenizer, prose_splits):
    return (
        pack_documents(bpe_tokenizer, prose_splits["train"], seq_len=64),
        pack_documents(bpe_tokenizer, prose_splits["val"], seq_len=64),
    )


def _cfg(**kw):
    base = dict(
        steps=30, batch_size=8, lr=3e-3, warmup_steps=5, eval_batches=2, log_every=5, progress=False
    )
    return TrainConfig(**{**base, **kw})


def test_tiny_lm_learns_below_unigram_entropy(bpe_tokenizer, blocks, tmp_path):
    train_b, val_b = blocks
    model = build_model("llama-tiny", len(bpe_tokenizer), seed=0)
    cfg = _cfg(steps=150, batch_size=16, warmup_steps=15, eval_every=50)
    res = train(model, BlockSampler(train_b, seed=0), cfg, tmp_path, val_blocks=val_b)
    h = unigram_entropy(train_b, len(bpe_tokenizer))
    assert res.val_loss < h - 0.3, (res.val_loss, h)
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "val_loss" in r] == [50, 100, 150]
    assert (tmp_path / "model" / "model.safetensors").is_file()


def _wrap_interrupt(at_call):
    calls = {"n": 0}

    def loss_fn(model, batch):
        calls["n"] += 1
        if calls["n"] == at_call:
            raise KeyboardInterrupt
        return causal_lm_loss(model, batch)

    return loss_fn


def test_resume_reproduces_uninterrupted_run(bpe_tokenizer, blocks, tmp_path):
    train_b, val_b = blocks
    cfg = _cfg(grad_accum=2)
    full = build_model("llama-tiny", len(bpe_tokenizer), seed=0)
    r_full = train(full, BlockSampler(train_b, seed=1), cfg, tmp_path / "full", val_blocks=val_b)

    # 1) stop_at: a clean split of the job
    part = build_model("llama-tiny", len(bpe_tokenizer), seed=0)
    r1 = train(
        part, BlockSampler(train_b, seed=1), cfg, tmp_path / "split", val_blocks=val_b, stop_at=12
    )
    assert r1.interrupted and r1.steps == 12
    part = build_model("llama-tiny", len(bpe_tokenizer), seed=0)  # a fresh process would rebuild
    r2 = train(part, BlockSampler(train_b, seed=1), cfg, tmp_path / "split", val_blocks=val_b)
    assert r2.steps == 30 and not r2.interrupted
    assert param_checksum(part) == param_checksum(full)
    assert r2.val_loss == pytest.approx(r_full.val_loss, abs=0)

    # 2) a Ctrl-C in the middle of a step: the checkpoint holds the last finished step
    part = build_model("llama-tiny", len(bpe_tokenizer), seed=0)
    r3 = train(
        part,
        BlockSampler(train_b, seed=1),
        cfg,
        tmp_path / "ctrlc",
        loss_fn=_wrap_interrupt(2 * 17 + 1),
    )
    assert r3.interrupted and r3.steps == 17
    part = build_model("llama-tiny", len(bpe_tokenizer), seed=0)
    train(part, BlockSampler(train_b, seed=1), cfg, tmp_path / "ctrlc", val_blocks=val_b)
    assert param_checksum(part) == param_checksum(full)
    steps = [
        json.loads(x)["step"]
        for x in (tmp_path / "ctrlc" / "metrics.jsonl").read_text().splitlines()
    ]
    assert steps == sorted(set(steps))  # no duplicated log rows after resume


def test_resume_refuses_a_different_config(bpe_tokenizer, blocks, tmp_path):
    train_b, _ = blocks
    m = build_model("llama-tiny", len(bpe_tokenizer))
    train(m, BlockSampler(train_b), _cfg(steps=4), tmp_path)
    with pytest.raises(ValueError, match="batch_size"):
        train(m, BlockSampler(train_b), _cfg(steps=8, batch_size=4), tmp_path)


def test_bf16_autocast_runs(bpe_tokenizer, blocks):
    train_b, _ = blocks
    m = build_model("llama-tiny", len(bpe_tokenizer))
    res = train(m, BlockSampler(train_b), _cfg(steps=3, bf16=True))
    assert torch.isfinite(torch.tensor(res.train_loss))
    assert next(m.parameters()).dtype == torch.float32


def test_config_is_typed_and_strict():
    with pytest.raises(ValueError, match=r"unknown TrainConfig keys.*'lrr'"):
        TrainConfig.from_dict({"lrr": 1.0})
    with pytest.raises(ValueError, match="batch_size"):
        TrainConfig(batch_size=0)
    cfg = TrainConfig(steps=100, lr=1.0, warmup_steps=10, min_lr_ratio=0.1)
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    assert lr_at(0, cfg) == pytest.approx(0.1)
    assert lr_at(9, cfg) == pytest.approx(1.0)
    assert lr_at(100, cfg) == pytest.approx(0.1)
    assert lr_at(55, cfg) == pytest.approx(0.55)


@pytest.mark.slow
def test_two_process_ddp_gloo(tmp_path):
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"steps": 8, "batch_size": 4, "progress": False, "log_every": 2}))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "fmlab.core.train",
        "--out",
        str(tmp_path / "run"),
        "--config",
        str(cfg),
        "--vocab",
        "384",
    ]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert p.returncode == 0, p.stderr[-3000:]
    res = json.loads((tmp_path / "run" / "result.json").read_text())
    assert res["world_size"] == 2 and res["steps"] == 8
    assert len(res["param_checksums"]) == 2
    assert res["param_checksums"][0] == res["param_checksums"][1]  # replicas stayed in sync
    assert res["tokens"] == 8 * 4 * 64 * 2
