"""VideoAuto-R1, "reason when necessary": answer, think, answer again.

A model writes ``\\boxed{a1} <think> r </think> \\boxed{a2}``: an initial answer without
analysis (or the fallback phrase when it cannot answer without reasoning), then reasoning,
then a reviewed answer. This package holds the format (``parse``, ``format_ok``,
``normalize``) and the reward with TRL's signature (``reward``, plus its terms).
"""

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

__all__ = [
    "BONUS",
    "BOX",
    "FALLBACK",
    "THINK_CLOSE",
    "THINK_OPEN",
    "WEIGHTS",
    "Parsed",
    "a1_reward",
    "a2_reward",
    "completion_text",
    "format_ok",
    "format_reward",
    "is_fallback",
    "normalize",
    "parse",
    "reward",
    "score",
]
