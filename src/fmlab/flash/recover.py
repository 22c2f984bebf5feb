"""Recovery: distil the unpruned teacher into a pruned student for a fixed token budget.

The loss is ``KL(teacher || student)`` of the next-token distributions at temperature
``temperature`` (times T², Hinton's scaling), plus ``ce_weight`` x the usual cross-entropy on
the text; training runs through :func:`fmlab.core.train.train`, so it is resumable from
``out_dir`` and stops cleanly on SIGTERM. The budget is in tokens: ``steps = tokens / (batch x
seq_len)`` (rounded up).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F

from fmlab.core.train import BlockSampler, TrainConfig, TrainResult, train

__all__ = ["distill_loss", "recover"]


def distill_loss(teacher: torch.nn.Module, temperature: float = 1.0, ce_weight: float = 0.0):
    """``loss_fn(student, batch)`` for :func:`fmlab.core.train.train`: KL to the teacher's
    next-token distribution (+ ``ce_weight`` x cross-entropy on ``batch["labels"]``)."""
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)

    def loss_fn(student, batch: dict) -> torch.Tensor:
        x = batch["input_ids"]  # (B, T)
        with torch.no_grad():
            t_logits = teacher(input_ids=x, use_cache=False).logits.float()  # (B, T, V)
        s_logits = student(input_ids=x, use_cache=False).logits.float()
        v = s_logits.size(-1)
        t_logp = F.log_softmax(t_logits.reshape(-1, v) / temperature, dim=-1)
        s_logp = F.log_softmax(s_logits.reshape(-1, v) / temperature, dim=-1)
        kl = F.kl_div(s_logp, t_logp, log_target=True, reduction="batchmean") * temperature**2
        if ce_weight:
            ce = F.cross_entropy(s_logits.reshape(-1, v), batch["labels"].reshape(-1),
                                 ignore_index=-100)  # fmt: skip
            return kl + ce_weight * ce
        return kl

    return loss_fn


def recover(
    student: torch.nn.Module,
    teacher: torch.nn.Module,
    blocks: torch.Tensor,
    tokens: int,
    out_dir: str | Path | None = None,
    *,
    batch_size: int = 8,
    lr: float = 3e-4,
    warmup_steps: int | None = None,
    temperature: float = 1.0,
    ce_weight: float = 0.0,
    val_blocks: torch.Tensor | None = None,
    seed: int = 0,
    progress: bool = True,
) -> TrainResult:
    """Distil ``teacher`` into ``student`` (in place) on ``(N, T + 1)`` token ``blocks`` for
    ``tokens`` training tokens; resumes from ``out_dir``'s checkpoint when there is one.

    Returns the :class:`~fmlab.core.train.TrainResult` (``val_loss`` is the student's
    cross-entropy on ``val_blocks`` when given)."""
    if blocks.ndim != 2 or blocks.size(1) < 2:
        raise ValueError(f"recovery blocks must be (N, T + 1) token ids, got {tuple(blocks.shape)}")
    if tokens < 1:
        raise ValueError(f"tokens must be >= 1, got {tokens}")
    per_step = batch_size * (blocks.size(1) - 1)
    steps = max(1, math.ceil(tokens / per_step))
    warm = warmup_steps if warmup_steps is not None else max(1, steps // 10)
    cfg = TrainConfig(steps=steps, batch_size=batch_size, lr=lr, warmup_steps=warm,
                      weight_decay=0.0, seed=seed, progress=progress,
                      eval_batches=4, log_every=max(1, steps // 10))  # fmt: skip
    return train(
        student,
        BlockSampler(blocks, seed=seed),
        cfg,
        out_dir=out_dir,
        loss_fn=distill_loss(teacher, temperature, ce_weight),
        val_blocks=val_blocks,
    )
