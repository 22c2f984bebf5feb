"""Tiny Llama backbones built in-process (no downloads) and their importance scores."""

import pytest
import torch

from fmlab.core.models import build_model
from fmlab.flash.prune import importance

V = 97


@pytest.fixture(scope="session")
def backbone():
    # 4 layers, hidden 64, 4 query / 2 KV heads, FFN 176: a real LlamaForCausalLM
    return build_model("llama-tiny", V, seed=0, num_layers=4).eval()


@pytest.fixture(scope="session")
def calib():
    return torch.randint(0, V, (4, 32), generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="session")
def scores(backbone, calib):
    return importance(backbone, calib)
