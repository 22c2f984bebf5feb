"""Tiny Llama backbones built in-process (no downloads) and their importance scores."""

import json
import subprocess
import sys

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


def _run_script(script: str, *args) -> dict:
    res = subprocess.run([sys.executable, "-c", script, *map(str, args)],
                         capture_output=True, text=True, timeout=600)  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


@pytest.fixture
def run_script():
    """``run_script(script, *args)``: ``script`` in a fresh interpreter (ExecuTorch's torchao
    stays out of the test process), its last stdout line parsed as JSON; a non-zero exit fails
    the test with the end of its stderr."""
    return _run_script
