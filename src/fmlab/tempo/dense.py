"""A dense benchmark in which Tempo's claim is testable (issue 16) — generator and the two
preconditions, measured on the dev split only.

The first benchmark's segments hold at most two needles of shape + colour, so one memory token
holds all a question needs and allocation cannot matter. Here every 8-frame segment is dense:

- 3–4 objects per segment, one per quadrant of the frame (jittered), each with two attributes
  (shape: square / plus; colour: one of four);
- scenes change slowly: a scene lasts 2–4 segments and only one object changes per segment
  inside it; the background hue drifts over the whole video;
- distractors: the target's shape appears in other segments with other colours, and its
  segment holds other objects of other shapes;
- questions target ONE object:
  - ``attribute``: "what colour is the q3 plus": exactly one plus in the third quarter of the
    video (every other object there is a square), pluses of other colours elsewhere;
  - ``localise``: "when was the red plus": exactly one red plus in the whole video (answer:
    its quarter).

Preconditions before any arm is compared (:func:`preconditions`, dev split only; the test split
is sealed): (a) with a query-agnostic compressor and uniform allocation, accuracy rises with the
tokens kept per segment (each token can hold about one object, a segment holds 3–4); (b) oracle
allocation (ATA on the true target segments) beats uniform allocation at the same budget.
"""

from __future__ import annotations

import colorsys
import itertools
from dataclasses import dataclass, field

import numpy as np
import torch

from fmlab.core.data.videos import COLOURS, SHAPES, SIZE, Needle, Question, draw_needle

__all__ = [
    "DENSE_FAMILIES",
    "BudgetExceededError",
    "DenseVideo",
    "check_frames",
    "dense_items",
    "dense_sampler",
    "dense_splits",
    "make_dense_video",
    "preconditions",
    "score",
]

DENSE_FAMILIES = ("attribute", "localise")
_SLOTS = ((8, 8), (24, 8), (8, 24), (24, 24))  # quadrant centres (x, y)


@dataclass
class DenseVideo:
    """Same interface as :class:`fmlab.core.data.videos.SynthVideo` (``needles`` = every object
    occurrence), so ``segment_truth`` and ``evaluate_arm`` take it as they are."""

    frames: np.ndarray  # (T, SIZE, SIZE, 3) uint8
    fps: int
    needles: list[Needle]  # every object occurrence, one per (segment, slot)
    seg_len: int
    questions: list[Question] = field(default_factory=list)
    seed: int = 0
    warmer: bool = False

    def needle_frames(self, question: Question) -> np.ndarray:
        m = np.zeros(len(self.frames), dtype=bool)
        for i in question.needles:
            m[self.needles[i].start : self.needles[i].end] = True
        return m


def _scene_objects(rng, n_seg: int) -> list[list[tuple[int, str, str]]]:
    """Per segment: (slot, shape, colour) of its objects; slowly changing scenes."""
    segs, cur = [], None
    left = 0
    colours = list(COLOURS)
    for _ in range(n_seg):
        if left == 0:  # a new scene
            k = int(rng.integers(3, 5))
            slots = rng.choice(4, size=k, replace=False)
            cur = {int(s): (SHAPES[int(rng.integers(2))], colours[int(rng.integers(4))])
                   for s in slots}  # fmt: skip
            left = int(rng.integers(2, 5))
        else:  # one object changes
            s = int(rng.choice(list(cur)))
            cur[s] = (SHAPES[int(rng.integers(2))], colours[int(rng.integers(4))])
        left -= 1
        segs.append([(s, *v) for s, v in sorted(cur.items())])
    return segs


def check_frames(n_frames: int, seg_len: int = 8) -> None:
    """A dense video needs a multiple of 4·seg_len frames (whole segments in every quarter),
    at least 8·seg_len."""
    if n_frames % (4 * seg_len) or n_frames < 8 * seg_len:
        raise ValueError(
            f"a dense video needs a multiple of {4 * seg_len} frames, at least {8 * seg_len}; "
            f"got {n_frames} (e.g. 64, 256, 1024)"
        )


