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
  - ``attribute``: "what colour is the plus in q3": exactly one plus in the third quarter of the
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

from fmlab.core.data.videos import COLOURS, SHAPES, SIZE, Needle, Question, draw_needle

__all__ = [
    "DENSE_FAMILIES",
    "DenseVideo",
    "dense_items",
    "dense_splits",
    "make_dense_video",
    "preconditions",
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


def make_dense_video(seed: int, n_frames: int = 1024, seg_len: int = 8, fps: int = 2) -> DenseVideo:
    """One dense video (``n_frames`` a multiple of 4·seg_len) with one question per family."""
    if n_frames % (4 * seg_len) or n_frames < 8 * seg_len:
        raise ValueError(f"n_frames must be a multiple of {4 * seg_len} and >= {8 * seg_len}")
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
        Question("attribute", f"what colour is the plus in q{q + 1}", objects[att].colour, (att,)),
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


def dense_splits(seed: int = 0, n_dev: int = 16, n_test: int = 40, n_frames: int = 1024):
    """The dense bench's splits: test sealed, disjoint by the videos' frames."""
    from fmlab.core.experiment import Splits

    return Splits.build(dense_items, seed, key=lambda v: v.frames, n_dev=n_dev, n_test=n_test,
                        n_frames=n_frames)  # fmt: skip


def preconditions(
    agnostic,
    tempo,
    splits,
    tokens_per_segment: tuple[int, ...] = (1, 2, 4, 8, 16),
    tokens_per_frame: float = 0.5,
) -> dict:
    """Measure (a) and (b) on the dev split (inside a design step: the sealed test split
    raises). ``agnostic``/``tempo``: trained ``Stack``s of those kinds."""
    from fmlab.tempo.evaluate import evaluate_arm

    with splits.design("dense preconditions"):
        dev = list(splits["dev"])
        t = len(dev[0].frames)
        n_seg = t // dev[0].seg_len
        acc = {k: evaluate_arm(agnostic, dev, "uniform-alloc", k * n_seg)["overall"]
               for k in tokens_per_segment}  # fmt: skip
        b = max(1, round(tokens_per_frame * t))
        oracle = evaluate_arm(tempo, dev, "oracle", b)["overall"]
        uniform = evaluate_arm(tempo, dev, "uniform-alloc", b)["overall"]
    vals = [acc[k] for k in tokens_per_segment]
    rises = all(x <= y for x, y in itertools.pairwise(vals)) and vals[-1] > vals[0]
    return {
        "split": "dev",
        "a_agnostic_accuracy_by_tokens_per_segment": {str(k): v for k, v in acc.items()},
        "a_holds": bool(rises),
        "b_budget": b,
        "b_oracle_accuracy": oracle,
        "b_uniform_accuracy": uniform,
        "b_holds": bool(oracle > uniform),
    }
