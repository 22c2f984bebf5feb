"""The video-QA model (HF round trip, frames at <frame> tokens, early exit with frames), the
baseline rewards on hand-written completions, training end to end at toy size, the metrics,
and the CLI on a trained toy model."""

import json

import pytest
import torch
from typer.testing import CliRunner

from fmlab.autothink import FALLBACK, generate
from fmlab.autothink.evaluate import answer_rows, summarise
from fmlab.autothink.train import (
    Recipe,
    direct_reward,
    load_video_model,
    switch_reward,
    think_reward,
    train_video_model,
)
from fmlab.autothink.videoqa import (
    FRAME,
    N_FRAMES,
    box,
    build_video_llama,
    frames_of,
    qa_items,
    qa_tokenizer,
)


@pytest.fixture(scope="module")
def tok():
    return qa_tokenizer()


@pytest.fixture(scope="module")
def items():
    return qa_items(0, 10)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, items):
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("run")
    r = Recipe(sft_steps=3, sft_batch=4, grpo_steps=1, num_generations=2, prompts_per_step=1,
               max_new_tokens=8)  # fmt: skip
    model, tok = train_video_model(r, items, out)
    return out, model, tok


def test_items_and_tokenizer(tok, items):
    assert [it["family"] for it in items[:5]] == ["attribute", "presence", "count", "sum", "order"]
    it = items[3]
    assert it["prompt"].split()[:N_FRAMES] == [FRAME] * N_FRAMES
    assert it["frames"].shape == (N_FRAMES, 32, 32, 3)
    # the reasoning trace of a sum ends with the answer (the running sum)
    assert it["trace"].split()[-1] == it["answer"]
    text = f"{box('red')} <think> {it['trace']} </think> {box(it['answer'])}"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.unk_token_id not in ids and tok.decode(ids) == text
    assert len(tok(FALLBACK, add_special_tokens=False)["input_ids"]) == 1


def test_frames_replace_frame_tokens_and_round_trip(tok, items, tmp_path):
    from transformers import AutoModelForCausalLM

    model = build_video_llama(tok, hidden=32, layers=1, heads=2).eval()
    enc = tok([it["prompt"] for it in items[:2]], add_special_tokens=False, return_tensors="pt")
    f = frames_of(items[:2])
    with torch.no_grad():
        a = model(input_ids=enc["input_ids"], frames=f).logits
        b = model(input_ids=enc["input_ids"], frames=f.flip(0)).logits
    assert not torch.allclose(a, b)  # the frames are read
    model.save_pretrained(tmp_path)
    back = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(back).__name__ == "VideoLlamaForCausalLM"
    with torch.no_grad():
        torch.testing.assert_close(back(input_ids=enc["input_ids"], frames=f).logits, a)
    with pytest.raises(ValueError, match="no frames were given"):
        model(input_ids=enc["input_ids"])
    with pytest.raises(ValueError, match="one <frame> token per frame"):
        model(input_ids=enc["input_ids"], frames=torch.cat([f, f], 1))  # 32 frames, 16 slots


def test_early_exit_with_frames_matches_hf_greedy(tok, items):
    model = build_video_llama(tok, hidden=32, layers=1, heads=2).eval()
    chunk = items[:3]
    f = frames_of(chunk)
    res = generate(model, tok, [it["prompt"] for it in chunk], tau=2.0, max_new_tokens=6,
                   chat=False, model_inputs={"frames": f})  # fmt: skip
    for it, r, fr in zip(chunk, res, f, strict=True):
        ids = tok(it["prompt"], return_tensors="pt")["input_ids"]
        ref = model.generate(input_ids=ids, frames=fr[None], do_sample=False, max_new_tokens=6,
                             pad_token_id=tok.pad_token_id, eos_token_id=None)  # fmt: skip
        assert (
            r.token_ids[: len(ref[0]) - ids.size(1)]
            == ref[0, ids.size(1) :].tolist()[: len(r.token_ids)]
        )
    with pytest.raises(ValueError, match="one row per prompt"):
        generate(model, tok, [it["prompt"] for it in chunk], chat=False,
                 model_inputs={"frames": f[:1]})  # fmt: skip


def test_a1_only_reading_stops_at_a1(script_llama, script_tokenizer):
    unsure, fallback = generate(script_llama, script_tokenizer, ["Q3", "Q2"], tau=0.97,
                                stop_at_a1=True, chat=False)  # fmt: skip
    assert (unsure.stop, unsure.answer, unsure.thought, unsure.a2) == ("a1", "B", False, None)
    assert (fallback.stop, fallback.answer, fallback.a1) == ("a1", None, FALLBACK)
    assert "<think>" not in unsure.text


