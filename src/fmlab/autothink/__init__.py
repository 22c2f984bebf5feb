"""VideoAuto-R1, "reason when necessary": answer, think, answer again.

A model writes ``\\boxed{a1} <think> r </think> \\boxed{a2}``: an initial answer without
analysis (or the fallback phrase when it cannot answer without reasoning), then reasoning,
then a reviewed answer. This package holds the format (``parse``, ``format_ok``,
``normalize``), the reward with TRL's signature (``reward``, plus its terms) and the
confidence-gated early exit on any HF causal LM (``generate``; loaded lazily, so the format and
reward need neither torch nor transformers).
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

_LAZY = {"AutoAnswer": "infer", "FORMAT_INSTRUCTION": "infer", "generate": "infer"}

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
    "a1_reward",
    "a2_reward",
    "completion_text",
    "format_ok",
    "format_reward",
    "generate",
    "is_fallback",
    "normalize",
    "parse",
    "reward",
    "score",
]


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    globals()[name] = value
    return value
