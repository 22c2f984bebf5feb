"""Video files in and out through PyAV (FFmpeg): decode any container FFmpeg reads, sample at
a target fps with a frame cap, cut into fixed-length segments; write frames to a real mp4.

Sampling follows the paper: frames at ``fps`` (2 by default) and at most ``max_frames``; a
longer video is sampled uniformly down to the cap, so the whole video stays covered.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fmlab.core.io import atomic_path

__all__ = ["Video", "VideoError", "read_video", "segment_bounds", "write_video"]


class VideoError(ValueError):
    """A video that cannot be used: unreadable, empty, no video stream or too short."""


@dataclass
class Video:
    frames: np.ndarray  # (T, H, W, 3) uint8
    times: np.ndarray  # (T,) seconds of each sampled frame
    duration: float  # seconds of the whole stream
    source_fps: float
    path: str = ""

    def __len__(self) -> int:
        return len(self.frames)


def write_video(
    path: str | os.PathLike, frames: np.ndarray, fps: int = 2, codec: str = "libx264"
) -> Path:
    """Encode ``frames`` (T, H, W, 3) uint8 to ``path`` (container from the suffix), atomically.
    H and W must be even (yuv420p)."""
    import av

    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise VideoError(f"frames must be (T, H, W, 3) uint8, got {frames.shape} {frames.dtype}")
    if len(frames) == 0:
        raise VideoError("no frames to write")
    _t, h, w, _ = frames.shape
    if h % 2 or w % 2:
        raise VideoError(f"frame size {w}x{h} must be even for yuv420p; pad or resize it")
    path = Path(path)
    fmt = path.suffix.lstrip(".") or "mp4"
    with atomic_path(path) as tmp, av.open(str(tmp), mode="w", format=fmt) as out:
        stream = out.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        if codec == "libx264":
            stream.options = {"crf": "12", "preset": "veryfast"}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def read_video(
    path: str | os.PathLike,
    fps: float = 2.0,
    max_frames: int = 1024,
    min_frames: int = 1,
    size: tuple[int, int] | None = None,
) -> Video:
    """Decode ``path`` and keep one frame per 1/``fps`` seconds (at most ``max_frames``, sampled
    uniformly when there are more). ``size`` = (width, height) resizes while decoding."""
    import av

    path = Path(path)
    if not path.is_file():
        raise VideoError(f"{path}: no such video file")
    if fps <= 0 or max_frames < 1:
        raise VideoError(
            f"need fps > 0 and max_frames >= 1, got fps={fps}, max_frames={max_frames}"
        )
    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, UnicodeDecodeError) as e:
        raise VideoError(f"{path}: not a readable video ({e}); is it a complete video file?") from e
    with container:
        if not container.streams.video:
            raise VideoError(f"{path}: the file has no video stream")
        stream = container.streams.video[0]
        src_fps = float(stream.average_rate or stream.guessed_rate or 0) or fps
        frames, times, next_t, last_t = [], [], 0.0, 0.0
        try:
            for frame in container.decode(stream):
                t = float(frame.time) if frame.time is not None else len(times) / src_fps
                last_t = t
                if t + 1e-6 < next_t:
                    continue
                img = (
                    frame.to_ndarray(format="rgb24", width=size[0], height=size[1])
                    if size
                    else frame.to_ndarray(format="rgb24")
                )
                frames.append(img)
                times.append(t)
                next_t += 1.0 / fps
                while next_t <= t:
                    next_t += 1.0 / fps
        except av.error.FFmpegError as e:
            if not frames:
                raise VideoError(f"{path}: could not decode any frame ({e})") from e
    if len(frames) < min_frames:
        raise VideoError(
            f"{path}: {len(frames)} frame(s) at {fps:g} fps, fewer than the {min_frames} needed; "
            "use a longer video or a higher --fps"
        )
    arr, ts = np.stack(frames), np.asarray(times)
    if len(arr) > max_frames:
        keep = np.linspace(0, len(arr) - 1, max_frames).round().astype(int)
        arr, ts = arr[keep], ts[keep]
    duration = last_t + 1.0 / src_fps
    return Video(arr, ts, duration, src_fps, str(path))


def segment_bounds(n_frames: int, seg_len: int = 8) -> list[tuple[int, int]]:
    """Non-overlapping [start, end) segments of ``seg_len`` frames; the last may be shorter."""
    if seg_len < 1:
        raise ValueError(f"seg_len must be >= 1, got {seg_len}")
    if n_frames < 1:
        raise VideoError("a video with no frames has no segments")
    return [(s, min(s + seg_len, n_frames)) for s in range(0, n_frames, seg_len)]
