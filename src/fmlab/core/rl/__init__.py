"""Reinforcement learning with verifiable rewards, shared by the RL methods (RLVR geometry,
VideoAuto-R1): GRPO/DAPO (:mod:`.grpo`), SFT from the same base (:mod:`.sft`) and an AdamW
with fp32 master weights and fixed update masks (:mod:`.optim`)."""

from fmlab.core.rl.grpo import (
    MODEL_INPUT,
    GRPOConfig,
    RolloutSource,
    completion_mask,
    group_advantages,
    grpo_loss,
    read_rollout_log,
    sequence_logps,
    train_grpo,
)
from fmlab.core.rl.optim import MasterAdamW, master_adamw
from fmlab.core.rl.sft import train_sft

__all__ = [
    "MODEL_INPUT",
    "GRPOConfig",
    "MasterAdamW",
    "RolloutSource",
    "completion_mask",
    "group_advantages",
    "grpo_loss",
    "master_adamw",
    "read_rollout_log",
    "sequence_logps",
    "train_grpo",
    "train_sft",
]
