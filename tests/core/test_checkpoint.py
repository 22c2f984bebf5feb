import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from fmlab.core.checkpoint import (
    SafetensorsStreamWriter,
    TensorSource,
    TensorSpec,
    parse_size,
    plan_shards,
    write_sharded,
)
from fmlab.core.io import CheckpointError


def _tensors():
    g = torch.Generator().manual_seed(0)
    return {
        "a": torch.randn(3, 5, generator=g),
        "b": torch.randn(7, generator=g).to(torch.bfloat16),
        "c": torch.randn(2, 2, generator=g).half(),
        "d": torch.tensor(3.5, dtype=torch.float64),
        "e": torch.arange(6, dtype=torch.int64).view(2, 3),
    }


def test_stream_writer_matches_safetensors(tmp_path):
    ts = _tensors()
    specs = [TensorSpec(k, v.dtype, tuple(v.shape)) for k, v in ts.items()]
    with SafetensorsStreamWriter(tmp_path / "x.safetensors", specs) as w:
        for k, v in ts.items():
            w.write(k, v)
    back = load_file(str(tmp_path / "x.safetensors"))
    for k, v in ts.items():
        assert back[k].dtype == v.dtype and torch.equal(back[k], v)


def test_stream_writer_refuses_wrong_tensor_and_incomplete(tmp_path):
    specs = [TensorSpec("a", torch.float32, (2,)), TensorSpec("b", torch.float32, (2,))]
    with (
        pytest.raises(ValueError, match="expected a"),
        SafetensorsStreamWriter(tmp_path / "x.safetensors", specs) as w,
    ):
        w.write("b", torch.zeros(2))
    with (
        pytest.raises(ValueError, match="more rows"),
        SafetensorsStreamWriter(tmp_path / "x.safetensors", specs) as w,
    ):
        w.write("a", torch.zeros(3))
    w = SafetensorsStreamWriter(tmp_path / "y.safetensors", specs)
    w.write("a", torch.zeros(2))
    with pytest.raises(ValueError, match="never written"):
        w.close()


def test_sharded_write_and_lazy_read(tmp_path):
    ts = {f"t{i}": torch.full((100,), float(i)) for i in range(10)}  # 400 B each
    specs = [TensorSpec(k, v.dtype, tuple(v.shape)) for k, v in ts.items()]
    assert [len(s) for s in plan_shards(specs, 1000)] == [2, 2, 2, 2, 2]
    files = write_sharded(tmp_path, specs, iter(ts.items()), max_shard_size=1000)
    assert len(files) == 5 and files[0].name == "model-00001-of-00005.safetensors"
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert index["metadata"]["total_size"] == 4000 and len(index["weight_map"]) == 10
    src = TensorSource.open(tmp_path)
    assert sorted(src.keys()) == sorted(ts)
    assert torch.equal(src.get("t7"), ts["t7"])
    (tmp_path / "model-00003-of-00005.safetensors").unlink()
    with pytest.raises(CheckpointError, match="00003"):
        TensorSource.open(tmp_path)


def test_source_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such checkpoint"):
        TensorSource.open(tmp_path / "missing")
    with pytest.raises(CheckpointError, match="no weights"):
        TensorSource.open(tmp_path)
    torch.save({"w": torch.ones(2)}, tmp_path / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="pickle"):
        TensorSource.open(tmp_path)
    src = TensorSource.open(tmp_path, allow_pickle=True)
    assert torch.equal(src.get("w"), torch.ones(2))
    save_file({"w": torch.ones(4)}, str(tmp_path / "m.safetensors"))
    assert TensorSource.open(tmp_path / "m.safetensors").keys() == ["w"]


def test_parse_size():
    assert parse_size("5GB") == 5 * 10**9
    assert parse_size("1.5GiB") == int(1.5 * 2**30)
    assert parse_size("200KB") == 200_000
    assert parse_size(12) == 12
    with pytest.raises(ValueError, match="2GB"):
        parse_size("lots")


def test_row_blocks_write_and_read(tmp_path):
    t = torch.arange(40, dtype=torch.float32).view(10, 4)
    spec = TensorSpec("t", t.dtype, (10, 4))
    blocks = [("t", t[0:3]), ("t", t[3:9]), ("t", t[9:10]), ("s", torch.tensor(2.0))]
    write_sharded(tmp_path, [spec, TensorSpec("s", torch.float32, ())], iter(blocks))
    src = TensorSource.open(tmp_path)
    assert torch.equal(src.get("t"), t)
    assert torch.equal(src.get("t", (2, 7)), t[2:7])
    assert torch.equal(src.get("t", (8, 20)), t[8:10])
    assert src.get("s").item() == 2.0
    with pytest.raises(ValueError, match="scalar"):
        src.get("s", (0, 1))
    with (
        pytest.raises(ValueError, match="more rows"),
        SafetensorsStreamWriter(tmp_path / "x.safetensors", [spec]) as w,
    ):
        w.write("t", t[:6])
        w.write("t", t[:6])