def make_dense_video(seed: int, n_frames: int = 1024, seg_len: int = 8, fps: int = 2) -> DenseVideo:
    """One dense video (``n_frames`` a multiple of 4·seg_len) with one question per family."""
    check_frames(n_frames, seg_len)
    rng = np.random.default_rng(seed)
    n_seg = n_frames // seg_len
    segs = _scene_objects(rng, n_seg)
    colours = list(COLOURS)
    # attribute target: one plus in quarter q, every other object of that quarter a square
    q = int(rng.integers(4))
    quarter = range(q * n_seg // 4, (q + 1) * n_seg // 4)
    target_seg = int(rng.choice(list(quarter)))
    for i in quarter:
        segs[i] = [(s, "square", c) for s, _, c in segs[i]]
    slot, _, colour = segs[target_seg][int(rng.integers(len(segs[target_seg])))]
    segs[target_seg] = [(s, "plus" if s == slot else sh, c) for s, sh, c in segs[target_seg]]
    # localise target: a colour whose plus appears exactly once in the video
    loc_colour = colours[int(rng.integers(4))]
    cands = [i for i in range(n_seg) if i not in quarter]
    loc_seg = int(rng.choice(cands))
    for i in range(n_seg):
        segs[i] = [(s, sh, c if not (sh == "plus" and c == loc_colour) else
                    colours[(colours.index(c) + 1) % 4]) for s, sh, c in segs[i]]  # fmt: skip
    if colour == loc_colour:  # the attribute target was recoloured with the rest: keep it known
        colour = colours[(colours.index(colour) + 1) % 4]
    s0 = segs[loc_seg][0][0]
    segs[loc_seg] = [(s, "plus", loc_colour) if s == s0 else (s, sh, c)
                     for s, sh, c in segs[loc_seg]]  # fmt: skip
    frames = _background(rng, n_frames)
    objects: list[Needle] = []
    ids: dict[tuple[int, int], int] = {}
    for i, objs in enumerate(segs):
        for s, sh, c in objs:
            x, y = (v + int(rng.integers(-2, 3)) for v in _SLOTS[s])
            ids[(i, s)] = len(objects)
            objects.append(Needle(i * seg_len, (i + 1) * seg_len, sh, c, x, y))
            for t in range(i * seg_len, (i + 1) * seg_len):
                draw_needle(frames[t], objects[-1])
    v = DenseVideo(np.clip(frames, 0, 255).astype(np.uint8), fps, objects, seg_len, seed=seed)
    att = ids[(target_seg, slot)]
    loc = ids[(loc_seg, s0)]
    v.questions = [
        Question("attribute", f"what colour is the q{q + 1} plus", objects[att].colour, (att,)),
        Question("localise", f"when was the {loc_colour} plus", f"q{4 * loc_seg // n_seg + 1}",
                 (loc,)),
    ]  # fmt: skip
    return v


def _background(rng, n: int) -> np.ndarray:
    h0 = rng.uniform(0.45, 0.6)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE] / SIZE
    out = np.empty((n, SIZE, SIZE, 3), np.float32)
    for t in range(n):
        rgb = np.array(colorsys.hsv_to_rgb((h0 + 0.15 * t / max(1, n - 1)) % 1.0, 0.35, 0.55))
        out[t] = 255 * rgb * (0.85 + 0.3 * (0.5 * xx + 0.5 * yy))[..., None]
    return out + rng.normal(0, 2.0, out.shape)


def dense_items(seed: int = 0, n_dev: int = 16, n_test: int = 40, n_frames: int = 1024):
    """The one function that owns the dense splits: dev and test videos from disjoint seeds."""
    base = 10_000 * seed
    return {
        "dev": [make_dense_video(5_000_000 + base + i, n_frames) for i in range(n_dev)],
        "test": [make_dense_video(6_000_000 + base + i, n_frames) for i in range(n_test)],
    }


