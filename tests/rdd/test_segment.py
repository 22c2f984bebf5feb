import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fmlab.rdd import (
    Prior,
    RDDError,
    Segmentation,
    boundary_f1,
    brute_force_segment,
    miou,
    official_iou,
    random_segment,
    segment,
    uniform_segment,
    uvd_segment,
)
from fmlab.rdd.prior import naive_distance


def _prior(rng, dim, n_clips, mode="default", metric="angular", index="exact", motion=0.0):
    lo = 2 if motion else 1
    clips = [rng.normal(size=(int(rng.integers(lo, 6)), dim)) for _ in range(n_clips)]
    labels = [f"skill{i % 3}" for i in range(n_clips)]
    return Prior.from_clips(clips, labels, mode=mode, metric=metric, index=index, motion=motion)


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    n=st.integers(1, 9),
    min_len=st.integers(1, 3),
    span=st.integers(0, 5),
    mode=st.sampled_from(["default", "ood"]),
    metric=st.sampled_from(["angular", "l2"]),
    alpha=st.sampled_from([None, 0.0, 0.7, 2.0]),
    beta=st.sampled_from([0.0, 0.5]),
    motion=st.sampled_from([0.0, 1.5]),
)
def test_dp_equals_brute_force(seed, n, min_len, span, mode, metric, alpha, beta, motion):
    rng = np.random.default_rng(seed)
    dim = 3
    prior = _prior(rng, dim, int(rng.integers(1, 6)), mode, metric, motion=motion)
    f = rng.normal(size=(n, dim))
    max_len = min_len + span
    uvd = {"min_interval": 2, "gamma": 0.5}
    if motion and min_len < 2:
        with pytest.raises(RDDError, match="motion keys, which need min_len >= 2"):
            segment(f, prior, alpha, beta, min_len, max_len, uvd)
        return
    if n < min_len:
        with pytest.raises(RDDError, match="fewer than min_len"):
            segment(f, prior, alpha, beta, min_len, max_len, uvd)
        return
    best, _ = brute_force_segment(f, prior, alpha, beta, min_len, max_len, uvd)
    if not np.isfinite(best):  # no partition with these lengths exists
        with pytest.raises(RDDError, match="cannot be cut"):
            segment(f, prior, alpha, beta, min_len, max_len, uvd)
        return
    seg = segment(f, prior, alpha, beta, min_len, max_len, uvd)
    assert seg.total == pytest.approx(best, rel=1e-9, abs=1e-9)
    assert seg.boundaries[0][0] == 0 and seg.boundaries[-1][1] == n
    assert all(min_len <= e - s <= max_len for s, e in seg.boundaries)


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    n=st.integers(2, 10),
    min_len=st.integers(1, 3),
    span=st.integers(0, 5),
    k=st.integers(1, 5),
    alpha=st.sampled_from([0.0, 1.0]),
)
@pytest.mark.filterwarnings("ignore::fmlab.rdd.prior.RDDWarning")
def test_fixed_k_dp_equals_brute_force(seed, n, min_len, span, k, alpha):
    rng = np.random.default_rng(seed)
    prior = _prior(rng, 3, int(rng.integers(1, 6)))
    f = rng.normal(size=(n, 3))
    max_len = min_len + span
    if n < min_len:
        return
    best, parts = brute_force_segment(f, prior, alpha, 0.0, min_len, max_len, k=k)
    if not np.isfinite(best):
        with pytest.raises(RDDError, match=r"cannot be cut|cannot cut"):
            segment(f, prior, alpha, 0.0, min_len, max_len, k=k)
        return
    seg = segment(f, prior, alpha, 0.0, min_len, max_len, k=k)
    assert len(seg.boundaries) == k == len(parts)
    assert seg.total == pytest.approx(best, rel=1e-9, abs=1e-9)
    assert seg.boundaries[0][0] == 0 and seg.boundaries[-1][1] == n
    # free K is at least as good as any fixed K
    assert segment(f, prior, alpha, 0.0, min_len, max_len).total >= seg.total - 1e-9


