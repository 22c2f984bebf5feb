"""Test configuration: fully offline, tiny models built in-process, session-scoped fixtures."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import subprocess
from pathlib import Path

import pytest
import torch

torch.set_num_threads(min(2, os.cpu_count() or 1))

ROOT = Path(__file__).resolve().parents[1]


def _tree_status() -> str:
    return subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=all"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout


@pytest.fixture(scope="session", autouse=True)
def _tests_leave_the_tree_unchanged():
    """In CI (a clean clone that nothing else writes to) the whole suite, quick benches and
    demo included, must leave the working tree as it found it: nothing written into docs/ or
    the package. Locally other work may change the tree meanwhile, so the check runs in CI."""
    if not os.environ.get("CI") or not (ROOT / ".git").exists():
        yield
        return
    before = _tree_status()
    yield
    after = _tree_status()
    assert after == before, f"the test run changed the working tree:\n{after}"


@pytest.fixture(scope="session")
def prose_splits():
    from fmlab.core.data import prose_documents, split_documents

    return split_documents(prose_documents(), seed=0)


@pytest.fixture(scope="session")
def bpe_tokenizer(prose_splits):
    from fmlab.core.models import train_bpe_tokenizer

    return train_bpe_tokenizer((d.text for d in prose_splits["train"]), vocab_size=512)


@pytest.fixture()
def tiny_model(bpe_tokenizer):
    from fmlab.core.models import build_model

    return build_model("llama-tiny", len(bpe_tokenizer), seed=0)


@pytest.fixture(scope="session")
def smollm2():
    """The bundled SmolLM2-135M-Instruct (dequantized once into FMLAB_CACHE)."""
    from fmlab.core.models import load_pretrained

    return load_pretrained("smollm2-135m-instruct", device="cpu")
