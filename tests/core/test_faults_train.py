"""Fault injection for training: kill -9 at a random step, SIGTERM, a truncated checkpoint,
a metrics line cut short, and tempo's own loop under SIGTERM.

The subprocess tests run ``python -m fmlab.core.train`` on a tiny Llama (vocab 300, 32-token
blocks, batch 4) for a few seconds and compare final weights through the ``param_checksums``
in ``result.json`` with an uninterrupted run of the same command.
"""

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from fmlab.core.io import CheckpointError
from fmlab.core.train import (
    BlockSampler,
    CheckpointTimer,
    GracefulStop,
    TrainConfig,
    TrainingInterrupted,
    causal_lm_loss,
    param_checksum,
    train,
)

STEPS = 40
BASE = {"batch_size": 4, "progress": False, "log_every": 1, "warmup_steps": 2, "eval_batches": 1}
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def _cmd(out: Path, cfg: dict) -> list[str]:
    cfg_path = out.parent / f"{out.name}.cfg.json"
    cfg_path.write_text(json.dumps({**BASE, **cfg}))
    return [
        sys.executable, "-m", "fmlab.core.train", "--corpus", "prose", "--model", "llama-tiny",
        "--steps", str(STEPS), "--vocab", "300", "--seq-len", "32", "--out", str(out),
        "--config", str(cfg_path),
    ]  # fmt: skip


def _run(cmd: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=ENV)


def _rows(out: Path) -> int:
    try:
        return (out / "metrics.jsonl").read_text().count("\n")
    except FileNotFoundError:
        return 0


def _start_and_signal(cmd: list[str], out: Path, after_rows: int, sig: int):
    """Start ``cmd``, send ``sig`` once ``after_rows`` metric rows are logged; (rc, stderr)."""
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    deadline = time.monotonic() + 240
    while _rows(out) < after_rows and p.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    if p.poll() is None:
        os.kill(p.pid, sig)
    _, err = p.communicate(timeout=240)
    return p.returncode, err


def _checksum(out: Path) -> str:
    return json.loads((out / "result.json").read_text())["param_checksums"][0]


def _logged_steps(out: Path) -> list[int]:
    return [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()]


def _leftovers(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir() if p.name.endswith((".tmp", ".partial", ".old")))


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("faults") / "uninterrupted"
    p = _run(_cmd(out, {"ckpt_every_s": 0}))
    assert p.returncode == 0, p.stderr[-3000:]
    assert _logged_steps(out) == list(range(1, STEPS + 1))
    return _checksum(out)


@pytest.mark.parametrize(
    "ckpt",
    [
        {"ckpt_every": 3, "ckpt_every_s": 0},  # step-based checkpoints
        {"ckpt_every_s": 0.05},  # the time-based ones (the default is 120 s)
        {"ckpt_every_s": 0},  # killed before any checkpoint: the old duplicate-rows bug
    ],
    ids=["steps", "time", "no-checkpoint-yet"],
)
def test_kill9_at_a_random_step_then_rerun_ends_identical(reference, tmp_path, ckpt):
    seed = random.randrange(1 << 30)
    at = random.Random(seed).randint(2, STEPS - 12)
    out = tmp_path / "run"
    cmd = _cmd(out, ckpt)
    rc, err = _start_and_signal(cmd, out, at, signal.SIGKILL)
    assert rc == -signal.SIGKILL, f"(seed {seed}, kill after {at} rows) rc={rc}: {err[-2000:]}"
    assert not (out / "result.json").exists()
    if ckpt == {"ckpt_every_s": 0}:
        assert not (out / "checkpoint.pt").exists()
    p = _run(cmd)  # the same command again
    assert p.returncode == 0, f"(seed {seed}) {p.stderr[-3000:]}"
    assert _checksum(out) == reference, f"seed {seed}: killed after {at} rows"
    assert _logged_steps(out) == list(range(1, STEPS + 1)), f"seed {seed}"  # each step once
    assert _leftovers(out) == []


