"""The dense benchmark on the harness (issue 16): training on dense videos (resumable), the
EfficientNet feature option, the budget check, the precondition gate and the quick bench."""

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from fmlab.tempo import dense_bench
from fmlab.tempo.dense import BudgetExceededError, dense_sampler, make_dense_video, score
from fmlab.tempo.dense_bench import ARMS, DenseBenchConfig, run
from fmlab.tempo.model import TempoConfig, feature_cache
from fmlab.tempo.pipeline import Stack, TrainConfig, train_stack

TINY = TempoConfig(mem_tokens=8, d_svlm=16, d_llm=16, svlm_layers=1, llm_layers=1, heads=2)


def _tiny_cfg(**kw) -> DenseBenchConfig:
    base = DenseBenchConfig(
        n_frames=64,
        n_dev=2,
        n_test=2,
        test_seeds=(1, 2),
        tokens_per_frame=(0.25, 1.0, 4.0),
        arms=("tempo", "uniform-alloc", "oracle", "frames"),
        encoders=("pixels",),
        precondition_tokens=(1, 8),
        model=TINY,
        train=TrainConfig(
            stages=(("align", 2, 64),), batch=1, videos="dense", video_pool=2, checkpoint_every=0
        ),
        gate=False,
    )
    return replace(base, **kw)


def test_dense_training_is_resumable(tmp_path):
    """An interrupted training on dense videos resumes from its checkpoint to the same
    weights as an uninterrupted one."""
    cfg = TrainConfig(stages=(("align", 2, 64), ("long-sft", 2, 64)), batch=1, videos="dense",
                      video_pool=3, checkpoint_every=2)  # fmt: skip
    full = train_stack("tempo", tmp_path / "a", cfg, TINY, log=lambda m: None)

    calls, base = [0], dense_sampler(cfg.seed, cfg.video_pool)

    def dies_at_step_3(rng, n):
        calls[0] += 1
        if calls[0] > 2:
            raise KeyboardInterrupt
        return base(rng, n)

    with pytest.raises(KeyboardInterrupt):
        train_stack("tempo", tmp_path / "b", cfg, TINY, log=lambda m: None, sampler=dies_at_step_3)
    logs = []
    resumed = train_stack("tempo", tmp_path / "b", cfg, TINY, log=logs.append)
    assert any("resuming tempo at step 2/4" in m for m in logs)
    for (k, a), b in zip(full.state_dict().items(), resumed.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, msg=k)


def test_dense_sampler_rejects_lengths_the_generator_cannot_make():
    with pytest.raises(ValueError, match="multiple of 32"):
        dense_sampler()(np.random.default_rng(0), 48)


def test_efficientnet_features_round_trip(tmp_path):
    """The compressor reads cached frozen EfficientNet-Lite0 cells; save/load keeps only the
    trained projection and gives the same outputs; the cache serves a second pass."""
    from fmlab.core.vision import ImageEncoder

    cfg = replace(TINY, frame_features="efficientnet", feature_size=64)
    assert cfg.patches == 4
    torch.manual_seed(0)
    stack = Stack("tempo", cfg).eval()
    v = make_dense_video(3, 64)
    q = v.questions[0]
    cache = feature_cache(64)
    with torch.no_grad():
        mem, rel = stack.compress(v.frames, q.text)
        misses = cache.misses
        mem2, _ = stack.compress(v.frames, q.text)
    assert cache.misses == misses  # the second pass is served from the cache
    torch.testing.assert_close(mem, mem2)
    # the cells are EfficientNet-Lite0's feature map of each frame (float16 in the cache)
    ref = ImageEncoder(size=64, cache=False).feature_map(v.frames[:2])  # (2, 1280, 2, 2)
    got = cache(v.frames[:2])  # (2, 4, 1280)
    np.testing.assert_allclose(
        got, ref.reshape(2, 1280, 4).transpose(0, 2, 1), rtol=2e-3, atol=2e-3
    )
    stack.save(tmp_path / "m")
    keys = json.loads((tmp_path / "m" / "tempo.json").read_text())["config"]
    assert keys["frame_features"] == "efficientnet"
    from safetensors.torch import load_file

    saved = load_file(str(tmp_path / "m" / "model.safetensors"))
    assert not any("_blocks" in k for k in saved)  # the frozen network is not saved
    assert sum(t.numel() for t in saved.values()) < 200_000
    back = Stack.load(tmp_path / "m")
    with torch.no_grad():
        mem3, rel3 = back.compress(v.frames, q.text)
    torch.testing.assert_close(mem, mem3)
    torch.testing.assert_close(rel, rel3)


def test_config_rejects_unknown_frame_features():
    with pytest.raises(ValueError, match="pixels, efficientnet"):
        TempoConfig(frame_features="clip")