@pytest.mark.parametrize(
    "fn, completion, expected",
    [
        (direct_reward, r"\boxed{ red }", 2.0),
        (direct_reward, r"\boxed{ blue }", 1.0),
        (direct_reward, r"\boxed{ red } <think> x </think> \boxed{ red }", 1.0),  # not direct
        (think_reward, r"<think> red square </think> \boxed{ red }", 2.0),
        (think_reward, r"<think> </think> \boxed{ red }", 1.0),  # empty think: format 0
        (think_reward, r"<think> r </think> \boxed{ red } more", 1.0),
        (switch_reward, r"<think> </think> \boxed{ red }", 2.05),  # no-think bonus 0.05
        (switch_reward, r"<think> red square </think> \boxed{ red }", 2.0),
        (switch_reward, r"<think> </think> \boxed{ blue }", 1.05),
        (switch_reward, "garbage", 0.0),
    ],
)
def test_baseline_rewards_exact(fn, completion, expected):
    assert fn(None, [completion], ["red"]) == [pytest.approx(expected)]


def test_summarise_hand_rows():
    rows = [
        {"family": "sum", "correct": 1.0, "tokens": 20, "thought": 1.0, "routed": 1.0,
         "confidence": 0.5, "fallback": 0.0, "a1_correct": 0.0, "stop": "answer"},
        {"family": "sum", "correct": 0.0, "tokens": 3, "thought": 0.0, "routed": 0.0,
         "confidence": 0.99, "fallback": 0.0, "a1_correct": 0.0, "stop": "exit"},
        {"family": "attribute", "correct": 1.0, "tokens": 3, "thought": 0.0, "routed": 0.0,
         "confidence": 0.999, "fallback": 0.0, "a1_correct": 1.0, "stop": "exit"},
    ]  # fmt: skip
    s = summarise(rows)
    assert s["acc"] == pytest.approx(2 / 3) and s["tokens"] == pytest.approx(26 / 3)
    assert s["recall_wrong_to_think/sum"] == pytest.approx(0.5)  # 1 of 2 wrong a1 routed
    assert s["think_rate/reasoning"] == pytest.approx(0.5) and s["think_rate/perception"] == 0
    assert s["correct"] == [1.0, 0.0, 1.0] and "acc/presence" not in s


def test_train_end_to_end_saves_and_resumes(trained, items):
    out, _, _ = trained
    back, tok2, style = load_video_model(out / "model")
    assert style == "auto"
    rows = answer_rows(back, tok2, items[:4], tau=0.97, max_new_tokens=8)
    assert len(rows) == 4 and all(1 <= r["tokens"] <= 8 for r in rows)
    assert (out / "grpo" / "rollouts.jsonl").is_file()
    with pytest.raises(ValueError, match="unknown style"):
        Recipe(style="cot")
    with pytest.raises(ValueError, match="unknown recipe keys"):
        Recipe.from_dict({"styel": "auto"})


def test_cli_make_video_answer_and_eval(trained, tmp_path):
    from fmlab.cli import app

    out, _, _ = trained
    runner = CliRunner()
    mp4 = tmp_path / "v.mp4"
    r = runner.invoke(app, ["autothink", "make-video", "--out", str(mp4), "--seed", "3"])
    assert r.exit_code == 0, r.output
    qs = [json.loads(line) for line in r.stdout.splitlines()]
    assert {q["family"] for q in qs} >= {"presence", "count", "sum", "order"}
    r = runner.invoke(app, ["autothink", "answer", "--model", str(out / "model"), "--video",
                            str(mp4), "--max-new-tokens", "6", qs[0]["question"]])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout.splitlines()[0])["tokens"] <= 6
    r = runner.invoke(app, ["autothink", "answer", "--model", str(out / "model"), "q"])
    assert r.exit_code == 2 and "--video" in r.output
    r = runner.invoke(app, ["autothink", "eval", "--model", str(out / "model"), "--n", "5"])
    assert r.exit_code == 0, r.output
    assert "acc/perception" in json.loads(r.stdout)
    r = runner.invoke(app, ["autothink", "eval", "--model", str(tmp_path / "nope")])
    assert r.exit_code == 2 and "fmlab autothink train" in r.output
