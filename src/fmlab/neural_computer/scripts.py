"""Seeded episode scripts for the terminal recorder: everyday commands, arithmetic (with and
without the answer typed as a comment, the analogue of the paper's answer-in-the-prompt
captions), and a shell function defined, reused after D distractor commands, then redefined.

Every script is a list of :class:`~fmlab.neural_computer.terminal.Step`; a step that is
probed carries what its output must be (``probe["expect"]``), and for a redefinition also the
output of the old definition (``probe["old"]``), so evaluation can tell a correct answer from a
leaked one. Typing is realistic: occasional typos fixed with Backspace, edits with the arrow
keys, history recall with Up, and lines abandoned with Ctrl-C.
"""

from __future__ import annotations

import random

from fmlab.neural_computer.terminal import Step

__all__ = ["FAMILIES", "make_script", "type_line"]

_WORDS = ["alpha", "beta", "gamma", "delta", "notes", "data", "red", "blue", "green", "cat",
          "sun", "moon", "tree", "apple", "lemon", "river", "stone", "cloud", "ink", "map"]  # fmt: skip
_TYPO = "qwertyuiopasdfghjklzxcvbnm"


def type_line(text: str, rng: random.Random, typo_p: float = 0.05, arrow_p: float = 0.1) -> list:
    """Keys that type ``text`` and press Enter, with seeded typos (fixed by Backspace) and, now
    and then, a character dropped and put back with Left/Right."""
    keys: list[str] = []
    for ch in text:
        if ch.isalpha() and rng.random() < typo_p:
            keys += [rng.choice(_TYPO), "Backspace"]
        keys.append(ch)
    if len(text) > 4 and rng.random() < arrow_p:  # forget one character, go back, insert it
        k = rng.randrange(1, min(4, len(text) - 1) + 1)
        pos = len(text) - k
        keys = [*type_line(text[: pos - 1] + text[pos:], rng, 0.0, 0.0)[:-1]]
        keys += ["Left"] * (k - 0) + [text[pos - 1]] + ["Right"] * k
    return [*keys, "Enter"]


def _everyday(rng: random.Random) -> list[tuple[str, dict]]:
    w1, w2 = rng.sample(_WORDS, 2)
    f = f"{w1}.txt"
    pool = [
        (f"echo {w1} {w2}", {"expect": f"{w1} {w2}"}),
        (f"mkdir {w2}", {}),
        (f"echo {w2} > {f}", {}),
        (f"cat {f}", {"expect": w2}),
        ("ls", {}),
        (f"wc -c {f}", {"expect": f"{len(w2) + 1} {f}"}),
        (f"seq {rng.randint(2, 4)}", {}),
        (f"echo {w1} | tr a-z A-Z", {"expect": w1.upper()}),
        (f"echo {w1}{w2}", {"expect": f"{w1}{w2}"}),
    ]
    picked = rng.sample(pool[:1] + pool[4:], 3)
    return [pool[1], pool[2], pool[3], *picked]


def _arith_expr(rng: random.Random) -> tuple[str, int]:
    a, b = rng.randint(2, 99), rng.randint(2, 99)
    op = rng.choice(["+", "-", "*"])
    return f"{a}{op}{b}", eval(f"{a}{op}{b}")


def _arithmetic(rng: random.Random) -> list[tuple[str, dict]]:
    out = []
    for _ in range(rng.randint(3, 4)):
        expr, val = _arith_expr(rng)
        with_answer = rng.random() < 0.5
        line = f"echo $(({expr}))" if rng.random() < 0.6 else f'python3 -c "print({expr})"'
        if with_answer:
            line += f" # {val}"
        out.append((line, {"kind": "arith", "expect": str(val), "answer_in_prompt": with_answer}))
    return out


def _routine(rng: random.Random, distractors: int | None = None) -> list[tuple[str, dict]]:
    name = rng.choice(["greet", "shout", "tag", "hello", "mark"])
    w_old, w_new = rng.sample(["hi", "yo", "bye", "ok", "hey", "sup"], 2)
    d = rng.randint(0, 3) if distractors is None else distractors
    arg1, arg2, arg3 = (rng.choice(_WORDS) for _ in range(3))
    out: list[tuple[str, dict]] = [(f"{name}() {{ echo {w_old} $1; }}", {"kind": "define"})]
    out.append((f"{name} {arg1}", {"kind": "reuse", "expect": f"{w_old} {arg1}", "distractors": 0}))
    for _ in range(d):
        w = rng.choice(_WORDS)
        out.append((f"echo {w}", {"expect": w}))
    out.append((f"{name} {arg2}", {"kind": "reuse", "expect": f"{w_old} {arg2}", "distractors": d}))
    out.append((f"{name}() {{ echo {w_new} $1; }}", {"kind": "redefine"}))
    out.append((f"{name} {arg3}", {"kind": "update", "expect": f"{w_new} {arg3}",
                                   "old": f"{w_old} {arg3}"}))  # fmt: skip
    return out


FAMILIES = {"everyday": _everyday, "arithmetic": _arithmetic, "routine": _routine}


def make_script(family: str, seed: int, ctrl_c_p: float = 0.15) -> list[Step]:
    """The seeded script of one episode of ``family`` (one of :data:`FAMILIES`)."""
    if family not in FAMILIES:
        raise ValueError(f"unknown episode family {family!r}; choose one of: {', '.join(FAMILIES)}")
    rng = random.Random(f"{family}:{seed}")
    steps = []
    for line, probe in FAMILIES[family](rng):
        if rng.random() < ctrl_c_p:  # start a line, think better of it
            w = rng.choice(_WORDS)
            steps.append(Step([*f"echo {w}"[: rng.randint(2, 6)], "Ctrl-C"], {"kind": "cancel"}))
        steps.append(Step(type_line(line, rng), {"line": line, **probe}))
    if rng.random() < 0.3 and steps:  # recall the last command with Up and run it again
        last = steps[-1]
        steps.append(Step(["Up", "Enter"], {k: v for k, v in last.probe.items() if k != "kind"}))
    return steps
