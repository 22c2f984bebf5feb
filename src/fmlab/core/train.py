"""One training loop for language models with a pluggable loss.

AdamW, linear warmup + cosine decay, gradient clipping and accumulation, optional bf16
autocast, periodic evaluation, atomic checkpoints with exact resume, JSONL metrics and a
progress bar. The same code runs as one process or under ``torchrun`` (DDP; gloo on CPU).

Exact resume rests on one design choice: a batch is a pure function of (seed, step,
micro-step, rank), so nothing about the data stream has to be saved, and a resumed run sees
exactly the batches the uninterrupted run would have seen. The checkpoint holds the rest: the
weights, the optimizer, every process's RNG states (torch, CUDA, numpy, ``random``) and the
loss window of the next log row.

Surviving a kill: a checkpoint is written atomically every ``ckpt_every_s`` seconds (default
120; rank 0's clock, agreed by all ranks) and every ``ckpt_every`` steps, so ``kill -9`` loses
at most that much work and rerunning the same command continues from the last checkpoint,
ending with the same weights as an uninterrupted run. While :func:`train` runs, SIGTERM is
caught (:class:`GracefulStop`): the current optimizer step finishes, a checkpoint is written
and ``train`` returns with ``interrupted=True`` and ``stop_reason="SIGTERM"``; a second SIGTERM
stops at once (the last checkpoint stays). Ctrl-C (SIGINT) stops at once the same way. The
module CLI then exits with :data:`EXIT_CODES` (130 for Ctrl-C, 143 for SIGTERM; rerun to resume).

Run as a module to train a tiny LM on a corpus::

    python -m fmlab.core.train --corpus prose --steps 300 --out runs/lm
    torchrun --nproc_per_node=2 -m fmlab.core.train --corpus prose --steps 300 --out runs/lm
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import math
import os
import random
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from fmlab.core.evaluate import lm_loss
from fmlab.core.io import (
    CheckpointError,
    atomic_dir,
    atomic_path,
    atomic_write_json,
    atomic_write_text,
    load_torch_file,
    read_json,
)

__all__ = [
    "EXIT_CODES",
    "BlockSampler",
    "CheckpointTimer",
    "GracefulStop",
    "OptimizerSet",
    "TensorSampler",
    "TrainConfig",
    "TrainResult",
    "TrainingInterrupted",
    "causal_lm_loss",
    "lr_at",
    "param_checksum",
    "train",
]

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.jsonl"


@dataclass
class TrainConfig:
    """Training hyper-parameters. Serializable; unknown keys are errors (see from_dict)."""

    steps: int = 1000
    batch_size: int = 16  # sequences per process per micro-step
    grad_accum: int = 1
    lr: float = 3e-3
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    warmup_steps: int = 50
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0  # 0 disables clipping
    bf16: bool = False  # autocast matmuls to bfloat16 (weights and optimizer stay fp32)
    eval_every: int = 0  # 0: evaluate only at the end
    eval_batches: int = 8
    ckpt_every: int = 0  # checkpoint every N steps; 0: off (the time-based one still runs)
    ckpt_every_s: float = 120.0  # checkpoint every N s of wall-clock (rank 0's); 0: off
    log_every: int = 10
    seed: int = 0
    progress: bool = True

    def __post_init__(self):
        checks = {
            "steps": self.steps >= 1,
            "batch_size": self.batch_size >= 1,
            "grad_accum": self.grad_accum >= 1,
            "lr": self.lr > 0,
            "warmup_steps": self.warmup_steps >= 0,
            "min_lr_ratio": 0 <= self.min_lr_ratio <= 1,
            "ckpt_every": self.ckpt_every >= 0,
            "ckpt_every_s": self.ckpt_every_s >= 0,
        }
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"invalid TrainConfig values for: {', '.join(bad)}")
        self.betas = tuple(self.betas)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(
                f"unknown TrainConfig keys {unknown}; valid keys are: {', '.join(sorted(known))}"
            )
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        return d


class BatchSource(Protocol):
    """Anything that returns the batch for (step, micro, rank) deterministically."""

    def batch(self, step: int, micro: int, rank: int, world: int, batch_size: int) -> dict: ...


@dataclass
class BlockSampler:
    """Random batches of ``(N, T + 1)`` token blocks, a pure function of (seed, step, micro, rank).

    Yields ``{"input_ids": (B, T), "labels": (B, T)}`` with labels already shifted.
    """

    blocks: torch.Tensor
    seed: int = 0

    def __post_init__(self):
        if self.blocks.ndim != 2 or self.blocks.size(1) < 2 or len(self.blocks) == 0:
            raise ValueError(f"blocks must be (N >= 1, T + 1 >= 2), got {tuple(self.blocks.shape)}")

    def batch(self, step: int, micro: int, rank: int, world: int, batch_size: int) -> dict:
        key = f"{self.seed}:{step}:{micro}:{rank}".encode()
        g = torch.Generator().manual_seed(
            int.from_bytes(hashlib.sha256(key).digest()[:8], "big") >> 1
        )
        idx = torch.randint(len(self.blocks), (batch_size,), generator=g)
        b = self.blocks[idx]
        return {"input_ids": b[:, :-1], "labels": b[:, 1:]}


@dataclass
class TensorSampler:
    """Random batches of aligned ``(N, T)`` ``input_ids`` and ``labels`` (e.g. chat SFT data
    from :func:`fmlab.core.data.encode_chat_sft`), a pure function of (seed, step, micro, rank)."""

    input_ids: torch.Tensor
    labels: torch.Tensor
    seed: int = 0

    def __post_init__(self):
        if (
            self.input_ids.shape != self.labels.shape
            or self.input_ids.ndim != 2
            or len(self.input_ids) == 0
        ):
            raise ValueError(
                f"input_ids and labels must be equal non-empty (N, T) tensors, got "
                f"{tuple(self.input_ids.shape)} and {tuple(self.labels.shape)}"
            )

    def batch(self, step: int, micro: int, rank: int, world: int, batch_size: int) -> dict:
        idx = torch.randint(
            len(self.input_ids),
            (batch_size,),
            generator=_batch_generator(self.seed, step, micro, rank),
        )
        return {"input_ids": self.input_ids[idx], "labels": self.labels[idx]}


def _batch_generator(seed: int, step: int, micro: int, rank: int) -> torch.Generator:
    key = f"{seed}:{step}:{micro}:{rank}".encode()
    return torch.Generator().manual_seed(
        int.from_bytes(hashlib.sha256(key).digest()[:8], "big") >> 1
    )


def causal_lm_loss(model, batch: dict) -> torch.Tensor:
    """Mean next-token cross-entropy; ``labels`` are aligned with ``input_ids`` (pre-shifted),
    positions labelled -100 are ignored."""
    logits = model(input_ids=batch["input_ids"]).logits  # (B, T, V)
    return F.cross_entropy(
        logits.reshape(-1, logits.size(-1)).float(), batch["labels"].reshape(-1), ignore_index=-100
    )


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate after ``step`` optimizer steps: linear warmup, then cosine to the floor."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    span = max(1, cfg.steps - cfg.warmup_steps)
    t = min(1.0, (step - cfg.warmup_steps) / span)
    floor = cfg.lr * cfg.min_lr_ratio
    return floor + 0.5 * (cfg.lr - floor) * (1 + math.cos(math.pi * t))


EXIT_CODES = {"SIGINT": 130, "SIGTERM": 143}
"""Exit status of a command whose training stopped on a signal (128 + the signal number, as a
shell reports it); the checkpoint is on disk and rerunning the command resumes."""


class TrainingInterrupted(KeyboardInterrupt):
    """A training loop that returns a model stopped on a signal after writing its checkpoint.

    A subclass of ``KeyboardInterrupt``, so code that already stops cleanly on Ctrl-C stops
    cleanly on SIGTERM too. ``exit_code`` is the conventional status (:data:`EXIT_CODES`).
    """

    def __init__(self, message: str, signal_name: str = "SIGTERM", step: int | None = None):
        super().__init__(message)
        self.signal_name, self.step = signal_name, step

    @property
    def exit_code(self) -> int:
        return EXIT_CODES.get(self.signal_name, 130)

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "training interrupted"


class GracefulStop:
    """While active, SIGTERM (or the given signals) only sets :attr:`received`; the training
    loop checks :attr:`requested` after each optimizer step, checkpoints and stops.

    Installed only in the main thread (elsewhere Python cannot install handlers, and it is a
    no-op); the previous handlers are restored on exit. A second signal while a stop is already
    pending raises ``KeyboardInterrupt`` at once, for a step that takes too long. With
    ``immediate``, the first signal raises :class:`TrainingInterrupted` at once: for in-memory
    work that writes nothing and can be abandoned anywhere (the exception still unwinds through
    ``fmlab.core.io``'s atomic writers, which remove their temporary files).
    """

    def __init__(self, signals: tuple[int, ...] = (signal.SIGTERM,), immediate: bool = False):
        self.signals, self.immediate = signals, immediate
        self.received: str | None = None
        self._previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return self.received is not None

    def _handle(self, signum, frame) -> None:
        if self.received is not None:
            raise KeyboardInterrupt(f"second {signal.Signals(signum).name}: stopping now")
        self.received = signal.Signals(signum).name
        if self.immediate:
            raise TrainingInterrupted(f"stopped by {self.received}", self.received)

    def __enter__(self) -> GracefulStop:
        if threading.current_thread() is threading.main_thread():
            for s in self.signals:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> bool:
        for s, h in self._previous.items():
            signal.signal(s, h if h is not None else signal.SIG_DFL)
        self._previous = {}
        return False


class CheckpointTimer:
    """When a periodic checkpoint is due: every ``every_steps`` optimizer steps and every
    ``every_s`` seconds of wall-clock since the last one (0 disables either)."""

    def __init__(self, every_steps: int = 0, every_s: float = 0.0, clock=time.monotonic):
        self.every_steps, self.every_s, self.clock = every_steps, every_s, clock
        self._last = clock()

    def steps_due(self, step: int) -> bool:
        return bool(self.every_steps) and step % self.every_steps == 0

    def time_due(self) -> bool:
        return self.every_s > 0 and self.clock() - self._last >= self.every_s

    def due(self, step: int) -> bool:
        return self.steps_due(step) or self.time_due()

    def saved(self) -> None:
        """Restart the clock (call after writing a checkpoint)."""
        self._last = self.clock()


@dataclass
class TrainResult:
    steps: int
    train_loss: float  # mean over the last log window
    val_loss: float | None
    wall_s: float
    tokens: int
    history: list[dict] = field(default_factory=list)
    interrupted: bool = False  # stopped before cfg.steps (stop_at or a signal)
    stop_reason: str = "done"  # "done" | "stop_at" | "SIGTERM" | "SIGINT"
    checkpoint: str | None = None  # the checkpoint written at the end, if any

    @property
    def signalled(self) -> bool:
        """Stopped by a signal (SIGTERM or Ctrl-C) rather than by finishing or ``stop_at``."""
        return self.stop_reason in EXIT_CODES

    @property
    def exit_code(self) -> int:
        """0, or the conventional status of the signal that stopped the run."""
        return EXIT_CODES.get(self.stop_reason, 0)

    def raise_if_signalled(self, what: str = "training") -> None:
        """Raise :class:`TrainingInterrupted` if a signal stopped the run: for callers that
        would otherwise go on using a half-trained model."""
        if self.signalled:
            saved = f"checkpoint in {self.checkpoint}" if self.checkpoint else "nothing saved"
            raise TrainingInterrupted(
                f"{what} stopped by {self.stop_reason} at step {self.steps} ({saved}); rerun the "
                "same command to resume",
                self.stop_reason,
                self.steps,
            )


def _dist_info() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _maybe_init_dist() -> bool:
    """Initialise the process group when launched by torchrun; return whether we did."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
        return True
    return False


def rng_state() -> dict[str, Any]:
    """This process's global RNG states (torch, CUDA, numpy, ``random``), loadable with
    ``torch.load(weights_only=True)``."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    st: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": (name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss),
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def set_rng_state(st: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(st["torch"])
    name, keys, pos, has_gauss, gauss = st["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    random.setstate(st["python"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


def _all_rng_states(world: int, agreed: bool) -> list[dict]:
    """Every rank's RNG states (a collective: only where all ranks checkpoint together)."""
    if world == 1 or not agreed:
        return [rng_state()]
    states: list[Any] = [None] * world
    dist.all_gather_object(states, rng_state())
    return states


def _agree(flags: list[bool], dev: torch.device, world: int) -> list[bool]:
    """Logical OR of ``flags`` over ranks, so every rank stops/checkpoints on the same step."""
    if world == 1:
        return flags
    t = torch.tensor([int(f) for f in flags], dtype=torch.int32, device=dev)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return [bool(x) for x in t.tolist()]


def _save_checkpoint(
    path: Path, model, opt, step: int, cfg: TrainConfig, rng: list[dict], window: list[float]
) -> None:
    state = {
        "format": 2,
        "step": step,
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "config": cfg.to_dict(),
        "rng": rng,  # one entry per rank (or one for all)
        "window": list(window),
    }
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def _load_checkpoint(path: Path, model, opt, cfg: TrainConfig, rank: int) -> tuple[int, list]:
    """Load ``path`` into ``model`` and ``opt``; return (step, loss window)."""
    fix = f"delete {path} to restart from step 0 (or restore it from a copy)"
    try:
        state = load_torch_file(path, allow_pickle=True)  # our own file; still weights_only
    except CheckpointError as e:
        raise CheckpointError(
            f"{path}: the training checkpoint is truncated or corrupt ({e.__cause__ or e}); {fix}"
        ) from e
    missing = [k for k in ("step", "model", "optimizer") if k not in state]
    if missing:
        raise CheckpointError(f"{path}: not a fmlab training checkpoint (no {missing}); {fix}")
    saved = state.get("config", {})
    for k in ("batch_size", "grad_accum", "seed", "steps", "lr", "warmup_steps"):
        if k in saved and saved[k] != getattr(cfg, k):
            raise CheckpointError(
                f"{path}: saved with {k}={saved[k]!r} but this run has {k}={getattr(cfg, k)!r}; "
                "resume with the same config or use a new output directory"
            )
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:  # other shapes or names: another model wrote this checkpoint
        first = str(e).strip().splitlines()
        detail = "; ".join(x.strip() for x in first[1:3]) or first[0]
        raise CheckpointError(
            f"{path}: saved from a different model than this run's ({detail}); resume with "
            "the same model settings, use a new output directory, or " + fix
        ) from e
    opt.load_state_dict(state["optimizer"])
    if "rng" in state:
        rngs = state["rng"]
        set_rng_state(rngs[rank] if rank < len(rngs) else rngs[0])
    else:  # format 1
        torch.set_rng_state(state["torch_rng"])
    return int(state["step"]), list(state.get("window", []))


def _read_history(path: Path, upto: int) -> list[dict]:
    """Logged rows up to step ``upto``; a line cut short by a kill is dropped."""
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            rows.append(json.loads(line))
    return [r for r in rows if isinstance(r, dict) and r.get("step", 0) <= upto]


def _remove_stale_temps(out: Path) -> None:
    """Temporary files a killed run left behind (``fmlab.core.io`` names them ``.NAME.*.tmp``
    and ``.NAME.*.partial``); only one run may use an output directory at a time."""
    for pat in (f".{CHECKPOINT}.*.tmp", f".{METRICS}.*.tmp", ".model.*.partial", ".model.old"):
        for p in out.glob(pat):
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)


