"""A toy desktop in numpy: a mouse cursor, a File menu (Reset, Clear), two buttons (+1, -1), a
counter and a text field, drawn on the terminal's 6 x 12 glyph grid so its text can be read
back by the same exact glyph matching.

An action ``{"x", "y", "click", "key"}`` taken after frame t shows on frame t + 1 (as in the
paper): the cursor moves to (x, y), a click lands there, a key goes to the focused field.
Three action regimes: ``random-slow`` (a slow random walk, rare clicks), ``random-fast``
(jumps, frequent clicks) and ``goal`` (a scripted agent that moves to a target and clicks:
count up n times, reset through the menu, type a word into the field, clear it).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import numpy as np

from fmlab.neural_computer.render import get_atlas
from fmlab.neural_computer.terminal import Episode

__all__ = ["GUI_COLS", "GUI_ROWS", "REGIMES", "GuiState", "record_gui", "render_gui", "step_gui"]

GUI_ROWS, GUI_COLS = 8, 24  # 96 x 144 pixels
H, W = GUI_ROWS * 12, GUI_COLS * 6
# Cell boxes (col0, row, col1): what a click at a cell hits.
MENU = (0, 0, 4)
ITEMS = {"Reset": (0, 1, 6), "Clear": (0, 2, 6)}
BUTTONS = {"+1": (2, 4, 6), "-1": (8, 4, 12)}
COUNTER = (16, 4, 24)  # "N=" then the value, right-aligned
FIELD = (2, 6, 22)
MAX_TEXT = FIELD[2] - FIELD[0] - 1
CURSOR = np.array(
    [
        [2, 0, 0, 0, 0],
        [2, 2, 0, 0, 0],
        [2, 1, 2, 0, 0],
        [2, 1, 1, 2, 0],
        [2, 1, 1, 1, 2],
        [2, 1, 2, 2, 0],
        [2, 2, 2, 1, 2],
        [0, 0, 0, 2, 2],
    ],
    dtype=np.uint8,
)  # fmt: skip  (1 fill, 2 outline)
REGIMES = ("random-slow", "random-fast", "goal")
MAX_X, MAX_Y = W - CURSOR.shape[1], H - CURSOR.shape[0]


@dataclass
class GuiState:
    x: int = W // 2
    y: int = H // 2
    menu_open: bool = False
    counter: int = 0
    text: str = ""
    focused: bool = False
    events: list[str] = field(default_factory=list)  # what the last action did

    def truth(self) -> dict:
        return {"cursor": [self.x, self.y], "menu_open": self.menu_open, "counter": self.counter,
                "text": self.text, "focused": self.focused, "events": list(self.events)}  # fmt: skip


def _hit(box: tuple[int, int, int], x: int, y: int) -> bool:
    c0, r, c1 = box
    return c0 * 6 <= x < c1 * 6 and r * 12 <= y < (r + 1) * 12


def step_gui(s: GuiState, a: dict) -> GuiState:
    """The next state after action ``a`` (the action's effect is on the NEXT frame)."""
    # the hot spot stops where the whole sprite is still on screen
    n = GuiState(int(np.clip(a["x"], 0, MAX_X)), int(np.clip(a["y"], 0, MAX_Y)), s.menu_open,
                 s.counter, s.text, s.focused)  # fmt: skip
    if a.get("click"):
        if s.menu_open:
            n.menu_open = False
            for name, box in ITEMS.items():
                if _hit(box, n.x, n.y):
                    n.events.append(name.lower())
                    if name == "Reset":
                        n.counter = 0
                    else:
                        n.text = ""
        elif _hit(MENU, n.x, n.y):
            n.menu_open = True
            n.events.append("menu")
        elif _hit(BUTTONS["+1"], n.x, n.y):
            n.counter = min(n.counter + 1, 999)
            n.events.append("+1")
        elif _hit(BUTTONS["-1"], n.x, n.y):
            n.counter = max(n.counter - 1, -99)
            n.events.append("-1")
        else:
            n.focused = _hit(FIELD, n.x, n.y)
            if n.focused:
                n.events.append("focus")
    key = a.get("key")
    if key and n.focused:
        if key == "Backspace":
            n.text = n.text[:-1]
        elif len(key) == 1 and len(n.text) < MAX_TEXT:
            n.text += key
        n.events.append("key")
    return n


def _text(img: np.ndarray, col: int, row: int, text: str, atlas) -> None:
    for i, ch in enumerate(text):
        g = atlas.glyphs[atlas.index.get(ch, atlas.index["?"])]
        img[row * 12 : row * 12 + 12, (col + i) * 6 : (col + i) * 6 + 6] = g


def render_gui(s: GuiState) -> np.ndarray:
    """``(96, 144)`` uint8 frame of state ``s``. Text cells are light on black (readable by
    glyph matching); boxes are drawn in the rows between; the cursor is white with a black
    outline."""
    atlas = get_atlas()
    img = np.zeros((H, W), dtype=np.uint8)
    img[11, :] = 90  # menu bar's bottom rule
    _text(img, MENU[0], 0, "File", atlas)
    for name, (c0, r, c1) in BUTTONS.items():
        img[r * 12 - 2, c0 * 6 : c1 * 6] = 160
        img[(r + 1) * 12, c0 * 6 : c1 * 6] = 160
        _text(img, c0 + 1, r, name, atlas)
    _text(img, COUNTER[0], COUNTER[1], f"N={s.counter:>4d}", atlas)
    c0, r, c1 = FIELD
    edge = 220 if s.focused else 100
    img[r * 12 - 2, c0 * 6 : c1 * 6] = edge
    img[(r + 1) * 12 + 1, c0 * 6 : c1 * 6] = edge
    _text(img, c0, r, s.text + ("_" if s.focused else ""), atlas)
    if s.menu_open:
        for name, (c0, r, c1) in ITEMS.items():
            img[r * 12 : (r + 1) * 12, c0 * 6 : c1 * 6] = 0
            _text(img, c0, r, name, atlas)
        img[1 * 12 : 3 * 12, ITEMS["Reset"][2] * 6] = 200
    h, w = CURSOR.shape
    patch = img[s.y : s.y + h, s.x : s.x + w]
    spr = CURSOR[: patch.shape[0], : patch.shape[1]]
    patch[spr == 1] = 255
    patch[spr == 2] = 0
    return img


def cursor_mask(x: int, y: int) -> np.ndarray:
    """``(96, 144)`` float32 mask of the cursor sprite at (x, y): the rendered-cursor
    conditioning of the paper (the position an action asks for, drawn where it will be)."""
    m = np.zeros((H, W), dtype=np.float32)
    h, w = CURSOR.shape
    x, y = int(np.clip(x, 0, W - 1)), int(np.clip(y, 0, H - 1))
    sub = m[y : y + h, x : x + w]
    sub[CURSOR[: sub.shape[0], : sub.shape[1]] > 0] = 1.0
    return m


def _center(box: tuple[int, int, int], rng: random.Random) -> tuple[int, int]:
    c0, r, c1 = box
    return rng.randint(c0 * 6 + 2, c1 * 6 - 3), rng.randint(r * 12 + 2, r * 12 + 9)


class _GoalAgent:
    """Moves towards a target at a few pixels a frame and clicks on arrival; goals: count up
    n times, count down, reset through the menu, type a word, clear through the menu."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.plan: list[tuple[str, object]] = []

    def _new_goal(self, s: GuiState) -> None:
        r = self.rng
        g = r.choice(["up", "up", "down", "reset", "type", "clear"])
        if g in ("up", "down"):
            box = BUTTONS["+1" if g == "up" else "-1"]
            for _ in range(r.randint(1, 4)):
                self.plan += [("click", box), ("wait", r.randint(0, 2))]
        elif g in ("reset", "clear"):
            self.plan += [("click", MENU), ("wait", 1), ("click", ITEMS[g.title()])]
        else:
            word = r.choice(["hi", "ok", "cat", "nc", "yes", "sun", "go"])
            self.plan += [("click", FIELD), *[("key", ch) for ch in word], ("wait", 2)]

    def act(self, s: GuiState) -> dict:
        if not self.plan:
            self._new_goal(s)
        kind, arg = self.plan[0]
        a = {"x": s.x, "y": s.y, "click": False, "key": None}
        if kind == "wait":
            self.plan[0] = ("wait", arg - 1)
            if arg <= 1:
                self.plan.pop(0)
        elif kind == "key":
            a["key"] = arg
            self.plan.pop(0)
        else:
            if not hasattr(self, "_target") or self._target[0] is not arg:
                self._target = (arg, _center(arg, self.rng))
            tx, ty = self._target[1]
            dx, dy = tx - s.x, ty - s.y
            dist = max(abs(dx), abs(dy))
            speed = self.rng.randint(4, 9)
            if dist <= speed:
                a.update(x=tx, y=ty, click=True)
                self.plan.pop(0)
                del self._target
            else:
                a.update(x=s.x + round(dx * speed / dist), y=s.y + round(dy * speed / dist))
        return a


def _random_action(s: GuiState, rng: random.Random, fast: bool, vel: list[float]) -> dict:
    if fast:
        if rng.random() < 0.4:
            x, y = rng.randrange(W), rng.randrange(H)
        else:
            x, y = s.x + rng.randint(-20, 20), s.y + rng.randint(-20, 20)
        click, keyp = rng.random() < 0.2, 0.1
    else:
        vel[0] = 0.8 * vel[0] + rng.uniform(-1.2, 1.2)
        vel[1] = 0.8 * vel[1] + rng.uniform(-1.2, 1.2)
        x, y = round(s.x + vel[0]), round(s.y + vel[1])
        click, keyp = rng.random() < 0.05, 0.05
    key = rng.choice("abcxyz") if rng.random() < keyp else None
    return {"x": int(np.clip(x, 0, W - 1)), "y": int(np.clip(y, 0, H - 1)), "click": click,
            "key": key}  # fmt: skip


def record_gui(regime: str, n_frames: int, seed: int, name: str = "gui") -> Episode:
    """Run the toy desktop for ``n_frames`` frames under an action ``regime``."""
    if regime not in REGIMES:
        raise ValueError(f"unknown GUI regime {regime!r}; choose one of: {', '.join(REGIMES)}")
    if n_frames < 2:
        raise ValueError(f"n_frames must be at least 2, got {n_frames}")
    rng = random.Random(f"gui:{regime}:{seed}")
    s = GuiState(rng.randrange(W), rng.randrange(H))
    agent, vel = _GoalAgent(rng), [0.0, 0.0]
    frames, actions, truth = [], [], []
    for _ in range(n_frames):
        frames.append(render_gui(s))
        truth.append(s.truth())
        a = (
            agent.act(s)
            if regime == "goal"
            else _random_action(s, rng, regime == "random-fast", vel)
        )
        actions.append(a)
        s = step_gui(s, a)
    meta = {"kind": "gui", "name": name, "seed": seed, "regime": regime, "status": "ok",
            "rows": GUI_ROWS, "cols": GUI_COLS, "fps": 15.0, "cell": [6, 12]}  # fmt: skip
    return Episode("gui", np.stack(frames), actions, truth, meta)
