import json

import pytest
import torch
from typer.testing import CliRunner

from fmlab.cli import app
from fmlab.tempo.pipeline import Stack, TrainConfig, segment_truth, segments_of, train_stack
from fmlab.tempo.synth import make_video

runner = CliRunner()


def test_segments_pad_the_last_one():
    v = make_video(0, 20)
    seg = segments_of(v.frames, 8)
    assert seg.shape == (3, 8, 3, 32, 32)
    assert torch.equal(seg[2, 4], seg[2, 3])  # frames 20..23 repeat frame 19


@pytest.mark.parametrize("arm", ["tempo", "uniform-alloc", "random-ata", "oracle", "m0", "tail"])
def test_compressor_arms_respect_the_budget(arm):
    torch.manual_seed(0)
    stack = Stack("tempo").eval()
    v = make_video(1, 64)
    q = v.questions[0]
    with torch.no_grad():
        for budget in (8, 20, 64, 200):
            blocks, info = stack.blocks(v.frames, q.text, budget, arm, segment_truth(v, q, 8))
            used = sum(len(t) for _, t in blocks)
            assert used == sum(info["alloc"]) <= budget
            assert len(blocks) == 8  # one timestamped block per segment, even when empty
            logits = stack.logits([(blocks, q.text)])
            assert logits.shape == (1, len(stack.vocab.answers))


@pytest.mark.parametrize("kind", ["frames", "pool"])
def test_frame_baselines_use_the_budget(kind):
    stack = Stack(kind).eval()
    v = make_video(2, 64)
    with torch.no_grad():
        for budget in (16, 40, 64, 512):
            blocks, _ = stack.blocks(v.frames, "", budget, kind)
            used = sum(len(t) for _, t in blocks)
            assert used <= budget
            if kind == "pool":
                assert used == budget


def test_agnostic_compressor_ignores_the_query():
    torch.manual_seed(0)
    stack = Stack("agnostic").eval()
    v = make_video(3, 32)
    with torch.no_grad():
        a, _ = stack.compress(v.frames, "what colour is the square")
        b, _ = stack.compress(v.frames, "how many flashes")
    assert torch.equal(a, b)


def test_save_load_and_resume(tmp_path):
    cfg = TrainConfig(stages=(("align", 2, 16), ("long-sft", 2, 32)), batch=2,
                      checkpoint_every=2)  # fmt: skip
    logs = []
    first = train_stack("tempo", tmp_path / "run", cfg, log=logs.append)
    ckpt = json.loads((tmp_path / "run" / "checkpoint" / "tempo.json").read_text())
    assert ckpt["step"] == 4
    again = train_stack("tempo", tmp_path / "run", cfg, log=logs.append)
    assert any("resuming tempo at step 4/4" in m for m in logs)
    for (k, v1), v2 in zip(first.state_dict().items(), again.state_dict().values(), strict=True):
        assert torch.equal(v1, v2), k
    first.save(tmp_path / "m")
    loaded = Stack.load(tmp_path / "m")
    v = make_video(4, 32)
    q = v.questions[0].text
    with torch.no_grad():
        b1, _ = first.eval().blocks(v.frames, q, 16, "tempo")
        b2, _ = loaded.blocks(v.frames, q, 16, "tempo")
        torch.testing.assert_close(first.logits([(b1, q)]), loaded.logits([(b2, q)]))


def test_cli_runs_the_pipeline_on_a_real_mp4(tmp_path):
    video = tmp_path / "v.mp4"
    res = runner.invoke(app, ["tempo", "make-video", str(video), "--frames", "48"])
    assert res.exit_code == 0, res.output
    assert video.stat().st_size > 1000
    model = tmp_path / "model"
    torch.manual_seed(0)
    Stack("tempo").save(model)  # untrained: this checks the plumbing, not accuracy
    plot = tmp_path / "alloc.png"
    res = runner.invoke(app, ["tempo", "compress", str(video), "--query", "what colour is the square",
                              "--budget", "20", "--model", str(model), "--plot", str(plot)])  # fmt: skip
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["frames"] == 48 and out["segments"] == 6 and out["tokens_used"] <= 20
    assert plot.stat().st_size > 1000
    res = runner.invoke(app, ["tempo", "answer", str(video), "--question", "how many flashes",
                              "--model", str(model)])  # fmt: skip
    assert res.exit_code == 0, res.output
    got = json.loads(res.stdout)
    # the CLI answers what the library answers on the same decoded frames (not just "a word")
    from fmlab.tempo.video import read_video

    lib = Stack.load(model).answer(read_video(video, size=(32, 32)).frames, "how many flashes", 64)
    assert got["answer"] == lib["answer"] == max(got["probabilities"], key=got["probabilities"].get)
    assert got["allocation"] == lib["allocation"] and got["p"] == pytest.approx(lib["p"], abs=1e-3)
    res = runner.invoke(app, ["tempo", "answer", str(video), "--question", "how many flashes",
                              "--model", str(model), "--options", "1, 2,3"])  # fmt: skip
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["answer"] in ("1", "2", "3") and set(out["probabilities"]) == {"1", "2", "3"}
    assert sum(out["probabilities"].values()) == pytest.approx(1, abs=1e-3)
    res = runner.invoke(app, ["tempo", "answer", str(video), "--question", "how many flashes",
                              "--model", str(model), "--options", "1,seven"])  # fmt: skip
    assert res.exit_code == 2 and "['seven'] are not answers" in res.output


