"""Segmentation metrics. Segments are (start, end) pairs, end exclusive.

- ``official_iou``: the official RDD code's score: the mean over *predicted* segments of their
  best IoU with any true segment. Missed true segments cost nothing, so one segment per frame
  region that happens to overlap well scores high; kept for comparison with the paper only.
- ``miou``: symmetric. Predicted and true segments are matched one-to-one (Hungarian, maximum
  total IoU); the matched IoUs are summed and divided by max(K_pred, K_true), so both extra and
  missing segments cost.
- ``boundary_f1``: internal cut points matched one-to-one within ``tol`` frames.
- ``k_error``: |K_pred - K_true|.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment

__all__ = ["boundary_f1", "evaluate", "iou_matrix", "k_error", "miou", "official_iou"]

Segs = Sequence[tuple[int, int]]


def iou_matrix(pred: Segs, true: Segs) -> np.ndarray:
    p = np.asarray(pred, dtype=np.float64).reshape(-1, 2)
    t = np.asarray(true, dtype=np.float64).reshape(-1, 2)
    inter = np.clip(
        np.minimum(p[:, None, 1], t[None, :, 1]) - np.maximum(p[:, None, 0], t[None, :, 0]), 0, None
    )
    union = (p[:, 1] - p[:, 0])[:, None] + (t[:, 1] - t[:, 0])[None, :] - inter
    return inter / np.maximum(union, 1e-12)


def official_iou(pred: Segs, true: Segs) -> float:
    if not len(pred):
        return 0.0
    return float(iou_matrix(pred, true).max(1).mean())


def miou(pred: Segs, true: Segs) -> float:
    if not len(pred) or not len(true):
        return 0.0
    m = iou_matrix(pred, true)
    r, c = linear_sum_assignment(m, maximize=True)
    return float(m[r, c].sum() / max(len(pred), len(true)))


def _cuts(segs: Segs) -> np.ndarray:
    return np.array([s for s, _ in list(segs)[1:]], dtype=np.float64)


def boundary_f1(pred: Segs, true: Segs, tol: int = 3) -> float:
    """F1 of internal boundaries matched one-to-one within ``tol`` frames (1 if both have none)."""
    p, t = _cuts(pred), _cuts(true)
    if len(p) == 0 and len(t) == 0:
        return 1.0
    if len(p) == 0 or len(t) == 0:
        return 0.0
    dist = np.abs(p[:, None] - t[None, :])
    cost = np.where(dist <= tol, dist, 1e6)
    r, c = linear_sum_assignment(cost)
    hits = int((dist[r, c] <= tol).sum())
    if hits == 0:
        return 0.0
    prec, rec = hits / len(p), hits / len(t)
    return 2 * prec * rec / (prec + rec)


def k_error(pred: Segs, true: Segs) -> int:
    return abs(len(pred) - len(true))


def evaluate(pred: Segs, true: Segs, tol: int = 3) -> dict[str, float]:
    """Every metric for one demo."""
    return {
        "miou": miou(pred, true),
        "boundary_f1": boundary_f1(pred, true, tol),
        "official_iou": official_iou(pred, true),
        "k_error": float(k_error(pred, true)),
    }
