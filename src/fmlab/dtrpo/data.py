"""Verifiable tasks for dLLM preference optimization, and the offline preference data.

Three tasks from :mod:`fmlab.core.data.tasks`: addition with carries, countdown and 4×4 sudoku
(with partial credit: the fraction of blank cells filled correctly). The offline pipeline
samples K answers per prompt from the reference with the trajectory-recording sampler, scores
them with the verifiers, and pairs the best against the worst when their rewards differ.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path

import torch

from fmlab.core.data.tasks import Example, get_task
from fmlab.core.io import CheckpointError, atomic_dir, atomic_write_json, read_json
from fmlab.dtrpo.model import DLLM
from fmlab.dtrpo.sampler import SamplerConfig, Trajectories, sample

__all__ = [
    "TASK_SETTINGS",
    "Item",
    "PairSet",
    "build_tokenizer",
    "heldout_items",
    "make_items",
    "make_pairs",
    "reward",
    "train_items",
]

# Sizes chosen so that a ~1M-parameter model lands mid-range after SFT (headroom both ways).
TASK_SETTINGS: dict[str, dict] = {
    "addition": {"digits": 2, "min_carries": 1},
    "countdown": {"n_numbers": 3, "max_number": 10},
    "sudoku": {"blanks": 6},
}
TEST_SEED, TEST_MAX = -7, 200  # the held-out split: the first n of TEST_MAX items per task


@dataclass(frozen=True)
class Item:
    task: str
    example: Example

    @property
    def prompt(self) -> str:
        return self.example.prompt


def make_items(
    n_per_task: int, seed: int, exclude: set[str] | None = None, distinct: bool = True
) -> list[Item]:
    """``n_per_task`` seeded items of every task, interleaved; prompts in ``exclude`` skipped
    (keeps a test split disjoint from training); ``distinct=False`` allows repeats."""
    exclude = exclude or set()
    per_task = []
    for name, kw in TASK_SETTINGS.items():
        task = get_task(name, **kw)
        rng = random.Random(f"dtrpo:{name}:{seed}")
        items: list[Item] = []
        seen: set[str] = set()
        tries = 0
        while len(items) < n_per_task:
            ex = task.sample(rng)
            tries += 1
            if tries > 50 * n_per_task + 1000:
                raise ValueError(f"{name}: cannot draw {n_per_task} distinct unseen items")
            if ex.prompt in exclude or (distinct and ex.prompt in seen):
                continue
            seen.add(ex.prompt)
            items.append(Item(name, ex))
        per_task.append(items)
    return [it for group in zip(*per_task, strict=True) for it in group]


def heldout_items(n_per_task: int) -> list[Item]:
    """The fixed held-out split (distinct prompts, never used for training)."""
    if n_per_task > TEST_MAX:
        raise ValueError(f"the test split has at most {TEST_MAX} items per task")
    items = make_items(TEST_MAX, TEST_SEED)
    return [it for i, it in enumerate(items) if i // len(TASK_SETTINGS) < n_per_task]


def train_items(n_per_task: int, seed: int) -> list[Item]:
    """Training items (repeats allowed), disjoint from every test prompt."""
    exclude = {it.prompt for it in make_items(TEST_MAX, TEST_SEED)}
    return make_items(n_per_task, seed, exclude=exclude, distinct=False)


def build_tokenizer():
    """A character tokenizer covering every character the tasks can produce (fixed seed)."""
    from fmlab.core.models.tokenizer import train_char_tokenizer

    texts = [it.prompt + it.example.answer for it in make_items(300, seed=-1)]
    texts.append("0123456789+-*/()=.,: \n")
    return train_char_tokenizer(texts)


def reward(item: Item, completion: str) -> float:
    """Verifier reward in [0, 1]; 1.0 exactly when the answer is correct."""
    task = get_task(item.task, **TASK_SETTINGS[item.task])
    if task.verify(item.example, completion):
        return 1.0
    if item.task == "sudoku":  # partial credit: blanks filled with the unique solution's digit
        digits = [int(c) for c in completion if c in "1234"][:16]
        sol = [int(c) for c in item.example.answer if c.isdigit()]
        blanks = [i for i, v in enumerate(item.example.meta["puzzle"]) if v == 0]
        right = sum(1 for i in blanks if i < len(digits) and digits[i] == sol[i])
        return 0.9 * right / len(blanks)  # below 1.0: partial is never "solved"
    return 0.0


@dataclass
class PairSet:
    """Preference pairs: the chosen and rejected trajectories for the same prompt."""

    items: list[Item]
    chosen: Trajectories
    rejected: Trajectories
    r_chosen: torch.Tensor
    r_rejected: torch.Tensor
    sampling_forwards: int  # forwards the reference spent sampling all K answers per prompt

    def __len__(self) -> int:
        return len(self.items)

    def save(self, path: str | os.PathLike, overwrite: bool = False) -> Path:
        from safetensors.torch import save_file

        path = Path(path)
        tensors = {f"chosen.{k}": v for k, v in self.chosen.state_dict().items()}
        tensors |= {f"rejected.{k}": v for k, v in self.rejected.state_dict().items()}
        tensors |= {"r_chosen": self.r_chosen, "r_rejected": self.r_rejected}
        with atomic_dir(path, overwrite=overwrite) as tmp:
            save_file({k: v.contiguous() for k, v in tensors.items()}, tmp / "pairs.safetensors")
            atomic_write_json(
                tmp / "pairs.json",
                {
                    "sampling_forwards": self.sampling_forwards,
                    "items": [
                        {"task": it.task, "prompt": it.prompt, "answer": it.example.answer,
                         "meta": it.example.meta}
                        for it in self.items
                    ],
                },
            )  # fmt: skip
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> PairSet:
        from safetensors.torch import load_file

        path = Path(path)
        if not (path / "pairs.json").is_file() or not (path / "pairs.safetensors").is_file():
            raise CheckpointError(
                f"{path}: not a pair set (needs pairs.json and pairs.safetensors); "
                "make one with `fmlab dtrpo pairs`"
            )
        meta = read_json(path / "pairs.json")
        t = load_file(path / "pairs.safetensors")
        names = ("prompt_ids", "prompt_real", "answer", "bstep", "block_steps", "tokens")
        items = [
            Item(d["task"], Example(d["prompt"], d["answer"], d["meta"])) for d in meta["items"]
        ]
        return cls(
            items,
            Trajectories(**{n: t[f"chosen.{n}"] for n in names}),
            Trajectories(**{n: t[f"rejected.{n}"] for n in names}),
            t["r_chosen"],
            t["r_rejected"],
            int(meta["sampling_forwards"]),
        )


def make_pairs(
    ref: DLLM,
    items: list[Item],
    k: int = 8,
    seed: int = 0,
    cfg: SamplerConfig = SamplerConfig(temperature=1.0),
    progress=None,
) -> PairSet:
    """K reference samples per prompt; pair the highest reward with the lowest when they
    differ (ties broken by sample order). Prompts whose K rewards are all equal give no pair."""
    if k < 2:
        raise ValueError("k must be >= 2 to form pairs")
    g = torch.Generator().manual_seed(seed)
    prompts = [it.prompt for it in items for _ in range(k)]
    traj = sample(ref, prompts, cfg, g)
    texts = ref.decode(traj.answer)
    rewards = torch.tensor(
        [reward(items[i // k], t) for i, t in enumerate(texts)], dtype=torch.float32
    ).view(len(items), k)
    keep, win, lose = [], [], []
    for i in range(len(items)):
        r = rewards[i]
        if r.max() > r.min():
            keep.append(i)
            win.append(i * k + int(r.argmax()))
            lose.append(i * k + int(r.argmin()))
        if progress is not None:
            progress(i + 1, len(items))
    return PairSet(
        [items[i] for i in keep],
        traj.select(torch.tensor(win, dtype=torch.long)),
        traj.select(torch.tensor(lose, dtype=torch.long)),
        rewards[keep].max(1).values,
        rewards[keep].min(1).values,
        int(traj.forwards.sum()),
    )
