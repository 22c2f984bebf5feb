"""The output format ``\\boxed{a1} <think> r </think> \\boxed{a2}``: parse, check, normalise.

``parse`` is lenient (it reads whatever answers a completion holds, so the accuracy rewards
can score a badly formatted completion); ``format_ok`` is strict (the format reward).
Box contents may hold braces one level deep (``\\boxed{\\frac{1}{2}}``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction

__all__ = [
    "BOX",
    "FALLBACK",
    "THINK_CLOSE",
    "THINK_OPEN",
    "Parsed",
    "format_ok",
    "is_fallback",
    "normalize",
    "parse",
]

FALLBACK = "Let's analyze the problem step by step."
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"

# \boxed{...} whose content has no braces or balanced braces one level deep.
_BOX_BODY = r"((?:[^{}]|\{[^{}]*\})*)"
BOX = re.compile(r"\\boxed\{" + _BOX_BODY + r"\}")
_FALLBACK_RE = re.escape(FALLBACK)
# The whole completion, strictly: a box (or the fallback, bare or boxed) first, one think block
# with no think tag inside, a box, then nothing but whitespace.
_FORMAT = re.compile(
    r"\s*(?:\\boxed\{" + _BOX_BODY + r"\}|" + _FALLBACK_RE + r")\s*"
    r"<think>(?P<think>(?:(?!</?think>).)*)</think>\s*"
    r"\\boxed\{" + _BOX_BODY + r"\}\s*",
    re.S,
)


@dataclass(frozen=True)
class Parsed:
    """The parts of a completion; a part that is absent is ``None``.

    ``a1`` is the first box before the think block (or :data:`FALLBACK` when the completion
    opens with the fallback phrase instead), ``think`` the text of the first think block
    (stripped), ``a2`` the last box after the last ``</think>``.
    """

    a1: str | None
    think: str | None
    a2: str | None

    @property
    def fallback(self) -> bool:
        """Whether a1 is the fallback phrase (the model chose to think before answering)."""
        return is_fallback(self.a1)


def is_fallback(a1: str | None) -> bool:
    """Whether an initial answer is the fallback phrase ("Let's analyze ...", as the official
    reward tests it: by its start, case and whitespace ignored)."""
    return a1 is not None and " ".join(a1.split()).lower().startswith("let's analyze")


def parse(text: str) -> Parsed:
    """Split ``\\boxed{a1} <think> r </think> \\boxed{a2}`` into its parts, leniently.

    Never raises on a string; parts that are missing come back as ``None``. Without a think
    block the first box is a1 and a2 is ``None``.
    """
    open_at = text.find(THINK_OPEN)
    head = text if open_at < 0 else text[:open_at]
    m = BOX.search(head)
    if m:
        a1 = m.group(1).strip()
    elif FALLBACK.lower() in " ".join(head.split()).lower():
        a1 = FALLBACK
    else:
        a1 = None
    think = a2 = None
    if open_at >= 0:
        close_at = text.find(THINK_CLOSE, open_at)
        if close_at >= 0:
            think = text[open_at + len(THINK_OPEN) : close_at].strip()
            tail = text[text.rfind(THINK_CLOSE) + len(THINK_CLOSE) :]
            boxes = BOX.findall(tail)
            a2 = boxes[-1].strip() if boxes else None
    return Parsed(a1=a1, think=think, a2=a2)


def format_ok(text: str) -> bool:
    """The strict format: a box (or the fallback phrase) first, exactly one non-empty think
    block, then a box, and nothing after it (whitespace aside). Both boxes must be non-empty."""
    if not isinstance(text, str):
        return False
    m = _FORMAT.fullmatch(text)
    if m is None or not m.group("think").strip():
        return False
    a1, a2 = m.group(1), m.group(3)
    return (a1 is None or bool(a1.strip())) and bool(a2.strip())


_LETTER = re.compile(r"\(?([A-Za-z])\)?[.:]?")  # "A", "(a)", "B.", "c:"
_LETTER_WITH_TEXT = re.compile(r"\(?([A-Z])[).:]\s+\S.*", re.S)  # "(B) a red ball", "C. two"
_PREFIX = re.compile(r"^(?:the\s+)?(?:final\s+)?(?:answer|option)\s*(?:is)?\s*[:=]?\s*", re.I)
_TEXT_CMD = re.compile(r"\\(?:text|mathrm|textbf)\{([^{}]*)\}")
_FRAC = re.compile(r"^(-?)\\[dt]?frac\{([^{}]+)\}\{([^{}]+)\}$")
_NUMBER = re.compile(r"^[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?$|^[-+]?\d+/\d+$")
_YES = {"yes", "true", "correct"}
_NO = {"no", "false", "incorrect"}


def _number(s: str) -> Fraction | None:
    s = s.replace("$", "").replace(" ", "")
    s = re.sub(r"(?<=\d),(?=\d{3}\b)", "", s)  # 1,234 -> 1234
    m = _FRAC.match(s)
    if m:
        s = f"{m.group(1)}{m.group(2)}/{m.group(3)}"
    if not _NUMBER.match(s):
        return None
    try:
        return Fraction(s)
    except (ValueError, ZeroDivisionError):
        return None


def normalize(answer: object) -> str:
    """A canonical form of an answer, so that equal answers compare equal as strings.

    - option letters: ``"(b)"``, ``"B."``, ``"B) a red ball"`` -> ``"B"``;
    - yes/no: ``"Yes."``, ``"true"`` -> ``"yes"``; ``"No"``, ``"false"`` -> ``"no"``;
    - numbers: ``"1,000"``, ``"1000.0"`` -> ``"1000"``; ``"0.5"``, ``"1/2"``,
      ``"\\frac{1}{2}"`` -> ``"1/2"`` (exact rationals, no symbolic algebra);
    - anything else: lower-cased, whitespace collapsed, a trailing period dropped.

    ``None`` normalises to ``""`` (which matches nothing in :func:`fmlab.autothink.reward`).
    """
    if answer is None:
        return ""
    s = " ".join(str(answer).split())
    s = _TEXT_CMD.sub(r"\1", s).strip()
    s = _PREFIX.sub("", s).strip()
    if len(s) > 1 and s[0] == s[-1] == "$":
        s = s[1:-1].strip()
    m = _LETTER.fullmatch(s) or _LETTER_WITH_TEXT.fullmatch(s)
    if m:
        return m.group(1).upper()
    s = s.rstrip(".").strip()
    if s.lower() in _YES:
        return "yes"
    if s.lower() in _NO:
        return "no"
    x = _number(s)
    if x is not None:
        return str(x.numerator) if x.denominator == 1 else f"{x.numerator}/{x.denominator}"
    return s.lower()
