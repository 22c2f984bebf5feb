"""Record a real shell: bash in a pseudo-terminal (ptyprocess), the screen kept by a terminal
emulator (pyte) on a fixed grid, keystrokes typed at about 70 ms a character, frames at a
fixed rate.

Time is split in two. Typing runs on a logical clock quantized to frames: a key is pressed right
after a frame is captured, its echo is awaited (the shell's output settles), and the key's
delay (70 ms ± jitter, seeded) becomes a whole number of frames of the settled screen. A
command runs on the real clock: after Enter the screen is captured once per frame period until
the shell prints its next prompt (detected by an invisible OSC title marker in ``PS1``). So a
trace is reproducible for typing and true to time for commands.

Every frame carries: the action pressed after it (it shows on the NEXT frame), the exact
screen text and the cursor cell (ground truth for evaluation, never a model input).

A command that does not finish within ``command_timeout_s`` gets a Ctrl-C from the supervisor
(logged as such), the shell is killed if even that does not bring a prompt back, and the
episode ends with ``status="command_timeout"``: its frames are kept and the probe that hung is
named. ``episode_timeout_s`` bounds a whole episode the same way.
"""

from __future__ import annotations

import contextlib
import os
import re
import select
import signal
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fmlab.neural_computer.render import get_atlas
from fmlab.neural_computer.sandbox import KEY_BYTES, Sandbox, check_script

__all__ = ["Episode", "RecorderConfig", "Step", "record_terminal"]

_MARKER = re.compile(rb"\x1b\]2;R\x07")


@dataclass
class Step:
    """One command of a script: the keys that type (and edit) it, ending in Enter or Ctrl-C;
    ``probe`` holds what evaluation checks about it (e.g. the expected output)."""

    keys: list[str]
    probe: dict[str, Any] = field(default_factory=dict)


@dataclass
class RecorderConfig:
    rows: int = 12
    cols: int = 40
    fps: float = 15.0
    key_ms: float = 70.0  # mean delay between keystrokes
    key_jitter_ms: float = 20.0  # uniform ± around key_ms
    think_ms: float = 300.0  # pause after a command's output before the next one
    command_timeout_s: float = 3.0
    episode_timeout_s: float = 60.0
    font_size: int = 10
    cell: tuple[int, int] = (6, 12)


@dataclass
class Episode:
    """A recorded episode in memory (see :mod:`fmlab.neural_computer.traces` for on disk)."""

    kind: str  # "terminal" | "gui"
    frames: np.ndarray  # (T, H, W) uint8
    actions: list[dict]  # T entries: the action taken after frame t (effect on frame t + 1)
    truth: list[dict]  # T entries: ground truth of frame t (screen text and cursor, or state)
    meta: dict[str, Any]


