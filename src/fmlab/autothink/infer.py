"""Confidence-gated early exit that really stops: answer, and think only when unsure.

One greedy decode per prompt, batched, from one KV cache. Each row is in one of two phases:

- **a1**: when the first ``\\boxed{...}`` closes (before any ``<think>``), its confidence is
  ``exp(mean log-prob of the tokens that spell its content)``. If that is ≥ τ the row stops
  there: the think tag and everything after it are never generated. Otherwise (and always when
  a1 is the fallback phrase, or when ``<think>`` comes with no box before it) the row goes on.
- **think**: the same decode continues from the cache (nothing is re-encoded), through the
  think block, and stops when the box after ``</think>`` closes; that box is a2.

A row also stops at an end-of-sequence token, at ``max_new_tokens``, or at the model's
context. Finished rows are dropped from the batch (and from the cache), so an early exit
stops costing compute. The official evaluation instead generated every response in full and
picked a1 or a2 afterwards; the official demo stopped at ``<think>``.
"""

from __future__ import annotations

import inspect
import math
import time
from dataclasses import asdict, dataclass

import torch

from fmlab.autothink.format import BOX, FALLBACK, THINK_CLOSE, THINK_OPEN, is_fallback

__all__ = ["FORMAT_INSTRUCTION", "AutoAnswer", "generate"]

FORMAT_INSTRUCTION = (
    "Answer in this format: \\boxed{your answer} <think> your reasoning </think> "
    "\\boxed{your final answer}. If you cannot answer without reasoning, start with "
    '"Let\'s analyze the problem step by step." instead of the first box.'
)


@dataclass
class AutoAnswer:
    """One prompt's result.

    ``answer`` is a2 when the row thought and closed a second box, else a1 (``None`` when
    there is no usable answer: no box, or only the fallback). ``confidence`` is the a1
    confidence in (0, 1], or -1 when there was no a1 box or a1 was the fallback. ``tokens`` is
    the number of tokens generated; ``seconds`` the wall time from the start of the call until
    this row stopped (the prefill is shared by the batch). ``stop`` says why it stopped:
    ``"exit"`` (confident a1), ``"answer"`` (a2 closed), ``"a1"`` (``stop_at_a1``), ``"eos"``,
    ``"budget"`` or ``"context"``.
    """

    answer: str | None
    thought: bool
    confidence: float
    tokens: int
    seconds: float
    a1: str | None
    a2: str | None
    text: str
    stop: str
    token_ids: list[int]

    def to_dict(self, with_text: bool = True) -> dict:
        d = asdict(self)
        del d["token_ids"]
        if not with_text:
            del d["text"]
        return d


@dataclass
class _Row:
    index: int
    budget: int
    ids: list[int]
    logps: list[float]
    ends: list[int]  # ends[i]: length of the decoded text after token i
    text: str = ""
    phase: str = "a1"
    a1: str | None = None
    a2: str | None = None
    confidence: float = -1.0
    think_at: int = -1  # where the think block starts in text (phase "think")
    stop: str = ""
    seconds: float = 0.0


def _confidence(row: _Row, start: int, end: int) -> float:
    """exp(mean log-prob) of the tokens whose text overlaps the characters [start, end)."""
    picked = []
    prev = 0
    for lp, e in zip(row.logps, row.ends, strict=True):
        if e > start and prev < end:
            picked.append(lp)
        prev = e
    return math.exp(sum(picked) / len(picked)) if picked else -1.0


def _advance(row: _Row, tau: float, stop_at_a1: bool = False) -> None:
    """Update a row's phase after its latest token; set ``row.stop`` when it is done."""
    t = row.text
    if row.phase == "a1":
        k = t.find(THINK_OPEN)
        m = BOX.search(t if k < 0 else t[:k])
        if m is not None:
            row.a1 = m.group(1).strip()
            if row.a1 and not is_fallback(row.a1):
                row.confidence = _confidence(row, m.start(1), m.end(1))
                if row.confidence >= tau:
                    row.stop = "exit"
                    return
            if stop_at_a1:
                row.stop = "a1"
                return
            row.phase, row.think_at = "think", m.end()
        elif k >= 0:  # a think block with no box before it: the fallback, or malformed
            if FALLBACK.lower() in " ".join(t[:k].split()).lower():
                row.a1 = FALLBACK
            if stop_at_a1:
                row.stop = "a1"
                return
            row.phase, row.think_at = "think", k
        else:
            return
    c = t.find(THINK_CLOSE, row.think_at)
    if c >= 0:
        m = BOX.search(t, c + len(THINK_CLOSE))
        if m is not None:
            row.a2 = m.group(1).strip()
            row.stop = "answer"