@pytest.mark.parametrize("motion", [0.0, 2.0])
@pytest.mark.parametrize("metric", ["angular", "l2"])
@pytest.mark.parametrize("mode", ["default", "ood"])
def test_batched_search_matches_naive_and_faiss(metric, mode, motion):
    rng = np.random.default_rng(0)
    prior = _prior(rng, 8, 30, mode, metric, motion=motion)
    f = rng.normal(size=(40, 8)).astype(np.float32)
    s = rng.integers(0, 30, size=200)
    e = s + rng.integers(2, 10, size=200)
    d, nn = prior.search(f, s, e)
    for i in range(0, 200, 7):
        dn, jn = naive_distance(prior, f.astype(np.float64), s[i], e[i])
        assert d[i] == pytest.approx(dn, abs=1e-9) and nn[i] == jn
    df, nf = prior.with_index("faiss-flat").search(f, s, e)
    np.testing.assert_allclose(df, d, atol=1e-3)
    assert (nf == nn).mean() > 0.98  # float32 near-ties may differ
    dh, _ = prior.with_index("faiss-hnsw").search(f, s, e)
    assert (dh >= d - 1e-3).all() and np.median(dh - d) < 1e-3


def test_recovers_planted_segments_and_labels():
    rng = np.random.default_rng(1)
    dim, protos = 6, np.eye(6) * 5
    true, labels, frames = [], [], []
    pos = 0
    for k in [0, 2, 1, 4, 3]:
        length = int(rng.integers(6, 12))
        a, b = protos[k], protos[k + 1]
        t = np.linspace(0, 1, length)[:, None]
        frames.append(a + (b - a) * t + 0.05 * rng.normal(size=(length, dim)))
        true.append((pos, pos + length))
        labels.append(f"s{k}")
        pos += length
    # prior clips: the same skills, other durations and noise
    clips, clabels = [], []
    for k in range(5):
        length = int(rng.integers(6, 12))
        t = np.linspace(0, 1, length)[:, None]
        clips.append(
            protos[k] + (protos[k + 1] - protos[k]) * t + 0.05 * rng.normal(size=(length, dim))
        )
        clabels.append(f"s{k}")
    prior = Prior.from_clips(clips, clabels)
    # alpha = 0: the prior's durations are drawn independently of the demo's here
    seg = segment(np.concatenate(frames), prior, alpha=0.0, min_len=2, max_len=30)
    assert seg.labels == labels
    assert miou(seg.boundaries, true) > 0.85 and boundary_f1(seg.boundaries, true, 1) == 1.0


