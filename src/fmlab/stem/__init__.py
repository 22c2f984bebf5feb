"""STEM: the FFN up-projection replaced by a per-layer token-indexed embedding table.

``import fmlab.stem`` registers ``StemConfig`` / ``StemForCausalLM`` with the transformers Auto
classes (``model_type="fmlab_stem"``). See docs/stem.md.
"""

from fmlab.stem.accounting import flops_per_token, param_counts
from fmlab.stem.analysis import angular_spread
from fmlab.stem.edit import Edit, EditError, edit, edit_pairs, revert
from fmlab.stem.model import (
    StemConfig,
    StemError,
    StemForCausalLM,
    StemMLP,
    StemModel,
    build_stem,
    stem_config,
    stem_mlps,
)
from fmlab.stem.offload import Offloaded, OffloadError, attach, offload, write_tables
from fmlab.stem.train import RowSparseAdamW, stem_optimizers, train_stem

__all__ = [
    "Edit",
    "EditError",
    "OffloadError",
    "Offloaded",
    "RowSparseAdamW",
    "StemConfig",
    "StemError",
    "StemForCausalLM",
    "StemMLP",
    "StemModel",
    "angular_spread",
    "attach",
    "build_stem",
    "edit",
    "edit_pairs",
    "flops_per_token",
    "offload",
    "param_counts",
    "revert",
    "stem_config",
    "stem_mlps",
    "stem_optimizers",
    "train_stem",
    "write_tables",
]
