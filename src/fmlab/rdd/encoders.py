"""Frame encoders behind one interface: (N, H, W, 3) uint8 frames -> (N, D) float features.

- ``PixelPCA``: downsampled pixels projected on principal components fitted on training frames.
- ``TCNEncoder``: a small CNN trained here, self-supervised, with a time-contrastive objective
  (frames a few steps apart in one demo attract, other frames repel; InfoNCE), with brightness
  and noise augmentation so it does not key on lighting.
- ``StateCNN``: a small CNN trained to read per-frame state targets (proprioception, object
  poses: whatever the demos logged) from pixels; the estimated state is the feature. In the
  bench it is pretrained on a separate corpus of arena demos, our stand-in for the pretrained
  encoders (LIV, R3M) of the paper.
- ``HFVisionEncoder``: any local Hugging Face vision model directory (CLIP/DINOv2/ViT ...),
  pooled output; nothing is downloaded.

Encoders that learn (``fit``) keep their parameters as arrays (``state()``/``from_state``) so a
prior can carry them in its ``.npz``. A fit is short and in memory, so it has no checkpoint: a
SIGTERM during it raises :class:`fmlab.core.train.TrainingInterrupted` (a ``KeyboardInterrupt``)
at once, leaves the encoder unfitted and has written nothing.
"""

from __future__ import annotations

import functools
from abc import ABC, abstractmethod
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from fmlab.core.train import GracefulStop, TrainingInterrupted
from fmlab.rdd.prior import RDDError

__all__ = [
    "ENCODERS",
    "Encoder",
    "HFVisionEncoder",
    "PixelPCA",
    "StateCNN",
    "TCNEncoder",
    "check_frames",
    "get_encoder",
]


def check_frames(frames, what: str = "frames") -> np.ndarray:
    a = np.asarray(frames)
    if a.ndim != 4 or a.shape[-1] != 3:
        raise RDDError(f"{what}: expected (N, H, W, 3) RGB frames, got shape {a.shape}")
    if len(a) == 0:
        raise RDDError(f"{what}: no frames")
    return a


class Encoder(ABC):
    name: str = ""

    def fit(self, demos: Sequence[np.ndarray], seed: int = 0) -> Encoder:
        """Learn from training demos (each (N, H, W, 3)); a no-op for fixed encoders."""
        return self

    @abstractmethod
    def encode(self, frames: np.ndarray) -> np.ndarray: ...

    def state(self) -> dict[str, np.ndarray]:
        return {}


