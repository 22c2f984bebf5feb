"""Traces on disk: one directory per episode, written atomically, read back with checks.

Layout of an episode directory (format ``fmlab-nc-trace``, version 1)::

    <episode>/
      meta.json       kind ("terminal" | "gui"), n_frames, height, width, fps, frames
                      ("png" | "mp4"), status ("ok" | "command_timeout" | "episode_timeout"),
                      the script or regime, seed, grid (rows, cols, cell) ...
      actions.jsonl   one JSON object per frame t: the action taken AFTER frame t (it shows on
                      frame t + 1): {"t", "key"} for the terminal ("key": a printable character,
                      "Enter", "Backspace", "Left", "Right", "Up", "Down", "Ctrl-C" or null;
                      "by": "supervisor" for the recorder's own Ctrl-C), {"t", "x", "y",
                      "click", "key"} for the GUI
      truth.jsonl     one JSON object per frame t: ground truth of frame t (terminal: "screen",
                      the exact rows of text, "cursor" [col, row] or null, "step"; GUI: "cursor"
                      [x, y], "menu_open", "counter", "text", "focused", "events"). For
                      evaluation only: no model ever reads it.
      frames/000000.png ...   8-bit grayscale PNGs, one per frame (lossless; the default), or
      frames.mp4      the same frames as H.264 (lossy, small; through fmlab.core.video)

An episode is written into a temporary sibling and renamed into place when complete, so a
directory without ``meta.json`` is a partial one (a kill mid-write). :func:`load_episodes`
checks every episode (meta parses and has the format, line counts and frame count equal
``n_frames``, every frame decodes at the recorded size) and skips a bad one with a
:class:`TraceWarning` naming it and why.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from fmlab.core.io import atomic_dir, atomic_write_json, read_json
from fmlab.neural_computer.terminal import Episode

__all__ = ["FORMAT", "TraceError", "TraceWarning", "load_episode", "load_episodes",
           "write_episode"]  # fmt: skip

FORMAT, VERSION = "fmlab-nc-trace", 1


class TraceError(ValueError):
    """An episode directory that is not a complete, readable trace."""


class TraceWarning(UserWarning):
    """A corrupt or partial episode skipped by the loader."""


def _jsonl(rows: list[dict]) -> str:
    return "".join(
        json.dumps({"t": t, **r}, separators=(",", ":")) + "\n" for t, r in enumerate(rows)
    )


def write_episode(
    ep: Episode, path: str | Path, frames: str = "png", overwrite: bool = False
) -> Path:
    """Write ``ep`` as an episode directory at ``path`` (atomically)."""
    from PIL import Image

    if frames not in ("png", "mp4"):
        raise ValueError(f"frames={frames!r}: choose png (lossless) or mp4")
    if not (len(ep.frames) == len(ep.actions) == len(ep.truth)) or len(ep.frames) == 0:
        raise ValueError(f"episode {path}: frames, actions and truth must have one entry per frame")
    path = Path(path)
    t, h, w = ep.frames.shape
    with atomic_dir(path, overwrite=overwrite) as tmp:
        (tmp / "actions.jsonl").write_text(_jsonl(ep.actions))
        (tmp / "truth.jsonl").write_text(_jsonl(ep.truth))
        if frames == "png":
            (tmp / "frames").mkdir()
            for i, f in enumerate(ep.frames):
                Image.fromarray(f, mode="L").save(tmp / "frames" / f"{i:06d}.png", optimize=False)
        else:
            from fmlab.core.video import write_frames

            rgb = np.repeat(ep.frames[..., None], 3, axis=-1)
            write_frames(tmp / "frames.mp4", rgb, fps=ep.meta.get("fps", 15.0), crf=0)
        meta = {"format": FORMAT, "version": VERSION, **ep.meta, "kind": ep.kind,
                "n_frames": t, "height": h, "width": w, "frames": frames}  # fmt: skip
        atomic_write_json(tmp / "meta.json", meta)  # last: its presence marks a whole episode
    return path


def _read_jsonl(p: Path, n: int) -> list[dict]:
    if not p.is_file():
        raise TraceError(f"{p.name} is missing")
    rows = []
    for i, line in enumerate(p.read_text().splitlines()):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            raise TraceError(f"{p.name} line {i + 1} is not JSON (truncated?)") from None
    if len(rows) != n or any(r.get("t") != i for i, r in enumerate(rows)):
        raise TraceError(f"{p.name} has {len(rows)} rows in order for {n} frames")
    return [{k: v for k, v in r.items() if k != "t"} for r in rows]


def _read_frames(d: Path, meta: dict) -> np.ndarray:
    from PIL import Image

    n, h, w = meta["n_frames"], meta["height"], meta["width"]
    if meta.get("frames", "png") == "mp4":
        from fmlab.core.video import VideoError, read_frames

        try:
            rgb = read_frames(d / "frames.mp4")
        except (VideoError, OSError) as e:
            raise TraceError(f"frames.mp4 does not decode: {e}") from None
        if rgb.shape[:3] != (n, h, w):
            raise TraceError(f"frames.mp4 holds {rgb.shape[:3]}, meta says {(n, h, w)}")
        return rgb[..., 0].copy()
    files = sorted((d / "frames").glob("*.png")) if (d / "frames").is_dir() else []
    if len(files) != n:
        raise TraceError(f"frames/ holds {len(files)} PNGs for {n} frames")
    out = np.empty((n, h, w), dtype=np.uint8)
    for i, f in enumerate(files):
        if f.name != f"{i:06d}.png":
            raise TraceError(f"frames/{f.name} is out of sequence (expected {i:06d}.png)")
        try:
            with Image.open(f) as im:
                a = np.asarray(im.convert("L"))
        except OSError as e:
            raise TraceError(f"frames/{f.name} does not decode ({e})") from None
        if a.shape != (h, w):
            raise TraceError(f"frames/{f.name} is {a.shape[1]}x{a.shape[0]}, meta says {w}x{h}")
        out[i] = a
    return out


def load_episode(path: str | Path) -> Episode:
    """Read and check one episode directory; raises :class:`TraceError` naming the problem."""
    d = Path(path)
    if not (d / "meta.json").is_file():
        raise TraceError(f"{d}: no meta.json (a partial episode: its writer was interrupted)")
    try:
        meta = read_json(d / "meta.json")
    except (ValueError, OSError) as e:
        raise TraceError(f"{d}: meta.json unreadable ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise TraceError(f"{d}: meta.json is not an {FORMAT} file")
    if meta.get("version") != VERSION:
        raise TraceError(f"{d}: trace version {meta.get('version')}, this fmlab reads {VERSION}")
    try:
        n = int(meta["n_frames"])
        actions = _read_jsonl(d / "actions.jsonl", n)
        truth = _read_jsonl(d / "truth.jsonl", n)
        frames = _read_frames(d, meta)
    except TraceError as e:
        raise TraceError(f"{d}: {e}") from None
    except (KeyError, TypeError, ValueError) as e:
        raise TraceError(f"{d}: meta.json lacks or mangles a field ({e})") from None
    return Episode(meta["kind"], frames, actions, truth, meta)


def episode_dirs(root: str | Path) -> Iterator[Path]:
    """Episode directories under ``root`` (sorted), including partial ones (no meta.json)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(
            f"{root}: no such trace directory (record one with fmlab nc record)"
        )
    for p in sorted(root.iterdir()):
        if p.is_dir() and (p.name.endswith(".partial") or (p / "actions.jsonl").exists()
                           or (p / "meta.json").exists()):  # fmt: skip
            yield p


def load_episodes(root: str | Path, kind: str | None = None) -> list[Episode]:
    """Every good episode under ``root`` (of ``kind`` when given); a corrupt or partial one is
    skipped with a :class:`TraceWarning` that names it and what is wrong."""
    out = []
    for d in episode_dirs(root):
        try:
            ep = load_episode(d)
        except TraceError as e:
            warnings.warn(f"skipping episode: {e}", TraceWarning, stacklevel=2)
            continue
        if kind is None or ep.kind == kind:
            out.append(ep)
    return out
