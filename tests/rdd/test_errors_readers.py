"""Issue 17: every bad input gets a message naming the file and the fix (exit code 2, nothing
written), the silent cases warn, and demos come in as videos, robomimic HDF5 and LeRobot."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from fmlab.cli import app
from fmlab.core.video import write_frames
from fmlab.rdd import Prior, RDDError, arena, segment
from fmlab.rdd.demos import load_demos
from fmlab.rdd.encoders import PixelPCA, StateCNN
from fmlab.rdd.prior import RDDWarning

R = CliRunner()


def _cli(*args):
    return R.invoke(app, ["rdd", *map(str, args)])


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """A features prior and a labelled features demo (4 sub-tasks, 2 labels)."""
    d = tmp_path_factory.mktemp("planted")
    rng = np.random.default_rng(0)
    a, b = np.eye(4)[0], np.eye(4)[1]
    clip = lambda v, n: v + 0.01 * rng.standard_normal((n, 4))  # noqa: E731
    prior = Prior.from_clips([clip(a, 10), clip(b, 12)], ["a", "b"])
    prior.save(d / "prior.npz")
    f = np.concatenate([clip(a, 10), clip(b, 12), clip(a, 10), clip(b, 12)])
    np.savez(d / "demo.npz", features=f, boundaries=np.array([[0, 10], [10, 22], [22, 32],
             [32, 44]]), labels=np.array(["a", "b", "a", "b"]))  # fmt: skip
    return d, f


def _segment_fails(planted, demo, *match, prior=None):
    d, _ = planted
    out = d / "out.json"
    res = _cli("segment", demo, "--prior", prior or d / "prior.npz", "--out", out)
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output
    for m in match:
        assert m in res.output, res.output
    assert not out.exists()
    return res.output


def test_empty_and_truncated_npz(planted, tmp_path):
    empty = tmp_path / "empty.npz"
    np.savez(empty)
    _segment_fails(planted, empty, str(empty), "holds no arrays", "'features'")
    zero = tmp_path / "zero.npz"
    zero.write_bytes(b"")
    _segment_fails(planted, zero, str(zero), "not an .npz demo", "np.savez")
    good = (planted[0] / "demo.npz").read_bytes()
    cut = tmp_path / "cut.npz"
    cut.write_bytes(good[: len(good) // 2])
    _segment_fails(planted, cut, str(cut), "truncated", "make-demos")
    _segment_fails(planted, planted[0] / "demo.npz", str(cut), prior=cut)  # a truncated prior


def test_labels_shorter_than_boundaries_and_a_truth_that_does_not_tile(planted, tmp_path):
    _, f = planted
    short = tmp_path / "short.npz"
    np.savez(short, features=f, boundaries=np.array([[0, 22], [22, 44]]), labels=np.array(["a"]))
    _segment_fails(planted, short, str(short), "2 boundaries but 1 labels", "one label per")
    gap = tmp_path / "gap.npz"
    np.savez(gap, features=f, boundaries=np.array([[0, 20], [22, 44]]), labels=np.array(["a", "b"]))
    _segment_fails(planted, gap, str(gap), "must tile [0, 44)", "a gap at frame 20")
    res = _cli("build-prior", short, "--out", tmp_path / "p.npz")
    assert res.exit_code == 2 and "one label per" in res.output
    assert not (tmp_path / "p.npz").exists()


def test_mp4_given_to_a_features_prior(planted, tmp_path):
    vid = write_frames(tmp_path / "demo.mp4", np.zeros((12, 16, 16, 3), np.uint8))
    _segment_fails(planted, vid, str(vid), "has frames but no features", "build the prior from")
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not a video at all")
    _segment_fails(planted, junk, str(junk), "not a readable video")


def test_pixels_pca_on_any_frame_size_and_a_one_frame_fit():
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (40, 30, 45, 3), dtype=np.uint8)  # not divisible by 16
    enc = PixelPCA(8).fit([frames])
    assert enc.encode(frames).shape == (40, 8)
    assert enc.encode(frames[:, :20, :20]).shape == (40, 8)  # any size encodes
    with pytest.warns(RDDWarning, match="fitted on 1 frame"):
        PixelPCA(8).fit([frames[:1]])


def test_state_cnn_prior_on_frames_of_another_size(tmp_path, planted):
    train = arena.make_split(0, "train", 1)[:2]
    enc = StateCNN(steps=2, batch=8).fit(
        [e.frames for e in train], targets=[arena.state_features(e.states) for e in train]
    )
    f = enc.encode(train[0].frames)
    clips = [f[sl] for lab, sl in train[0].clips()]
    p = Prior.from_clips(clips, train[0].labels, encoder="state-cnn")
    p.encoder_state = enc.state()
    p.save(tmp_path / "scnn.npz")
    big = tmp_path / "big.npz"
    np.savez(big, frames=np.zeros((20, 240, 320, 3), np.uint8))
    _segment_fails(planted, big, str(big), "frames are 240x320", "trained on 32x32",
                   "resize the frames", prior=tmp_path / "scnn.npz")  # fmt: skip


def test_prior_warnings_and_max_len_default(planted, tmp_path):
    _, f = planted
    with pytest.warns(RDDWarning, match="one clip"):
        one = Prior.from_clips([f[:10]], ["a"])
    over = tmp_path / "over.npz"
    np.savez(
        over, features=f, boundaries=np.array([[0, 12], [10, 22]]), labels=np.array(["a", "b"])
    )
    res = _cli("build-prior", over, "--out", tmp_path / "p.npz")
    assert res.exit_code == 0 and "warning:" in res.output and "overlap" in res.output
    # max_len defaults to twice the prior's longest interval: 60-frame sub-tasks stay whole
    long = Prior.from_clips([np.tile(np.eye(4)[0], (60, 1)), np.tile(np.eye(4)[1], (60, 1))],
                            ["a", "b"])  # fmt: skip
    demo = np.concatenate([np.tile(np.eye(4)[0], (60, 1)), np.tile(np.eye(4)[1], (60, 1))])
    assert segment(demo, long).boundaries == [(0, 60), (60, 120)]
    with pytest.warns(RDDWarning, match="max_len=30 is shorter"):
        segment(demo, long, max_len=30)
    del one


def test_long_fits_show_progress(tmp_path):
    train = arena.make_split(0, "train", 1)[:2]
    lines = []
    StateCNN(steps=20, batch=8).fit([e.frames for e in train],
        targets=[arena.state_features(e.states) for e in train], log=lines.append)  # fmt: skip
    assert len(lines) >= 10 and "step 20/20" in lines[-1] and "s left" in lines[-1]


def test_segmentation_module_has_no_import_circle():
    import importlib
    import sys

    for m in [m for m in sys.modules if m.startswith("fmlab.rdd")]:
        del sys.modules[m]
    uvd = importlib.import_module("fmlab.rdd.uvd")  # first, alone: no circle to need
    assert uvd.Segmentation is importlib.import_module("fmlab.rdd.segment").Segmentation
    src = Path(uvd.__file__).read_text()
    assert "fmlab.rdd.segment " not in src and "from fmlab.rdd.segment import" not in src


# -- readers ---------------------------------------------------------------------------------


def _episodes(n=2):
    """Small arena demos, frames upscaled to 64 x 64 (video codecs want a few macroblocks)."""
    eps = arena.make_split(0, "standard", 1)[:n]
    return [(e.frames.repeat(2, 1).repeat(2, 2), e) for e in eps]


def _ann(eps, names):
    return {n: [[s, e, lab] for (s, e), lab in zip(ep.boundaries, ep.labels, strict=True)]
            for n, (_, ep) in zip(names, eps, strict=True)}  # fmt: skip


def _pca_prior(tmp_path, demo_path, extra=()):
    res = _cli("build-prior", demo_path, "--out", tmp_path / "prior.npz",
               "--encoder", "pixels-pca", *extra)  # fmt: skip
    assert res.exit_code == 0, res.output
    return tmp_path / "prior.npz"


def _segment_ok(tmp_path, demo_path, prior, n_demos, *extra):
    out = tmp_path / "seg.json"
    res = _cli("segment", demo_path, "--prior", prior, "--out", out, *extra)
    assert res.exit_code == 0, res.output
    r = json.loads(out.read_text())
    rows = r if isinstance(r, list) else [r]
    assert len(rows) == n_demos and all("miou" in x["metrics"] for x in rows)
    return rows


def test_folder_of_mp4_demos_with_annotations(tmp_path):
    eps = _episodes()
    folder = tmp_path / "videos"
    folder.mkdir()
    for i, (frames, _) in enumerate(eps):
        write_frames(folder / f"demo{i}.mp4", frames, fps=10)
    (folder / "annotations.json").write_text(json.dumps(_ann(eps, ["demo0", "demo1"])))
    demos = load_demos(folder)
    assert [d.name for d in demos] == ["demo0", "demo1"]
    assert demos[0].frames.shape == eps[0][0].shape and demos[0].labels == eps[0][1].labels
    prior = _pca_prior(tmp_path, folder)
    rows = _segment_ok(tmp_path, folder, prior, 2)
    assert rows[0]["metrics"]["miou"] > 0.5  # segmenting its own training demos


def test_robomimic_hdf5(tmp_path):
    import h5py

    eps = _episodes()
    path = tmp_path / "demos.hdf5"
    with h5py.File(path, "w") as f:
        for i, (frames, ep) in enumerate(eps):
            g = f.create_group(f"data/demo_{i}")
            g["obs/agentview_image"] = frames
            g["obs/robot0_eef_pos"] = ep.states[:, :3]
            g["actions"] = np.zeros((len(frames), 7))
    (tmp_path / "ann.json").write_text(json.dumps(_ann(eps, ["demo_0", "demo_1"])))
    ann = ["--annotations", tmp_path / "ann.json"]
    prior = _pca_prior(tmp_path, path, ann)
    _segment_ok(tmp_path, path, prior, 2, *ann)
    d = load_demos(path, camera="robot0_eef_pos")[0]
    assert d.features.shape == (len(eps[0][0]), 3) and d.frames is None
    with pytest.raises(RDDError, match="no obs key 'wrist'; choose one of: agentview_image"):
        load_demos(path, camera="wrist")


def test_lerobot_v2_directory(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    eps = _episodes()
    root = tmp_path / "lerobot"
    key = "observation.images.top"
    info = {
        "codebase_version": "v2.1", "fps": 10, "chunks_size": 1000, "total_episodes": len(eps),
        "data_path": "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet",
        "video_path": "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4",
        "features": {key: {"dtype": "video", "shape": [64, 64, 3]},
                     "observation.state": {"dtype": "float32", "shape": [10]}},
    }  # fmt: skip
    (root / "meta").mkdir(parents=True)
    (root / "meta" / "info.json").write_text(json.dumps(info))
    for i, (frames, ep) in enumerate(eps):
        n = len(frames)
        table = pa.table({"observation.state": list(ep.states.astype(np.float32)),
                          "frame_index": np.arange(n), "episode_index": np.full(n, i),
                          "timestamp": np.arange(n) / 10.0})  # fmt: skip
        (root / "data" / "chunk-000").mkdir(parents=True, exist_ok=True)
        pq.write_table(table, root / "data" / "chunk-000" / f"episode_{i:06d}.parquet")
        write_frames(root / "videos" / "chunk-000" / key / f"episode_{i:06d}.mp4", frames, fps=10)
    (tmp_path / "ann.json").write_text(json.dumps(_ann(eps, ["episode_000000", "episode_000001"])))
    ann = ["--annotations", tmp_path / "ann.json"]
    prior = _pca_prior(tmp_path, root, ann)
    _segment_ok(tmp_path, root, prior, 2, *ann)
    d = load_demos(root, camera="observation.state")[1]
    assert d.features.shape == (len(eps[1][0]), 10)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(load_demos(root)) == 2
