import json

import numpy as np
import pytest
from typer.testing import CliRunner

from fmlab.cli import app
from fmlab.rdd import Prior, RDDError, arena, segment
from fmlab.rdd.encoders import HFVisionEncoder, PixelPCA, StateCNN, TCNEncoder, get_encoder


def test_arena_is_seeded_and_the_true_plan_succeeds():
    a = arena.make_split(3, "adversarial", 1)
    b = arena.make_split(3, "adversarial", 1)
    assert all(np.array_equal(x.frames, y.frames) for x, y in zip(a, b, strict=True))
    for split in ("train", "standard", "ood", "not-at-rest"):
        for ep in arena.make_split(0, split, 1):
            assert ep.frames.shape[1:] == (arena.SIZE, arena.SIZE, 3)
            assert ep.boundaries[-1][1] == len(ep) == len(ep.states)
            plan = [
                (lab, ep.states[e - 1])
                for (_, e), lab in zip(ep.boundaries, ep.labels, strict=True)
            ]
            assert arena.success(arena.execute(ep.states[0], plan), ep.states[-1])
            # dropping a step fails the plan, except a wait, a step redone later (push, push)
            # or a sweep before another skill (only the agent's pose, which that one resets)
            for i, lab in enumerate(ep.labels):
                later = ep.labels[i + 1 :]
                if lab != "wait" and lab not in later and not (lab == "sweep" and later):
                    short = plan[:i] + plan[i + 1 :]
                    assert not arena.success(arena.execute(ep.states[0], short), ep.states[-1])


def _boundary_speeds(ep) -> list[float]:
    """The agent's speed (table units per frame) over the 3 frames straddling each inner
    boundary (the last two of one skill, the first of the next)."""
    p = ep.states[:, [arena.AX, arena.AY]]
    return [float(np.linalg.norm(p[b + 1] - p[b - 2]) / 3) for b, _ in ep.boundaries[1:]]


def test_not_at_rest_skills_end_and_start_at_speed():
    flow = arena.make_split(5, "not-at-rest", 4)
    assert {ep.tags[0] for ep in flow} == set(arena.NOT_AT_REST_TASKS)
    assert all(set(ep.labels) <= set(arena.FLOW_SKILLS) for ep in flow)
    rest = [v for ep in arena.make_split(5, "standard", 4) for v in _boundary_speeds(ep)]
    moving = [v for ep in flow for v in _boundary_speeds(ep)]
    # eased skills stop at their boundaries (pixel-noise-level speed, ~0.004 per frame); these
    # never do, so a detector of rest (motion keys) cannot find their boundaries
    assert np.median(rest) < 0.006
    assert min(moving) > 0.005 and np.median(moving) > 3 * np.median(rest)


def test_encoders_fit_encode_and_round_trip():
    eps = arena.make_split(0, "train", 1)[:4]
    frames = [ep.frames for ep in eps]
    pca = PixelPCA(8).fit(frames)
    tcn = TCNEncoder(dim=8, steps=5, batch=16).fit(frames)
    states = [arena.state_features(ep.states) for ep in eps]
    scnn = StateCNN(steps=5, batch=16).fit(frames, targets=states)
    for enc in (pca, tcn, scnn):
        f = enc.encode(frames[0])
        assert f.shape == (len(frames[0]), 8 if enc is not scnn else arena.STATE_DIM)
        assert np.isfinite(f).all()
        back = get_encoder(enc.name, enc.state())
        np.testing.assert_allclose(back.encode(frames[0]), f, rtol=1e-5, atol=1e-5)
    with pytest.raises(RDDError, match="expected \\(N, H, W, 3\\)"):
        pca.encode(np.zeros((3, 8, 8)))
    with pytest.raises(RDDError, match="not fitted"):
        PixelPCA().encode(frames[0])
    with pytest.raises(RDDError, match="state-cnn learns from per-frame states"):
        StateCNN().fit(frames)


