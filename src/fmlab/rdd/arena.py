"""A seeded 2-D manipulation arena rendered to small RGB frames, for the RDD reproduction.

State: agent (x, y), gripper closure, an object (x, y) that can be held, a drawer (open
fraction), a button (pressed fraction) and a ball (x, y), in a [0, 1]^2 table with a drawer,
a button and a target zone whose positions jitter per episode. Eight parametric skills move
the state over a random number of frames, easing in and out (every boundary between them is
at rest); three more never stop: ``sweep`` (an arc at constant speed), ``catch`` (grasp the
object on the fly) and ``handover`` (carry the object through the target zone and release it
to a receiver there without stopping). Each of those starts at the velocity the previous one
ended with (C1 positions) and ends moving, so the boundaries between them are at speed. A
task is a fixed chain of 3-6 skills and a demonstration is a random instance of a task, with
known boundaries. Frames carry lighting drift, pixel noise and moving distractors.

Splits:
- ``standard``: the six standard tasks;
- ``adversarial``: four tasks built to fool UVD: pauses (``wait``), a push that backs up first
  (the distance to the goal rises, then falls), and look-alike consecutive pushes;
- ``ood``: the standard tasks in another room (background colour and texture, more distractors);
- ``not-at-rest``: three tasks chaining sweep, catch and handover, whose boundaries are all at
  speed, so a detector of rest (motion keys) cannot find them;
- ``train``: every task, the policy's training data (prior clips, encoder fitting).

``execute`` runs a plan of (skill, target state) pairs, each skill changing only the state it
controls; it is the success proxy of a policy that executes the decomposed plan.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "SKILLS",
    "Episode",
    "execute",
    "make_episode",
    "make_split",
    "state_features",
    "success",
]

SKILLS = ("reach", "grasp", "carry", "place", "push", "open_drawer", "press_button", "wait",
          "sweep", "catch", "handover")  # fmt: skip
FLOW_SKILLS = ("sweep", "catch", "handover")  # never at rest: they start and end moving
DURATION = {  # frames, inclusive range: short gripper actions, long moves
    "reach": (10, 28),
    "grasp": (4, 9),
    "carry": (14, 34),
    "place": (4, 9),
    "push": (12, 26),
    "open_drawer": (10, 22),
    "press_button": (6, 12),
    "wait": (6, 18),
    "sweep": (12, 26),
    "catch": (10, 22),
    "handover": (12, 26),
}
# state vector layout
AX, AY, GRIP, OX, OY, HELD, DRAWER, BUTTON, BX, BY = range(10)
STATE_DIM = 10
SIZE = 32


@dataclass
class Scene:
    drawer: np.ndarray  # handle position when closed
    button: np.ndarray
    target: np.ndarray  # centre of the target zone
    background: np.ndarray  # RGB
    texture: float  # amplitude of a fixed background pattern
    n_distractors: int


@dataclass
class Episode:
    frames: np.ndarray  # (N, SIZE, SIZE, 3) uint8
    states: np.ndarray  # (N, STATE_DIM)
    boundaries: list[tuple[int, int]]
    labels: list[str]
    split: str = "standard"
    tags: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.frames)

    def clips(self):
        """(label, frame slice) of every sub-task interval."""
        return [
            (lab, slice(s, e)) for (s, e), lab in zip(self.boundaries, self.labels, strict=True)
        ]


def _scene(rng: np.random.Generator, ood: bool) -> Scene:
    j = lambda: rng.uniform(-0.04, 0.04, 2)  # noqa: E731
    bg = np.array([70, 110, 60.0]) if ood else np.array([90, 90, 100.0])
    return Scene(
        drawer=np.array([0.12, 0.2]) + j(),
        button=np.array([0.85, 0.85]) + j(),
        target=np.array([0.8, 0.2]) + j(),
        background=bg + rng.uniform(-8, 8, 3),
        texture=25.0 if ood else 0.0,
        n_distractors=4 if ood else 2,
    )


def _initial_state(rng, scene: Scene) -> np.ndarray:
    s = np.zeros(STATE_DIM)
    s[[AX, AY]] = rng.uniform([0.35, 0.55], [0.65, 0.8])
    s[[OX, OY]] = rng.uniform([0.3, 0.3], [0.6, 0.5])
    s[[BX, BY]] = rng.uniform([0.25, 0.7], [0.55, 0.85])
    return s


def _near(a, b, tol=0.06) -> bool:
    return float(np.linalg.norm(np.asarray(a) - np.asarray(b))) < tol


def _target(skill: str, s: np.ndarray, scene: Scene, rng) -> np.ndarray:
    """The state at the end of ``skill`` started from ``s``."""
    t = s.copy()
    if skill == "reach":
        t[[AX, AY]] = s[[OX, OY]]
    elif skill == "grasp":
        t[GRIP], t[HELD] = 1.0, 1.0
    elif skill == "carry":
        t[[AX, AY]] = t[[OX, OY]] = scene.target + rng.uniform(-0.03, 0.03, 2)
    elif skill == "place":
        t[GRIP], t[HELD] = 0.0, 0.0
    elif skill == "push":
        ang = rng.uniform(0, 2 * np.pi)
        ball = np.clip(s[[BX, BY]] + 0.25 * np.array([np.cos(ang), np.sin(ang)]), 0.1, 0.9)
        t[[BX, BY]] = ball
        t[[AX, AY]] = ball - 0.07 * (ball - s[[BX, BY]]) / max(
            np.linalg.norm(ball - s[[BX, BY]]), 1e-6
        )
    elif skill == "open_drawer":
        t[DRAWER] = 1.0
        t[[AX, AY]] = scene.drawer + np.array([0.25, 0.0])
    elif skill == "press_button":
        t[BUTTON] = 1.0
        t[[AX, AY]] = scene.button
    elif skill == "catch":
        t[[AX, AY]] = s[[OX, OY]]
        t[GRIP], t[HELD] = 1.0, 1.0
    elif skill == "handover":
        t[[AX, AY]] = t[[OX, OY]] = scene.target + rng.uniform(-0.03, 0.03, 2)
        t[GRIP], t[HELD] = 0.0, 0.0
    return t  # sweep: its end point is drawn with its arc, in _flow


def _hermite(p0, v0, p1, v1, n: int) -> np.ndarray:
    """(n, 2) positions of the cubic from p0 (velocity v0, per frame) to p1 (velocity v1), at
    frames 1..n: C1 where two such pieces meet."""
    u = (np.arange(1, n + 1) / n)[:, None]
    h00, h10 = 2 * u**3 - 3 * u**2 + 1, u**3 - 2 * u**2 + u
    h01, h11 = -2 * u**3 + 3 * u**2, u**3 - u**2
    return h00 * p0 + h10 * (n * v0) + h01 * p1 + h11 * (n * v1)


def _flow(skill, s, t, n, v0, rng) -> np.ndarray:
    """(n, STATE_DIM) states of a skill that never stops, entering at agent velocity ``v0``
    (per frame) and leaving at speed."""
    p0 = s[[AX, AY]]
    traj = np.repeat(s[None], n, axis=0)
    speed0 = float(np.linalg.norm(v0))
    if skill == "sweep":  # an arc at constant speed, tangent to v0, turning towards the centre
        if speed0 < 1e-3:
            ang = rng.uniform(0, 2 * np.pi)
            v0 = rng.uniform(0.015, 0.025) * np.array([np.cos(ang), np.sin(ang)])
            speed0 = float(np.linalg.norm(v0))
        phi = rng.uniform(0.6, 1.1) * np.pi
        d = v0 / speed0
        normals = [np.array([-d[1], d[0]]), np.array([d[1], -d[0]])]
        order = np.argsort([np.linalg.norm(p0 + 0.1 * m - 0.5) for m in normals])
        r0 = float(np.clip(speed0 * n / phi, 0.08, 0.25))
        for r, side in [(r, side) for r in (r0, 0.12, 0.08, 0.05) for side in order]:
            centre, sign = p0 + r * normals[side], 1.0 if side == 0 else -1.0
            a0 = np.arctan2(*(p0 - centre)[::-1])
            a = a0 + sign * (speed0 / r) * np.arange(1, n + 1)  # the entry speed: C1
            arc = centre + r * np.stack([np.cos(a), np.sin(a)], 1)
            if arc.min() >= 0.04 and arc.max() <= 0.96:  # a tighter turn if it would leave
                break
        traj[:, [AX, AY]] = arc
    else:  # catch / handover: a cubic through the object / the receiver, leaving at speed
        p1 = t[[AX, AY]]
        chord = p1 - p0
        d = chord / max(float(np.linalg.norm(chord)), 1e-6)
        v1 = d * max(float(np.linalg.norm(chord)) / n, 0.015)
        traj[:, [AX, AY]] = _hermite(p0, v0, p1, v1, n)
        k = max(1, int(0.4 * n))  # the gripper changes over the last 40% of frames, moving
        g = np.linspace(s[GRIP], t[GRIP], k + 1)[1:]
        traj[n - k :, GRIP] = g
        traj[:, HELD] = s[HELD]
        traj[-1, HELD] = t[HELD]
        if skill == "handover":
            traj[:, [OX, OY]] = traj[:, [AX, AY]]
        else:
            traj[-1, [OX, OY]] = traj[-1, [AX, AY]]
    traj[:, [AX, AY]] = traj[:, [AX, AY]].clip(0.03, 0.97)
    return traj


def _ease(n: int) -> np.ndarray:
    u = np.linspace(0, 1, n + 1)[1:]  # frame k reaches fraction u_k; the last frame is the target
    return u * u * (3 - 2 * u)


def _trajectory(skill, s, t, n, scene, rng, backup: bool) -> np.ndarray:
    u = _ease(n)[:, None]
    traj = s + (t - s) * u
    if skill == "push":  # approach the ball from behind, then push it
        behind = s[[BX, BY]] - 0.07 * (t[[BX, BY]] - s[[BX, BY]]) / max(
            np.linalg.norm(t[[BX, BY]] - s[[BX, BY]]), 1e-6
        )
        k = n // 2
        a = _ease(k)[:, None]
        traj[:k, [AX, AY]] = s[[AX, AY]] + (behind - s[[AX, AY]]) * a
        traj[:k, [BX, BY]] = s[[BX, BY]]
        b = _ease(n - k)[:, None]
        traj[k:, [BX, BY]] = s[[BX, BY]] + (t[[BX, BY]] - s[[BX, BY]]) * b
        traj[k:, [AX, AY]] = behind + (t[[AX, AY]] - behind) * b
        if backup:  # swing away first: the distance to the goal rises mid-skill
            bump = np.sin(np.linspace(0, np.pi, k))[:, None] * 0.2
            traj[:k, [AX, AY]] += bump * np.array([0.7, -0.7])
    if skill in ("open_drawer", "press_button"):  # reach the handle/button, then act on it
        k = n // 2
        a = _ease(k)[:, None]
        traj[:k, [AX, AY]] = s[[AX, AY]] + (t[[AX, AY]] - s[[AX, AY]]) * a
        traj[:k, [DRAWER, BUTTON]] = s[[DRAWER, BUTTON]]
        b = _ease(n - k)[:, None]
        traj[k:, [DRAWER, BUTTON]] = (
            s[[DRAWER, BUTTON]] + (t[[DRAWER, BUTTON]] - s[[DRAWER, BUTTON]]) * b
        )
        if skill == "open_drawer":  # the agent pulls the handle with the drawer
            handle = (
                scene.drawer + np.array([0.1 + 0.15 * traj[k:, DRAWER], 0 * traj[k:, DRAWER]]).T
            )
            traj[k:, [AX, AY]] = handle
        else:
            traj[k:, [AX, AY]] = t[[AX, AY]]
    if skill in ("grasp", "place"):
        traj[:, HELD] = t[HELD] if skill == "grasp" else s[HELD]
        traj[-1, HELD] = t[HELD]
    if s[HELD] > 0.5 and skill in ("carry", "wait", "reach"):
        traj[:, [OX, OY]] = traj[:, [AX, AY]]
    traj[:, [AX, AY]] += rng.normal(0, 0.004, (n, 2))
    return traj


def _yy_xx():
    g = (np.arange(SIZE) + 0.5) / SIZE
    return np.meshgrid(g, g, indexing="ij")


_YY, _XX = _yy_xx()


def render(states: np.ndarray, scene: Scene, rng: np.random.Generator) -> np.ndarray:
    """(N, SIZE, SIZE, 3) uint8 frames of ``states``."""
    n = len(states)
    pattern = scene.texture * np.sin(_XX * 19.0) * np.cos(_YY * 13.0)
    base = scene.background[None, None, :] + pattern[..., None]
    light = 1.0 + 0.06 * np.cumsum(rng.normal(0, 0.15, n)).clip(-1, 1)  # slow lighting drift
    d_pos = rng.uniform(0.1, 0.9, (scene.n_distractors, 2))
    d_vel = rng.normal(0, 0.004, (scene.n_distractors, 2))
    frames = np.empty((n, SIZE, SIZE, 3), dtype=np.uint8)

    def disc(img, c, r, color):
        m = (_XX - c[0]) ** 2 + (_YY - (1 - c[1])) ** 2 < r * r
        img[m] = color

    def box(img, lo, hi, color):
        m = (lo[0] <= _XX) & (hi[0] >= _XX) & (lo[1] <= 1 - _YY) & (hi[1] >= 1 - _YY)
        img[m] = color

    for i, s in enumerate(states):
        img = base.copy()
        tz = scene.target
        box(img, tz - 0.08, tz + 0.08, (60, 60, 160))
        box(img, tz - 0.06, tz + 0.06, img[0, 0])
        dr = scene.drawer
        box(img, dr - 0.08, dr + np.array([0.02 + 0.15 * s[DRAWER], 0.08]), (120, 80, 40))
        disc(img, scene.button, 0.05, (200 * (1 - s[BUTTON]) + 30, 60 + 170 * s[BUTTON], 40))
        for p in d_pos + d_vel * i:
            box(img, p - 0.025, p + 0.025, (130, 130, 130))
        box(img, s[[OX, OY]] - 0.04, s[[OX, OY]] + 0.04, (230, 210, 40))
        disc(img, s[[BX, BY]], 0.045, (200, 60, 200))
        disc(img, s[[AX, AY]], 0.07, (245, 245, 245))
        disc(img, s[[AX, AY]], 0.04 * (1 - s[GRIP]), (20, 20, 20))  # open gripper: a ring
        img = img * light[i] + rng.normal(0, 4.0, img.shape)
        frames[i] = np.clip(img, 0, 255).astype(np.uint8)
    return frames


# Tasks: fixed skill chains, as in RLBench where each task has its own sub-task sequence; a
# demo is a new random instance (positions, durations, noise) of one task.
TASKS = {
    "pick-place": ("reach", "grasp", "carry", "place"),
    "drawer-button-push": ("open_drawer", "press_button", "push"),
    "push-then-pick": ("push", "reach", "grasp", "carry", "place"),
    "button-pick-place": ("press_button", "reach", "grasp", "carry", "place"),
    "drawer-pick": ("open_drawer", "reach", "grasp", "carry", "place", "press_button"),
    "push-button-drawer": ("push", "press_button", "open_drawer"),
}
# Tasks built to fool UVD: a pause, a push that swings away first (distance to the goal rises,
# then falls), consecutive look-alike pushes.
ADVERSARIAL_TASKS = {
    "pick-wait-place": ("reach", "grasp", "wait", "carry", "place"),
    "backup-push-pick": ("push*", "reach", "grasp", "carry"),
    "double-push-button": ("push", "push", "press_button"),
    "wait-drawer-wait": ("open_drawer", "wait", "press_button", "wait"),
}
# Tasks whose boundaries are all at speed: each skill starts while the agent still moves.
NOT_AT_REST_TASKS = {
    "sweep-catch-handover": ("sweep", "catch", "handover"),
    "catch-handover-sweep-sweep": ("catch", "handover", "sweep", "sweep"),
    "sweep-sweep-catch-handover": ("sweep", "sweep", "catch", "handover"),
}
ALL_TASKS = {**TASKS, **ADVERSARIAL_TASKS, **NOT_AT_REST_TASKS}


def make_episode(rng: np.random.Generator, task: str, split: str = "standard") -> Episode:
    """One rendered demonstration of ``task`` (a key of ALL_TASKS)."""
    if task not in ALL_TASKS:
        raise ValueError(f"unknown task {task!r}; choose one of: {', '.join(ALL_TASKS)}")
    chain = ALL_TASKS[task]
    scene = _scene(rng, ood=split == "ood")
    s = _initial_state(rng, scene)
    states, bounds, skills = [], [], []
    pos, v = 0, np.zeros(2)  # v: the agent's velocity (per frame) where the last skill ended
    for step in chain:
        skill = step.rstrip("*")
        n = int(rng.integers(DURATION[skill][0], DURATION[skill][1] + 1))
        t = _target(skill, s, scene, rng)
        if skill in FLOW_SKILLS:
            traj = _flow(skill, s, t, n, v, rng)
            prev = np.vstack([s[None], traj])[-2]
            v = traj[-1, [AX, AY]] - prev[[AX, AY]]
            t = traj[-1].copy()
            traj[:, [AX, AY]] += rng.normal(0, 0.004, (n, 2))
            if s[HELD] > 0.5 and skill == "sweep":
                traj[:, [OX, OY]] = traj[:, [AX, AY]]
        else:
            traj, v = _trajectory(skill, s, t, n, scene, rng, backup=step.endswith("*")), 0 * v
        states.append(traj)
        bounds.append((pos, pos + n))
        skills.append(skill)
        pos += n
        s = states[-1][-1].copy()
        s[[AX, AY]] = t[[AX, AY]]
        if skill in FLOW_SKILLS and s[HELD] > 0.5:
            s[[OX, OY]] = s[[AX, AY]]
    st = np.concatenate(states)
    return Episode(render(st, scene, rng), st, bounds, skills, split, [task])


def split_tasks(split: str) -> dict:
    if split == "adversarial":
        return ADVERSARIAL_TASKS
    if split == "not-at-rest":
        return NOT_AT_REST_TASKS
    if split in ("train", "pretrain"):
        return ALL_TASKS
    return TASKS


def make_split(seed: int, split: str, per_task: int) -> list[Episode]:
    """``per_task`` demos of every task of ``split`` (train: all tasks, the policy's data)."""
    rng = np.random.default_rng([seed, SPLIT_IDS[split]])
    return [make_episode(rng, task, split) for task in split_tasks(split) for _ in range(per_task)]


# pretrain: an encoder's pretraining corpus (every task, standard scenes), disjoint from the rest
SPLIT_IDS = {"train": 0, "standard": 1, "adversarial": 2, "ood": 3, "pretrain": 4, "not-at-rest": 5}


def state_features(states: np.ndarray) -> np.ndarray:
    """Oracle features: the simulator state, scaled to comparable ranges."""
    return np.asarray(states, dtype=np.float64) * np.array([1, 1, 0.5, 1, 1, 0.5, 0.5, 0.5, 1, 1])


# -- executing a plan ------------------------------------------------------------------------
CONTROLS = {
    "reach": [AX, AY],
    "grasp": [GRIP],
    "carry": [AX, AY],
    "place": [GRIP, HELD],
    "push": [AX, AY, BX, BY],
    "open_drawer": [AX, AY, DRAWER],
    "press_button": [AX, AY, BUTTON],
    "wait": [],
    "sweep": [AX, AY],
    "catch": [AX, AY, GRIP],
    "handover": [AX, AY, GRIP, HELD],
}


def execute(start: np.ndarray, plan: list[tuple[str, np.ndarray]]) -> np.ndarray:
    """Run (skill, target state) pairs from ``start``: each skill sets only what it controls
    (a held object follows the agent; a grasp holds the object only next to it)."""
    s = np.array(start, dtype=np.float64)
    for skill, target in plan:
        idx, held = CONTROLS[skill], s[HELD] > 0.5
        s[idx] = target[idx]
        if skill in ("grasp", "catch"):
            s[HELD] = 1.0 if _near(s[[AX, AY]], s[[OX, OY]], 0.08) else 0.0
        if skill == "handover" and held:  # carried to the receiver, released there
            s[[OX, OY]] = s[[AX, AY]]
        if s[HELD] > 0.5:
            s[[OX, OY]] = s[[AX, AY]]
    return s


def success(final: np.ndarray, goal: np.ndarray) -> bool:
    """Every part of the goal state reached (positions within 0.05, discrete parts within 0.25)."""
    pos = [AX, AY, OX, OY, BX, BY]
    disc_ = [GRIP, HELD, DRAWER, BUTTON]
    return bool(
        np.abs(final[pos] - goal[pos]).max() < 0.05
        and np.abs(final[disc_] - goal[disc_]).max() < 0.25
    )
