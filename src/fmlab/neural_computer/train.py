"""Train the learned runtime on recorded traces through ``fmlab.core.train`` (resumable).

Episodes become one frame tensor with the actions beside it; a batch is a set of windows of
T + 1 consecutive frames inside one episode, a pure function of (seed, step, micro, rank) as
core.train requires for exact resume. Ground truth (screen text, cursor) is never used here.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fmlab.core.io import atomic_dir, atomic_write_json, read_json
from fmlab.core.train import TrainConfig, TrainResult, train
from fmlab.neural_computer.model import NCConfig, NCModel, key_id
from fmlab.neural_computer.terminal import Episode

__all__ = ["TraceData", "WindowSampler", "build_data", "load_model", "nc_loss", "save_model",
           "train_nc"]  # fmt: skip


def episode_actions(ep: Episode) -> tuple[np.ndarray, np.ndarray]:
    """(T,) key ids and (T, 3) pixel mouse (x, y, click; zeros for the terminal)."""
    keys = np.array([key_id(a.get("key")) for a in ep.actions], dtype=np.int64)
    mouse = np.array([[a.get("x", 0), a.get("y", 0), float(bool(a.get("click")))]
                      for a in ep.actions], dtype=np.float32)  # fmt: skip
    return keys, mouse


@dataclass
class TraceData:
    frames: torch.Tensor  # (F, H, W) uint8, every episode back to back
    keys: torch.Tensor  # (F,) key ids: the action after each frame
    mouse: torch.Tensor  # (F, 3)
    starts: torch.Tensor  # (S,) first frames of the windows that fit inside one episode
    window: int


def build_data(episodes: list[Episode], window: int) -> TraceData:
    """Stack episodes for training on windows of ``window`` steps (``window + 1`` frames)."""
    if not episodes:
        raise ValueError("no episodes to train on (record some with fmlab nc record)")
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    shape = episodes[0].frames.shape[1:]
    frames, keys, mouse, starts, off = [], [], [], [], 0
    for ep in episodes:
        if ep.frames.shape[1:] != shape:
            raise ValueError(f"episode {ep.meta.get('name')!r} has frames {ep.frames.shape[1:]}, "
                             f"the first has {shape}: train on one kind and grid at a time")  # fmt: skip
        k, m = episode_actions(ep)
        n = len(ep.frames)
        frames.append(ep.frames)
        keys.append(k)
        mouse.append(m)
        starts.extend(range(off, off + n - window))
        off += n
    if not starts:
        raise ValueError(f"every episode is shorter than window + 1 = {window + 1} frames")
    return TraceData(torch.from_numpy(np.concatenate(frames)), torch.from_numpy(np.concatenate(keys)),
                     torch.from_numpy(np.concatenate(mouse)), torch.tensor(starts), window)  # fmt: skip


@dataclass
class WindowSampler:
    """Random windows, a pure function of (seed, step, micro, rank)."""

    data: TraceData
    seed: int = 0

    def batch(self, step: int, micro: int, rank: int, world: int, batch_size: int) -> dict:
        key = f"nc:{self.seed}:{step}:{micro}:{rank}".encode()
        g = torch.Generator().manual_seed(
            int.from_bytes(hashlib.sha256(key).digest()[:8], "big") >> 1
        )
        s = self.data.starts[torch.randint(len(self.data.starts), (batch_size,), generator=g)]
        T = self.data.window
        idx = s[:, None] + torch.arange(T + 1)[None]  # (B, T + 1)
        keys = self.data.keys[idx[:, :-1]]
        return {"frames": self.data.frames[idx], "keys": keys, "mouse": self.data.mouse[idx[:, :-1]],
                "input_ids": keys}  # fmt: skip


def nc_loss(model, batch: dict, self_feed: float = 0.0) -> torch.Tensor:
    """Change-weighted MSE of teacher-forced next-frame predictions (through ``model``'s
    forward, so a DDP wrapper sees it)."""
    cfg = getattr(model, "module", model).cfg
    frames = batch["frames"]
    pred = model(frames, batch["keys"], batch["mouse"] if cfg.mouse else None, self_feed)
    target = frames[:, 1:].float() / 255.0
    prev = frames[:, :-1].float() / 255.0
    w = 1.0 + cfg.change_weight * ((target - prev).abs() > 0.05).float()
    return (w * (pred - target) ** 2).sum() / w.sum()


def save_model(model: NCModel, path: str | Path, extra: dict | None = None) -> Path:
    """``config.json`` + ``model.safetensors`` (atomic directory)."""
    from safetensors.torch import save_file

    with atomic_dir(path, overwrite=True) as tmp:
        atomic_write_json(tmp / "config.json", {"nc_config": model.cfg.to_dict(), **(extra or {})})
        save_file(
            {k: v.contiguous() for k, v in model.state_dict().items()},
            str(tmp / "model.safetensors"),
        )
    return Path(path)


def load_model(path: str | Path) -> tuple[NCModel, dict]:
    """A model saved by :func:`save_model` (``fmlab nc train``); clear errors otherwise."""
    from safetensors.torch import load_file

    from fmlab.core.io import check_safetensors_file

    d = Path(path)
    hint = ("train one with `fmlab nc train --traces <dir> --out <dir>` (minutes on 2 cores; "
            "record traces first with `fmlab nc record`)")  # fmt: skip
    if not (d / "config.json").is_file():
        raise FileNotFoundError(f"{d}: no config.json, so not a neural-computer model; {hint}")
    meta = read_json(d / "config.json")
    if not isinstance(meta, dict) or "nc_config" not in meta:
        raise ValueError(f"{d / 'config.json'} is not a neural-computer model config; {hint}")
    cfg = NCConfig.from_dict(meta["nc_config"])
    st = d / "model.safetensors"
    if not st.is_file():
        raise FileNotFoundError(f"{st} is missing; {hint}")
    check_safetensors_file(st)
    model = NCModel(cfg)
    model.load_state_dict(load_file(str(st)))
    return model.eval(), meta


def train_nc(
    episodes: list[Episode],
    cfg: NCConfig,
    tcfg: TrainConfig,
    out_dir: str | Path | None = None,
    window: int = 8,
    self_feed: float = 0.0,
    model_seed: int | None = None,
) -> tuple[NCModel, TrainResult]:
    """Train an :class:`NCModel` on ``episodes``; with ``out_dir``, resumable and the final
    model saved in ``out_dir/model``."""
    h, w = episodes[0].frames.shape[1:] if episodes else (0, 0)
    if (h, w) != (cfg.height, cfg.width):
        raise ValueError(f"the traces have {w}x{h} frames but the model config says "
                         f"{cfg.width}x{cfg.height}")  # fmt: skip
    data = build_data(episodes, window)
    torch.manual_seed(tcfg.seed if model_seed is None else model_seed)
    model = NCModel(cfg)
    res = train(model, WindowSampler(data, seed=tcfg.seed), tcfg, out_dir,
                loss_fn=lambda m, b: nc_loss(m, b, self_feed))  # fmt: skip
    model.eval()
    if out_dir is not None and res.steps >= tcfg.steps:
        save_model(model, Path(out_dir) / "model", {"train": tcfg.to_dict(), "window": window,
                                                     "self_feed": self_feed})  # fmt: skip
    return model, res