def _progress(enabled: bool, total: int, start: int):
    if not enabled:
        return contextlib.nullcontext(None)
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    p = Progress(
        TextColumn("[bold]train"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeRemainingColumn(),
        transient=False,
        console=Console(stderr=True),  # stdout carries results
    )
    p.add_task("train", total=total, completed=start, info="")
    return p


class OptimizerSet:
    """One or more optimizers stepped together by :func:`train`.

    ``param_groups`` lists every optimizer's groups (the schedule sets ``lr`` on each);
    :meth:`clip` clips each optimizer's parameters separately to the same max-norm and returns
    the total pre-clip norm. A single optimizer's ``state_dict`` is its own (the checkpoint
    format of a one-optimizer run is unchanged); several are saved as ``{"optimizers": [...]}``.
    """

    def __init__(self, optimizers: list[torch.optim.Optimizer]):
        if not optimizers:
            raise ValueError("optimizers() returned no optimizer; return at least one")
        self.optimizers = list(optimizers)

    @property
    def param_groups(self) -> list[dict]:
        return [g for o in self.optimizers for g in o.param_groups]

    def clip(self, model: torch.nn.Module, max_norm: float) -> float:
        """Clip gradients (0 disables) and return the total norm before clipping."""
        if max_norm <= 0:
            return float("nan")
        if len(self.optimizers) == 1:
            return float(torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm))
        norms = [
            float(
                torch.nn.utils.clip_grad_norm_(
                    [p for g in o.param_groups for p in g["params"]], max_norm
                )
            )
            for o in self.optimizers
        ]
        return math.sqrt(sum(n * n for n in norms))

    def step(self) -> None:
        for o in self.optimizers:
            o.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for o in self.optimizers:
            o.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        if len(self.optimizers) == 1:
            return self.optimizers[0].state_dict()
        return {"optimizers": [o.state_dict() for o in self.optimizers]}

    def load_state_dict(self, state: dict) -> None:
        states = state.get("optimizers", [state]) if isinstance(state, dict) else [state]
        if len(states) != len(self.optimizers):
            raise CheckpointError(
                f"the checkpoint holds {len(states)} optimizer state(s) but this run builds "
                f"{len(self.optimizers)}; resume with the same optimizers or use a new output "
                "directory"
            )
        for o, st in zip(self.optimizers, states, strict=True):
            o.load_state_dict(st)