def _frames_key(v: DenseVideo) -> np.ndarray:
    return v.frames


def dense_splits(
    seed: int = 0,
    n_dev: int = 16,
    n_test: int = 40,
    n_frames: int = 1024,
    dev_seeds: tuple[int, ...] = (),
    test_seeds: tuple[int, ...] = (),
):
    """The dense bench's splits: test sealed, disjoint by the videos' frames; ``dev_seeds`` /
    ``test_seeds``: the training seeds of the design stacks and of the recorded ones."""
    from fmlab.core.experiment import Splits

    return Splits.build(dense_items, seed, key=_frames_key, dev_seeds=dev_seeds,
                        test_seeds=test_seeds, n_dev=n_dev, n_test=n_test,
                        n_frames=n_frames)  # fmt: skip


TRAIN_SEED_BASE = 100_000_000  # training videos: far from the dev (5e6+) and test (6e6+) seeds


def dense_sampler(seed: int = 0, pool: int = 0, cached: int = 256):
    """``(rng, n_frames) -> (video, question)`` for ``train_stack``: dense training videos
    (seeds from ``TRAIN_SEED_BASE + 10_000_000·seed``, disjoint from the dev and test splits),
    one of their two questions at random. ``pool`` > 0: that many fixed videos per length,
    the last ``cached`` of them kept in memory (so their frames' features are cached too)."""
    import functools

    base = TRAIN_SEED_BASE + 10_000_000 * seed

    @functools.lru_cache(maxsize=cached)
    def video(index: int, n_frames: int) -> DenseVideo:
        return make_dense_video(base + index, n_frames)

    def sample(rng: np.random.Generator, n_frames: int):
        check_frames(n_frames)
        index = int(rng.integers(pool if pool else 9_000_000))
        v = video(index, n_frames) if pool else make_dense_video(base + index, n_frames)
        return v, v.questions[int(rng.integers(len(v.questions)))]

    return sample


class BudgetExceededError(RuntimeError):
    """An arm fed the global model more visual tokens than its budget."""


@torch.no_grad()
def score(
    stack,
    videos,
    arm: str,
    budgets: tuple[int, ...],
    seed: int = 0,
    memory: dict | None = None,
) -> dict[int, dict]:
    """Score one arm of one trained stack at every budget: ``{budget: {"correct": [0/1 per
    question], "family": [...], "tokens": [...]}}``, questions in video order.

    Each (video, question) is compressed once and allocated under every budget (``memory``:
    a dict kept across arms of the same stack, so they share one compression). Tokens fed to
    the global model never exceed the budget: :class:`BudgetExceededError` otherwise."""
    from fmlab.tempo.pipeline import segment_truth

    out = {b: {"correct": [], "family": [], "tokens": []} for b in budgets}
    memory = {} if memory is None else memory
    for vi, v in enumerate(videos):
        for qi, q in enumerate(v.questions):
            truth = segment_truth(v, q, stack.cfg.seg_len)
            if stack.kind in ("tempo", "agnostic"):
                key = (v.seed, len(v.frames), q.text)
                if key not in memory:
                    memory[key] = stack.compress_chunks([v.frames], q.text)
            for b in budgets:
                rng = np.random.default_rng([seed, vi, qi, b])
                if stack.kind in ("tempo", "agnostic"):
                    blocks, _ = stack.blocks_from_memory(*memory[key], b, arm, truth, rng)
                else:
                    blocks, _ = stack.blocks(v.frames, q.text, b, arm, truth, rng)
                used = sum(len(t) for _, t in blocks)
                if used > b:
                    raise BudgetExceededError(
                        f"arm {arm!r} used {used} visual tokens under a budget of {b} "
                        f"(video seed {v.seed}, {q.text!r})"
                    )
                pred = stack.vocab.answers[int(stack.logits([(blocks, q.text)]).argmax(-1))]
                out[b]["correct"].append(float(pred == q.answer))
                out[b]["family"].append(q.family)
                out[b]["tokens"].append(int(used))
    return out


