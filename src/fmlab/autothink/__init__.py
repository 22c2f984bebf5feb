"""VideoAuto-R1, "reason when necessary": answer, think, answer again.

A model writes ``\\boxed{a1} <think> r </think> \\boxed{a2}``: an initial answer without
analysis (or the fallback phrase when it cannot answer without reasoning), then reasoning,
then a reviewed answer. This package holds the format (``parse``, ``format_ok``,
``normalize``), the reward with TRL's signature (``reward``, plus its terms) and the
confidence-gated early exit on any HF causal LM (``generate``), and the reproduction's tiny
video-QA model with its training (``VideoLlamaForCausalLM``, ``train_video_model``); those are
loaded lazily, so the format and reward need neither torch nor transformers.
"""

import importlib

from fmlab.autothink.format import (
    BOX,
    FALLBACK,
    THINK_CLOSE,
    THINK_OPEN,
    Parsed,
    format_ok,
    is_fallback,
    normalize,
    parse,
)
from fmlab.autothink.reward import (
    BONUS,
    WEIGHTS,
    a1_reward,
    a2_reward,
    completion_text,
    format_reward,
    reward,
    score,
)

_LAZY = {
    "AutoAnswer": "infer",
    "FORMAT_INSTRUCTION": "infer",
    "generate": "infer",
    "Recipe": "train",
    "load_video_model": "train",
    "train_video_model": "train",
    "VideoLlamaForCausalLM": "videoqa",
    "build_video_llama": "videoqa",
    "qa_items": "videoqa",
    "qa_tokenizer": "videoqa",
}

__all__ = [
    "BONUS",
    "BOX",
    "FALLBACK",
    "FORMAT_INSTRUCTION",
    "THINK_CLOSE",
    "THINK_OPEN",
    "WEIGHTS",
    "AutoAnswer",
    "Parsed",
    "Recipe",
    "VideoLlamaForCausalLM",
    "a1_reward",
    "a2_reward",
    "build_video_llama",
    "completion_text",
    "format_ok",
    "format_reward",
    "generate",
    "is_fallback",
    "load_video_model",
    "normalize",
    "parse",
    "qa_items",
    "qa_tokenizer",
    "reward",
    "score",
    "train_video_model",
]


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    globals()[name] = value
    return value