def test_sigterm_checkpoints_exits_143_and_rerun_ends_identical(reference, tmp_path):
    out = tmp_path / "run"
    cmd = _cmd(out, {"ckpt_every_s": 0})  # only the SIGTERM handler writes a checkpoint
    rc, err = _start_and_signal(cmd, out, 5, signal.SIGTERM)
    assert rc == 143, err[-3000:]
    assert "Traceback" not in err and "rerun the same command to resume" in err
    assert _leftovers(out) == [] and not (out / "result.json").exists()
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    logged = _logged_steps(out)
    assert 5 <= state["step"] < STEPS and logged == list(range(1, state["step"] + 1))
    p = _run(cmd)
    assert p.returncode == 0, p.stderr[-3000:]
    assert _checksum(out) == reference
    assert _logged_steps(out) == list(range(1, STEPS + 1))


def test_truncated_checkpoint_is_a_clear_error(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "checkpoint.pt").write_bytes(b"PK\x03\x04 cut short by a full disk")
    p = _run(_cmd(out, {}))
    assert p.returncode == 2, p.stderr[-3000:]
    assert "Traceback" not in p.stderr
    assert str(out / "checkpoint.pt") in p.stderr and "delete" in p.stderr


# -- in process --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def blocks(bpe_tokenizer, prose_splits):
    from fmlab.core.data import pack_documents

    return pack_documents(bpe_tokenizer, prose_splits["train"][:40], seq_len=32)


def _cfg(**kw) -> TrainConfig:
    return TrainConfig(**{**BASE, "steps": 12, "ckpt_every_s": 0, **kw})


def _model(tok):
    from fmlab.core.models import build_model

    return build_model("llama-tiny", len(tok), seed=0)


def _sigterm_at(call: int):
    """A loss that sends this process SIGTERM during its ``call``-th forward."""
    n = {"calls": 0}

    def loss_fn(model, batch):
        n["calls"] += 1
        if n["calls"] == call:
            signal.raise_signal(signal.SIGTERM)
        return causal_lm_loss(model, batch)

    return loss_fn


@pytest.fixture
def sigterm_guard():
    """While a test runs, an unhandled SIGTERM fails it instead of killing pytest."""

    def unhandled(signum, frame):
        raise RuntimeError("SIGTERM reached the test: no handler was installed")

    prev = signal.signal(signal.SIGTERM, unhandled)
    yield unhandled
    signal.signal(signal.SIGTERM, prev)


def test_sigterm_in_process_finishes_the_step_and_restores_the_handler(
    bpe_tokenizer, blocks, tmp_path, sigterm_guard
):
    full = _model(bpe_tokenizer)
    train(full, BlockSampler(blocks), _cfg())
    m = _model(bpe_tokenizer)
    res = train(m, BlockSampler(blocks), _cfg(), tmp_path, loss_fn=_sigterm_at(5))
    assert res.interrupted and res.stop_reason == "SIGTERM" and res.exit_code == 143
    assert res.steps == 5  # the step the signal arrived in was finished
    assert signal.getsignal(signal.SIGTERM) is sigterm_guard
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=True)["step"] == 5
    with pytest.raises(TrainingInterrupted, match="SIGTERM at step 5"):
        res.raise_if_signalled()
    m = _model(bpe_tokenizer)
    res = train(m, BlockSampler(blocks), _cfg(), tmp_path)
    assert res.stop_reason == "done" and param_checksum(m) == param_checksum(full)


def test_fresh_start_clears_stale_metrics_and_resume_survives_a_cut_line(
    bpe_tokenizer, blocks, tmp_path
):
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": 9.0}\n{"step": 2, "loss": 9.0}\n')
    m = _model(bpe_tokenizer)
    train(m, BlockSampler(blocks), _cfg(), tmp_path, stop_at=6)
    assert _logged_steps(tmp_path) == list(range(1, 7))
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 7, "lo')  # a kill in the middle of a write
    m = _model(bpe_tokenizer)
    train(m, BlockSampler(blocks), _cfg(), tmp_path)
    assert _logged_steps(tmp_path) == list(range(1, 13))