def preconditions(
    agnostic,
    tempo,
    splits,
    tokens_per_segment: tuple[int, ...] = (1, 2, 4, 8, 16, 32),
    tokens_per_frame: float = 1.0,
    step: str = "dense preconditions",
) -> dict:
    """Measure (a) and (b) on the dev split, inside a design step (the sealed test split
    raises). ``agnostic``/``tempo``: trained ``Stack``s of those kinds.

    (a) holds when the query-agnostic compressor with uniform allocation is more accurate at
    the most tokens per segment than at the fewest, the paired per-question bootstrap
    interval of the difference above 0. (b) holds when oracle allocation beats uniform
    allocation of the query-aware compressor at ``tokens_per_frame`` (1: B = 2·N·m, so ATA is
    active), the same kind of interval above 0. The agnostic compressor's oracle − uniform
    is reported beside it."""
    from fmlab.core.experiment import paired

    m = agnostic.cfg.mem_tokens
    ks = tuple(k for k in tokens_per_segment if k <= m)
    with splits.design(step):
        dev = list(splits["dev"])
        t = len(dev[0].frames)
        n_seg = t // dev[0].seg_len
        b = max(1, round(tokens_per_frame * t))
        mem_a, mem_t = {}, {}
        acc = {k: score(agnostic, dev, "uniform-alloc", (k * n_seg,), memory=mem_a)[k * n_seg]
               for k in ks}  # fmt: skip
        oracle = score(tempo, dev, "oracle", (b,), memory=mem_t)[b]
        uniform = score(tempo, dev, "uniform-alloc", (b,), memory=mem_t)[b]
        a_oracle = score(agnostic, dev, "oracle", (b,), memory=mem_a)[b]
        a_uniform = acc.get(b // n_seg) or score(agnostic, dev, "uniform-alloc", (b,),
                                                  memory=mem_a)[b]  # fmt: skip
    mean = {k: float(np.mean(v["correct"])) for k, v in acc.items()}
    vals = [mean[k] for k in ks]
    rise = paired(items_a=acc[ks[-1]]["correct"], items_b=acc[ks[0]]["correct"],
                  names=(f"agnostic@{ks[-1]}/seg", f"agnostic@{ks[0]}/seg"),
                  metric="dev accuracy (a)", headline=False)  # fmt: skip
    gain = paired(items_a=oracle["correct"], items_b=uniform["correct"],
                  names=("oracle", "uniform-alloc"), metric="dev accuracy (b)",
                  headline=False)  # fmt: skip
    a_gain = paired(items_a=a_oracle["correct"], items_b=a_uniform["correct"],
                    names=("agnostic oracle", "agnostic uniform"), metric="dev accuracy (b')",
                    headline=False)  # fmt: skip
    return {
        "split": "dev",
        "questions": len(oracle["correct"]),
        "a_agnostic_accuracy_by_tokens_per_segment": {str(k): mean[k] for k in ks},
        "a_monotone": bool(all(x <= y for x, y in itertools.pairwise(vals))),
        "a_most_minus_fewest": rise.to_dict(),
        "a_holds": bool(rise.main.lo > 0),
        "b_budget": b,
        "b_tokens_per_frame": tokens_per_frame,
        "b_oracle_accuracy": float(np.mean(oracle["correct"])),
        "b_uniform_accuracy": float(np.mean(uniform["correct"])),
        "b_oracle_minus_uniform": gain.to_dict(),
        "b_holds": bool(gain.main.lo > 0),
        "b_agnostic_oracle_accuracy": float(np.mean(a_oracle["correct"])),
        "b_agnostic_uniform_accuracy": float(np.mean(a_uniform["correct"])),
        "b_agnostic_oracle_minus_uniform": a_gain.to_dict(),
        "holds": bool(rise.main.lo > 0 and gain.main.lo > 0),
    }
