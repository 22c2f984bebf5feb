"""Verifiable tasks for dLLM preference optimization, the one split function, and the offline
preference data.

Every path (the bench, ``fmlab dtrpo pretrain|sample|pairs|train|eval``) takes its prompts from
:func:`dtrpo_splits`: train (SFT), pairs (preference and online-arm prompts), val (tuning) and
test (sealed: reported by ``eval`` and by the bench once), built by :func:`split_items` from one
seed and checked disjoint by prompt text (:class:`fmlab.core.experiment.Splits`). Data from
elsewhere (a saved pair set, a caller's own items) is checked with :func:`check_disjoint`.

Three tasks from :mod:`fmlab.core.data.tasks`: addition with carries, countdown and 4×4 sudoku
(with partial credit: the fraction of blank cells filled correctly). The offline pipeline
samples K answers per prompt from the reference with the trajectory-recording sampler, scores
them with the verifiers, and pairs the best against the worst when their rewards differ.
"""

from __future__ import annotations

import functools
import json
import os
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from fmlab.core.data.tasks import Example, get_task
from fmlab.core.experiment import Splits
from fmlab.core.io import CheckpointError, atomic_dir, atomic_write_json, read_json
from fmlab.dtrpo.model import DLLM
from fmlab.dtrpo.sampler import SamplerConfig, Trajectories, sample

__all__ = [
    "SPLIT_SIZES",
    "TASK_SETTINGS",
    "Item",
    "PairSet",
    "build_tokenizer",
    "check_disjoint",
    "dtrpo_splits",
    "item_prompt",
    "load_jsonl_pairs",
    "make_items",
    "make_pairs",
    "reward",
    "split_items",
    "take",
]

# Sizes chosen so that a ~1M-parameter model lands mid-range after SFT (headroom both ways).
TASK_SETTINGS: dict[str, dict] = {
    "addition": {"digits": 2, "min_carries": 1},
    "countdown": {"n_numbers": 3, "max_number": 10},
    "sudoku": {"blanks": 6},
}
# Items per task of the fixed-size splits; drawn in this order, each excluding the prompts of
# the ones before, so the test split depends on the seed alone. "train" (SFT) takes the rest.
SPLIT_SIZES: dict[str, int] = {"test": 200, "val": 50, "pairs": 200}
SPLIT_SEED = 0  # the CLI's splits; the bench records its own


@dataclass(frozen=True)
class Item:
    task: str
    example: Example

    @property
    def prompt(self) -> str:
        return self.example.prompt


def _draw(name: str, stream: str, n: int, exclude: set[str], distinct: bool) -> list[Item]:
    task = get_task(name, **TASK_SETTINGS[name])
    rng = random.Random(f"dtrpo:{name}:{stream}")
    items: list[Item] = []
    seen: set[str] = set()
    tries = 0
    while len(items) < n:
        ex = task.sample(rng)
        tries += 1
        if tries > 50 * n + 1000:
            raise ValueError(
                f"{name}: cannot draw {n} {'distinct ' if distinct else ''}prompts outside the "
                f"{len(exclude)} excluded ones; ask for fewer items per task"
            )
        if ex.prompt in exclude or (distinct and ex.prompt in seen):
            continue
        seen.add(ex.prompt)
        items.append(Item(name, ex))
    return items


def _interleave(per_task: list[list[Item]]) -> list[Item]:
    return [it for group in zip(*per_task, strict=True) for it in group]


def make_items(
    n_per_task: int, seed: int, exclude: set[str] | None = None, distinct: bool = True
) -> list[Item]:
    """``n_per_task`` seeded items of every task, interleaved, for tests and the tokenizer.

    Not a split: nothing keeps these apart from the test prompts. Training and evaluation
    take their prompts from :func:`dtrpo_splits`."""
    exclude = exclude or set()
    return _interleave([_draw(n, str(seed), n_per_task, exclude, distinct) for n in TASK_SETTINGS])


