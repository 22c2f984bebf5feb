"""The streaming reader: planned from metadata, chunked, capped without decoding everything."""

import numpy as np
import pytest
import torch

from fmlab.core.video import (
    VideoError,
    open_video,
    plan_times,
    read_frames,
    read_video,
    write_frames,
)


def _moving(n, w=64, h=48, seed=0):
    rng = np.random.default_rng(seed)
    for i in range(n):
        f = np.full((h, w, 3), 40, np.uint8)
        x = (3 * i) % (w - 8)
        f[10:18, x : x + 8] = rng.integers(100, 255, 3)
        yield f


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    path = tmp_path_factory.mktemp("v") / "clip.mp4"
    write_frames(path, _moving(300), fps=30)  # 10 s, streamed from a generator
    return path


def test_plan_is_from_metadata_and_chunks_equal_the_whole(clip):
    s = open_video(clip, fps=2, max_frames=None, size=(32, 32))
    assert s.decoded == 0 and len(s) == 20  # planned before anything is decoded
    np.testing.assert_allclose(s.times, np.arange(20) / 2)
    whole = read_video(clip, fps=2, size=(32, 32))
    parts = list(open_video(clip, fps=2, max_frames=None, size=(32, 32)).chunks(6))
    assert [len(f) for f, _ in parts] == [6, 6, 6, 2]
    assert np.array_equal(np.concatenate([f for f, _ in parts]), whole.frames)
    np.testing.assert_allclose(np.concatenate([t for _, t in parts]), whole.times)


def test_letterbox_keeps_the_aspect(clip):
    v = read_video(clip, fps=1, size=(32, 32))  # 64x48 -> 32x24 centred: 4 black rows each side
    assert v.frames.shape == (10, 32, 32, 3)
    assert v.frames[:, :4].max() == 0 and v.frames[:, -4:].max() == 0
    assert v.frames[:, 4:28].mean() > 30


def test_frame_cap_seeks_instead_of_decoding_everything(tmp_path):
    path = tmp_path / "long.mp4"
    write_frames(path, _moving(1800, 32, 32), fps=30)  # 60 s, keyframe every 250 frames
    s = open_video(path, fps=2, max_frames=4)
    assert len(s) == 4 and s.times[-1] == pytest.approx(59.5)
    frames = next(f for f, _ in s.chunks(8))
    assert len(frames) == 4
    assert s.decoded < 1800 // 2, s.decoded  # far-apart samples are reached by seeking
    full = read_video(path, fps=2)  # the same frames as decoding the whole video
    idx = np.linspace(0, len(full) - 1, 4).round().astype(int)
    assert np.array_equal(frames, full.frames[idx])


def test_rdd_reader_and_errors(clip, tmp_path):
    assert read_frames(clip).shape == (300, 48, 64, 3)
    assert read_frames(clip, fps=10).shape == (100, 48, 64, 3)
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(clip.read_bytes()[: clip.stat().st_size // 3])
    with pytest.raises(VideoError, match=r"cut\.mp4"):
        list(open_video(cut, fps=2).chunks(4))
    with pytest.raises(VideoError, match="fps must be > 0"):
        open_video(clip, fps=0)
    with pytest.raises(VideoError, match="max_frames"):
        plan_times(10, 2, 0)


def test_stack_compresses_chunks_like_the_whole_video(clip):
    from fmlab.tempo.pipeline import Stack

    torch.manual_seed(0)
    stack = Stack("tempo").eval()
    v = read_video(clip, fps=3, size=(32, 32))  # 30 frames: 4 segments, the last padded
    with torch.no_grad():
        mem, rel = stack.compress(v.frames, "what colour is the square")
        stream = open_video(clip, fps=3, max_frames=None, size=(32, 32))
        chunks = (f for f, _ in stream.chunks(16))
        mem2, rel2, t = stack.compress_chunks(chunks, "what colour is the square", 1)
    assert t == 30 and mem2.shape == mem.shape
    torch.testing.assert_close(mem2, mem, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(rel2, rel, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="multiple of seg_len"):
        stack.compress_chunks([v.frames[:5], v.frames[5:]], "x")
