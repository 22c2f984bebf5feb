"""Synthetic tasks with verifiable answers: addition with carries, countdown, 4x4 sudoku.

Every task generates seeded :class:`Example` s and verifies a model's completion. A task's
``reward_fn`` has TRL's reward signature ``(prompts, completions, **columns) -> list[float|None]``
and reads the ``meta`` column, so it plugs into GRPO-style trainers unchanged.
"""

from __future__ import annotations

import abc
import ast
import operator
import random
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "TASKS",
    "AdditionTask",
    "CountdownTask",
    "Example",
    "SudokuTask",
    "extract_answer",
    "get_task",
]


@dataclass(frozen=True)
class Example:
    """A task instance: the question, one reference answer, and what the verifier needs."""

    prompt: str
    answer: str
    meta: dict[str, Any] = field(default_factory=dict)


_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.S)


def extract_answer(completion: str) -> str:
    """The answer part of a completion: the last ``<answer>...</answer>`` if any, else the last
    non-empty line (stripped, with a leading "Answer:" removed)."""
    tags = _ANSWER_TAG.findall(completion)
    if tags:
        return tags[-1].strip()
    lines = [ln.strip() for ln in completion.strip().splitlines() if ln.strip()]
    if not lines:
        return ""
    last = lines[-1]
    return re.sub(r"^(final\s+)?answer\s*[:=]\s*", "", last, flags=re.I).strip()


class _Task(abc.ABC):
    name = "task"

    def generate(self, n: int, seed: int = 0) -> list[Example]:
        rng = random.Random(f"{self.name}:{seed}")
        return [self.sample(rng) for _ in range(n)]

    @abc.abstractmethod
    def sample(self, rng: random.Random) -> Example:
        """One random instance."""

    @abc.abstractmethod
    def check(self, meta: dict[str, Any], answer: str) -> bool:
        """Whether ``answer`` (already extracted from a completion) is correct."""

    def answer_from(self, completion: str) -> str:
        """The part of a completion that the verifier reads."""
        return extract_answer(completion)

    def verify(self, example: Example, completion: str) -> float:
        """1.0 if the completion's answer is correct for ``example``, else 0.0."""
        return float(self.check(example.meta, self.answer_from(completion)))

    def reward_fn(self) -> Callable[..., list[float | None]]:
        """A TRL-style reward: ``f(prompts, completions, meta, **_) -> list[float | None]``."""

        def reward(prompts, completions, meta=None, **_):
            if meta is None:
                raise ValueError(f"{self.name} reward needs the dataset column 'meta'")
            out: list[float | None] = []
            for c, m in zip(completions, meta, strict=True):
                text = c if isinstance(c, str) else c[-1]["content"]  # conversational format
                out.append(float(self.check(m, self.answer_from(text))))
            return out

        reward.__name__ = f"{self.name}_reward"
        return reward


@dataclass
class AdditionTask(_Task):
    """``a+b=`` with ``digits``-digit operands and at least ``min_carries`` carries."""

    digits: int = 3
    min_carries: int = 1
    name: str = "addition"

    def __post_init__(self):
        if self.digits < 1 or not 0 <= self.min_carries <= self.digits:
            raise ValueError("need digits >= 1 and 0 <= min_carries <= digits")

    @staticmethod
    def carries(a: int, b: int) -> int:
        n, c = 0, 0
        while a or b:
            c = 1 if a % 10 + b % 10 + c >= 10 else 0
            n += c
            a, b = a // 10, b // 10
        return n

    def sample(self, rng: random.Random) -> Example:
        lo, hi = 10 ** (self.digits - 1), 10**self.digits - 1
        while True:
            a, b = rng.randint(lo, hi), rng.randint(lo, hi)
            if self.carries(a, b) >= self.min_carries:
                break
        return Example(f"{a}+{b}=", str(a + b), {"a": a, "b": b})

    def check(self, meta, answer):
        m = re.search(r"-?\d+", answer.replace(",", ""))
        return bool(m) and int(m.group()) == meta["a"] + meta["b"]


_OPS: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
}


def _safe_eval(expr: str) -> tuple[float, list[int]]:
    """Evaluate + - * / over integer literals; return (value, literals used). Else ValueError."""
    tree = ast.parse(expr, mode="eval")
    used: list[int] = []

    def ev(node):
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](ev(node.left), ev(node.right))
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            used.append(node.value)
            return node.value
        raise ValueError(f"unsupported syntax: {ast.dump(node)[:40]}")

    return ev(tree.body), used


