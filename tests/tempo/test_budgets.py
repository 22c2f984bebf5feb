"""Budgets at paper scale: the context follows the budget, and N > B keeps the budget."""

import json
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from fmlab.cli import app
from fmlab.tempo.allocate import OverBudgetWarning, allocate
from fmlab.tempo.pipeline import Stack
from fmlab.tempo.synth import make_video

runner = CliRunner()


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(0, 1, allow_nan=False), min_size=2, max_size=60), st.data())
def test_more_segments_than_tokens_never_exceeds_the_budget(scores, data):
    n = len(scores)
    budget = data.draw(st.integers(0, n - 1))
    with pytest.warns(OverBudgetWarning, match="keep no memory token"):
        got = allocate(scores, budget)
    assert sum(got) == budget and set(got) <= {0, 1}
    kept = [s for s, a in zip(scores, got, strict=True) if a]
    dropped = [s for s, a in zip(scores, got, strict=True) if not a]
    if max(scores) - min(scores) >= 1e-8:  # not flat (flat: evenly spaced, tested below)
        assert not kept or not dropped or min(kept) >= max(dropped)  # the least relevant go
        # the paper's rule would give every segment one token
        assert sum(allocate(scores, budget, over_budget="allow")) >= n > budget


def test_equal_scores_keep_evenly_spaced_segments():
    with pytest.warns(OverBudgetWarning):
        assert allocate([0.5] * 9, 3) == [1, 0, 0, 0, 1, 0, 0, 0, 1]
    with pytest.raises(ValueError, match="over_budget must be one of"):
        allocate([0.5], 1, over_budget="maybe")


def test_stack_keeps_the_budget_with_more_segments_than_tokens():
    torch.manual_seed(0)
    stack = Stack("tempo").eval()
    v = make_video(1, 104)  # 13 segments
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", OverBudgetWarning)
        for arm in ("tempo", "tail", "random-ata", "uniform-alloc"):
            blocks, info = stack.blocks(v.frames, "how many flashes", 5, arm)
            assert sum(len(t) for _, t in blocks) == sum(info["alloc"]) <= 5, arm
            assert len(blocks) == 13  # every segment keeps its timestamp
        blocks, _ = stack.blocks(v.frames, "how many flashes", 5, "tempo", allow_over_budget=True)
        assert sum(len(t) for _, t in blocks) == 13


@pytest.fixture(scope="module")
def long_small(tmp_path_factory):
    from fmlab.core.video import write_frames
    from fmlab.tempo.longvideo import moving_shapes

    d = tmp_path_factory.mktemp("long")
    video = write_frames(d / "v1024.mp4", moving_shapes(1024, 64, 64), fps=2, crf=30)
    torch.manual_seed(0)
    Stack("tempo").save(d / "model")  # untrained: plumbing at paper-scale sizes, not accuracy
    return video, d / "model"


def test_answer_at_1024_frames_with_an_8k_budget_end_to_end(long_small):
    video, model = long_small
    res = runner.invoke(app, ["tempo", "answer", str(video), "--question", "how many flashes",
                              "--budget", "8192", "--model", str(model), "--max-frames", "1024",
                              "--batch-segments", "32"])  # fmt: skip
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["frames"] == 1024 and len(out["allocation"]) == 128
    assert out["tokens_used"] == sum(out["allocation"]) <= 8192
    assert out["context_tokens"] > 1024  # past the old fixed 1,024-token context


def test_cli_warns_and_keeps_the_budget_when_segments_outnumber_it(long_small):
    video, model = long_small
    res = runner.invoke(app, ["tempo", "compress", str(video), "--query", "how many flashes",
                              "--budget", "100", "--model", str(model)])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "warning: 128 segments but a budget of 100 tokens" in res.output
    out = json.loads(res.stdout[res.stdout.index("{") :])
    assert out["tokens_used"] == 100 and np.count_nonzero(out["allocation"]) == 100
    res = runner.invoke(app, ["tempo", "compress", str(video), "--query", "how many flashes",
                              "--budget", "100", "--model", str(model), "--allow-over-budget"])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout[res.stdout.index("{") :])["tokens_used"] == 128


def test_unknown_words_warn_and_an_empty_question_is_an_error(tmp_path):
    from fmlab.tempo.pipeline import UnknownWordsWarning

    torch.manual_seed(0)
    stack = Stack("tempo").eval()
    v = make_video(2, 32)
    with pytest.warns(UnknownWordsWarning, match=r"\['dog', 'bark'\] are not in"):
        out = stack.answer(v.frames, "did the dog bark", 16)
    assert out["unknown_words"] == ["dog", "bark"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a known question warns about nothing
        assert stack.answer(v.frames, "how many flashes", 16)["unknown_words"] == []
    for empty in ("", "  ?! "):
        with pytest.raises(ValueError, match="empty question"):
            stack.answer(v.frames, empty, 16)
    video = tmp_path / "v.mp4"
    v.write(video)
    stack.save(tmp_path / "m")
    base = ["tempo", "answer", str(video), "--model", str(tmp_path / "m"), "--question"]
    res = runner.invoke(app, [*base, "did the dog bark"])
    assert res.exit_code == 0 and "warning: the question words ['dog', 'bark']" in res.output
    res = runner.invoke(app, [*base, " "])
    assert res.exit_code == 2 and "empty question" in res.output and "Traceback" not in res.output
    res = runner.invoke(app, ["tempo", "compress", str(video), "--model", str(tmp_path / "m"),
                              "--query", "where is the cat"])  # fmt: skip
    assert res.exit_code == 0 and "warning: the query words ['where', 'cat']" in res.output
    res = runner.invoke(app, ["tempo", "compress", str(video), "--model", str(tmp_path / "m"),
                              "--query", ""])  # fmt: skip
    assert res.exit_code == 2 and "empty query" in res.output