@dataclass
class _Run:
    """The state of one :func:`train` call that the loop and the checkpoint writer share."""

    model: torch.nn.Module
    opt: OptimizerSet
    cfg: TrainConfig
    out: Path | None
    rank: int
    world: int
    step: int = 0
    window: list[float] = field(default_factory=list)
    updating: bool = False  # inside opt.step(): the weights are half-updated

    def save(self, agreed: bool = True) -> None:
        """Checkpoint (a collective in DDP when ``agreed``: every rank must call it)."""
        if self.out is None:
            return
        rng = _all_rng_states(self.world, agreed)
        if self.rank == 0:
            _save_checkpoint(
                self.out / CHECKPOINT, self.model, self.opt, self.step, self.cfg, rng, self.window
            )


def _prepare_out(run: _Run, resume: bool) -> list[dict]:
    """Resume from the checkpoint in ``out`` (or start fresh, clearing stale metrics); return
    the metric rows so far."""
    out = run.out
    if out is None:
        return []
    if run.rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        _remove_stale_temps(out)
    if resume and (out / CHECKPOINT).is_file():
        run.step, run.window = _load_checkpoint(
            out / CHECKPOINT, run.model, run.opt, run.cfg, run.rank
        )
        history = _read_history(out / METRICS, run.step)
        if run.rank == 0:
            atomic_write_text(out / METRICS, "".join(json.dumps(r) + "\n" for r in history))
        return history
    if run.rank == 0:  # a fresh start: rows of an earlier, uncheckpointed run would repeat
        (out / METRICS).unlink(missing_ok=True)
    return []


