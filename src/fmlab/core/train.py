"""One training loop for language models with a pluggable loss.

AdamW, linear warmup + cosine decay, gradient clipping and accumulation, optional bf16
autocast, periodic evaluation, atomic checkpoints with exact resume, JSONL metrics and a
progress bar. The same code runs as one process or under ``torchrun`` (DDP; gloo on CPU).

Exact resume rests on one design choice: a batch is a pure function of (seed, step,
micro-step, rank), so nothing about the data stream has to be saved, and a resumed run sees
exactly the batches the uninterrupted run would have seen.

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
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

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
)

__all__ = [
    "BlockSampler",
    "TensorSampler",
    "TrainConfig",
    "TrainResult",
    "causal_lm_loss",
    "lr_at",
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
    ckpt_every: int = 0  # 0: checkpoint only at the end (and on interruption)
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


@dataclass
class TrainResult:
    steps: int
    train_loss: float  # mean over the last log window
    val_loss: float | None
    wall_s: float
    tokens: int
    history: list[dict] = field(default_factory=list)
    interrupted: bool = False


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


def _save_checkpoint(path: Path, model, opt, step: int, cfg: TrainConfig) -> None:
    state = {
        "step": step,
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "config": cfg.to_dict(),
        "torch_rng": torch.get_rng_state(),
    }
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def _load_checkpoint(path: Path, model, opt, cfg: TrainConfig) -> int:
    state = load_torch_file(path, allow_pickle=True)  # our own file; still weights_only=True
    saved = state.get("config", {})
    for k in ("batch_size", "grad_accum", "seed", "steps", "lr", "warmup_steps"):
        if k in saved and saved[k] != getattr(cfg, k):
            raise CheckpointError(
                f"{path}: saved with {k}={saved[k]!r} but this run has {k}={getattr(cfg, k)!r}; "
                "resume with the same config or use a new output directory"
            )
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["torch_rng"])
    return int(state["step"])


def _read_history(path: Path, upto: int) -> list[dict]:
    if not path.is_file():
        return []
    rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    return [r for r in rows if r.get("step", 0) <= upto]


def _progress(enabled: bool, total: int, start: int):
    if not enabled:
        return contextlib.nullcontext(None)
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
    )
    p.add_task("train", total=total, completed=start, info="")
    return p


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
) -> TrainResult:
    """Train ``model`` in place for ``cfg.steps`` optimizer steps.

    Args:
        data: a :class:`BatchSource` (e.g. :class:`BlockSampler`); batches go to the model's
            device.
        out_dir: where ``checkpoint.pt``, ``metrics.jsonl`` and the final ``model/`` go; with
            ``resume`` and an existing checkpoint, training continues from it exactly.
        loss_fn: ``loss_fn(model, batch) -> scalar`` (the model may be DDP-wrapped).
        val_blocks: ``(N, T + 1)`` blocks for validation loss (first ``eval_batches`` batches).
        eval_fn: extra evaluation ``eval_fn(model) -> {name: value}`` run with validation.
        stop_at: stop after this step with a checkpoint, as if interrupted (for tests and for
            splitting long jobs); ``train`` can then be called again to resume.
    """
    started_dist = _maybe_init_dist()
    rank, world = _dist_info()
    out = Path(out_dir) if out_dir is not None else None
    if out is not None and rank == 0:
        out.mkdir(parents=True, exist_ok=True)
    dev = next(model.parameters()).device
    opt = torch.optim.AdamW(
        model.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay
    )
    step = 0
    history: list[dict] = []
    if out is not None and resume and (out / CHECKPOINT).is_file():
        step = _load_checkpoint(out / CHECKPOINT, model, opt, cfg)
        history = _read_history(out / METRICS, step)
        if rank == 0:
            atomic_write_text(out / METRICS, "".join(json.dumps(r) + "\n" for r in history))
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

    t0 = time.perf_counter()
    tokens = 0
    window: list[float] = []
    last_eval: dict[str, float] = {}
    interrupted = False
    end = cfg.steps if stop_at is None else min(cfg.steps, stop_at)
    log_f = open(out / METRICS, "a") if (out is not None and rank == 0) else None  # noqa: SIM115
    try:
        with _progress(cfg.progress and rank == 0, cfg.steps, step) as bar:
            while step < end:
                lr = lr_at(step, cfg)
                for group in opt.param_groups:
                    group["lr"] = lr
                total = 0.0
                for micro in range(cfg.grad_accum):
                    batch = {
                        k: v.to(dev)
                        for k, v in data.batch(step, micro, rank, world, cfg.batch_size).items()
                    }
                    sync = micro == cfg.grad_accum - 1 or world == 1
                    ctx = contextlib.nullcontext() if sync else wrapped.no_sync()
                    with ctx, torch.autocast(dev.type, dtype=torch.bfloat16, enabled=cfg.bf16):
                        loss = loss_fn(wrapped, batch) / cfg.grad_accum
                    loss.backward()
                    total += float(loss.detach())
                    tokens += batch["input_ids"].numel() * world
                gnorm = (
                    float(torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip))
                    if cfg.grad_clip > 0
                    else float("nan")
                )
                opt.step()
                opt.zero_grad(set_to_none=True)
                step += 1
                window.append(total)
                row: dict[str, Any] = {}
                if step % cfg.log_every == 0 or step == end:
                    row = {
                        "step": step,
                        "loss": sum(window) / len(window),
                        "lr": lr,
                        "grad_norm": gnorm,
                    }
                    window = []
                if (cfg.eval_every and step % cfg.eval_every == 0) or step == cfg.steps:
                    last_eval = evaluate()
                    row = {**(row or {"step": step}), **last_eval}
                if row and log_f is not None:
                    row["elapsed_s"] = round(time.perf_counter() - t0, 3)
                    log_f.write(json.dumps(row) + "\n")
                    log_f.flush()
                if row:
                    history.append(row)
                if out is not None and rank == 0 and cfg.ckpt_every and step % cfg.ckpt_every == 0:
                    _save_checkpoint(out / CHECKPOINT, model, opt, step, cfg)
                if bar is not None:
                    bar.update(
                        bar.task_ids[0], completed=step, info=f"loss {total:.3f} lr {lr:.2e}"
                    )
    except KeyboardInterrupt:
        interrupted = True
    finally:
        if log_f is not None:
            log_f.close()
    if out is not None and rank == 0:
        _save_checkpoint(out / CHECKPOINT, model, opt, step, cfg)
        if step >= cfg.steps and hasattr(model, "save_pretrained"):
            with atomic_dir(out / "model", overwrite=True) as tmp:
                model.save_pretrained(tmp)
    if world > 1:
        dist.barrier()
    if started_dist:
        dist.destroy_process_group()
    losses = [r["loss"] for r in history if "loss" in r]
    return TrainResult(
        steps=step,
        train_loss=losses[-1] if losses else float("nan"),
        val_loss=last_eval.get("val_loss"),
        wall_s=time.perf_counter() - t0,
        tokens=tokens,
        history=history,
        interrupted=interrupted or step < cfg.steps,
    )


def param_checksum(model: torch.nn.Module) -> str:
    """SHA-256 over all parameters (float32 bytes, in name order): equal iff weights are equal."""
    h = hashlib.sha256()
    for name, p in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(p.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _main(argv: list[str] | None = None) -> int:
    """Train a tiny Llama on a corpus (single process or under torchrun)."""
    from fmlab.core.data import load_corpus, pack_documents, split_documents, unigram_entropy
    from fmlab.core.models import build_model, train_bpe_tokenizer

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

    cfg_dict: dict[str, Any] = {}
    if args.config:
        cfg_dict = json.loads(Path(args.config).read_text())
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