def test_state_cnn_learns_to_read_the_state():
    train = arena.make_split(0, "train", 2)
    enc = StateCNN(steps=400).fit([e.frames for e in train],
                                  targets=[arena.state_features(e.states) for e in train])  # fmt: skip
    test = arena.make_split(0, "standard", 1)
    err = np.mean(
        [np.abs(enc.encode(e.frames) - arena.state_features(e.states)).mean() for e in test]
    )
    spread = np.mean([np.abs(arena.state_features(e.states) - 0.5).mean() for e in test])
    assert err < spread / 3, (err, spread)


def test_hf_vision_encoder_on_a_tiny_local_vit(tmp_path):
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    cfg = ViTConfig(image_size=32, patch_size=8, hidden_size=16, num_hidden_layers=1,
                    num_attention_heads=2, intermediate_size=32)  # fmt: skip
    ViTModel(cfg).save_pretrained(tmp_path / "vit")
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(tmp_path / "vit")
    enc = get_encoder(f"hf:{tmp_path / 'vit'}")
    assert isinstance(enc, HFVisionEncoder)
    ep = arena.make_split(0, "standard", 1)[0]
    f = enc.encode(ep.frames[:10])
    assert f.shape == (10, 16) and np.isfinite(f).all()
    with pytest.raises(RDDError, match="not a local HF vision model"):
        get_encoder(f"hf:{tmp_path / 'missing'}")


def test_cli_build_prior_segment_and_errors(tmp_path):
    r = CliRunner()
    res = r.invoke(app, ["rdd", "make-demos", "--out", str(tmp_path / "train"), "--split", "train"])
    assert res.exit_code == 0, res.output
    res = r.invoke(
        app, ["rdd", "make-demos", "--out", str(tmp_path / "test"), "--split", "standard"]
    )
    assert res.exit_code == 0, res.output
    train = sorted((tmp_path / "train").glob("*.npz"))
    res = r.invoke(app, ["rdd", "build-prior", *map(str, train), "--out", str(tmp_path / "p.npz"),
                         "--encoder", "pixels-pca", "--motion", "2"])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert Prior.load(tmp_path / "p.npz").encoder == "pixels-pca"
    assert Prior.load(tmp_path / "p.npz").motion == 2.0
    demo = sorted((tmp_path / "test").glob("*.npz"))[0]
    out = tmp_path / "seg.json"
    res = r.invoke(app, ["rdd", "segment", str(demo), "--prior", str(tmp_path / "p.npz"), "--out",
                         str(out), "--plot", str(tmp_path / "t.png")])  # fmt: skip
    assert res.exit_code == 0, res.output
    seg = json.loads(out.read_text())
    assert seg["boundaries"][0][0] == 0 and "miou" in seg["metrics"]
    assert (tmp_path / "t.png").stat().st_size > 1000
    # features of the wrong width: a clear error, nothing written
    bad = tmp_path / "bad.npz"
    np.savez(bad, features=np.zeros((20, 5)))
    res = r.invoke(app, ["rdd", "segment", str(bad), "--prior", str(tmp_path / "p.npz"), "--out",
                         str(tmp_path / "bad.json")])  # fmt: skip
    assert res.exit_code == 2 and "dimension 5 does not match the prior's 32" in res.output
    assert not (tmp_path / "bad.json").exists()
    res = r.invoke(app, ["rdd", "build-prior", str(bad), "--out", str(tmp_path / "q.npz")])
    assert res.exit_code == 2 and "needs its sub-tasks" in res.output
    assert not (tmp_path / "q.npz").exists()


def test_exact_and_faiss_indexes_give_the_same_segmentation():
    ep = arena.make_split(0, "standard", 1)[0]
    train = arena.make_split(0, "train", 1)
    clips = [arena.state_features(t.states)[sl] for t in train for _, sl in t.clips()]
    labels = [lab for t in train for lab, _ in t.clips()]
    prior = Prior.from_clips(clips, labels)
    f = arena.state_features(ep.states)
    a = segment(f, prior)
    b = segment(f, prior.with_index("faiss-flat"))
    assert a.boundaries == b.boundaries and a.labels == b.labels
    moving = Prior.from_clips(clips, labels, motion=3.0)
    a = segment(f, moving)
    b = segment(f, moving.with_index("faiss-flat"))
    assert a.boundaries == b.boundaries and a.labels == b.labels