def test_cli_errors(tmp_path):
    res = runner.invoke(app, ["tempo", "compress", str(tmp_path / "none.mp4"), "--query", "x",
                              "--model", str(tmp_path)])  # fmt: skip
    assert res.exit_code != 0 and "not a Tempo model" in res.output
    Stack("tempo").save(tmp_path / "m")
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"x" * 100)
    res = runner.invoke(app, ["tempo", "compress", str(bad), "--query", "x", "--model",
                              str(tmp_path / "m")])  # fmt: skip
    assert res.exit_code != 0 and "not a readable video" in res.output
    res = runner.invoke(app, ["tempo", "train", "--kind", "magic"])
    assert res.exit_code != 0 and "--kind must be one of" in res.output


def test_evaluate_arm_reports_what_the_record_needs():
    from fmlab.tempo.evaluate import evaluate_arm, quarter_iou

    torch.manual_seed(0)
    stack = Stack("tempo").eval()
    videos = [make_video(s, 32) for s in range(3)]
    r = evaluate_arm(stack, videos, "tempo", budget=12)
    assert 0 <= r["overall"] <= 1 and r["questions"] == sum(len(v.questions) for v in videos)
    assert r["tokens_per_frame"] <= r["budget_per_frame"] + 1e-9
    assert "router_auroc" in r and 0 <= r["router_auroc"] <= 1  # a missing key fails
    assert quarter_iou("q1", 0, 4, 16) == 1.0 and quarter_iou("q2", 0, 4, 16) == 0.0
    assert quarter_iou("yes", 0, 4, 16) == 0.0


@pytest.mark.slow
def test_quick_bench_writes_a_complete_record(tmp_path):
    from fmlab.core.results import load_record
    from fmlab.tempo.bench import quick

    rec = quick(tmp_path)
    d = load_record(tmp_path / "budget_sweep.json")
    assert set(d["baselines"]) == {"uniform-alloc", "frames", "pool"}
    for b in (8, 16):
        assert d["metrics"][f"tokens_per_frame@{b}"] <= b / 32 + 1e-9
        assert d["baselines"]["pool"][f"tokens_per_frame@{b}"] == pytest.approx(b / 32)
    assert 0 <= rec.metrics["router_auroc"]["mean"] <= 1
    assert (tmp_path / "budget_sweep.png").stat().st_size > 1000
    front = d["metrics"]["front_loading"]
    assert set(front) == {"random-prefix", "no-prefix"} and set(front["no-prefix"]) == {
        "first",
        "last",
    }
    assert (tmp_path / "front_loading.png").stat().st_size > 1000
    # a rerun resumes: nothing is trained or evaluated again
    again = quick(tmp_path)
    assert again.metrics["needle_acc@8"] == rec.metrics["needle_acc@8"]


def test_multiple_choice_is_the_short_answer_restricted_to_the_options():
    torch.manual_seed(0)
    stack = Stack("tempo").eval()
    v = make_video(6, 32)
    q = v.questions[0].text
    free = stack.answer(v.frames, q, 16)
    assert sum(free["probabilities"].values()) == pytest.approx(1, abs=1e-5)
    ranked = sorted(free["probabilities"], key=free["probabilities"].get, reverse=True)
    mc = stack.answer(v.frames, q, 16, options=[ranked[2], ranked[1]])
    assert mc["answer"] == ranked[1]  # the better of the two offered
    ratio = free["probabilities"][ranked[1]] / free["probabilities"][ranked[2]]
    assert mc["p"] / (1 - mc["p"]) == pytest.approx(ratio, rel=1e-4)
    assert mc["tokens_used"] <= 16