def _encode(tokenizer, prompts: list[str], chat: bool | None, system: str | None):
    use_chat = bool(getattr(tokenizer, "chat_template", None)) if chat is None else chat
    if use_chat and not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            "chat=True but the tokenizer has no chat template; pass chat=False to feed the "
            "prompt as plain text, or use a tokenizer with a chat template"
        )
    out = []
    for p in prompts:
        if not isinstance(p, str) or not p.strip():
            raise ValueError(f"every prompt must be a non-empty string, got {p!r}")
        if use_chat:
            msgs = ([{"role": "system", "content": system}] if system else []) + [
                {"role": "user", "content": p}
            ]
            text = tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        else:
            text = f"{system}\n{p}" if system else p
            ids = tokenizer(text)["input_ids"]
        out.append(list(ids))
    return out


def _eos_ids(model, tokenizer) -> set[int]:
    ids: set[int] = set()
    for src in (getattr(model, "generation_config", None), tokenizer):
        e = getattr(src, "eos_token_id", None)
        if e is not None:
            ids.update(e if isinstance(e, (list, tuple)) else [e])
    return ids


def _stepper(model):
    """``step(ids, mask, pos, cache, **inputs) -> (cache, last logits)`` for this model's
    forward: newer transformers name the cache argument ``cache``, older ones
    ``past_key_values``; ``inputs`` are extra model inputs (e.g. a video model's frames)."""
    params = inspect.signature(model.forward).parameters
    cache_arg = "cache" if "cache" in params else "past_key_values"
    extra = {"logits_to_keep": 1} if "logits_to_keep" in params else {}

    def step(ids, mask, pos, cache, **inputs):
        kw = {cache_arg: cache} if cache is not None else {}
        out = model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=pos,
            use_cache=True,
            **kw,
            **extra,
            **inputs,
        )
        new = getattr(out, "cache", None)
        if new is None:
            new = getattr(out, "past_key_values", None)
        if new is None:
            raise ValueError(
                f"{type(model).__name__} returned no KV cache; autothink.generate needs a "
                "causal LM that supports use_cache=True"
            )
        return new, out.logits[:, -1]

    return step


def _context(model) -> int | None:
    cfg = model.config
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        n = getattr(cfg, name, None)
        if isinstance(n, int) and n > 0:
            return n
    return None


def _check_lengths(encoded: list[list[int]], ctx: int | None) -> None:
    if ctx is None:
        return
    for i, ids in enumerate(encoded):
        if len(ids) >= ctx:
            raise ValueError(
                f"prompt {i} is {len(ids)} tokens, but the model's context is {ctx} tokens "
                "(config max_position_embeddings) and at least one must be left to generate; "
                "shorten the prompt or use a model with a longer context"
            )


