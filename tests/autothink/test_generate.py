"""The early exit really stops, continues from the same cache, batches, and names bad input."""

import pytest
import torch

from fmlab.autothink import FALLBACK, generate


def _gen(model, tok, prompt, **kw):
    return generate(model, tok, prompt, chat=False, **kw)


def test_confident_a1_exits_before_the_think_tag(script_llama, script_tokenizer):
    r = _gen(script_llama, script_tokenizer, "Q1", tau=0.97)
    assert (r.answer, r.thought, r.stop, r.tokens) == ("C", False, "exit", 2)
    assert r.text == "\\boxed{C}" and "<think>" not in r.text
    assert r.confidence == pytest.approx(1.0, abs=1e-6) and r.seconds > 0


def test_unsure_a1_thinks_and_answers_a2(script_llama, script_tokenizer, unsure_prob):
    p = unsure_prob
    r = _gen(script_llama, script_tokenizer, "Q3", tau=0.97)
    assert (r.answer, r.a1, r.a2, r.thought, r.stop, r.tokens) == ("A", "B", "A", True, "answer", 5)
    assert r.confidence == pytest.approx(p, rel=1e-5)
    low = _gen(script_llama, script_tokenizer, "Q3", tau=p - 1e-4)  # at/above tau: exit
    assert (low.answer, low.thought, low.tokens) == ("B", False, 2)


def test_fallback_always_thinks(script_llama, script_tokenizer):
    r = _gen(script_llama, script_tokenizer, "Q2", tau=0.0)
    assert (r.answer, r.a1, r.thought, r.confidence) == ("5", FALLBACK, True, -1.0)


def test_continuation_equals_one_uninterrupted_greedy_decode(script_llama, script_tokenizer):
    tok = script_tokenizer
    r = _gen(script_llama, tok, "Q1", tau=1.01)  # tau above 1: always continues
    ids = torch.tensor([tok("Q1")["input_ids"]])
    full = script_llama.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=20,
        do_sample=False,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
    )[0, ids.shape[1] :].tolist()
    assert r.thought and r.answer == "D"
    assert r.token_ids == full[: r.tokens] and full[r.tokens] == tok.eos_token_id


def test_random_llama_matches_hf_greedy_and_batches(bpe_tokenizer):
    """A random model writes no boxes: it decodes to the budget, token for token as HF's own
    greedy ``generate`` (prefill then one token at a time from the same cache), alone or
    left-padded in a batch."""
    from fmlab.core.models import build_model

    tok = bpe_tokenizer
    tok.add_tokens(["<think>", "</think>"])
    model = build_model("llama-tiny", len(tok), seed=1).eval()
    prompts = ["The quick brown fox", "A", "Python is a programming language that"]
    batch = _gen(model, tok, prompts, tau=0.97, max_new_tokens=12)
    for p, b in zip(prompts, batch, strict=True):
        ids = torch.tensor([tok(p)["input_ids"]])
        ref = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=12,
            do_sample=False,
            pad_token_id=tok.pad_token_id,
            eos_token_id=None,
        )[0, ids.shape[1] :].tolist()
        one = _gen(model, tok, p, tau=0.97, max_new_tokens=12)
        assert one.token_ids == ref[: one.tokens] and one.tokens == 12 and one.stop == "budget"
        assert b.token_ids == one.token_ids
        assert (one.answer, one.thought, one.confidence) == (None, False, -1.0)


def test_batch_drops_finished_rows(script_llama, script_tokenizer):
    sizes = []
    hook = script_llama.register_forward_pre_hook(
        lambda mod, args, kw: sizes.append(kw["input_ids"].shape[0]), with_kwargs=True
    )
    try:
        rs = _gen(script_llama, script_tokenizer, ["Q1", "Q2", "Q3"], tau=0.97)
    finally:
        hook.remove()
    assert [r.answer for r in rs] == ["C", "5", "A"]
    assert [r.thought for r in rs] == [False, True, True]
    assert [r.tokens for r in rs] == [2, 4, 5]
    # prefill, then step 2 with all three; Q1 exits after token 2, Q2 stops after token 4
    assert sizes == [3, 3, 2, 2, 1]
    singles = [_gen(script_llama, script_tokenizer, q, tau=0.97) for q in ["Q1", "Q2", "Q3"]]
    assert [s.token_ids for s in singles] == [r.token_ids for r in rs]


def test_budget_stops(script_llama, script_tokenizer):
    r = _gen(script_llama, script_tokenizer, "Q3", tau=0.97, max_new_tokens=3)
    assert (r.tokens, r.stop, r.thought, r.answer) == (3, "budget", True, "B")


def test_prompt_longer_than_context_is_a_clear_error(short_script_llama, script_tokenizer):
    with pytest.raises(ValueError, match=r"context is 8 tokens.*shorten the prompt"):
        _gen(short_script_llama, script_tokenizer, "Q1" * 9)
    r = _gen(short_script_llama, script_tokenizer, "Q3" * 6, tau=1.01, max_new_tokens=50)
    assert (r.tokens, r.stop) == (2, "context")


@pytest.mark.parametrize("bad", ["", "   ", []])
def test_bad_prompts(script_llama, script_tokenizer, bad):
    with pytest.raises(ValueError, match="prompt"):
        _gen(script_llama, script_tokenizer, bad)


def test_chat_without_template_is_a_clear_error(script_llama, script_tokenizer):
    with pytest.raises(ValueError, match="no chat template"):
        saved, script_tokenizer.chat_template = script_tokenizer.chat_template, None
        try:
            generate(script_llama, script_tokenizer, "Q1", chat=True)
        finally:
            script_tokenizer.chat_template = saved


@pytest.mark.slow
def test_bundled_smollm2_runs_and_matches_hf_greedy(smollm2):
    """On the real bundled model (not trained for the format, so it writes no box): the decode
    is HF's greedy decode, token for token."""
    model, tok = smollm2
    r = generate(model, tok, "What is 2 + 2?", tau=0.97, max_new_tokens=3)
    text = tok.apply_chat_template(
        [{"role": "user", "content": "What is 2 + 2?"}], tokenize=False, add_generation_prompt=True
    )
    ids = torch.tensor([tok(text, add_special_tokens=False)["input_ids"]])
    ref = model.generate(
        ids, attention_mask=torch.ones_like(ids), max_new_tokens=3, do_sample=False
    )
    assert r.token_ids == ref[0, ids.shape[1] :].tolist()[: r.tokens] and 1 <= r.tokens <= 3