def _one_step(run: _Run, wrapped, data: BatchSource, loss_fn, lr: float, dev) -> tuple:
    """One optimizer step (all micro-steps); returns (loss, grad norm, tokens seen)."""
    cfg, opt = run.cfg, run.opt
    for group in opt.param_groups:
        group["lr"] = lr
    total, tokens = 0.0, 0
    for micro in range(cfg.grad_accum):
        batch = {
            k: v.to(dev)
            for k, v in data.batch(run.step, micro, run.rank, run.world, cfg.batch_size).items()
        }
        sync = micro == cfg.grad_accum - 1 or run.world == 1
        ctx = contextlib.nullcontext() if sync else wrapped.no_sync()
        with ctx, torch.autocast(dev.type, dtype=torch.bfloat16, enabled=cfg.bf16):
            loss = loss_fn(wrapped, batch) / cfg.grad_accum
        loss.backward()
        total += float(loss.detach())
        tokens += batch["input_ids"].numel() * run.world
    gnorm = opt.clip(run.model, cfg.grad_clip)
    run.updating = True
    opt.step()
    run.step += 1
    run.updating = False
    opt.zero_grad(set_to_none=True)
    run.window.append(total)
    return total, gnorm, tokens


def train(
    model: torch.nn.Module,
    data: BatchSource,
    cfg: TrainConfig,
    out_dir: str | os.PathLike | None = None,
    loss_fn: Callable[[torch.nn.Module, dict], torch.Tensor] = causal_lm_loss,
    val_blocks: torch.Tensor | None = None,
    eval_fn: Callable[[torch.nn.Module], dict[str, float]] | None = None,
    resume: bool = True,
    stop_at: int | None = None,
    optimizers: Callable[[torch.nn.Module, TrainConfig], list[torch.optim.Optimizer]] | None = None,
) -> TrainResult:
    """Train ``model`` in place for ``cfg.steps`` optimizer steps.

    Args:
        data: a :class:`BatchSource` (e.g. :class:`BlockSampler`); batches go to the model's
            device.
        out_dir: where ``checkpoint.pt``, ``metrics.jsonl`` and the final ``model/`` go; with
            ``resume`` and an existing checkpoint, training continues from it exactly. The
            checkpoint is rewritten atomically every ``cfg.ckpt_every_s`` seconds and every
            ``cfg.ckpt_every`` steps, at the end, on Ctrl-C and on SIGTERM. Without a
            checkpoint, a stale ``metrics.jsonl`` is removed.
        loss_fn: ``loss_fn(model, batch) -> scalar`` (the model may be DDP-wrapped).
        val_blocks: ``(N, T + 1)`` blocks for validation loss (first ``eval_batches`` batches).
        eval_fn: extra evaluation ``eval_fn(model) -> {name: value}`` run with validation.
        stop_at: stop after this step with a checkpoint, as if interrupted (for tests and for
            splitting long jobs); ``train`` can then be called again to resume.
        optimizers: ``optimizers(model, cfg) -> [optimizer, ...]`` replaces the default single
            AdamW over ``model.parameters()`` (e.g. a second optimizer for embedding tables).
            Every optimizer gets the schedule's learning rate each step, each is clipped
            separately to ``cfg.grad_clip`` over its own parameters, and all their states go
            into the checkpoint (see :class:`OptimizerSet`).

    A SIGTERM (main thread only) finishes the current step, checkpoints and returns with
    ``interrupted=True`` and ``stop_reason="SIGTERM"``; a caller that would go on using the
    model should call ``result.raise_if_signalled()``.
    """
    started_dist = _maybe_init_dist()
    rank, world = _dist_info()
    opt = OptimizerSet(
        optimizers(model, cfg)
        if optimizers is not None
        else [
            torch.optim.AdamW(
                model.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay
            )
        ]
    )
    run = _Run(model, opt, cfg, Path(out_dir) if out_dir is not None else None, rank, world)
    history = _prepare_out(run, resume)
    wrapped = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        wrapped = DDP(model)  # broadcasts rank 0's parameters
    model.train()

    def evaluate() -> dict[str, float]:
        res: dict[str, float] = {}
        if val_blocks is not None:
            res["val_loss"] = lm_loss(model, val_blocks, cfg.batch_size, cfg.eval_batches)
        if eval_fn is not None:
            res.update(eval_fn(model))
        model.train()
        return res

    dev = next(model.parameters()).device
    t0 = time.perf_counter()
    tokens = 0
    last_eval: dict[str, float] = {}
    reason, caught = "done", False
    checkpoint = None
    end = cfg.steps if stop_at is None else min(cfg.steps, stop_at)
    timer = CheckpointTimer(cfg.ckpt_every, cfg.ckpt_every_s)
    log_f = open(run.out / METRICS, "a") if (run.out and rank == 0) else None  # noqa: SIM115
    with GracefulStop() as stop:
        try:
            with _progress(cfg.progress and rank == 0, cfg.steps, run.step) as bar:
                while run.step < end:
                    lr = lr_at(run.step, cfg)
                    total, gnorm, n_tok = _one_step(run, wrapped, data, loss_fn, lr, dev)
                    tokens += n_tok
                    row: dict[str, Any] = {}
                    if run.step % cfg.log_every == 0 or run.step == end:
                        w = run.window
                        row = {"step": run.step, "loss": sum(w) / len(w), "lr": lr,
                               "grad_norm": gnorm}  # fmt: skip
                        run.window = []
                    if (cfg.eval_every and run.step % cfg.eval_every == 0) or run.step == cfg.steps:
                        last_eval = evaluate()
                        row = {**(row or {"step": run.step}), **last_eval}
                    if row and log_f is not None:
                        row["elapsed_s"] = round(time.perf_counter() - t0, 3)
                        log_f.write(json.dumps(row) + "\n")
                        log_f.flush()
                    if row:
                        history.append(row)
                    if bar is not None:
                        bar.update(
                            bar.task_ids[0],
                            completed=run.step,
                            info=f"loss {total:.3f} lr {lr:.2e}",
                        )
                    stop_now, time_due = _agree(
                        [stop.requested, rank == 0 and timer.time_due()], dev, world
                    )
                    if stop_now:
                        reason = stop.received or "SIGTERM"
                        break
                    if run.step < end and (timer.steps_due(run.step) or time_due):
                        run.save()
                        timer.saved()
        except KeyboardInterrupt:  # Ctrl-C, or a second SIGTERM: stop now
            reason, caught = stop.received or "SIGINT", True
        finally:
            if log_f is not None:
                log_f.close()
        if run.updating:  # the weights are neither step k nor k + 1: keep the last checkpoint
            print(
                "interrupted inside an optimizer step: the last checkpoint is kept; rerun the "
                "same command to resume from it",
                file=sys.stderr,
            )
        else:
            run.save(agreed=not caught)  # after a KeyboardInterrupt the ranks are not in step
            if run.out is not None:
                checkpoint = str(run.out / CHECKPOINT)
        if run.step >= cfg.steps and not last_eval and (val_blocks is not None or eval_fn):
            last_eval = evaluate()  # a finished run resumed: report its evaluation again
        if run.out and rank == 0 and run.step >= cfg.steps and hasattr(model, "save_pretrained"):
            with atomic_dir(run.out / "model", overwrite=True) as tmp:
                model.save_pretrained(tmp)
    if world > 1:
        dist.barrier()
    if started_dist:
        dist.destroy_process_group()
    if run.step >= cfg.steps:
        reason = "done"  # a signal during the last step changes nothing
    elif reason == "done":
        reason = "stop_at"
    losses = [r["loss"] for r in history if "loss" in r]
    return TrainResult(
        steps=run.step,
        train_loss=losses[-1] if losses else float("nan"),
        val_loss=last_eval.get("val_loss"),
        wall_s=time.perf_counter() - t0,
        tokens=tokens,
        history=history,
        interrupted=run.step < cfg.steps,
        stop_reason=reason,
        checkpoint=checkpoint,
    )


