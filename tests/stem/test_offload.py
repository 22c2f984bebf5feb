"""Offloaded tables: identical logits, counters, prefetch, validation, restore."""

import json

import pytest
import torch

from fmlab.stem import param_counts, stem_mlps
from fmlab.stem.offload import OffloadError, attach, offload, write_tables

from .conftest import V, tiny

D_FF = 96


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_offloaded_logits_are_bit_identical_and_restore(tmp_path, ids):
    model = tiny(seed=5)
    want = _logits(model, ids)
    total = param_counts(model)["total"]
    h = offload(model, tmp_path / "t", cache_rows=8)
    assert all(m.table is None for m in stem_mlps(model).values())
    assert "model.layers.1.mlp.table.weight" not in model.state_dict()
    assert param_counts(model)["total"] == total
    assert torch.equal(_logits(model, ids), want)
    assert torch.equal(_logits(model, ids), want)  # again, now partly from the cache
    h.restore()
    assert torch.equal(_logits(model, ids), want)


def test_counters_hits_bytes_and_prefetch(tmp_path):
    model = tiny(seed=5)
    h = offload(model, tmp_path / "t", cache_rows=50, prefetch=True)
    a = torch.tensor([[1, 2, 3, 3]])
    _logits(model, a)
    s = h.stats()
    assert s["tokens"] == 4 and s["hits"] == 0 and s["misses"] == 2 * 3  # 3 unique x 2 layers
    assert s["bytes_read"] == 2 * 3 * D_FF * 4 and s["bytes_per_token"] == s["bytes_read"] / 4
    _logits(model, a)  # all cached now
    s = h.stats()
    assert s["hits"] == 6 and s["bytes_read"] == 2 * 3 * D_FF * 4
    b = torch.tensor([[7, 8, 9, 1]])
    h.prefetch(b)  # rows 7, 8, 9 are read in the background
    _logits(model, b)
    s = h.stats()
    assert s["misses"] == 6 and s["hits"] == 6 + 2 * 4  # every row of b was ready
    assert s["bytes_read"] == 2 * 6 * D_FF * 4
    h.close()


def test_prefetch_of_the_next_batch_does_not_block_the_current_one(tmp_path, monkeypatch):
    """The first design waited for any pending prefetch in every lookup, so the next batch's
    read ran before the current batch's compute instead of beside it."""
    import threading

    from fmlab.stem.offload import TableStore

    model = tiny(seed=5)
    h = offload(model, tmp_path / "t", cache_rows=50, prefetch=True)
    a, b = torch.tensor([[1, 2, 3]]), torch.tensor([[7, 8, 9]])
    want_a = _logits(model, a)  # rows of a cached
    release, real_fetch = threading.Event(), TableStore.fetch

    def slow_fetch(self, ids):
        release.wait(10)
        real_fetch(self, ids)

    monkeypatch.setattr(TableStore, "fetch", slow_fetch)
    h.prefetch(b)  # blocked until released
    done = {}
    t = threading.Thread(target=lambda: done.update(a=_logits(model, a)))
    t.start()
    t.join(5)
    assert not t.is_alive() and torch.equal(done["a"], want_a)  # a did not wait for b's read
    release.set()
    before = h.stats()["misses"]
    _logits(model, b)  # waits for b's prefetch, then every row is a hit
    assert h.stats()["misses"] == before
    h.drop_caches()
    assert all(len(x.cache) == 0 for x in h.stores.values())
    _logits(model, b)
    assert h.stats()["misses"] == before + 2 * 3  # read again from the files
    h.close()


def test_lru_evicts_and_without_prefetch_misses(tmp_path):
    model = tiny(seed=5)
    h = offload(model, tmp_path / "t", cache_rows=2, prefetch=False)
    _logits(model, torch.tensor([[1, 2, 3]]))
    assert all(len(s.cache) == 2 for s in h.stores.values())
    assert h.stats()["resident_fraction"] == pytest.approx(2 / V)
    h.prefetch(torch.tensor([[4]]))  # off: does nothing
    _logits(model, torch.tensor([[4]]))
    assert h.stats()["hits"] == 0


def test_generate_with_offload_and_prefetch_equals_in_memory(tmp_path, ids):
    model = tiny(seed=6)
    kw = dict(
        max_new_tokens=6, do_sample=False, pad_token_id=0, attention_mask=torch.ones_like(ids)
    )
    want = model.generate(ids, **kw)
    h = offload(model, tmp_path / "t", cache_rows=16)
    got = h.generate(ids, **kw)
    assert torch.equal(got, want)
    assert h.stats()["hits"] > 0


def test_truncated_or_wrong_shape_table_is_a_clear_error(tmp_path):
    model = tiny(seed=5)
    d = write_tables(model, tmp_path / "t")
    f = d / "layer_01.f32"
    data = f.read_bytes()
    f.write_bytes(data[:-10])
    with pytest.raises(OffloadError, match=r"layer_01\.f32.*truncated"):
        attach(tiny(seed=5), d)
    f.write_bytes(data)
    head = json.loads((d / "tables.json").read_text())
    head["layers"]["2"]["shape"] = [V, 64]
    (d / "tables.json").write_text(json.dumps(head))
    with pytest.raises(OffloadError, match=r"layer_02.f32: table shape \[97, 64\]"):
        attach(tiny(seed=5), d)
    with pytest.raises(OffloadError, match="not a STEM offload directory"):
        attach(tiny(seed=5), tmp_path / "nowhere")
    with pytest.raises(OffloadError, match="layers"):
        attach(tiny(seed=5, stem_layers=[2]), d)


def test_existing_directory_is_not_overwritten(tmp_path):
    write_tables(tiny(), tmp_path / "t")
    with pytest.raises(FileExistsError):
        write_tables(tiny(), tmp_path / "t")
