"""UVD (Universal Visual Decomposer, Zhang et al. 2023): the prior-free baseline.

With the last frame as goal g, the embedding distance d_t = ||f_t - f_g|| should fall
monotonically while one sub-task runs towards g. After smoothing d with RBF kernel regression
over time, the latest local maximum at least ``min_interval`` frames before g is where that
monotone run begins: it becomes the previous sub-task's goal, and the search recurses on the
prefix. Defaults are UVD's (min_interval 18, gamma 0.08).
"""

from __future__ import annotations

import math

import numpy as np

from fmlab.rdd.prior import RDDError, check_features
from fmlab.rdd.segmentation import Segmentation

__all__ = ["kernel_smooth", "uvd_segment"]


def kernel_smooth(y: np.ndarray, gamma: float) -> np.ndarray:
    """Nadaraya-Watson regression of y over t = 0..n-1 with weights exp(-gamma (t-u)^2).

    The kernel is cut where it falls below e^-30, so this is a convolution, O(n)."""
    if gamma <= 0:
        return y.astype(np.float64)
    r = max(1, math.ceil(math.sqrt(30.0 / gamma)))
    k = np.exp(-gamma * np.arange(-r, r + 1) ** 2)
    num = np.convolve(y, k, mode="full")[r : r + len(y)]
    den = np.convolve(np.ones(len(y)), k, mode="full")[r : r + len(y)]
    return num / den


def uvd_segment(features, min_interval: int = 18, gamma: float = 0.08):
    """UVD's segmentation of an (N x D) demo (no prior needed)."""
    f = check_features(features, "demo")
    if min_interval < 1:
        raise RDDError(f"min_interval must be >= 1, got {min_interval}")
    n = len(f)
    cuts = []
    goal = n - 1
    while goal >= min_interval:
        d = np.linalg.norm(f[: goal + 1] - f[goal], axis=1)
        d = kernel_smooth(d, gamma)
        sub = None
        for t in range(goal - min_interval, 0, -1):  # the latest local maximum
            if d[t] > d[t - 1] and d[t] >= d[t + 1]:
                sub = t
                break
        if sub is None:
            break
        cuts.append(sub + 1)  # the subgoal frame ends the previous segment
        goal = sub
    return Segmentation.from_cuts(cuts, n, "uvd")