def test_errors_are_clear(tmp_path):
    rng = np.random.default_rng(0)
    prior = _prior(rng, 4, 5)
    with pytest.raises(RDDError, match="dimension 3 does not match the prior's 4"):
        segment(rng.normal(size=(10, 3)), prior)
    bad = rng.normal(size=(10, 4))
    bad[3, 1] = np.nan
    with pytest.raises(RDDError, match="NaN or inf at frame 3"):
        segment(bad, prior)
    with pytest.raises(RDDError, match="fewer than min_len"):
        segment(rng.normal(size=(1, 4)), prior, min_len=2)
    with pytest.raises(RDDError, match="min_len \\(5\\) > max_len \\(3\\)"):
        segment(rng.normal(size=(10, 4)), prior, min_len=5, max_len=3)
    with pytest.raises(RDDError, match="no frames"):
        segment(np.zeros((0, 4)), prior)
    with pytest.raises(RDDError, match="at least one labelled"):
        Prior.from_clips([], [])
    with pytest.raises(RDDError, match="motion keys need clips of >= 2 frames"):
        Prior.from_clips([np.ones((1, 4))], ["a"], motion=1.0)
    with pytest.raises(RDDError, match="motion must be a finite weight"):
        Prior.from_clips([np.ones((3, 4))], ["a"], motion=-1.0)
    with pytest.raises(RDDError, match="no such prior"):
        Prior.load(tmp_path / "missing.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(RDDError, match=r"RDD prior.*build-prior"):
        Prior.load(tmp_path / "junk.npz")


def test_prior_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    prior = _prior(rng, 4, 7, mode="ood", metric="l2", motion=3.0)
    prior.encoder = "pixels-pca"
    prior.save(tmp_path / "p.npz")
    back = Prior.load(tmp_path / "p.npz")
    assert (back.mode, back.metric, back.encoder, back.dim) == ("ood", "l2", "pixels-pca", 4)
    assert back.motion == 3.0 and back.keys.shape == (7, 8)
    np.testing.assert_allclose(back.keys, prior.keys, rtol=1e-6)
    assert list(back.labels) == list(prior.labels) and list(back.durations) == list(prior.durations)


def test_metrics():
    true = [(0, 10), (10, 20)]
    assert miou(true, true) == 1.0 and boundary_f1(true, true) == 1.0
    one = [(0, 20)]
    assert official_iou(one, true) == 0.5 and miou(one, true) == 0.25  # 0.5 matched / 2
    many = [(0, 5), (5, 10), (10, 15), (15, 20)]
    assert official_iou(many, true) == 0.5 and miou(many, true) == 0.25
    assert boundary_f1([(0, 12), (12, 20)], true, tol=2) == 1.0
    assert boundary_f1([(0, 14), (14, 20)], true, tol=2) == 0.0
    assert boundary_f1(many, true, tol=0) == pytest.approx(2 * (1 / 3) * 1 / (1 / 3 + 1))


def test_baselines_and_uvd_find_monotone_runs():
    assert uniform_segment(10, 3).boundaries == [(0, 3), (3, 7), (7, 10)]
    r = random_segment(50, 4, np.random.default_rng(0))
    assert len(r) == 4 and r.n_frames == 50
    # three straight runs; the distance to each run's goal rises before the run starts
    pts = np.array([[0, 0], [10, 0], [0, 1], [10, 1.0]])  # back and forth
    f = np.concatenate([np.linspace(pts[i], pts[i + 1], 20, endpoint=False) for i in range(3)])
    seg = uvd_segment(f, min_interval=5, gamma=0.5)
    assert boundary_f1(seg.boundaries, [(0, 20), (20, 40), (40, 60)], tol=2) == 1.0
    with pytest.raises(RDDError):
        Segmentation([(0, 3), (4, 6)])


def test_ten_thousand_frames_in_seconds():
    rng = np.random.default_rng(0)
    prior = _prior(rng, 16, 24)
    f = rng.normal(size=(10_000, 16))
    t = time.perf_counter()
    seg = segment(f, prior, min_len=2, max_len=100)
    assert seg.n_frames == 10_000
    assert time.perf_counter() - t < 60  # generous for CI; the scaling record holds the real number


def test_motion_keys_tell_a_finished_movement_from_a_cut_through_it():
    """Two sub-tasks, each an eased move between two points, glide through the same positions
    mid-way; only the velocity in the key tells where a movement really ends."""
    rng = np.random.default_rng(3)

    def move(a, b, n):
        u = np.linspace(0, 1, n + 1)[1:, None]
        return a + (b - a) * (u * u * (3 - 2 * u)) + 0.002 * rng.normal(size=(n, 2))

    def demo():
        lens = rng.integers(14, 22, size=4)
        pts = rng.uniform(-1, 1, size=(5, 2))
        f = np.concatenate([move(pts[i], pts[i + 1], n) for i, n in enumerate(lens)])
        cuts = np.cumsum(lens)
        return f, list(zip([0, *cuts[:-1]], cuts, strict=True))

    train = [demo() for _ in range(12)]
    scores = {}
    for w in (0.0, 8.0):
        clips = [f[s:e] for f, b in train for s, e in b]
        prior = Prior.from_clips(clips, ["move"] * len(clips), metric="l2", motion=w)
        scores[w] = np.mean(
            [
                miou(segment(f, prior, alpha=1.0).boundaries, b)
                for f, b in (demo() for _ in range(8))
            ]
        )
    assert scores[8.0] > scores[0.0] + 0.1, scores
