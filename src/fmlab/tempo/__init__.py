"""Tempo: query-aware long-video compression with Adaptive Token Allocation (ATA)."""

from fmlab.tempo.allocate import OVER_BUDGET, STRATEGIES, OverBudgetWarning, allocate, truncate
from fmlab.tempo.video import (
    Video,
    VideoError,
    VideoStream,
    open_video,
    read_video,
    segment_bounds,
    write_video,
)

__all__ = [
    "OVER_BUDGET",
    "STRATEGIES",
    "OverBudgetWarning",
    "Video",
    "VideoError",
    "VideoStream",
    "allocate",
    "open_video",
    "read_video",
    "segment_bounds",
    "truncate",
    "write_video",
]