@dataclass
class CountdownTask(_Task):
    """Reach ``target`` using each given number exactly once with + - * / (TinyZero's rules)."""

    n_numbers: int = 3
    max_number: int = 20
    name: str = "countdown"

    def sample(self, rng: random.Random) -> Example:
        while True:
            nums = [rng.randint(1, self.max_number) for _ in range(self.n_numbers)]
            expr = str(nums[0])
            for x in nums[1:]:
                op = rng.choice("+-*/")
                compound = any(o in expr for o in "+-*/")
                expr = f"({expr}){op}{x}" if op in "*/" and compound else f"{expr}{op}{x}"
            try:
                value, _ = _safe_eval(expr)
            except ZeroDivisionError:
                continue
            if value == int(value) and 0 < value <= 1000:
                shown = sorted(nums)
                prompt = f"Using {', '.join(map(str, shown))} make {int(value)}."
                return Example(prompt, expr, {"numbers": shown, "target": int(value)})

    def check(self, meta, answer):
        expr = answer.split("=")[0].strip()
        if not expr or len(expr) > 200:
            return False
        try:
            value, used = _safe_eval(expr)
        except (ValueError, SyntaxError, ZeroDivisionError, TypeError):
            return False
        return Counter(used) == Counter(meta["numbers"]) and abs(value - meta["target"]) < 1e-9


def _sudoku_valid(grid: Sequence[int]) -> bool:
    rows = [grid[4 * r : 4 * r + 4] for r in range(4)]
    cols = [grid[c::4] for c in range(4)]
    boxes = [
        [grid[4 * (br + i) + bc + j] for i in (0, 1) for j in (0, 1)]
        for br in (0, 2)
        for bc in (0, 2)
    ]
    return all(sorted(u) == [1, 2, 3, 4] for u in rows + cols + boxes)


def _count_solutions(grid: list[int], limit: int = 2) -> int:
    try:
        i = grid.index(0)
    except ValueError:
        return 1 if _sudoku_valid(grid) else 0
    r, c = divmod(i, 4)
    n = 0
    for v in range(1, 5):
        row = grid[4 * r : 4 * r + 4]
        col = grid[c::4]
        br, bc = r - r % 2, c - c % 2
        box = [grid[4 * (br + a) + bc + b] for a in (0, 1) for b in (0, 1)]
        if v in row or v in col or v in box:
            continue
        grid[i] = v
        n += _count_solutions(grid, limit - n)
        grid[i] = 0
        if n >= limit:
            break
    return n


@dataclass
class SudokuTask(_Task):
    """4x4 sudoku with a unique solution; ``blanks`` cells hidden (shown as '.')."""

    blanks: int = 8
    name: str = "sudoku"

    def sample(self, rng: random.Random) -> Example:
        base = [1, 2, 3, 4, 3, 4, 1, 2, 2, 1, 4, 3, 4, 3, 2, 1]
        digits = rng.sample([1, 2, 3, 4], 4)
        sol = [digits[v - 1] for v in base]
        bands = rng.sample([0, 2], 2)
        rows = [b + i for b in bands for i in rng.sample([0, 1], 2)]
        stacks = rng.sample([0, 2], 2)
        cols = [s + j for s in stacks for j in rng.sample([0, 1], 2)]
        sol = [sol[4 * r + c] for r in rows for c in cols]
        while True:
            puzzle = list(sol)
            for i in rng.sample(range(16), self.blanks):
                puzzle[i] = 0
            if _count_solutions(list(puzzle)) == 1:
                break
        show = "\n".join(
            "".join(str(v) if v else "." for v in puzzle[4 * r : 4 * r + 4]) for r in range(4)
        )
        answer = "\n".join("".join(map(str, sol[4 * r : 4 * r + 4])) for r in range(4))
        return Example(f"Solve the sudoku:\n{show}\n", answer, {"puzzle": puzzle})

    def check(self, meta, answer):
        digits = [int(ch) for ch in answer if ch in "1234"]
        if len(digits) < 16:
            return False
        grid = digits[-16:]
        givens_ok = all(p == 0 or p == g for p, g in zip(meta["puzzle"], grid, strict=True))
        return givens_ok and _sudoku_valid(grid)

    def answer_from(self, completion: str) -> str:
        # The grid spans four lines: read the tagged answer or else the whole completion,
        # of which check() takes the last 16 digits.
        tags = _ANSWER_TAG.findall(completion)
        return tags[-1] if tags else completion


TASKS: dict[str, Callable[..., _Task]] = {
    "addition": AdditionTask,
    "countdown": CountdownTask,
    "sudoku": SudokuTask,
}


def get_task(name: str, **kwargs) -> _Task:
    """Build a task by name; unknown names list the valid ones."""
    try:
        return TASKS[name](**kwargs)
    except KeyError:
        raise ValueError(f"unknown task {name!r}; choose one of: {', '.join(TASKS)}") from None
