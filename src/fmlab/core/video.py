"""Streaming video reading and writing through PyAV (FFmpeg), shared by methods that take videos
(Tempo, RDD demonstrations, video models).

    stream = open_video("talk.mp4", fps=2, max_frames=1024, size=(32, 32))
    stream.times                       # (T,) planned sample times, from metadata, before decoding
    for frames, times in stream.chunks(64):  # (≤64, 32, 32, 3) uint8, letterboxed
        ...
    frames = read_frames("demo.mp4")   # (N, H, W, 3) uint8, every frame (small videos)
    write_frames("out.mp4", frame_iterator, fps=10)  # streamed, atomic

Sampling: one frame per 1/fps seconds (the first frame at or after each grid time); when the
grid has more than ``max_frames`` points, ``max_frames`` of them are taken uniformly, so the
whole video stays covered. The sample times and the cap are decided from the container's
metadata (stream duration and time base, or frame count and rate) before anything is decoded;
frames between far-apart sample times are skipped by seeking to the keyframe before the next
one, and only sampled frames are converted and resized. Memory is one chunk of frames, whatever
the video's length.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from fmlab.core.io import atomic_path

__all__ = [
    "VIDEO_SUFFIXES",
    "Video",
    "VideoError",
    "VideoInfo",
    "VideoStream",
    "open_video",
    "plan_times",
    "read_frames",
    "read_video",
    "video_fps",
    "write_frames",
]

VIDEO_SUFFIXES = (".mp4", ".mov", ".avi", ".mkv", ".webm")
_EPS = 1e-6


class VideoError(ValueError):
    """A video that cannot be read or written, with the file and the fix."""


@dataclass(frozen=True)
class VideoInfo:
    """What the container says about its first video stream, read without decoding."""

    duration: float  # seconds
    fps: float  # average frame rate (0 if the container does not say)
    n_frames: int  # frames the container states (0 if it does not say)
    width: int
    height: int
    time_base: Fraction


@dataclass
class Video:
    """A whole sampled video in memory (for short videos; long ones: :func:`open_video`)."""

    frames: np.ndarray  # (T, H, W, 3) uint8
    times: np.ndarray  # (T,) seconds of each sampled frame
    duration: float  # seconds of the whole stream
    source_fps: float
    path: str = ""

    def __len__(self) -> int:
        return len(self.frames)


def _open(path: Path):
    import av

    if not path.is_file():
        raise VideoError(f"{path}: no such video file")
    try:
        c = av.open(str(path))
    except (av.error.FFmpegError, UnicodeDecodeError) as e:
        raise VideoError(f"{path}: not a readable video ({e}); is it a complete video file?") from e
    if not c.streams.video:
        c.close()
        raise VideoError(f"{path}: the file has no video stream")
    return c


def _info(c, path: Path) -> VideoInfo:
    s = c.streams.video[0]
    fps = float(s.average_rate or s.guessed_rate or 0)
    tb = s.time_base or Fraction(1, 1_000_000)
    n = int(s.frames or 0)
    if s.duration:
        duration = float(s.duration * tb)
    elif c.duration:
        duration = c.duration / 1_000_000  # AV_TIME_BASE
    elif n and fps:
        duration = n / fps
    else:
        raise VideoError(
            f"{path}: the container states neither a duration nor a frame count, so frames "
            "cannot be planned before decoding; remux it (ffmpeg -i IN -c copy OUT.mp4)"
        )
    if duration <= 0:
        raise VideoError(f"{path}: the video has no frames (duration {duration:g} s)")
    return VideoInfo(duration, fps, n, int(s.width or 0), int(s.height or 0), Fraction(tb))


def plan_times(duration: float, fps: float, max_frames: int | None = None) -> np.ndarray:
    """Sample times (seconds): the grid k/fps inside [0, duration), thinned uniformly to at
    most ``max_frames`` points."""
    if fps <= 0 or (max_frames is not None and max_frames < 1):
        raise VideoError(
            f"need fps > 0 and max_frames >= 1, got fps={fps}, max_frames={max_frames}"
        )
    n = max(1, math.ceil(duration * fps - _EPS))
    grid = np.arange(n) / fps
    if max_frames is not None and n > max_frames:
        grid = grid[np.linspace(0, n - 1, max_frames).round().astype(int)]
    return grid


def _letterbox(frame, size: tuple[int, int] | None) -> np.ndarray:
    """RGB (H, W, 3) uint8 of ``frame`` scaled into ``size`` = (width, height), aspect kept,
    centred on black."""
    if size is None:
        return frame.to_ndarray(format="rgb24")
    w, h = size
    scale = min(w / frame.width, h / frame.height)
    nw, nh = max(1, round(frame.width * scale)), max(1, round(frame.height * scale))
    img = frame.to_ndarray(format="rgb24", width=nw, height=nh)
    if (nw, nh) == (w, h):
        return img
    out = np.zeros((h, w, 3), np.uint8)
    y, x = (h - nh) // 2, (w - nw) // 2
    out[y : y + nh, x : x + nw] = img
    return out


class VideoStream:
    """An open video with its sample times planned; :meth:`chunks` decodes it lazily.

    ``decoded`` counts frames the decoder produced (those skipped by seeking are not decoded).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        fps: float | None = 2.0,
        max_frames: int | None = None,
        size: tuple[int, int] | None = None,
        seek_gap: float = 10.0,
    ):
        self.path = Path(path)
        with _open(self.path) as c:
            self.info = _info(c, self.path)
        self.fps, self.size, self.seek_gap = fps, size, seek_gap
        # every frame: no plan (the count is only as good as the container's)
        self.times = None if fps is None else plan_times(self.info.duration, fps, max_frames)
        self.decoded = 0

    def __len__(self) -> int:
        """Planned frames (every frame: the container's count)."""
        return len(self.times) if self.times is not None else self.info.n_frames

    def frames(self) -> Iterator[tuple[np.ndarray, float]]:
        """(frame (H, W, 3) uint8, time s) of every sampled frame, in order."""
        import av

        with _open(self.path) as c:
            stream = c.streams.video[0]
            stream.thread_type = "AUTO"
            src_fps = self.info.fps or 30.0
            targets = self.times
            k, last_t, got, sought = 0, -1.0, 0, -1
            try:
                decoder = c.decode(stream)
                while targets is None or k < len(targets):
                    if targets is not None and k != sought and targets[k] - last_t > self.seek_gap:
                        # far ahead: jump to the keyframe before it instead of decoding up to it
                        sought = k
                        c.seek(int(targets[k] / self.info.time_base), stream=stream, backward=True)
                        decoder = c.decode(stream)
                    frame = next(decoder, None)
                    if frame is None:
                        break
                    self.decoded += 1
                    t = float(frame.time) if frame.time is not None else self.decoded / src_fps
                    last_t = t
                    if targets is not None:
                        if t + _EPS < targets[k]:
                            continue
                        while k < len(targets) and targets[k] <= t + _EPS:
                            k += 1  # one frame serves every target it reaches
                    got += 1
                    yield _letterbox(frame, self.size), t
            except av.error.FFmpegError as e:
                what = (
                    "any frame" if not got else f"past {last_t:.1f} s of {self.info.duration:.1f} s"
                )
                raise VideoError(
                    f"{self.path}: could not decode {what} ({e}); is it a complete video file? It "
                    "looks truncated or damaged: re-encode it (ffmpeg -i IN OUT.mp4) or cut it "
                    "to its readable part"
                ) from e
        if not got:
            raise VideoError(f"{self.path}: the video has no frames")

    def chunks(self, n: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(frames (≤n, H, W, 3) uint8, times (≤n,)) chunks of ``n`` sampled frames."""
        if n < 1:
            raise VideoError(f"chunk size must be >= 1, got {n}")
        buf, ts = [], []
        for img, t in self.frames():
            buf.append(img)
            ts.append(t)
            if len(buf) == n:
                yield np.stack(buf), np.asarray(ts)
                buf, ts = [], []
        if buf:
            yield np.stack(buf), np.asarray(ts)


def open_video(
    path: str | os.PathLike,
    fps: float | None = 2.0,
    max_frames: int | None = 1024,
    size: tuple[int, int] | None = None,
) -> VideoStream:
    """Open ``path`` and plan its samples from the metadata (nothing decoded yet)."""
    if fps is not None and fps <= 0:
        raise VideoError(f"fps must be > 0, got {fps}")
    return VideoStream(path, fps, max_frames, size)


def read_video(
    path: str | os.PathLike,
    fps: float = 2.0,
    max_frames: int = 1024,
    min_frames: int = 1,
    size: tuple[int, int] | None = None,
) -> Video:
    """The whole sampled video in memory (see :func:`open_video` to stream instead).
    ``size`` = (width, height): letterboxed to that size while decoding."""
    stream = open_video(path, fps, max_frames, size)
    frames, times = [], []
    for img, t in stream.frames():
        frames.append(img)
        times.append(t)
    if len(frames) < min_frames:
        raise VideoError(
            f"{path}: {len(frames)} frame(s) at {fps:g} fps, fewer than the {min_frames} needed; "
            "use a longer video or a higher --fps"
        )
    return Video(np.stack(frames), np.asarray(times), stream.info.duration,
                 stream.info.fps or fps, str(path))  # fmt: skip


def video_fps(path: str | os.PathLike) -> float:
    """The frame rate of the first video stream (0 if the container does not say)."""
    with _open(Path(path)) as c:
        s = c.streams.video[0]
        return float(s.average_rate or s.guessed_rate or 0)


def read_frames(
    path: str | os.PathLike, fps: float | None = None, size: tuple[int, int] | None = None
) -> np.ndarray:
    """Decode ``path`` to (N, H, W, 3) uint8 RGB frames.

    ``fps``: keep the first frame at or after every 1/fps seconds (None: every frame).
    ``size``: (width, height) to letterbox to while decoding (None: the video's own)."""
    frames = [img for img, _ in open_video(path, fps, None, size).frames()]
    return np.stack(frames)


def write_frames(
    path: str | os.PathLike,
    frames: np.ndarray | Iterable[np.ndarray],
    fps: float = 10,
    codec: str = "libx264",
    crf: int = 10,
    preset: str = "veryfast",
) -> Path:
    """Encode (H, W, 3) uint8 frames (H, W even; an array (N, H, W, 3) or any iterable, encoded
    as it is consumed) to ``path`` (container from the suffix), written to a temporary file and
    renamed."""
    import av

    if isinstance(frames, np.ndarray) and (
        frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8
    ):
        raise VideoError(f"frames must be (N, H, W, 3) uint8; got {frames.shape} {frames.dtype}")
    it = iter(frames)
    first = next(it, None)
    if first is None:
        raise VideoError("no frames to write (N must be > 0)")
    first = np.asarray(first)
    if first.ndim != 3 or first.shape[-1] != 3 or first.dtype != np.uint8:
        raise VideoError(f"frames must be (H, W, 3) uint8, got {first.shape} {first.dtype}")
    h, w, _ = first.shape
    if h % 2 or w % 2:
        raise VideoError(f"frame size {w}x{h} must be even for yuv420p; pad or resize it")
    path = Path(path)
    with atomic_path(path) as tmp, av.open(str(tmp), "w", format=path.suffix.lstrip(".")) as out:
        stream = out.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        if codec == "libx264":
            stream.options = {"crf": str(crf), "preset": preset}
        for f in _chain(first, it):
            f = np.asarray(f)
            if f.shape != first.shape or f.dtype != np.uint8:
                raise VideoError(f"frame of {f.shape} {f.dtype} among {first.shape} uint8 frames")
            out.mux(stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
        out.mux(stream.encode())
    return path


def _chain(first, rest):
    yield first
    yield from rest
