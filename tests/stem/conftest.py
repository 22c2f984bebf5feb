"""Tiny STEM models built in-process (no downloads)."""

import pytest
import torch

from fmlab.stem import build_stem

V = 97


def tiny(stem_layers=None, seed=0, **kw):
    numbers = dict(hidden_size=32, num_layers=3, num_heads=4, num_kv_heads=2)
    numbers.update(kw)
    return build_stem(V, stem_layers, seed=seed, **numbers).eval()


@pytest.fixture
def ids():
    return torch.randint(0, V, (2, 9), generator=torch.Generator().manual_seed(0))
