"""RDD: retrieval-based demonstration decomposition (exact DP over prior-retrieved intervals).

A demonstration's per-frame features are cut into the partition whose intervals best resemble
labelled sub-task intervals of the policy's own training data (the prior), plus the UVD,
uniform and random baselines and the metrics to compare them.
"""

from fmlab.rdd.metrics import boundary_f1, evaluate, k_error, miou, official_iou
from fmlab.rdd.prior import INDEXES, Prior, RDDError
from fmlab.rdd.segment import (
    Segmentation,
    brute_force_segment,
    label_segments,
    random_segment,
    segment,
    uniform_segment,
)
from fmlab.rdd.uvd import uvd_segment

__all__ = [
    "INDEXES",
    "Prior",
    "RDDError",
    "Segmentation",
    "boundary_f1",
    "brute_force_segment",
    "evaluate",
    "k_error",
    "label_segments",
    "miou",
    "official_iou",
    "random_segment",
    "segment",
    "uniform_segment",
    "uvd_segment",
]