def param_checksum(model: torch.nn.Module) -> str:
    """SHA-256 over all parameters (float32 bytes, in name order): equal iff weights are equal."""
    h = hashlib.sha256()
    for name, p in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(p.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _main(argv: list[str] | None = None) -> int:
    """Train a tiny Llama on a corpus (single process or under torchrun).

    Exit status: 0 when done; 130 (Ctrl-C) or 143 (SIGTERM) when stopped early with the
    checkpoint saved (rerun the same command to resume); 2 on a usage or checkpoint error.
    """
    ap = argparse.ArgumentParser(prog="python -m fmlab.core.train", description=_main.__doc__)
    ap.add_argument("--corpus", default="prose", help="prose, code, or a .txt/.jsonl path")
    ap.add_argument("--model", default="llama-tiny", help="a fmlab.core.models builder name")
    ap.add_argument("--vocab", type=int, default=1024)
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--out", required=True)
    ap.add_argument("--config", default=None, help="JSON file of TrainConfig fields")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    try:
        return _run_main(args)
    except (CheckpointError, ValueError, FileNotFoundError, NotADirectoryError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def _run_main(args: argparse.Namespace) -> int:
    from fmlab.core.data import load_corpus, pack_documents, split_documents, unigram_entropy
    from fmlab.core.models import build_model, train_bpe_tokenizer

    cfg_dict: dict[str, Any] = {}
    if args.config:
        cfg_dict = read_json(args.config)
        if not isinstance(cfg_dict, dict):
            raise ValueError(f"{args.config}: expected a JSON object of TrainConfig fields")
    if args.steps is not None:
        cfg_dict["steps"] = args.steps
    cfg_dict.setdefault("seed", args.seed)
    cfg = TrainConfig.from_dict(cfg_dict)

    splits = split_documents(load_corpus(args.corpus), seed=args.seed)
    tok = train_bpe_tokenizer((d.text for d in splits["train"]), vocab_size=args.vocab)
    train_blocks = pack_documents(tok, splits["train"], args.seq_len)
    val_blocks = pack_documents(tok, splits["val"], args.seq_len)
    model = build_model(args.model, len(tok), seed=args.seed)
    started = _maybe_init_dist()  # kept open past train() to gather the checksums below
    rank, world = _dist_info()
    res = train(
        model, BlockSampler(train_blocks, seed=cfg.seed), cfg, args.out, val_blocks=val_blocks
    )
    if res.signalled:
        if rank == 0:
            print(
                f"stopped by {res.stop_reason} at step {res.steps}/{cfg.steps}; checkpoint saved "
                f"in {Path(args.out) / CHECKPOINT}; rerun the same command to resume",
                file=sys.stderr,
            )
        if started:
            dist.destroy_process_group()
        return res.exit_code
    sums = [param_checksum(model)]
    if world > 1:
        sums = [None] * world
        dist.all_gather_object(sums, param_checksum(model))
    if rank == 0:
        tok.save_pretrained(Path(args.out) / "model")
        atomic_write_json(
            Path(args.out) / "result.json",
            {
                "world_size": world,
                "steps": res.steps,
                "train_loss": res.train_loss,
                "val_loss": res.val_loss,
                "unigram_entropy": unigram_entropy(train_blocks, len(tok)),
                "tokens": res.tokens,
                "wall_s": res.wall_s,
                "param_checksums": sums,
            },
        )
    if started:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
