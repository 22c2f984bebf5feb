"""Fault injection: truncate each kind of file fmlab reads and check for a clear error that
names the file, and that nothing partial is written.

Training-run faults (kill -9, SIGTERM, a truncated checkpoint) are in test_faults_train.py.
"""

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from fmlab.cli import app

ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()


def _truncate(path: Path, keep: float = 0.5) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: max(1, int(len(data) * keep))])
    return path


def test_truncated_safetensors(tmp_path, tiny_model):
    from fmlab.core.checkpoint import TensorSource
    from fmlab.core.io import CheckpointError, load_torch_file
    from fmlab.core.models import load_pretrained

    tiny_model.save_pretrained(tmp_path / "m")
    _truncate(tmp_path / "m" / "model.safetensors")
    for load in (
        lambda: load_torch_file(tmp_path / "m" / "model.safetensors"),
        lambda: TensorSource.open(tmp_path / "m"),
        lambda: load_pretrained(tmp_path / "m"),
    ):
        with pytest.raises(CheckpointError, match=r"model\.safetensors.*truncated"):
            load()
    res = runner.invoke(
        app,
        ["param-delta", "--post", str(tmp_path / "m"), "--base", str(tmp_path / "m"),
         "--new-base", str(tmp_path / "m"), "--out", str(tmp_path / "out")],
    )  # fmt: skip
    assert res.exit_code == 2 and "truncated" in res.output
    assert not (tmp_path / "out").exists()


def test_truncated_record_json(tmp_path):
    from fmlab.core.results import load_record

    rec = tmp_path / "results" / "core" / "substrate.json"
    rec.parent.mkdir(parents=True)
    shutil.copy(ROOT / "docs/results/core/substrate.json", rec)
    _truncate(rec)
    with pytest.raises(ValueError, match=r"substrate\.json: not valid JSON"):
        load_record(rec)
    res = runner.invoke(
        app, ["report", "--results", str(tmp_path / "results"), "--out", str(tmp_path / "r.md")]
    )
    assert res.exit_code == 2 and "substrate.json" in res.output
    assert not (tmp_path / "r.md").exists()


def test_truncated_prior_npz(tmp_path):
    from fmlab.rdd.prior import Prior, RDDError

    rng = np.random.default_rng(0)
    demo = tmp_path / "demo.npz"
    np.savez(
        demo,
        features=rng.normal(size=(40, 4)).astype(np.float32),
        boundaries=np.array([[0, 20], [20, 40]]),
        labels=np.array(["a", "b"]),
    )
    prior = tmp_path / "prior.npz"
    res = runner.invoke(app, ["rdd", "build-prior", str(demo), str(demo), "--out", str(prior)])
    assert res.exit_code == 0, res.output
    assert Prior.load(prior).keys.shape[0] > 0
    _truncate(prior)
    with pytest.raises(RDDError, match=r"prior\.npz: not an RDD prior .*build-prior"):
        Prior.load(prior)
    out = tmp_path / "seg.json"
    res = runner.invoke(
        app, ["rdd", "segment", str(demo), "--prior", str(prior), "--out", str(out)]
    )
    assert res.exit_code == 2 and "prior.npz" in res.output and not out.exists()
    _truncate(demo)
    res = runner.invoke(app, ["rdd", "build-prior", str(demo), "--out", str(tmp_path / "p2.npz")])
    assert res.exit_code == 2 and "demo.npz" in res.output
    assert not (tmp_path / "p2.npz").exists()


def test_pickled_npz_is_refused(tmp_path):
    from fmlab.core.io import read_npz

    bad = tmp_path / "obj.npz"
    np.savez(bad, features=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError, match="pickled"):
        read_npz(bad)


def test_truncated_mp4(tmp_path):
    from fmlab.tempo.video import VideoError, read_video, write_video

    frames = np.random.default_rng(0).integers(0, 255, (16, 32, 32, 3), dtype=np.uint8)
    mp4 = write_video(tmp_path / "v.mp4", frames, fps=2)
    assert len(read_video(mp4).frames) == 16
    _truncate(mp4)
    with pytest.raises(VideoError, match=r"v\.mp4.*complete video"):
        read_video(mp4)


def test_truncated_memo_json_is_kept_and_the_job_restarts(tmp_path):
    from fmlab.core.io import Memo

    path = tmp_path / "memo.json"
    m = Memo(path, {"k": 1})
    for i in range(3):
        m.put(f"e{i}", {"v": i})
    _truncate(path)
    with pytest.warns(UserWarning, match=r"memo\.json: not a readable memo"):
        again = Memo(path, {"k": 1})
    assert again.resumed == 0
    aside = tmp_path / "memo.json.corrupt"
    assert aside.is_file() and not path.exists()  # the evidence is kept, not overwritten
    again.put("e0", {"v": 0})
    assert json.loads(path.read_text())["data"] == {"e0": {"v": 0}}
    assert sorted(os.listdir(tmp_path)) == ["memo.json", "memo.json.corrupt"]  # no temp files
