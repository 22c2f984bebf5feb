import json
import os

import pytest
import torch
from safetensors.torch import save_file

from fmlab.core.io import (
    CheckpointError,
    atomic_dir,
    atomic_write_json,
    atomic_write_text,
    check_safetensors_file,
    load_torch_file,
    read_json,
    sha256_file,
)


def test_atomic_write_replaces_and_leaves_no_temp(tmp_path):
    p = tmp_path / "a.txt"
    atomic_write_text(p, "one")
    atomic_write_text(p, "two")
    assert p.read_text() == "two"
    assert os.listdir(tmp_path) == ["a.txt"]


def test_atomic_write_json_unserializable_writes_nothing(tmp_path):
    p = tmp_path / "r.json"
    with pytest.raises(TypeError):
        atomic_write_json(p, {"x": object()})
    assert not p.exists() and os.listdir(tmp_path) == []


def test_atomic_dir_success_and_failure(tmp_path):
    final = tmp_path / "out"
    with pytest.raises(RuntimeError), atomic_dir(final) as tmp:
        (tmp / "half.bin").write_bytes(b"x")
        raise RuntimeError("boom")
    assert os.listdir(tmp_path) == []  # nothing half-written
    with atomic_dir(final) as tmp:
        (tmp / "ok.txt").write_text("ok")
    assert (final / "ok.txt").read_text() == "ok"
    with pytest.raises(FileExistsError, match="already exists"), atomic_dir(final):
        pass
    assert sorted(os.listdir(tmp_path)) == ["out"]


def test_atomic_dir_overwrite_keeps_old_on_failure(tmp_path):
    final = tmp_path / "out"
    final.mkdir()
    (final / "old.txt").write_text("old")
    with pytest.raises(ValueError), atomic_dir(final, overwrite=True):
        raise ValueError
    assert (final / "old.txt").read_text() == "old"
    with atomic_dir(final, overwrite=True) as tmp:
        (tmp / "new.txt").write_text("new")
    assert os.listdir(final) == ["new.txt"]


def test_safetensors_truncated_and_garbage_are_named(tmp_path):
    p = tmp_path / "m.safetensors"
    save_file({"w": torch.randn(64, 64)}, str(p))
    assert check_safetensors_file(p) == {"w": ("F32", [64, 64])}
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"m\.safetensors.*truncated"):
        check_safetensors_file(p)
    p.write_bytes(b"\x00" * 4)
    with pytest.raises(CheckpointError, match=r"m\.safetensors"):
        check_safetensors_file(p)
    p.write_bytes((10).to_bytes(8, "little") + b"not json!!")
    with pytest.raises(CheckpointError, match=r"m\.safetensors"):
        check_safetensors_file(p)


def test_pickle_refused_unless_allowed(tmp_path):
    p = tmp_path / "pytorch_model.bin"
    torch.save({"w": torch.ones(2)}, p)
    with pytest.raises(CheckpointError, match="pickle"):
        load_torch_file(p)
    assert torch.equal(load_torch_file(p, allow_pickle=True)["w"], torch.ones(2))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_pickle_with_code_is_rejected_even_when_allowed(tmp_path):
    import pickle

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    p = tmp_path / "evil.bin"
    p.write_bytes(pickle.dumps({"x": Evil()}))
    with pytest.raises(CheckpointError, match="weights_only"):
        load_torch_file(p, allow_pickle=True)


def test_read_json_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.json"):
        read_json(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{oops")
    with pytest.raises(ValueError, match=r"bad\.json"):
        read_json(bad)
    good = tmp_path / "g.json"
    good.write_text(json.dumps({"a": 1}))
    assert read_json(good) == {"a": 1}
    assert len(sha256_file(good)) == 64


def test_memo_resumes_only_under_the_same_settings(tmp_path):
    from fmlab.core.io import Memo

    path = tmp_path / "memo.json"
    calls = []

    def work(x):
        calls.append(x)
        return {"x": x, "pair": (x, x)}

    m = Memo(path, {"lr": 0.1, "grid": (1, 2)})
    assert m.get_or_compute("a", lambda: work(1)) == {"x": 1, "pair": [1, 1]}  # stored as JSON
    assert m.get_or_compute("a", lambda: work(2))["x"] == 1 and calls == [1]
    logs = []
    again = Memo(path, {"lr": 0.1, "grid": [1, 2]}, log=logs.append)  # tuples equal lists
    assert again.resumed == 1 and "a" in again and again.get("a")["x"] == 1
    assert "resuming: 1 finished entries" in logs[0]
    other = Memo(path, {"lr": 0.2, "grid": (1, 2)})  # other settings: start afresh
    assert other.resumed == 0 and other.get("a") is None
    other.put("b", 3)
    assert Memo(path, {"lr": 0.1, "grid": (1, 2)}).resumed == 0  # overwritten by the new run
    path.write_text("{broken")
    with pytest.warns(UserWarning, match="not a readable memo"):
        assert Memo(path, None).resumed == 0  # an unreadable file starts afresh ...
    assert path.with_name("memo.json.corrupt").read_text() == "{broken"  # ... but is kept
    assert not path.exists()


def test_atomic_dir_recovers_from_a_kill_between_the_two_renames(tmp_path):
    final = tmp_path / "ckpt"
    (tmp_path / ".ckpt.old").mkdir()  # what a kill after `final -> .old` leaves behind
    (tmp_path / ".ckpt.old" / "w.bin").write_text("last good")
    with atomic_dir(final, overwrite=True) as tmp:
        assert (final / "w.bin").read_text() == "last good"  # restored before anything else
        (tmp / "w.bin").write_text("new")
    assert (final / "w.bin").read_text() == "new" and os.listdir(tmp_path) == ["ckpt"]