def _pixels(frames: np.ndarray, size: int = 16) -> np.ndarray:
    """Average-pooled to ``size`` x ``size``, scaled to [0, 1], flattened."""
    f = check_frames(frames).astype(np.float32) / 255.0
    n, h, w, c = f.shape
    if h % size == 0 and w % size == 0:
        f = f.reshape(n, size, h // size, size, w // size, c).mean((2, 4))
    return f.reshape(n, -1)


class PixelPCA(Encoder):
    name = "pixels-pca"

    def __init__(self, dim: int = 32):
        self.dim = dim
        self.mean: np.ndarray | None = None
        self.components: np.ndarray | None = None

    def fit(self, demos, seed: int = 0) -> PixelPCA:
        x = np.concatenate([_pixels(d) for d in demos])
        self.mean = x.mean(0)
        _, _, vt = np.linalg.svd(x - self.mean, full_matrices=False)
        self.components = vt[: self.dim].astype(np.float32)
        return self

    def encode(self, frames):
        if self.components is None:
            raise RDDError(
                "PixelPCA is not fitted: call fit(training demos) or build the prior first"
            )
        return (_pixels(frames) - self.mean) @ self.components.T

    def state(self):
        return {"pca_mean": self.mean, "pca_components": self.components}

    @classmethod
    def from_state(cls, st: dict) -> PixelPCA:
        e = cls(len(st["pca_components"]))
        e.mean, e.components = st["pca_mean"], st["pca_components"]
        return e


class _ConvNet(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(3, 16, 5, stride=2, padding=2), nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(32, 32, 3, stride=2, padding=1), nn.ReLU(),
            nn.Flatten(), nn.LazyLinear(dim),
        )  # fmt: skip

    def forward(self, x):
        return self.net(x)


def _to_tensor(frames: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float() / 255.0 - 0.5


def _net_from_state(st: dict, prefix: str) -> _ConvNet:
    sd = {k[len(prefix) :]: torch.from_numpy(np.asarray(v)) for k, v in st.items()
          if k.startswith(prefix)}  # fmt: skip
    head = next(v for v in sd.values() if v.ndim == 2)  # the one Linear layer
    net = _ConvNet(head.shape[0])
    net.net[-1] = nn.Linear(head.shape[1], head.shape[0])
    net.load_state_dict(sd)
    return net.eval()


@torch.no_grad()
def _run(net: _ConvNet, frames: np.ndarray) -> np.ndarray:
    x = _to_tensor(check_frames(frames))
    return (
        torch.cat([net(x[i : i + 512]) for i in range(0, len(x), 512)]).numpy().astype(np.float64)
    )


def _abandon_on_sigterm(fit):
    """A SIGTERM during ``fit`` abandons it at once: the net is dropped (never half-fitted) and
    :class:`TrainingInterrupted` says that nothing was written."""

    @functools.wraps(fit)
    def wrapper(self, *args, **kwargs):
        try:
            with GracefulStop(immediate=True):
                return fit(self, *args, **kwargs)
        except TrainingInterrupted as e:
            self.net = None
            raise TrainingInterrupted(
                f"rdd {self.name} encoder fit stopped by {e.signal_name}; nothing was written "
                "(the fit is in memory); rerun the same command",
                e.signal_name,
            ) from None

    return wrapper


def _augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Brightness and pixel-noise augmentation, so a learned encoder does not key on lighting."""
    scale = 1 + 0.15 * (torch.rand(len(x), 1, 1, 1, generator=g) - 0.5)
    return (x + 0.5) * scale - 0.5 + 0.02 * torch.randn(x.shape, generator=g)


class _CNNEncoder(Encoder):
    """A learned ``_ConvNet`` encoder: features are the net's output; its weights are stored as
    arrays under ``prefix`` (``state()``)."""

    prefix = ""
    fit_hint = "fit(training demos)"
    net: _ConvNet | None = None

    def encode(self, frames):
        if self.net is None:
            raise RDDError(f"{type(self).__name__} is not trained: call {self.fit_hint} first")
        return _run(self.net, frames)

    def state(self):
        return {f"{self.prefix}{k}": v.numpy() for k, v in self.net.state_dict().items()}


class TCNEncoder(_CNNEncoder):
    """Time-contrastive CNN encoder trained on the policy's training demos (no labels)."""

    name = "tcn"
    prefix = "tcn."

    def __init__(
        self, dim: int = 32, steps: int = 300, batch: int = 96, window: int = 2, lr: float = 2e-3
    ):
        self.dim, self.steps, self.batch, self.window, self.lr = dim, steps, batch, window, lr
        self.net: _ConvNet | None = None

    @_abandon_on_sigterm
    def fit(self, demos, seed: int = 0, log=None) -> TCNEncoder:
        g = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)
        frames = [_to_tensor(check_frames(d)) for d in demos]
        lens = torch.tensor([len(f) for f in frames])
        self.net = _ConvNet(self.dim)
        self.net(frames[0][:1])  # materialise the lazy layer
        opt = torch.optim.AdamW(self.net.parameters(), lr=self.lr, weight_decay=1e-4)
        for step in range(self.steps):
            di = torch.randint(len(frames), (self.batch,), generator=g)
            t = (torch.rand(self.batch, generator=g) * lens[di]).long()
            dt = torch.randint(-self.window, self.window + 1, (self.batch,), generator=g)
            t2 = (t + dt).clamp(min=0)
            t2 = torch.minimum(t2, lens[di] - 1)
            a = torch.stack([frames[d][i] for d, i in zip(di.tolist(), t.tolist(), strict=True)])
            b = torch.stack([frames[d][i] for d, i in zip(di.tolist(), t2.tolist(), strict=True)])
            za, zb = (nn.functional.normalize(self.net(_augment(x, g)), dim=1) for x in (a, b))
            logits = za @ zb.T / 0.1
            # frames of the same demo within the window are not negatives
            same = (di[:, None] == di[None, :]) & ((t[:, None] - t2[None, :]).abs() <= self.window)
            logits = logits.masked_fill(same & ~torch.eye(self.batch, dtype=torch.bool), -1e9)
            loss = nn.functional.cross_entropy(logits, torch.arange(self.batch))
            opt.zero_grad()
            loss.backward()
            opt.step()
            if log is not None and step % 100 == 0:
                log(f"tcn step {step}: loss {loss.item():.3f}")
        self.net.eval()
        return self

    @classmethod
    def from_state(cls, st: dict) -> TCNEncoder:
        net = _net_from_state(st, cls.prefix)
        e = cls(dim=net.net[-1].out_features)
        e.net = net
        return e


class StateCNN(_CNNEncoder):
    """A CNN trained to regress per-frame state targets from pixels (MSE, with brightness and
    noise augmentation); features = the estimated state."""

    name = "state-cnn"
    prefix = "scnn."
    fit_hint = "fit(demos, targets=states)"

    def __init__(self, steps: int = 1500, batch: int = 128, lr: float = 2e-3):
        self.steps, self.batch, self.lr = steps, batch, lr
        self.net: _ConvNet | None = None

    @_abandon_on_sigterm
    def fit(self, demos, seed: int = 0, targets=None, log=None) -> StateCNN:
        """``targets[i]``: the (N_i x T) per-frame state of ``demos[i]``."""
        if targets is None or len(targets) != len(demos):
            raise RDDError(
                "state-cnn learns from per-frame states: pass one (N x T) target array per demo "
                "(in a demo .npz, 'state_features')"
            )
        g = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)
        x = torch.cat([_to_tensor(check_frames(d)) for d in demos])
        y = torch.from_numpy(np.concatenate([np.asarray(t, np.float32) for t in targets]))
        if len(y) != len(x) or y.ndim != 2:
            raise RDDError(f"state targets: {tuple(y.shape)} rows for {len(x)} frames")
        self.net = _ConvNet(y.shape[1])
        self.net(x[:1])  # materialise the lazy layer
        opt = torch.optim.AdamW(self.net.parameters(), lr=self.lr, weight_decay=1e-4)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, self.steps)
        for step in range(self.steps):
            i = torch.randint(len(x), (self.batch,), generator=g)
            loss = nn.functional.mse_loss(self.net(_augment(x[i], g)), y[i])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            if log is not None and step % 500 == 0:
                log(f"state-cnn step {step}: mse {loss.item():.4f}")
        self.net.eval()
        return self

    @classmethod
    def from_state(cls, st: dict) -> StateCNN:
        e = cls()
        e.net = _net_from_state(st, cls.prefix)
        return e