class _Shell:
    """bash in a pty, its output fed to a pyte screen."""

    def __init__(self, sandbox: Sandbox, cfg: RecorderConfig):
        import ptyprocess
        import pyte

        self.screen = pyte.Screen(cfg.cols, cfg.rows)
        self.stream = pyte.ByteStream(self.screen)
        self.proc = ptyprocess.PtyProcess.spawn(
            sandbox.argv(), cwd=str(sandbox.home), env=sandbox.env(),
            dimensions=(cfg.rows, cfg.cols),
        )  # fmt: skip
        self.prompts = 0

    def pump(self, timeout: float) -> int:
        """Read what the shell wrote within ``timeout`` seconds into the screen; bytes read."""
        try:
            r, _, _ = select.select([self.proc.fd], [], [], max(0.0, timeout))
        except (OSError, ValueError):
            return 0
        if not r:
            return 0
        try:
            data = os.read(self.proc.fd, 65536)
        except OSError:
            return 0
        self.prompts += len(_MARKER.findall(data))
        self.stream.feed(data)
        return len(data)

    def settle(self, idle: float = 0.012, limit: float = 0.25, need_output: bool = True) -> None:
        """Read until the output has been quiet for ``idle`` seconds (after some output, when
        ``need_output``), at most ``limit`` seconds."""
        end = time.monotonic() + limit
        got = 0
        while time.monotonic() < end:
            n = self.pump(idle)
            got += n
            if n == 0 and (got or not need_output):
                return

    def wait_prompt(self, count: int, timeout: float, on_tick=None, tick: float = 0.0) -> bool:
        """Read until the ``count``-th prompt appeared; ``on_tick`` is called every ``tick``
        seconds of waiting (to capture frames of a running command). False on timeout."""
        start = time.monotonic()
        next_tick = start + tick if tick else float("inf")
        while self.prompts < count:
            now = time.monotonic()
            if now - start > timeout:
                return False
            if now >= next_tick and on_tick is not None:
                on_tick()
                next_tick += tick
            self.pump(min(0.01, max(0.0, timeout - (now - start))))
        self.settle(idle=0.01, limit=0.2, need_output=False)
        return True

    def snapshot(self) -> tuple[list[str], tuple[int, int] | None]:
        c = self.screen.cursor
        return list(self.screen.display), (None if c.hidden else (int(c.x), int(c.y)))

    def close(self) -> None:
        if self.proc.isalive():
            with contextlib.suppress(OSError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.terminate(force=True)


def record_terminal(
    steps: list[Step],
    cfg: RecorderConfig | None = None,
    seed: int = 0,
    name: str = "episode",
    extra_meta: dict | None = None,
) -> Episode:
    """Run ``steps`` in a fresh sandboxed bash and record it. Every line the keys would
    execute is checked against the allow-list first (:func:`check_script`): a violation raises
    :class:`~fmlab.neural_computer.sandbox.SandboxViolation` before the shell starts."""
    cfg = cfg or RecorderConfig()
    keys = [k for s in steps for k in s.keys]
    check_script(keys)
    rng = np.random.default_rng(seed)
    atlas = get_atlas(cfg.font_size, cfg.cell)
    frame_dt = 1.0 / cfg.fps
    screens: list[list[str]] = []
    cursors: list[tuple[int, int] | None] = []
    actions: list[dict] = []
    step_of_frame: list[int] = []
    status, failed_step = "ok", None
    t_start = time.monotonic()

    with Sandbox(cfg.rows, cfg.cols) as sb:
        sh = _Shell(sb, cfg)
        try:
            if not sh.wait_prompt(1, timeout=10.0):
                raise RuntimeError("bash did not print its first prompt within 10 s")

            def capture(si: int) -> None:
                s, c = sh.snapshot()
                screens.append(s)
                cursors.append(c)
                actions.append({"key": None})
                step_of_frame.append(si)

            capture(-1)
            for si, step in enumerate(steps):
                if time.monotonic() - t_start > cfg.episode_timeout_s:
                    status, failed_step = "episode_timeout", si
                    break
                for key in step.keys:
                    actions[-1] = {"key": key}  # pressed after the last captured frame
                    prompts = sh.prompts
                    sh.proc.write(KEY_BYTES.get(key, key.encode()))
                    if key in ("Enter", "Ctrl-C"):
                        ok = sh.wait_prompt(prompts + 1, cfg.command_timeout_s,
                                            on_tick=lambda si=si: capture(si), tick=frame_dt)  # fmt: skip
                        if not ok:
                            status, failed_step = "command_timeout", si
                            break
                        delay = cfg.think_ms / 1000.0
                    else:
                        sh.settle()
                        j = cfg.key_jitter_ms
                        delay = (cfg.key_ms + rng.uniform(-j, j)) / 1000.0
                    for _ in range(max(1, round(delay * cfg.fps))):
                        capture(si)
                if status != "ok":
                    break
            if status == "command_timeout":
                actions[-1] = {"key": "Ctrl-C", "by": "supervisor"}
                prompts = sh.prompts
                sh.proc.write(KEY_BYTES["Ctrl-C"])
                recovered = sh.wait_prompt(prompts + 1, 1.0)
                capture(failed_step)
                if not recovered:
                    sh.close()
        finally:
            sh.close()
        network_isolated = sb.network_isolated
    frames = np.stack(
        [atlas.render(s, c, cfg.rows, cfg.cols) for s, c in zip(screens, cursors, strict=False)]
    )
    truth = [{"screen": s, "cursor": list(c) if c else None, "step": si}
             for s, c, si in zip(screens, cursors, step_of_frame, strict=False)]  # fmt: skip
    meta = {
        "kind": "terminal",
        "name": name,
        "seed": seed,
        "status": status,
        "failed_step": failed_step,
        "rows": cfg.rows,
        "cols": cfg.cols,
        "fps": cfg.fps,
        "cell": list(cfg.cell),
        "font": "DejaVuSansMono",
        "font_size": cfg.font_size,
        "key_ms": cfg.key_ms,
        "network_isolated": network_isolated,
        "wall_s": round(time.monotonic() - t_start, 3),
        "steps": [{"keys": s.keys, "probe": s.probe} for s in steps],
        **(extra_meta or {}),
    }
    return Episode("terminal", frames, actions, truth, meta)