@pytest.mark.slow
def test_quick_bench_writes_a_complete_record(tmp_path):
    from fmlab.core.results import load_record
    from fmlab.rdd.bench import quick

    quick(tmp_path)
    d = load_record(tmp_path / "arena.json")
    assert {"uvd", "uniform", "random"} <= set(d["baselines"])
    for k in ("miou", "boundary_f1", "official_iou", "k_error", "policy_success"):
        assert k in d["metrics"] and k in d["baselines"]["uvd"]
    # dev seed 0, the first record's 0-9 and the committed record's test seeds 100-104
    assert d["seeds_seen_in_design"] == [*range(10), *range(100, 105)]
    assert d["splits"]["disjoint"] and {"prior", "pretrain", "test"} <= set(d["splits"]["splits"])
    tuned = d["tuning"]["arms"]
    assert tuned["rdd/efficientnet-lite0"]["evaluated"] >= 4  # the same budget as UVD's
    assert tuned["uvd/efficientnet-lite0"]["evaluated"] >= 4
    assert "standard/miou: rdd/efficientnet-lite0 − uvd/efficientnet-lite0" in d["intervals"]
    for split in ("standard", "adversarial", "ood", "not-at-rest"):
        assert f"{split}/miou" in d["metrics"]["by_arm"]["uvd/efficientnet-lite0"]
        assert (
            f"{split}/miou: rdd/efficientnet-lite0 − uniform/efficientnet-lite0" in d["intervals"]
        )
    assert d["setup"]["threads"] == 1
    # a verdict per paired comparison, won / lost / not shown, with both intervals
    verdicts = [n for n in d["notes"] if "per-demo [" in n]  # one seed: no per-seed interval
    # 16 against UVD and uniform, 8 of the rdd-k ablation, 4 causes (rdd-k − rdd per split)
    assert len(verdicts) == len(d["intervals"]) == 28
    assert sum("the oracle K closes" in n for n in d["notes"]) == 4  # a cause per split
    assert (tmp_path / "arena_timeline.png").stat().st_size > 1000


def test_verdict_needs_every_interval_on_one_side():
    from fmlab.rdd.bench import verdicts

    def iv(seed, item):
        return {"a": "rdd/x", "b": "uvd/x", "metric": "standard/miou", "estimate": -0.03,
                "per_seed": {"lo": seed[0], "hi": seed[1]},
                "per_item": {"lo": item[0], "hi": item[1]}}  # fmt: skip

    assert "LOSES" in verdicts({"a": iv((-0.05, -0.01), (-0.07, -0.002))})[0]
    assert "not shown" in verdicts({"a": iv((-0.05, -0.005), (-0.075, 0.018))})[0]
    assert "wins" in verdicts({"a": iv((0.01, 0.05), (0.02, 0.04))})[0]
    other = {**iv((0.01, 0.05), (0.02, 0.04)), "a": "rdd-k/state-cnn", "b": "uniform/state-cnn"}
    assert verdicts({"a": other})[0].startswith(
        "standard/miou: RDD-K (state-cnn) wins over uniform"
    )


@pytest.mark.parametrize(
    "args",
    [["--first-seed", "100"], ["--first-seed", "0"], ["--quick", "--first-seed", "105"]],
)
def test_bench_refuses_seen_or_full_run_test_seeds(tmp_path, args):
    from typer.testing import CliRunner

    from fmlab.cli import app

    res = CliRunner().invoke(app, ["rdd", "bench", "--out", str(tmp_path / "o"), *args])
    assert res.exit_code == 2 and "looked at while designing" in res.output
    assert not (tmp_path / "o").exists()