@functools.lru_cache(maxsize=8)
def _split_items(seed: int, n_train: int) -> dict[str, tuple[Item, ...]]:
    taken: dict[str, set[str]] = {name: set() for name in TASK_SETTINGS}
    out: dict[str, tuple[Item, ...]] = {}
    for split, n in (*SPLIT_SIZES.items(), ("train", n_train)):
        per_task = []
        for name in TASK_SETTINGS:
            items = _draw(name, f"{split}:{seed}", n, taken[name], distinct=split != "train")
            taken[name].update(it.prompt for it in items)
            per_task.append(items)
        out[split] = tuple(_interleave(per_task))
    return out


def split_items(seed: int = SPLIT_SEED, n_train: int = 2000) -> dict[str, tuple[Item, ...]]:
    """The one function that owns dTRPO's data: ``{"test", "val", "pairs", "train"}`` items,
    tasks interleaved (so the first ``3 n`` items hold ``n`` per task).

    test, val and pairs have :data:`SPLIT_SIZES` distinct prompts per task, drawn in that order
    from streams seeded by ``seed``, each excluding the prompts drawn before; train draws
    ``n_train`` per task (repeats allowed, as SFT data) excluding all of them. So the test split
    depends on ``seed`` only, never on ``n_train``. Use :func:`dtrpo_splits`, which checks it."""
    if n_train < 1:
        raise ValueError(f"n_train must be >= 1 item per task, got {n_train}")
    return _split_items(int(seed), int(n_train))


def item_prompt(item: Item) -> str:
    """What identifies an item for the disjointness checks: its prompt text."""
    return item.prompt


def dtrpo_splits(
    seed: int = SPLIT_SEED,
    n_train: int = 2000,
    dev_seeds: Sequence[int] = (),
    test_seeds: Sequence[int] = (),
) -> Splits:
    """:func:`split_items` as a :class:`~fmlab.core.experiment.Splits`: checked disjoint by
    prompt text (raises ``SplitError`` naming the splits that share prompts), the test split
    and the test seeds sealed until ``open_test()``."""
    return Splits.build(
        split_items, seed, key=item_prompt, dev_seeds=dev_seeds, test_seeds=test_seeds,
        n_train=n_train,
    )  # fmt: skip


def take(split: Sequence[Item], n_per_task: int, name: str | None = None) -> list[Item]:
    """The first ``n_per_task`` items of every task of a split (a prefix: tasks interleave)."""
    name = name or getattr(split, "name", "this")
    cap = len(split) // len(TASK_SETTINGS)
    if not 1 <= n_per_task <= cap:
        raise ValueError(
            f"the {name} split has {cap} items per task; choose a number of items per task "
            f"from 1 to {cap}"
        )
    return list(split[: n_per_task * len(TASK_SETTINGS)])


