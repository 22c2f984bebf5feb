"""Supervised fine-tuning from the same base as RL: the SFT arm of an RL-vs-SFT comparison.

(prompt, reply) pairs are encoded with the chat template (loss on the reply only) and trained
through :func:`fmlab.core.train.train`, so SFT and GRPO share the loop, the checkpoints, the
resume guarantees and the optimizer hook (e.g. :func:`fmlab.core.rl.master_adamw` for bf16
storage in both arms).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from fmlab.core.data.corpora import encode_chat_sft
from fmlab.core.train import TensorSampler, TrainConfig, TrainResult, causal_lm_loss, train

__all__ = ["train_sft"]


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
) -> TrainResult:
    """Train ``model`` in place on ``pairs`` (reply tokens only), resumable from ``out_dir``."""
    if not pairs:
        raise ValueError("no SFT pairs: pass at least one (prompt, reply)")
    x, y = encode_chat_sft(tokenizer, pairs, max_len=max_len, chat=chat)
    data = TensorSampler(x, y, seed=train_cfg.seed)
    return train(model, data, train_cfg, out_dir=out_dir, loss_fn=causal_lm_loss,
                 optimizers=optimizers, eval_fn=eval_fn, stop_at=stop_at)  # fmt: skip
