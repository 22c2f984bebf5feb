"""Supervised fine-tuning from the same base as RL: the SFT arm of an RL-vs-SFT comparison.

(prompt, reply) pairs are encoded with the chat template (loss on the reply only) and trained
through :func:`fmlab.core.train.train`, so SFT and GRPO share the loop, the checkpoints, the
resume guarantees and the optimizer hook (e.g. :func:`fmlab.core.rl.master_adamw` for bf16
storage in both arms).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from fmlab.core.data.corpora import encode_chat_sft
from fmlab.core.train import (
    TensorSampler,
    TrainConfig,
    TrainResult,
    _batch_generator,
    causal_lm_loss,
    train,
)

__all__ = ["train_sft"]

_EXTRA = "model_input."


@dataclass
class _InputsSampler(TensorSampler):
    """:class:`TensorSampler` that also returns the rows' extra model inputs (same indices)."""

    extra: dict | None = None

    def batch(self, step: int, micro: int, rank: int, world: int, batch_size: int) -> dict:
        g = _batch_generator(self.seed, step, micro, rank)
        idx = torch.randint(len(self.input_ids), (batch_size,), generator=g)
        out = {"input_ids": self.input_ids[idx], "labels": self.labels[idx]}
        out.update({_EXTRA + k: v[idx] for k, v in (self.extra or {}).items()})
        return out


def _loss_with_inputs(model, batch: dict) -> torch.Tensor:
    extra = {k[len(_EXTRA) :]: v for k, v in batch.items() if k.startswith(_EXTRA)}
    logits = model(input_ids=batch["input_ids"], **extra).logits  # (B, T, V)
    return F.cross_entropy(
        logits.reshape(-1, logits.size(-1)).float(), batch["labels"].reshape(-1), ignore_index=-100
    )


def train_sft(
    model,
    tokenizer,
    pairs: Sequence[tuple[str, str]],
    train_cfg: TrainConfig,
    out_dir: str | os.PathLike | None = None,
    chat: bool = True,
    max_len: int | None = None,
    optimizers=None,
    eval_fn=None,
    stop_at: int | None = None,
    model_inputs: dict[str, torch.Tensor] | None = None,
) -> TrainResult:
    """Train ``model`` in place on ``pairs`` (reply tokens only), resumable from ``out_dir``.

    ``model_inputs``: extra tensors for the forward, ``{name: (N, ...)}`` aligned with
    ``pairs`` (e.g. each pair's video frames for a video-language model), batched with the same
    row indices and passed to the model by name."""
    if not pairs:
        raise ValueError("no SFT pairs: pass at least one (prompt, reply)")
    x, y = encode_chat_sft(tokenizer, pairs, max_len=max_len, chat=chat)
    if model_inputs:
        bad = [k for k, v in model_inputs.items()
               if not isinstance(v, torch.Tensor) or v.ndim == 0 or len(v) != len(pairs)]  # fmt: skip
        if bad:
            raise ValueError(
                f"model_inputs must be tensors with one row per pair ({len(pairs)}); "
                f"bad entries: {bad}"
            )
        data = _InputsSampler(x, y, seed=train_cfg.seed, extra=dict(model_inputs))
        loss_fn = _loss_with_inputs
    else:
        data, loss_fn = TensorSampler(x, y, seed=train_cfg.seed), causal_lm_loss
    return train(model, data, train_cfg, out_dir=out_dir, loss_fn=loss_fn,
                 optimizers=optimizers, eval_fn=eval_fn, stop_at=stop_at)  # fmt: skip
