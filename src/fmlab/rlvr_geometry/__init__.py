"""RLVR "three gates": parameter-level geometry of fine-tuning updates, checkpoint against base.

``analyze`` streams a base and N checkpoints tensor by tensor and measures, for every 2-D
weight, update sparsity (bf16-aware and exact), spectral drift (NSS), rotation of the top-k
singular subspaces, alignment of the changed entries with principal and low-magnitude
weights, ρ_princ and the rank of ΔW; plus cross-checkpoint Jaccard of the changed masks.
The RL-vs-SFT study (:mod:`.study`: GRPO and SFT through :mod:`fmlab.core.rl`, the three
gates' interventions, the bench) tests the theory.
"""

from fmlab.rlvr_geometry.analyze import (
    ALPHA_SWEEP,
    DEFAULT_KS,
    LAYER_TYPES,
    GeometryError,
    GeometryPlan,
    analyze,
    check_outputs,
    layer_type,
    parse_ks,
    plan,
    plot_report,
    summarize,
    write_report,
)
from fmlab.rlvr_geometry.metrics import (
    bf16_changed,
    exact_changed,
    jaccard,
    jaccard_random,
    max_principal_angle_deg,
    nss,
    numerical_rank,
    pair_metrics,
    sparsity_bf16,
    sparsity_exact,
)

__all__ = [
    "ALPHA_SWEEP",
    "DEFAULT_KS",
    "LAYER_TYPES",
    "GeometryError",
    "GeometryPlan",
    "analyze",
    "bf16_changed",
    "check_outputs",
    "exact_changed",
    "jaccard",
    "jaccard_random",
    "layer_type",
    "max_principal_angle_deg",
    "nss",
    "numerical_rank",
    "pair_metrics",
    "parse_ks",
    "plan",
    "plot_report",
    "sparsity_bf16",
    "sparsity_exact",
    "summarize",
    "write_report",
]
