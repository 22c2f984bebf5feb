"""Tempo's video input: the streaming reader of :mod:`fmlab.core.video` (re-exported here for
compatibility) and fixed-length segmenting.

Sampling follows the paper: frames at ``fps`` (2 by default) and at most ``max_frames``; a
longer video is sampled uniformly down to the cap, decided from the container's metadata before
decoding, so the whole video stays covered and memory does not grow with its length.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from fmlab.core.video import Video, VideoError, VideoStream, open_video, read_video, write_frames

__all__ = [
    "Video",
    "VideoError",
    "VideoStream",
    "open_video",
    "read_video",
    "segment_bounds",
    "write_video",
]


def write_video(
    path: str | os.PathLike, frames: np.ndarray, fps: int = 2, codec: str = "libx264"
) -> Path:
    """Encode ``frames`` (T, H, W, 3) uint8 to ``path`` (container from the suffix), atomically.
    H and W must be even (yuv420p)."""
    return write_frames(path, frames, fps=fps, codec=codec, crf=12)


def segment_bounds(n_frames: int, seg_len: int = 8) -> list[tuple[int, int]]:
    """Non-overlapping [start, end) segments of ``seg_len`` frames; the last may be shorter."""
    if seg_len < 1:
        raise ValueError(f"seg_len must be >= 1, got {seg_len}")
    if n_frames < 1:
        raise VideoError("a video with no frames has no segments")
    return [(s, min(s + seg_len, n_frames)) for s in range(0, n_frames, seg_len)]