def test_truncated_checkpoint_in_process(bpe_tokenizer, blocks, tmp_path):
    m = _model(bpe_tokenizer)
    train(m, BlockSampler(blocks), _cfg(), tmp_path, stop_at=3)
    data = (tmp_path / "checkpoint.pt").read_bytes()
    (tmp_path / "checkpoint.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"checkpoint\.pt.*delete .*checkpoint\.pt"):
        train(_model(bpe_tokenizer), BlockSampler(blocks), _cfg(), tmp_path)


def test_checkpoint_timer_and_config():
    now = {"t": 0.0}
    timer = CheckpointTimer(every_steps=5, every_s=10.0, clock=lambda: now["t"])
    assert not timer.due(1) and timer.due(5)
    now["t"] = 10.0
    assert timer.due(3)
    timer.saved()
    assert not timer.due(4)
    assert not CheckpointTimer(0, 0.0).due(100)
    assert TrainConfig().ckpt_every_s == 120.0  # periodic checkpoints by default
    with pytest.raises(ValueError, match="ckpt_every_s"):
        TrainConfig(ckpt_every_s=-1)


def test_graceful_stop_is_a_no_op_off_the_main_thread(sigterm_guard):
    seen = []

    def worker():
        with GracefulStop() as stop:
            seen.append(stop.requested)

    t = threading.Thread(target=worker)
    t.start()
    t.join()
    assert seen == [False] and signal.getsignal(signal.SIGTERM) is sigterm_guard
    with GracefulStop() as stop:
        signal.raise_signal(signal.SIGTERM)
        assert stop.received == "SIGTERM"
        with pytest.raises(KeyboardInterrupt):  # a second one: stop at once
            signal.raise_signal(signal.SIGTERM)
    assert signal.getsignal(signal.SIGTERM) is sigterm_guard


# -- tempo's own loop ----------------------------------------------------------------------


def test_tempo_train_stack_sigterm_leaves_a_loadable_checkpoint_and_resumes(
    tmp_path, monkeypatch, sigterm_guard
):
    from fmlab.tempo import pipeline
    from fmlab.tempo.pipeline import Stack, TrainConfig, train_stack

    cfg = TrainConfig(stages=(("align", 3, 16), ("long-sft", 3, 24)), batch=2,
                      checkpoint_every=100, checkpoint_every_s=0)  # fmt: skip
    full = train_stack("tempo", None, cfg, log=lambda m: None)

    real, calls = pipeline._sample, {"n": 0}

    def sample(*a, **kw):  # SIGTERM in the middle of step 3 (batch 2: calls 5 and 6)
        calls["n"] += 1
        if calls["n"] == 5:
            signal.raise_signal(signal.SIGTERM)
        return real(*a, **kw)

    monkeypatch.setattr(pipeline, "_sample", sample)
    run = tmp_path / "run"
    with pytest.raises(TrainingInterrupted, match="SIGTERM at step 3/6") as e:
        train_stack("tempo", run, cfg, log=lambda m: None)
    assert e.value.exit_code == 143
    assert signal.getsignal(signal.SIGTERM) is sigterm_guard
    assert json.loads((run / "checkpoint" / "tempo.json").read_text())["step"] == 3
    Stack.load(run / "checkpoint")  # loadable
    assert [p.name for p in run.iterdir()] == ["checkpoint"]  # no temp dirs beside it
    monkeypatch.setattr(pipeline, "_sample", real)
    logs = []
    again = train_stack("tempo", run, cfg, log=logs.append)
    assert any("resuming tempo at step 3/6" in m for m in logs)
    for (k, v1), v2 in zip(full.state_dict().items(), again.state_dict().values(), strict=True):
        assert torch.equal(v1, v2), k  # bit-exact: optimizer and RNG states were saved


# -- rdd's in-memory encoder fits --------------------------------------------------------------


@pytest.mark.parametrize("name", ["tcn", "state-cnn"])
def test_rdd_encoder_fit_is_abandoned_cleanly_on_sigterm(monkeypatch, sigterm_guard, name):
    import numpy as np

    from fmlab.rdd import encoders

    rng = np.random.default_rng(0)
    demos = [rng.integers(0, 256, (12, 32, 32, 3), dtype=np.uint8) for _ in range(2)]
    real, calls = encoders._augment, {"n": 0}

    def augment(x, g):
        calls["n"] += 1
        if calls["n"] == 3:
            signal.raise_signal(signal.SIGTERM)
        return real(x, g)

    monkeypatch.setattr(encoders, "_augment", augment)
    if name == "tcn":
        enc, kw = encoders.TCNEncoder(steps=20, batch=8), {}
    else:
        enc = encoders.StateCNN(steps=20, batch=8)
        kw = {"targets": [rng.normal(size=(12, 3)) for _ in demos]}
    with pytest.raises(TrainingInterrupted, match="nothing was written") as e:
        enc.fit(demos, **kw)
    assert e.value.exit_code == 143 and enc.net is None
    assert signal.getsignal(signal.SIGTERM) is sigterm_guard
