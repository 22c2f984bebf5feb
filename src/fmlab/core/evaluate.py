"""Evaluation helpers: LM loss on token blocks, sliding-window perplexity, greedy generation,
task accuracy and decode speed."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = [
    "auroc",
    "decode_speed",
    "generate",
    "lm_loss",
    "perplexity",
    "task_accuracy",
]


def _model_device(model) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def lm_loss(
    model, blocks: torch.Tensor, batch_size: int = 16, max_batches: int | None = None
) -> float:
    """Mean next-token cross-entropy (nats/token) over ``(N, T + 1)`` token blocks.

    Uses the first ``max_batches`` batches in order, so repeated calls score the same tokens.
    """
    was_training = model.training
    model.eval()
    dev = _model_device(model)
    total, count = 0.0, 0
    for i, start in enumerate(range(0, len(blocks), batch_size)):
        if max_batches is not None and i >= max_batches:
            break
        b = blocks[start : start + batch_size].to(dev)
        logits = model(input_ids=b[:, :-1]).logits
        loss = F.cross_entropy(
            logits.reshape(-1, logits.size(-1)).float(), b[:, 1:].reshape(-1), reduction="sum"
        )
        total += float(loss)
        count += b[:, 1:].numel()
    model.train(was_training)
    if count == 0:
        raise ValueError("no tokens to evaluate: blocks is empty")
    return total / count


@torch.no_grad()
def perplexity(
    model,
    ids: torch.Tensor | Sequence[int],
    window: int = 512,
    stride: int = 256,
) -> dict[str, float]:
    """Sliding-window perplexity of one token sequence.

    Each window of ``window`` tokens scores only the tokens not scored by the previous window,
    so every token after the first is scored exactly once, with at least ``window - stride``
    tokens of left context once the sequence is that long (the standard strided evaluation).

    Returns:
        ``{"ppl", "nll" (mean nats/token), "tokens" (number scored)}``.
    """
    if stride <= 0 or stride >= window:
        # stride == window would leave the first token of every window without context
        raise ValueError(f"need 0 < stride < window, got stride={stride}, window={window}")
    ids = torch.as_tensor(ids, dtype=torch.long).reshape(-1)
    if ids.numel() < 2:
        raise ValueError("perplexity needs at least 2 tokens")
    dev = _model_device(model)
    was_training = model.training
    model.eval()
    nll, scored, prev_end = 0.0, 0, 1  # token 0 has no context and is never scored
    for begin in range(0, ids.numel() - 1, stride):
        end = min(begin + window, ids.numel())
        x = ids[begin:end].to(dev)[None]  # (1, W)
        logits = model(input_ids=x).logits[0, :-1].float()  # predicts positions begin+1..end-1
        targets = x[0, 1:]
        first = max(prev_end, begin + 1) - (begin + 1)  # index into targets of the first new token
        losses = F.cross_entropy(logits[first:], targets[first:], reduction="sum")
        nll += float(losses)
        scored += targets.numel() - first
        prev_end = end
        if end == ids.numel():
            break
    model.train(was_training)
    mean = nll / scored
    return {"ppl": math.exp(mean), "nll": mean, "tokens": scored}


def _encode_prompts(tokenizer, prompts: Sequence[str], chat: bool) -> list[list[int]]:
    if chat:  # render, then tokenize: the rendered text already holds the special tokens
        prompts = [
            tokenizer.apply_chat_template(
                [{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False
            )
            for p in prompts
        ]
    return [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]


@torch.no_grad()
def generate(
    model,
    tokenizer,
    prompts: Sequence[str],
    max_new_tokens: int = 32,
    chat: bool = True,
    batch_size: int = 16,
) -> list[str]:
    """Greedy completions of ``prompts`` (chat-formatted when ``chat``), decoded without
    special tokens. Batches are left-padded; generation stops at the tokenizer's EOS."""
    dev = _model_device(model)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    encoded = _encode_prompts(tokenizer, prompts, chat)
    out: list[str] = []
    for start in range(0, len(encoded), batch_size):
        chunk = encoded[start : start + batch_size]
        width = max(len(e) for e in chunk)
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for i, e in enumerate(chunk):
            ids[i, width - len(e) :] = torch.tensor(e)
            mask[i, width - len(e) :] = 1
        gen = model.generate(
            input_ids=ids.to(dev),
            attention_mask=mask.to(dev),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=pad,
            eos_token_id=tokenizer.eos_token_id,
        )
        for row in gen[:, width:]:
            out.append(tokenizer.decode(row, skip_special_tokens=True))
    return out


def task_accuracy(
    model, tokenizer, task, examples, max_new_tokens: int = 32, chat: bool = True
) -> dict[str, object]:
    """Fraction of ``examples`` whose greedy completion ``task.verify`` accepts."""
    if not examples:
        raise ValueError("task_accuracy needs at least one example")
    completions = generate(model, tokenizer, [e.prompt for e in examples], max_new_tokens, chat)
    scores = [task.verify(e, c) for e, c in zip(examples, completions, strict=True)]
    return {"accuracy": sum(scores) / len(scores), "n": len(scores), "completions": completions}


@torch.no_grad()
def decode_speed(
    model, tokenizer, prompt: str, new_tokens: int = 32, chat: bool = True
) -> dict[str, float | str]:
    """Greedy decode of exactly ``new_tokens`` tokens at batch 1 with the KV cache.

    Returns the completion, the wall time and decode tokens/s (prefill included in the time).
    """
    dev = _model_device(model)
    ids = _encode_prompts(tokenizer, [prompt], chat)[0]
    x = torch.tensor([ids], device=dev)
    t0 = time.perf_counter()
    gen = model.generate(
        input_ids=x,
        attention_mask=torch.ones_like(x),
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        do_sample=False,
        pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id,
    )
    dt = time.perf_counter() - t0
    n = gen.shape[1] - x.shape[1]
    text = tokenizer.decode(gen[0, x.shape[1] :], skip_special_tokens=True)
    return {"text": text, "new_tokens": n, "seconds": dt, "tokens_per_s": n / dt}


def auroc(scores: Sequence[float], labels: Sequence[int | bool]) -> float:
    """Area under the ROC curve: P(a random positive scores above a random negative), ties
    counting half (the Mann-Whitney U statistic, via average ranks)."""
    from scipy.stats import rankdata

    s = torch.as_tensor(scores, dtype=torch.float64).numpy()
    y = torch.as_tensor(labels).numpy().astype(bool)
    pos, neg = int(y.sum()), int((~y).sum())
    if pos == 0 or neg == 0:
        raise ValueError("AUROC needs at least one positive and one negative label")
    ranks = rankdata(s)
    return float((ranks[y].sum() - pos * (pos + 1) / 2) / (pos * neg))
