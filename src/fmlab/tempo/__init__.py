"""Tempo: query-aware long-video compression with Adaptive Token Allocation (ATA)."""

from fmlab.tempo.allocate import STRATEGIES, allocate, truncate
from fmlab.tempo.video import Video, VideoError, read_video, segment_bounds, write_video

__all__ = [
    "STRATEGIES",
    "Video",
    "VideoError",
    "allocate",
    "read_video",
    "segment_bounds",
    "truncate",
    "write_video",
]