def check_disjoint(
    used: Mapping[str, Sequence[Item]],
    seed: int = SPLIT_SEED,
    against: Sequence[str] = ("val", "test"),
) -> dict:
    """Run-time check that items a caller trains on (``{"what": items}``) share no prompt with
    the ``against`` splits of :func:`split_items` (``seed``); raises ``SplitError`` naming the
    overlap and the fix. Returns the check's summary for a record (sizes, digests, overlaps)."""
    ref = split_items(seed, 1)  # val and test do not depend on n_train
    items = {**{k: list(v) for k, v in used.items()}, **{a: ref[a] for a in against}}
    return Splits(items, key=item_prompt, sealed=()).summary()


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
    sampling_tokens: int = 0  # tokens those forwards processed
    decode_order: str = "recorded"  # or "teacher-forced" (load_jsonl_pairs: no trajectory)

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
                    "sampling_tokens": self.sampling_tokens,
                    "decode_order": self.decode_order,
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
            int(meta.get("sampling_tokens", 0)),
            str(meta.get("decode_order", "recorded")),
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
    differ (ties broken by sample order). Prompts whose K rewards are all equal give no pair.
    ``progress(done, total)`` follows the sampling (blocks of batches)."""
    if k < 2:
        raise ValueError("k must be >= 2 to form pairs")
    g = torch.Generator().manual_seed(seed)
    prompts = [it.prompt for it in items for _ in range(k)]
    traj = sample(ref, prompts, cfg, g, progress=progress)
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
    return PairSet(
        [items[i] for i in keep],
        traj.select(torch.tensor(win, dtype=torch.long)),
        traj.select(torch.tensor(lose, dtype=torch.long)),
        rewards[keep].max(1).values,
        rewards[keep].min(1).values,
        int(traj.forwards.sum()),
        int(traj.tokens.sum()),
    )


def _jsonl_rows(path: Path) -> list[dict]:
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{n}: not JSON ({e.msg}); write one object per line") from None
        bad = [k for k in ("prompt", "chosen", "rejected") if not isinstance(row.get(k), str)]
        if not isinstance(row, dict) or bad:
            raise ValueError(
                f"{path}:{n}: needs string fields prompt, chosen and rejected (missing or not a "
                f"string: {', '.join(bad) or 'the line is not an object'})"
            )
        rows.append(row)
    if not rows:
        raise ValueError(f"{path}: no preference pairs; write lines like "
                         '{"prompt": "...", "chosen": "...", "rejected": "..."}')  # fmt: skip
    return rows


def _encode_checked(ref: DLLM, texts: list[str], path: Path, field: str) -> torch.Tensor:
    rows = []
    for n, text in enumerate(texts, 1):
        try:
            ids = ref.encode_answers([text])
        except ValueError as e:
            raise ValueError(f"{path}: pair {n}, {field}: {e}; shorten it or convert the model "
                             "with a larger --gen-length") from None  # fmt: skip
        if any(int(i) in ref.banned for i in ids[0]):
            raise ValueError(
                f"{path}: pair {n}, {field} {text!r} holds characters the model's tokenizer "
                "cannot encode (they map to padding); use a model whose tokenizer covers them"
            )
        rows.append(ids)
    return torch.cat(rows)


def load_jsonl_pairs(
    path: str | os.PathLike, ref: DLLM, steps_per_block: int = 4, progress=None
) -> PairSet:
    """Preference pairs from a JSONL file of ``{"prompt", "chosen", "rejected"}`` objects.

    No trajectory was recorded for these answers, so each gets its decode order by the rule of
    :func:`fmlab.dtrpo.sampler.recover_trajectories`: the teacher-forced confidence order under
    ``ref`` (block by block, unmask at each step the positions whose given token ``ref`` is
    most confident about), ``steps_per_block`` steps per block. The pair set is marked
    ``decode_order="teacher-forced"``; its rewards are 1 (chosen) and 0 (rejected)."""
    from fmlab.dtrpo.sampler import recover_trajectories

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such pairs file; give a JSONL file or a pair set "
                                "directory from `fmlab dtrpo pairs`")  # fmt: skip
    rows = _jsonl_rows(path)
    prompts = [r["prompt"] for r in rows]
    sides = {}
    for field in ("chosen", "rejected"):
        ids = _encode_checked(ref, [r[field] for r in rows], path, field)
        sides[field] = recover_trajectories(ref, prompts, ids, steps_per_block, progress)
    items = [Item("custom", Example(r["prompt"], r["chosen"], {"rejected": r["rejected"]}))
             for r in rows]  # fmt: skip
    n = len(rows)
    fwd = int(sides["chosen"].forwards.sum() + sides["rejected"].forwards.sum())
    tokens = int(sides["chosen"].tokens.sum() + sides["rejected"].tokens.sum())
    return PairSet(items, sides["chosen"], sides["rejected"], torch.ones(n), torch.zeros(n),
                   fwd, tokens, "teacher-forced")  # fmt: skip