@torch.no_grad()
def generate(
    model,
    tokenizer,
    prompt: str | list[str],
    tau: float = 0.97,
    max_new_tokens: int = 256,
    *,
    chat: bool | None = None,
    system: str | None = None,
    model_inputs: dict | None = None,
    stop_at_a1: bool = False,
) -> AutoAnswer | list[AutoAnswer]:
    """Answer with the VideoAuto-R1 early exit on any Hugging Face causal LM.

    Args:
        model: a ``transformers`` causal LM (eval mode is set here); its device is used.
        tokenizer: its tokenizer (a pad token is not needed: padding is done here).
        prompt: a question, or a list of them (decoded as one batch).
        tau: exit threshold on the a1 confidence; 0.97 as in the official evaluation (0.98 in
            the official demo). A value above 1 always thinks; 0 exits whenever a1 is a box.
        max_new_tokens: generation budget per prompt (also capped by the model's context).
        chat: apply the tokenizer's chat template (default: when it has one).
        system: an optional system message (e.g. :data:`FORMAT_INSTRUCTION`).
        model_inputs: extra tensors for the prefill forward, ``{name: (B, ...)}`` one row per
            prompt (e.g. ``{"frames": ...}`` for :class:`fmlab.autothink.VideoLlamaForCausalLM`).
        stop_at_a1: read the model as "a1 only": every row stops once a1 is decided (a box, or
            the fallback phrase, which then gives no answer); ``stop`` is ``"a1"``.

    Returns:
        One :class:`AutoAnswer` for a string prompt, a list for a list.

    Raises:
        ValueError: an empty prompt, a prompt that fills the model's context, bad settings.
    """
    single = isinstance(prompt, str)
    prompts = [prompt] if single else list(prompt)
    if not prompts:
        raise ValueError("no prompts given")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    if math.isnan(tau):
        raise ValueError("tau is NaN; give a threshold such as 0.97")
    encoded = _encode(tokenizer, prompts, chat, system)
    for name, v in (model_inputs or {}).items():
        if not isinstance(v, torch.Tensor) or v.ndim == 0 or len(v) != len(prompts):
            raise ValueError(
                f"model_inputs[{name!r}] must be a tensor with one row per prompt "
                f"({len(prompts)}), got {getattr(v, 'shape', type(v).__name__)}"
            )
    ctx = _context(model)
    _check_lengths(encoded, ctx)
    model.eval()
    device = next(model.parameters()).device
    inputs = {k: v.to(device) for k, v in (model_inputs or {}).items()}
    eos = _eos_ids(model, tokenizer)
    rows = [
        _Row(i, min(max_new_tokens, (ctx or 1 << 62) - len(ids)), [], [], [])
        for i, ids in enumerate(encoded)
    ]
    start = time.perf_counter()

    # Prefill, left-padded: (B, T) ids, mask and positions counted over real tokens only.
    width = max(len(ids) for ids in encoded)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    input_ids = torch.tensor([[pad] * (width - len(x)) + x for x in encoded], device=device)
    mask = torch.tensor(
        [[0] * (width - len(x)) + [1] * len(x) for x in encoded], device=device, dtype=torch.long
    )
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    step = _stepper(model)
    cache, logits = step(input_ids, mask, pos, None, **inputs)  # logits (B, V)
    last_pos = pos[:, -1]  # (B,)
    active = rows  # rows still decoding, in batch order
    while True:
        logp = torch.log_softmax(logits.float(), dim=-1)  # (b, V)
        nxt = logp.argmax(-1)  # (b,)
        chosen = logp.gather(-1, nxt[:, None])[:, 0].tolist()
        now = time.perf_counter() - start
        keep = []
        for j, (row, tok, lp) in enumerate(zip(active, nxt.tolist(), chosen, strict=True)):
            row.ids.append(tok)
            row.logps.append(lp)
            row.text = tokenizer.decode(
                row.ids, skip_special_tokens=False, clean_up_tokenization_spaces=False
            )
            row.ends.append(len(row.text))
            _advance(row, tau, stop_at_a1)
            if not row.stop and tok in eos:
                row.stop = "eos"
            if not row.stop and len(row.ids) >= row.budget:
                row.stop = "budget" if row.budget == max_new_tokens else "context"
            if row.stop:
                row.seconds = now
            else:
                keep.append(j)
        if not keep:
            break
        if len(keep) < len(active):  # drop finished rows from the batch and the cache
            idx = torch.tensor(keep, device=device)
            cache.batch_select_indices(idx)
            nxt, mask, last_pos = nxt[idx], mask[idx], last_pos[idx]
            active = [active[j] for j in keep]
        mask = torch.cat([mask, mask.new_ones(len(active), 1)], dim=1)
        last_pos = last_pos + 1
        cache, logits = step(nxt[:, None], mask, last_pos[:, None], cache)
    results = [_result(r) for r in rows]
    return results[0] if single else results


def _result(row: _Row) -> AutoAnswer:
    thought = row.phase == "think"
    a1 = None if is_fallback(row.a1) else row.a1
    answer = row.a2 if row.a2 else a1
    return AutoAnswer(
        answer=answer or None,
        thought=thought,
        confidence=row.confidence,
        tokens=len(row.ids),
        seconds=row.seconds,
        a1=row.a1,
        a2=row.a2,
        text=row.text,
        stop=row.stop,
        token_ids=row.ids,
    )