@pytest.mark.filterwarnings("ignore::fmlab.tempo.allocate.OverBudgetWarning")
@pytest.mark.parametrize("kind", ["tempo", "frames", "pool"])
def test_tokens_never_exceed_the_budget(kind):
    torch.manual_seed(0)
    stack = Stack(kind, TINY).eval()
    videos = [make_dense_video(1, 64)]
    arms = [a for a, (k, _) in ARMS.items() if k == kind]
    memory = {}
    for arm in arms:
        how = ARMS[arm][1]
        # 3 < N = 8 segments (the drop policy), 8 = N, 24 < N·m, 40 > N·m, 512 > N·M
        res = score(stack, videos, how, (3, 8, 24, 40, 512), memory=memory)
        for b, r in res.items():
            assert len(r["tokens"]) == 2 and max(r["tokens"]) <= b, (arm, b)


def test_score_raises_when_an_arm_overruns_the_budget(monkeypatch):
    stack = Stack("tempo", TINY).eval()
    real = stack.blocks_from_memory

    def greedy(mem, rel, t, budget, *a, **k):  # every segment keeps all its tokens
        return real(mem, rel, t, 10_000, "uniform-alloc")

    monkeypatch.setattr(stack, "blocks_from_memory", greedy)
    with pytest.raises(BudgetExceededError, match="under a budget of 16"):
        score(stack, [make_dense_video(1, 64)], "tempo", (16,))


def test_bench_refuses_to_compare_arms_when_a_precondition_fails(tmp_path, monkeypatch):
    def failing(agnostic, tempo, splits, *a, step="pre", **k):
        with splits.design(step):
            splits["dev"]
        return {"a_holds": False, "b_holds": True, "holds": False}

    def never(*a, **k):
        raise AssertionError("arms were compared although a precondition failed")

    monkeypatch.setattr(dense_bench, "preconditions", failing)
    monkeypatch.setattr(dense_bench, "run_arms", never)
    rec = run(tmp_path, _tiny_cfg(gate=True), log=lambda m: None)
    assert "preconditions a failed on dev" in rec.metrics["status"]
    assert rec.splits["test_opened"] is False and not rec.intervals and not rec.baselines
    saved = json.loads((tmp_path / "long_video.json").read_text())
    assert saved["metrics"]["preconditions"]["a_holds"] is False


def test_quick_bench_runs_end_to_end_on_the_harness(tmp_path):
    logs = []
    rec = run(tmp_path, _tiny_cfg(), log=logs.append)
    saved = json.loads((tmp_path / "long_video.json").read_text())
    assert saved["metrics"]["status"] == "arms compared on test"
    pre = saved["metrics"]["preconditions"]
    assert pre["split"] == "dev" and {"a_holds", "b_holds"} <= set(pre)
    assert saved["splits"]["test_opened"] is True
    assert saved["splits"]["test_opened_after"][0] == "preconditions (pixels)"
    assert saved["metrics"]["max_tokens_used_over_budget"] <= 1
    # per-seed values and paired intervals at every budget <= 1 token/frame
    assert set(saved["metrics"]["per_seed"]["tempo"]) == {"1", "2"}
    assert "acc@64: tempo − frames" in saved["intervals"]
    assert "acc@16: tempo − uniform-alloc" in saved["intervals"]
    assert not any("acc@256" in k for k in saved["intervals"])
    assert set(saved["baselines"]) == {"uniform-alloc", "oracle", "frames"}
    assert (tmp_path / "long_video.png").is_file()
    # a rerun resumes: stacks and arm results come back from the work folder
    logs.clear()
    run(tmp_path, _tiny_cfg(), log=logs.append)
    assert any("8 of 8 runs resumed" in m for m in logs)
    assert not any("step" in m and "loss" in m for m in logs)
    assert rec.metrics["encoder"] == "pixels"


def test_cli_checks_dense_options():
    from typer.testing import CliRunner

    from fmlab.cli import app

    runner = CliRunner()
    r = runner.invoke(app, ["tempo", "dense-bench", "--seeds", "1"])
    assert r.exit_code == 2 and "--seeds must be >= 2" in r.output
    r = runner.invoke(app, ["tempo", "train", "--videos", "clips"])
    assert r.exit_code == 2 and "needle, dense" in r.output
    r = runner.invoke(app, ["tempo", "train", "--frame-features", "clip"])
    assert r.exit_code == 2 and "pixels, efficientnet" in r.output


def test_design_only_measures_both_encoders_on_dev_and_leaves_test_sealed(tmp_path):
    rec = run(tmp_path, _tiny_cfg(encoders=("pixels", "efficientnet")), log=lambda m: None,
              design_only=True)  # fmt: skip
    assert rec.splits["design_steps"] == [
        "preconditions (pixels)", "frame encoder on dev (pixels)",
        "preconditions (efficientnet)", "frame encoder on dev (efficientnet)",
    ]  # fmt: skip
    assert rec.splits["test_opened"] is False
    assert (tmp_path / "dense_design.json").is_file()
    assert not (tmp_path / "long_video.json").exists()
    cmp = rec.metrics["encoder_comparison_on_dev"]
    assert (cmp["a"], cmp["b"]) == ("pixels", "efficientnet") and cmp["per_item"]["n"] == 12
    assert rec.metrics["encoder"] in ("pixels", "efficientnet")
