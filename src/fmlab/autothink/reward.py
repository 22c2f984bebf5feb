"""The VideoAuto-R1 reward, with TRL's reward-function signature.

    R = w1·R(a1) + w2·R(a2) + w_format·R_format (+ bonus when a1 is the fallback and a2 is right)

with w1 = 0.9, w2 = 1.1, w_format = 1.0, bonus = 0.3 (the official ``--reward_weights 0.9 1.1 1``;
the official code adds the bonus inside the a2 accuracy as 0.3/1.1, i.e. +0.3 in the total).
Each R is 0 or 1. The accuracy terms read the answers leniently (:func:`parse`), the format term
strictly (:func:`format_ok`), as the official separate reward functions do. A completion that is
malformed, empty or not even a string scores 0 where it fails and never raises.
"""

from __future__ import annotations

from collections.abc import Sequence

from fmlab.autothink.format import format_ok, is_fallback, normalize, parse

__all__ = [
    "BONUS",
    "WEIGHTS",
    "a1_reward",
    "a2_reward",
    "completion_text",
    "format_reward",
    "reward",
    "score",
]

WEIGHTS = (0.9, 1.1, 1.0)  # w1 (a1), w2 (a2), w_format
BONUS = 0.3


def completion_text(completion: object) -> str:
    """The text of a completion: a string as is; for TRL's conversational format (a list of
    ``{"role", "content"}`` messages, content a string or a list of ``{"type": "text", "text"}``
    parts) the assistant messages joined. Anything unreadable gives ``""``."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        completion = [completion]
    if not isinstance(completion, (list, tuple)):
        return ""
    texts = []
    for msg in completion:
        if not isinstance(msg, dict) or msg.get("role", "assistant") != "assistant":
            continue
        content = msg.get("content")
        if isinstance(content, str):
            texts.append(content)
        elif isinstance(content, (list, tuple)):
            texts.extend(
                p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)
            )
    return "".join(texts)


def _golds(answer: object) -> set[str]:
    """A reference answer (or a list of acceptable ones), normalised."""
    if isinstance(answer, (list, tuple, set)):
        return {normalize(a) for a in answer} - {""}
    return {normalize(answer)} - {""}


def _correct(pred: str | None, answer: object) -> bool:
    return pred is not None and normalize(pred) in _golds(answer)


def score(completion: object, answer: object) -> dict[str, float]:
    """The reward terms of one completion: ``{"a1", "a2", "format", "bonus"}``, each 0 or 1."""
    text = completion_text(completion)
    p = parse(text)
    fallback = is_fallback(p.a1)
    a2 = float(_correct(p.a2, answer))
    return {
        "a1": 0.0 if fallback else float(_correct(p.a1, answer)),
        "a2": a2,
        "format": float(format_ok(text)),
        "bonus": float(fallback and a2 > 0),
    }


def _check_lengths(completions: Sequence, answer: Sequence | None) -> Sequence:
    if answer is None:
        raise ValueError(
            "the autothink reward needs the reference answers: give the dataset an 'answer' "
            "column (TRL passes every column to reward functions by name)"
        )
    if isinstance(answer, str) or len(answer) != len(completions):
        n = 1 if isinstance(answer, str) else len(answer)
        raise ValueError(
            f"{len(completions)} completions but {n} answers; pass one answer per completion "
            "(a list, as TRL passes the 'answer' column)"
        )
    return answer


def reward(
    prompts: Sequence | None,
    completions: Sequence,
    answer: Sequence | None = None,
    *,
    w1: float = WEIGHTS[0],
    w2: float = WEIGHTS[1],
    w_format: float = WEIGHTS[2],
    bonus: float = BONUS,
    **kwargs,
) -> list[float]:
    """TRL reward function: ``w1·R(a1) + w2·R(a2) + w_format·R_format + bonus·[fallback ∧ a2]``.

    Args:
        prompts: ignored (TRL passes them); may be ``None``.
        completions: strings, or lists of chat messages for conversational datasets.
        answer: one reference answer per completion (a string, a number, or a list of
            acceptable answers), compared after :func:`normalize`.
        w1, w2, w_format, bonus: the weights and the fallback bonus (official defaults).
        **kwargs: other dataset columns, ignored.

    Returns:
        One float per completion; between 0 and ``w1 + w2 + w_format`` (the bonus and a correct
        a1 exclude each other, since a fallback a1 scores 0).
    """
    answer = _check_lengths(completions, answer)
    out = []
    for c, a in zip(completions, answer, strict=True):
        s = score(c, a)
        out.append(w1 * s["a1"] + w2 * s["a2"] + w_format * s["format"] + bonus * s["bonus"])
    return out


def a1_reward(prompts, completions, answer=None, **kwargs) -> list[float]:
    """R(a1) alone (0 or 1; a fallback a1 scores 0), for ``GRPOTrainer(reward_weights=...)``."""
    answer = _check_lengths(completions, answer)
    return [score(c, a)["a1"] for c, a in zip(completions, answer, strict=True)]


def a2_reward(prompts, completions, answer=None, bonus: float = BONUS, **kwargs) -> list[float]:
    """R(a2) plus the fallback bonus divided by ``WEIGHTS[1]`` (as the official code does, so
    that with weight 1.1 it adds exactly ``bonus`` to the total)."""
    answer = _check_lengths(completions, answer)
    out = []
    for c, a in zip(completions, answer, strict=True):
        s = score(c, a)
        out.append(s["a2"] + s["bonus"] * bonus / WEIGHTS[1])
    return out


def format_reward(prompts, completions, **kwargs) -> list[float]:
    """R_format alone: 1.0 when :func:`format_ok`, else 0.0."""
    return [float(format_ok(completion_text(c))) for c in completions]