class HFVisionEncoder(Encoder):
    """A local Hugging Face vision model (``AutoModel`` + ``AutoImageProcessor``)."""

    def __init__(self, path: str, batch: int = 64):
        from transformers import AutoImageProcessor, AutoModel

        self.name = f"hf:{path}"
        try:
            self.processor = AutoImageProcessor.from_pretrained(path, local_files_only=True)
            self.model = AutoModel.from_pretrained(path, local_files_only=True).eval()
        except OSError as e:
            raise RDDError(f"{path}: not a local HF vision model directory ({e})") from e
        self.batch = batch

    @torch.no_grad()
    def encode(self, frames):
        frames = check_frames(frames)
        out = []
        for i in range(0, len(frames), self.batch):
            inputs = self.processor(images=list(frames[i : i + self.batch]), return_tensors="pt")
            model = getattr(self.model, "vision_model", self.model)  # CLIP-style wrappers
            o = model(pixel_values=inputs["pixel_values"])
            pooled = getattr(o, "pooler_output", None)
            out.append(pooled if pooled is not None else o.last_hidden_state.mean(1))
        return torch.cat(out).float().numpy().astype(np.float64)


ENCODERS = ("pixels-pca", "tcn", "state-cnn", "hf:<local dir>")


def get_encoder(name: str, state: dict | None = None) -> Encoder:
    """An encoder by name; ``state`` restores a fitted one (from a prior's ``.npz``)."""
    if name == "pixels-pca":
        return PixelPCA.from_state(state) if state else PixelPCA()
    if name == "tcn":
        return TCNEncoder.from_state(state) if state else TCNEncoder()
    if name == "state-cnn":
        return StateCNN.from_state(state) if state else StateCNN()
    if name.startswith("hf:"):
        return HFVisionEncoder(name[3:])
    raise RDDError(f"unknown encoder {name!r}; choose one of: {', '.join(ENCODERS)}")
