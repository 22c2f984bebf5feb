"""Seeded synthetic long videos with needle events, and questions with verifiable answers.

Shared by the video methods (Tempo's benchmark, VideoAuto-R1's video-QA reproduction); it moved
here from ``fmlab.tempo.synth`` unchanged: the same seed gives the same frames and questions.

A video is a slowly drifting scene (a colour gradient whose hue drifts over the whole video and
a large soft blob wandering across it: long stretches of near-duplicate frames) with a few
short needle events: a small coloured square or plus shown for ``needle_len`` frames at a
controlled depth. Everything follows from (seed, index); ``write`` puts a video in a real mp4.

Question families (answers are words of a small closed vocabulary, so accuracy is exact):
- ``attribute``: "what colour is the <shape>" (the video has exactly one needle of that shape);
- ``count``: "how many flashes" (1–3);
- ``order``: "was the square before the plus" (yes / no);
- ``localise``: "when was the <shape>": the quarter of the video (q1–q4), scored by accuracy and
  by the IoU of that quarter with the needle's interval;
- ``global``: "did the scene get warmer" (yes / no: needs the whole storyline, no needle);
- ``reasoning``: "are all flashes the same colour" (yes / no, over every needle).

:func:`qa_questions` adds families split by what they need (VideoAuto-R1's perception vs
reasoning contrast), drawn from their own seeded stream so the video itself is unchanged:

- perception only: ``attribute`` (as above: the colour of the one needle of a shape) and
  ``presence`` ("is there a red plus": yes / no, half of them true);
- reasoning over several needles: ``count`` ("how many red flashes": 0–3), ``sum`` ("what is
  the sum of the flashes" with the values red 1, green 2, blue 3, yellow 4) and ``order``
  ("what colour is the last flash").
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "ANSWERS",
    "COLOURS",
    "FAMILIES",
    "PERCEPTION_FAMILIES",
    "QA_ANSWERS",
    "QA_FAMILIES",
    "REASONING_FAMILIES",
    "SHAPES",
    "SIZE",
    "VALUES",
    "Needle",
    "Question",
    "SynthVideo",
    "draw_needle",
    "make_split",
    "make_video",
    "qa_questions",
]

COLOURS = {
    "red": (230, 30, 30),
    "green": (30, 200, 40),
    "blue": (40, 60, 235),
    "yellow": (235, 220, 30),
}
SHAPES = ("square", "plus")
FAMILIES = ("attribute", "count", "order", "localise", "global", "reasoning")
ANSWERS = (*COLOURS, "1", "2", "3", "yes", "no", "q1", "q2", "q3", "q4")
PERCEPTION_FAMILIES = ("attribute", "presence")
REASONING_FAMILIES = ("count", "sum", "order")
QA_FAMILIES = PERCEPTION_FAMILIES + REASONING_FAMILIES
VALUES = {"red": 1, "green": 2, "blue": 3, "yellow": 4}  # what a flash is worth in ``sum``
QA_ANSWERS = (*COLOURS, *(str(i) for i in range(13)), "yes", "no")
SIZE = 32


@dataclass(frozen=True)
class Needle:
    start: int  # first frame
    end: int  # one past the last frame
    shape: str
    colour: str
    x: int
    y: int


@dataclass(frozen=True)
class Question:
    family: str
    text: str
    answer: str
    needles: tuple[int, ...]  # indices of the needles the question is about


@dataclass
class SynthVideo:
    frames: np.ndarray  # (T, SIZE, SIZE, 3) uint8
    fps: int
    needles: list[Needle]
    warmer: bool
    questions: list[Question] = field(default_factory=list)
    seed: int = 0

    def needle_frames(self, question: Question) -> np.ndarray:
        """Boolean (T,): frames showing a needle the question is about."""
        m = np.zeros(len(self.frames), dtype=bool)
        for i in question.needles:
            m[self.needles[i].start : self.needles[i].end] = True
        return m

    def write(self, path) -> None:
        """Encode the frames to a real video file (container from the suffix), atomically."""
        from fmlab.core.video import write_frames

        write_frames(path, self.frames, fps=self.fps, crf=12)


def _background(rng: np.random.Generator, n: int, warmer: bool) -> np.ndarray:
    h0 = rng.uniform(0.45, 0.6)  # cyan-blue to start
    h1 = h0 - rng.uniform(0.3, 0.4) if warmer else h0 + rng.uniform(0.1, 0.15)  # to red / violet
    yy, xx = np.mgrid[0:SIZE, 0:SIZE] / SIZE
    path = rng.uniform(0.2, 0.8, size=(4, 2))  # the blob's waypoints
    frames = np.empty((n, SIZE, SIZE, 3), dtype=np.float32)
    for t in range(n):
        u = t / max(1, n - 1)
        rgb = np.array(colorsys.hsv_to_rgb((h0 + (h1 - h0) * u) % 1.0, 0.55, 0.75))
        grad = 0.8 + 0.4 * (0.5 * xx + 0.5 * yy)[..., None]
        k = min(2, int(u * 3))
        c = path[k] + (path[k + 1] - path[k]) * (u * 3 - k)
        blob = np.exp(-((xx - c[0]) ** 2 + (yy - c[1]) ** 2) / 0.03)[..., None]
        frames[t] = 255 * np.clip(rgb * grad * (1 - 0.35 * blob) + 0.35 * blob * 0.9, 0, 1)
    frames += rng.normal(0, 2.0, frames.shape)
    return frames


def draw_needle(frame: np.ndarray, n: Needle) -> None:
    """Paint needle ``n`` into one float (SIZE, SIZE, 3) frame, in place."""
    c = np.array(COLOURS[n.colour], dtype=np.float32)
    if n.shape == "square":
        frame[n.y - 5 : n.y + 5, n.x - 5 : n.x + 5] = c
    else:
        frame[n.y - 6 : n.y + 6, n.x - 2 : n.x + 2] = c
        frame[n.y - 2 : n.y + 2, n.x - 6 : n.x + 6] = c


def make_video(
    seed: int,
    n_frames: int = 128,
    n_needles: int | None = None,
    needle_len: int = 4,
    fps: int = 2,
    depth: float | None = None,
) -> SynthVideo:
    """One video; ``depth`` in [0, 1] places the first needle at that relative position."""
    if n_frames < 4 * needle_len:
        raise ValueError(f"n_frames {n_frames} too short for needles of {needle_len} frames")
    rng = np.random.default_rng(seed)
    k = int(n_needles if n_needles is not None else rng.integers(1, 4))
    warmer = bool(rng.random() < 0.5)
    frames = _background(rng, n_frames, warmer)
    # needles in disjoint slots of the timeline
    slots = n_frames // needle_len
    chosen = sorted(rng.choice(slots, size=k, replace=False).tolist())
    if depth is not None:
        chosen[0] = min(slots - 1, int(depth * slots))
        chosen = sorted(set(chosen))
    needles = []
    for slot in chosen:
        shape = SHAPES[int(rng.integers(2))]
        colour = list(COLOURS)[int(rng.integers(len(COLOURS)))]
        x, y = (int(v) for v in rng.integers(7, SIZE - 7, size=2))
        needles.append(Needle(slot * needle_len, (slot + 1) * needle_len, shape, colour, x, y))
        for t in range(slot * needle_len, (slot + 1) * needle_len):
            draw_needle(frames[t], needles[-1])
    video = SynthVideo(np.clip(frames, 0, 255).astype(np.uint8), fps, needles, warmer, seed=seed)
    video.questions = _questions(video, rng)
    return video


def _quarter(needle: Needle, n: int) -> str:
    centre = (needle.start + needle.end) / 2
    return f"q{min(4, int(4 * centre / n) + 1)}"


def _questions(v: SynthVideo, rng: np.random.Generator) -> list[Question]:
    n = len(v.frames)
    qs = [
        Question("count", "how many flashes", str(len(v.needles)), tuple(range(len(v.needles)))),
        Question("global", "did the scene get warmer", "yes" if v.warmer else "no", ()),
        Question(
            "reasoning",
            "are all flashes the same colour",
            "yes" if len({x.colour for x in v.needles}) == 1 else "no",
            tuple(range(len(v.needles))),
        ),
    ]
    for shape in SHAPES:
        idx = [i for i, x in enumerate(v.needles) if x.shape == shape]
        if len(idx) == 1:
            i = idx[0]
            qs.append(
                Question("attribute", f"what colour is the {shape}", v.needles[i].colour, (i,))
            )
            qs.append(
                Question("localise", f"when was the {shape}", _quarter(v.needles[i], n), (i,))
            )
    sq = [i for i, x in enumerate(v.needles) if x.shape == "square"]
    pl = [i for i, x in enumerate(v.needles) if x.shape == "plus"]
    if len(sq) == 1 and len(pl) == 1:
        before = v.needles[sq[0]].start < v.needles[pl[0]].start
        qs.append(
            Question(
                "order", "was the square before the plus", "yes" if before else "no", (sq[0], pl[0])
            )
        )
    return qs


def qa_questions(v: SynthVideo) -> list[Question]:
    """The perception and reasoning question families of :data:`QA_FAMILIES` for ``v``.

    One question per family that the video admits (``attribute`` needs a shape shown exactly
    once). The choices (which colour, which shape, true or false) come from a stream seeded by
    ``v.seed`` alone, so the video's frames and its Tempo questions are unchanged."""
    rng = np.random.default_rng([v.seed, 7])
    nd = v.needles
    every = tuple(range(len(nd)))
    qs = []
    single = [s for s in SHAPES if sum(x.shape == s for x in nd) == 1]
    if single:
        shape = single[int(rng.integers(len(single)))]
        i = next(i for i, x in enumerate(nd) if x.shape == shape)
        qs.append(Question("attribute", f"what colour is the {shape}", nd[i].colour, (i,)))
    shown = sorted({(x.colour, x.shape) for x in nd})
    absent = [(c, s) for c in COLOURS for s in SHAPES if (c, s) not in shown]
    if rng.random() < 0.5 or not absent:
        colour, shape = shown[int(rng.integers(len(shown)))]
    else:
        colour, shape = absent[int(rng.integers(len(absent)))]
    hits = tuple(i for i, x in enumerate(nd) if (x.colour, x.shape) == (colour, shape))
    qs.append(Question("presence", f"is there a {colour} {shape}", "yes" if hits else "no", hits))
    colours = sorted({x.colour for x in nd})
    pool = colours if rng.random() < 0.5 else list(COLOURS)
    colour = pool[int(rng.integers(len(pool)))]
    n = sum(x.colour == colour for x in nd)
    qs.append(Question("count", f"how many {colour} flashes", str(n), every))
    total = sum(VALUES[x.colour] for x in nd)
    qs.append(Question("sum", "what is the sum of the flashes", str(total), every))
    last = max(nd, key=lambda x: x.start)
    qs.append(Question("order", "what colour is the last flash", last.colour, every))
    return qs


def make_split(split: str, n_videos: int, n_frames: int = 128, seed: int = 0) -> list[SynthVideo]:
    """Fixed, disjoint splits: each split draws video seeds from its own range."""
    offsets = {"train": 0, "dev": 1_000_000, "test": 2_000_000}
    if split not in offsets:
        raise ValueError(f"split must be one of {sorted(offsets)}, got {split!r}")
    base = offsets[split] + 10_000 * seed
    return [make_video(base + i, n_frames) for i in range(n_videos)]
