import numpy as np
import pytest

from fmlab.tempo.synth import COLOURS, FAMILIES, make_split, make_video
from fmlab.tempo.video import VideoError, read_video, segment_bounds, write_video


def test_mp4_round_trip_and_sampling(tmp_path):
    v = make_video(1, n_frames=48)
    path = tmp_path / "v.mp4"
    v.write(path)
    back = read_video(path, fps=2)
    assert len(back) == 48 and back.frames.shape == (48, 32, 32, 3)
    assert np.abs(back.frames.astype(int) - v.frames.astype(int)).mean() < 4  # lossy codec
    half = read_video(path, fps=1)
    assert len(half) == 24
    np.testing.assert_allclose(half.times, np.arange(24) * 1.0)
    capped = read_video(path, fps=2, max_frames=10)
    assert len(capped) == 10 and capped.times[0] == 0 and capped.times[-1] == back.times[-1]
    small = read_video(path, size=(16, 16))
    assert small.frames.shape[1:] == (16, 16, 3)


def test_bad_videos_get_clear_errors(tmp_path):
    with pytest.raises(VideoError, match="no such video"):
        read_video(tmp_path / "missing.mp4")
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video" * 50)
    with pytest.raises(VideoError, match="not a readable video"):
        read_video(bad)
    path = tmp_path / "short.mp4"
    write_video(path, make_video(2, n_frames=16).frames[:3])
    with pytest.raises(VideoError, match="fewer than the 8 needed"):
        read_video(path, min_frames=8)
    with pytest.raises(VideoError, match="even"):
        write_video(tmp_path / "odd.mp4", np.zeros((2, 31, 32, 3), np.uint8))
    with pytest.raises(VideoError, match="no frames"):
        write_video(tmp_path / "empty.mp4", np.zeros((0, 32, 32, 3), np.uint8))
    assert not (tmp_path / "odd.mp4").exists() and not (tmp_path / "empty.mp4").exists()


def test_segments():
    assert segment_bounds(20, 8) == [(0, 8), (8, 16), (16, 20)]
    with pytest.raises(VideoError):
        segment_bounds(0)


def _expected(v, q):
    """The answer to ``q`` re-derived from the needle list (not from the question builder)."""
    nd = [v.needles[i] for i in q.needles]
    if q.family == "attribute":
        return nd[0].colour
    if q.family == "count":
        return str(len(v.needles))
    if q.family == "order":
        sq, pl = (next(x for x in nd if x.shape == s) for s in ("square", "plus"))
        return "yes" if sq.start < pl.start else "no"
    if q.family == "localise":
        return f"q{int(4 * (nd[0].start + nd[0].end) / 2 / len(v.frames)) + 1}"
    if q.family == "global":
        return "yes" if v.warmer else "no"
    return "yes" if len({x.colour for x in v.needles}) == 1 else "no"  # reasoning


def test_synthetic_videos_are_seeded_and_answers_are_consistent():
    a, b = make_video(7, 128), make_video(7, 128)
    assert np.array_equal(a.frames, b.frames) and a.questions == b.questions
    families = set()
    for seed in range(30):
        v = make_video(seed, 128)
        for q in v.questions:
            assert q.answer == _expected(v, q), (seed, q)
            families.add(q.family)
        # a needle shows its colour at its centre while it is on, and not in the frames around
        for n in v.needles:
            assert n.end - n.start == 4
            colour = np.array(COLOURS[n.colour], dtype=int)
            on = v.frames[n.start : n.end, n.y, n.x].astype(int)
            assert np.abs(on - colour).max() <= 12, (seed, n)
            for t in (n.start - 1, n.end):
                if 0 <= t < len(v.frames) and not any(m.start <= t < m.end for m in v.needles):
                    assert np.abs(v.frames[t, n.y, n.x].astype(int) - colour).max() > 40
    assert families == set(FAMILIES)
    deep = make_video(3, 128, n_needles=1, depth=0.9)
    assert deep.needles[0].start >= int(0.9 * 128) - 4
    train, test = make_split("train", 3), make_split("test", 3)
    assert {v.seed for v in train}.isdisjoint({v.seed for v in test})
