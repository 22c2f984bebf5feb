"""Training a STEM model through :func:`fmlab.core.train.train` with the official optimizer split.

The official code (``apps/main/stem_train.py``) steps two dense AdamW: one for the backbone,
one for the tables, with the same lr, betas, eps, weight decay and schedule, each clipped
separately to the same max-norm. :func:`stem_optimizers` builds exactly that for ``core.train``'s
``optimizers=`` hook, so checkpoints hold both states and resume is exact.

``row_sparse=True`` swaps the tables' AdamW for :class:`RowSparseAdamW`, which updates and
decays only the rows whose gradient is non-zero in this step, i.e. the rows of the tokens in
the batch (a table row gets gradient only where its token is an input). Rows of absent tokens
stay bit-unchanged, with their moments; each row keeps its own step count for Adam's bias
correction (a "lazy" Adam). The rule reads the gradient after DDP's all-reduce, so every rank
updates the same rows. The official dense rule decays every row of every table every step.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import torch
from torch import nn

from fmlab.core.train import BatchSource, TrainConfig, TrainResult, train
from fmlab.stem.model import stem_mlps

__all__ = ["RowSparseAdamW", "split_params", "stem_optimizers", "train_stem"]


def split_params(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(backbone parameters, table parameters), each parameter once."""
    tables = [m.table.weight for m in stem_mlps(model).values() if m.table is not None]
    ids = {id(p) for p in tables}
    seen: set[int] = set()
    backbone = []
    for p in model.parameters():
        if id(p) not in ids and id(p) not in seen:
            seen.add(id(p))
            backbone.append(p)
    return backbone, tables


class RowSparseAdamW(torch.optim.Optimizer):
    """AdamW on 2-D tables that touches only rows with a non-zero gradient this step.

    Same update as ``torch.optim.AdamW`` (decoupled weight decay, bias-corrected moments) on
    those rows, with a per-row step count; other rows, and their moments, are not changed.
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        super().__init__(
            params, {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay}
        )

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            lr, (b1, b2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse or p.ndim != 2:
                    raise ValueError("RowSparseAdamW takes dense 2-D table gradients")
                rows = p.grad.ne(0).any(dim=1).nonzero().squeeze(1)  # (R,)
                if rows.numel() == 0:
                    continue
                st = self.state[p]
                if not st:
                    st["step"] = torch.zeros(p.size(0), dtype=torch.float32, device=p.device)
                    st["exp_avg"] = torch.zeros_like(p)
                    st["exp_avg_sq"] = torch.zeros_like(p)
                g = p.grad[rows]  # (R, D)
                st["step"][rows] += 1
                t = st["step"][rows].unsqueeze(1)  # (R, 1)
                m = st["exp_avg"][rows].mul_(b1).add_(g, alpha=1 - b1)
                v = st["exp_avg_sq"][rows].mul_(b2).addcmul_(g, g, value=1 - b2)
                st["exp_avg"][rows], st["exp_avg_sq"][rows] = m, v
                denom = (v.sqrt() / (1 - b2**t).sqrt()).add_(eps)
                w = p[rows].mul_(1 - lr * wd)
                w.addcdiv_(m / (1 - b1**t), denom, value=-lr)
                p[rows] = w
        return None


def stem_optimizers(
    row_sparse: bool = False,
) -> Callable[[nn.Module, TrainConfig], list[torch.optim.Optimizer]]:
    """The ``optimizers=`` factory for :func:`fmlab.core.train.train`: AdamW for the backbone
    and a second AdamW (or :class:`RowSparseAdamW`) for the tables, same hyper-parameters."""

    def build(model: nn.Module, cfg: TrainConfig) -> list[torch.optim.Optimizer]:
        backbone, tables = split_params(model)
        kw = {"lr": cfg.lr, "betas": cfg.betas, "weight_decay": cfg.weight_decay}
        opts: list[torch.optim.Optimizer] = [torch.optim.AdamW(backbone, **kw)]
        if tables:
            opts.append(
                RowSparseAdamW(tables, **kw) if row_sparse else torch.optim.AdamW(tables, **kw)
            )
        return opts

    return build


def train_stem(
    model: nn.Module,
    data: BatchSource,
    cfg: TrainConfig,
    out_dir: str | os.PathLike | None = None,
    row_sparse: bool = False,
    **train_kwargs,
) -> TrainResult:
    """:func:`fmlab.core.train.train` with :func:`stem_optimizers` (any other keyword passes
    through: ``val_blocks``, ``eval_fn``, ``resume``, ``stop_at``, ``loss_fn``)."""
    if any(m.table is None for m in stem_mlps(model).values()):
        raise ValueError(
            "this model's tables are offloaded; training needs them in memory: call "
            "handle.restore() (fmlab.stem.offload) first"
        )
    return train(model, data, cfg, out_dir, optimizers=stem_optimizers(row_sparse), **train_kwargs)
