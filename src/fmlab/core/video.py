"""Small, self-contained video reading and writing through PyAV (FFmpeg), shared by methods that
take videos (RDD demonstrations, video models).

    frames = read_frames("demo.mp4")  # (N, H, W, 3) uint8, every frame
    frames = read_frames("demo.mp4", fps=10, size=(128, 96))  # resampled to 10 fps, 128 wide
    write_frames("out.mp4", frames, fps=10)  # atomic
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from fmlab.core.io import atomic_path

__all__ = ["VIDEO_SUFFIXES", "VideoError", "read_frames", "video_fps", "write_frames"]

VIDEO_SUFFIXES = (".mp4", ".mov", ".avi", ".mkv", ".webm")


class VideoError(ValueError):
    """A video that cannot be read or written, with the file and the fix."""


def _open(path: Path):
    import av

    if not path.is_file():
        raise VideoError(f"{path}: no such video file")
    try:
        return av.open(str(path))
    except (av.error.FFmpegError, UnicodeDecodeError) as e:
        raise VideoError(f"{path}: not a readable video ({e}); is it a complete video file?") from e


def video_fps(path: str | os.PathLike) -> float:
    """The frame rate of the first video stream (0 if the container does not say)."""
    with _open(Path(path)) as c:
        if not c.streams.video:
            raise VideoError(f"{path}: the file has no video stream")
        s = c.streams.video[0]
        return float(s.average_rate or s.guessed_rate or 0)


def read_frames(
    path: str | os.PathLike, fps: float | None = None, size: tuple[int, int] | None = None
) -> np.ndarray:
    """Decode ``path`` to (N, H, W, 3) uint8 RGB frames.

    ``fps``: keep the first frame at or after every 1/fps seconds (None: every frame).
    ``size``: (width, height) to scale to while decoding (None: the video's own)."""
    import av

    path = Path(path)
    if fps is not None and fps <= 0:
        raise VideoError(f"fps must be > 0, got {fps}")
    frames, next_t = [], 0.0
    with _open(path) as c:
        if not c.streams.video:
            raise VideoError(f"{path}: the file has no video stream")
        stream = c.streams.video[0]
        src_fps = float(stream.average_rate or stream.guessed_rate or 0) or 30.0
        try:
            for i, frame in enumerate(c.decode(stream)):
                t = float(frame.time) if frame.time is not None else i / src_fps
                if fps is not None:
                    if t + 1e-6 < next_t:
                        continue
                    next_t = (np.floor(t * fps + 1e-6) + 1) / fps
                kw = {"width": size[0], "height": size[1]} if size else {}
                frames.append(frame.to_ndarray(format="rgb24", **kw))
        except av.error.FFmpegError as e:
            if not frames:
                raise VideoError(f"{path}: could not decode any frame ({e})") from e
    if not frames:
        raise VideoError(f"{path}: the video has no frames")
    return np.stack(frames)


def write_frames(
    path: str | os.PathLike, frames: np.ndarray, fps: float = 10, codec: str = "libx264"
) -> Path:
    """Encode (N, H, W, 3) uint8 frames (H, W even) to ``path`` (container from the suffix),
    written to a temporary file and renamed."""
    import av

    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or not len(frames):
        raise VideoError(
            f"frames must be (N, H, W, 3) uint8, N > 0; got {frames.shape} {frames.dtype}"
        )
    _, h, w, _ = frames.shape
    if h % 2 or w % 2:
        raise VideoError(f"frame size {w}x{h} must be even for yuv420p; pad or resize it")
    path = Path(path)
    from fractions import Fraction

    with atomic_path(path) as tmp, av.open(str(tmp), "w", format=path.suffix.lstrip(".")) as out:
        stream = out.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        if codec == "libx264":
            stream.options = {"crf": "10", "preset": "veryfast"}
        for f in frames:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
        out.mux(stream.encode())
    return path
