"""Reading a trained video-QA model and scoring it per question family.

A *reading* decides how a model is decoded with :func:`fmlab.autothink.generate`: ``tau`` (the
exit threshold; 0 always exits at a1, above 1 always thinks) and ``stop_at_a1`` (the "a1 only"
reading: stop once a1 is decided; a fallback a1 then gives no answer). Per row we keep whether
the answer is right, the tokens generated until the row stopped, whether it thought (wrote a
non-empty think block), the a1 confidence and whether a1 was right; :func:`summarise` turns
rows into the metrics of the bench, overall and per family.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from fmlab.autothink.format import is_fallback, normalize, parse
from fmlab.autothink.infer import generate
from fmlab.autothink.videoqa import PERCEPTION_FAMILIES, QA_FAMILIES, REASONING_FAMILIES, frames_of

__all__ = ["answer_rows", "summarise", "time_answers"]


def _right(pred, gold) -> bool:
    return pred is not None and normalize(pred) == normalize(gold)


def answer_rows(
    model, tokenizer, items: Sequence[dict], tau: float = 0.97, stop_at_a1: bool = False,
    max_new_tokens: int = 32, batch: int = 64,
) -> list[dict]:  # fmt: skip
    """Decode every item (batched) with the early exit; one result dict per item."""
    rows = []
    for i in range(0, len(items), batch):
        chunk = list(items[i : i + batch])
        res = generate(model, tokenizer, [it["prompt"] for it in chunk], tau=tau,
                       max_new_tokens=max_new_tokens, chat=False, stop_at_a1=stop_at_a1,
                       model_inputs={"frames": frames_of(chunk)})  # fmt: skip
        for it, r in zip(chunk, res, strict=True):
            p = parse(r.text)
            a1_box = bool(r.a1) and not is_fallback(r.a1)
            rows.append({
                "family": it["family"],
                "correct": float(_right(r.answer, it["answer"])),
                "tokens": r.tokens,
                "thought": float(bool(p.think)),
                "routed": float(r.thought),
                "confidence": r.confidence if r.confidence >= 0 else None,
                "fallback": float(is_fallback(r.a1)),
                "a1_correct": float(a1_box and _right(r.a1, it["answer"])),
                "stop": r.stop,
            })  # fmt: skip
    return rows


def _mean(xs) -> float | None:
    xs = [x for x in xs if x is not None]
    return float(np.mean(xs)) if xs else None


def _metrics(rows: list[dict]) -> dict:
    wrong = [r for r in rows if not r["a1_correct"]]
    return {
        "acc": _mean(r["correct"] for r in rows),
        "tokens": _mean(r["tokens"] for r in rows),
        "think_rate": _mean(r["thought"] for r in rows),
        "a1_confidence": _mean(r["confidence"] for r in rows),
        "a1_acc": _mean(r["a1_correct"] for r in rows),
        "fallback_rate": _mean(r["fallback"] for r in rows),
        # of the rows whose a1 was wrong (or the fallback), the share that went on thinking
        "recall_wrong_to_think": _mean(r["routed"] for r in wrong),
    }


def summarise(rows: list[dict]) -> dict:
    """Metrics overall (``acc``, ``tokens``, ...), per family (``acc/sum``, ...), per family
    group (``acc/perception``, ``acc/reasoning``) and per item (``correct``, ``tokens_items``:
    lists in item order, for paired intervals)."""
    out = _metrics(rows)
    groups = {f: [f] for f in QA_FAMILIES}
    groups |= {"perception": list(PERCEPTION_FAMILIES), "reasoning": list(REASONING_FAMILIES)}
    for name, fams in groups.items():
        sub = [r for r in rows if r["family"] in fams]
        if sub:
            out.update({f"{k}/{name}": v for k, v in _metrics(sub).items()})
    out["correct"] = [r["correct"] for r in rows]
    out["tokens_items"] = [float(r["tokens"]) for r in rows]
    return {k: v for k, v in out.items() if v is not None}


def time_answers(model, tokenizer, items: Sequence[dict], tau: float = 0.97,
                 stop_at_a1: bool = False, max_new_tokens: int = 32) -> float:  # fmt: skip
    """Wall seconds to answer ``items`` one at a time (batch size 1: the latency a user sees
    per answer, prefill included)."""
    t0 = time.perf_counter()
    for it in items:
        generate(model, tokenizer, it["prompt"], tau=tau, max_new_tokens=max_new_tokens,
                 chat=False, stop_at_a1=stop_at_a1,
                 model_inputs={"frames": frames_of([it])})  # fmt: skip
    return time.perf_counter() - t0
