"""Offloading STEM tables to a row-addressable file, with a row cache and async prefetch.

Layout of an offload directory (written atomically, nothing half-written)::

    tables.json        {"format": 1, "dtype": "float32", "vocab_size": V, "layers":
                        {"3": {"file": "layer_03.f32", "shape": [V, d_ff]}, ...}}
    layer_03.f32       raw little-endian float32 rows, row t at byte offset t·d_ff·4

Each layer's file is memory-mapped with numpy. A per-layer LRU cache keeps ``cache_rows``
rows; a lookup serves hits from it and reads misses from the file. With ``prefetch=True`` a
background thread reads the rows of the NEXT batch's unique tokens (:meth:`Offloaded.prefetch`)
while the current batch computes; during ``generate`` (:meth:`Offloaded.generate`) it reads the
rows of the tokens just sampled, which are the next step's inputs. A lookup of the ids a pending
prefetch is fetching waits for it; a lookup of other ids (the current batch) does not, so the
read overlaps the compute. That wait, and any synchronous read of a miss, is stall time. The
cache should hold two batches' unique rows (the one computing and the one fetched), or the
prefetch evicts rows the current batch still needs.

Rows are copied bit for bit, so logits equal those of in-memory tables exactly (tested). On a
GPU machine the looked-up rows are copied to the device from host memory (pinned when CUDA is
available); this path is written but only the CPU path is tested here.

Counters (:meth:`Offloaded.stats`): tokens looked up, row hits/misses (over each lookup's unique
ids), bytes read from the files (by lookups and by the prefetcher), bytes per token and stall s.
"""

from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fmlab.core.io import atomic_dir, atomic_path, atomic_write_json, read_json
from fmlab.stem.model import StemError, StemTable, stem_mlps

__all__ = ["OffloadError", "Offloaded", "TableStore", "attach", "offload", "write_tables"]

HEADER = "tables.json"
ROW_BYTES = 4  # float32


class OffloadError(StemError):
    """An offload directory is missing, truncated or does not match the model."""


def write_tables(model: nn.Module, directory: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write every STEM table of ``model`` to ``directory`` (layout in the module docstring)."""
    mlps = stem_mlps(model)
    if not mlps:
        raise OffloadError("the model has no STEM layers, so there is no table to offload")
    if any(m.table is None for m in mlps.values()):
        raise OffloadError("the tables are already offloaded; call restore() before writing them")
    layers = {}
    with atomic_dir(directory, overwrite=overwrite) as tmp:
        for i, m in sorted(mlps.items()):
            name = f"layer_{i:02d}.f32"
            w = m.table.weight.detach().to("cpu", torch.float32).contiguous().numpy()
            with atomic_path(tmp / name) as p:
                w.astype("<f4", copy=False).tofile(p)
            layers[str(i)] = {"file": name, "shape": list(w.shape)}
        atomic_write_json(
            tmp / HEADER,
            {
                "format": 1,
                "dtype": "float32",
                "vocab_size": model.config.vocab_size,
                "layers": layers,
            },
        )
    return Path(directory)


class _Prefetcher:
    """One background thread. A job is keyed by the ids it fetches: a lookup of those ids
    waits for it (:meth:`wait_for`), a lookup of other ids (the batch computing while the next
    one is fetched) does not, so the read overlaps the compute."""

    def __init__(self, enabled: bool):
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="stem-prefetch") if enabled else None
        self.pending: Future | None = None
        self.key: torch.Tensor | None = None

    def submit(self, fn, key: torch.Tensor) -> None:
        if self.pool is None:
            return
        self.wait()
        self.key = key
        self.pending = self.pool.submit(fn)

    def wait(self) -> float:
        """Block on the pending job; return the seconds waited."""
        if self.pending is None:
            return 0.0
        t0 = time.perf_counter()
        try:
            self.pending.result()
        finally:
            self.pending, self.key = None, None
        return time.perf_counter() - t0

    def wait_for(self, ids: torch.Tensor) -> float:
        """Wait only when the pending job fetches exactly ``ids`` (0 s otherwise)."""
        key = self.key
        if self.pending is None or key is None:
            return 0.0
        if key.shape == ids.shape and torch.equal(key, ids):
            return self.wait()
        if self.pending.done():
            return self.wait()  # surface a failed job's error, clear the slot
        return 0.0

    def close(self) -> None:
        self.wait()
        if self.pool is not None:
            self.pool.shutdown(wait=True)


class TableStore:
    """One layer's table in a memory-mapped file plus an LRU cache of ``cache_rows`` rows.

    The cache is one ``(cache_rows, d_ff)`` slab; ``cache`` maps a row id to its slot in LRU
    order, so a lookup gathers its hits in one indexing op instead of a copy per row."""

    def __init__(
        self, path: Path, shape: tuple[int, int], cache_rows: int, prefetcher: _Prefetcher
    ):
        self.path, self.shape = path, shape
        self.numel = shape[0] * shape[1]
        self.mm = np.memmap(path, dtype="<f4", mode="r", shape=shape)
        self.cache_rows = cache_rows
        self.cache: OrderedDict[int, int] = OrderedDict()  # row id -> slot, LRU first
        self.slab = torch.empty(cache_rows, shape[1], dtype=torch.float32)
        self.lock = threading.Lock()
        self.prefetcher = prefetcher
        self.pin = torch.cuda.is_available()
        self.tokens = self.hits = self.misses = self.bytes_read = 0
        self.stall_s = 0.0

    def _read(self, rows: list[int]) -> tuple[torch.Tensor, list[int]]:  # (R, d_ff), sorted rows
        idx = np.asarray(sorted(rows), dtype=np.int64)
        data = torch.from_numpy(np.array(self.mm[idx], dtype=np.float32))
        self.bytes_read += len(rows) * self.shape[1] * ROW_BYTES
        return data, idx.tolist()

    def _insert(self, rows: list[int], data: torch.Tensor) -> None:
        """Put ``rows`` (``data`` ``(R, d_ff)``) in the cache, evicting the least recently used
        rows; when more rows come than the cache holds, the last ``cache_rows`` stay."""
        if len(rows) > self.cache_rows:
            rows, data = rows[-self.cache_rows :], data[-self.cache_rows :]
        slots = []
        for r in rows:
            slot = self.cache.get(r)
            if slot is None:
                if len(self.cache) < self.cache_rows:
                    slot = len(self.cache)
                else:
                    _, slot = self.cache.popitem(last=False)
                self.cache[r] = slot
            self.cache.move_to_end(r)
            slots.append(slot)
        self.slab[torch.tensor(slots, dtype=torch.long)] = data

    def fetch(self, ids: torch.Tensor) -> None:
        """Bring the rows of ``ids`` into the cache (what the prefetch thread runs)."""
        want = torch.unique(ids.reshape(-1).cpu()).tolist()
        with self.lock:
            missing = [r for r in want if r not in self.cache][: self.cache_rows]
            if missing:
                data, rows = self._read(missing)
                self._insert(rows, data)

    def lookup(self, ids: torch.Tensor) -> torch.Tensor:
        """U[ids]: ``(B, T)`` -> ``(B, T, d_ff)`` float32 on ``ids``' device."""
        waited = self.prefetcher.wait_for(ids.detach().cpu())
        flat = ids.reshape(-1).cpu()
        bad = flat[(flat < 0) | (flat >= self.shape[0])]
        if bad.numel():
            raise StemError(f"token id {int(bad[0])} is outside the table's {self.shape[0]} rows")
        uniq, inv = torch.unique(flat, return_inverse=True)
        t0 = time.perf_counter()
        with self.lock:
            keys = uniq.tolist()  # sorted (torch.unique)
            rows = torch.empty(len(keys), self.shape[1], dtype=torch.float32)
            hit_k, hit_slot, miss = [], [], []
            for k, r in enumerate(keys):
                slot = self.cache.get(r)
                if slot is None:
                    miss.append(k)
                else:
                    hit_k.append(k)
                    hit_slot.append(slot)
                    self.cache.move_to_end(r)
            if hit_k:
                rows[torch.tensor(hit_k)] = self.slab[torch.tensor(hit_slot)]
            if miss:
                data, read = self._read([keys[k] for k in miss])  # read is sorted, like miss
                rows[torch.tensor(miss)] = data
                self._insert(read, data)
            self.hits += len(keys) - len(miss)
            self.misses += len(miss)
            self.tokens += flat.numel()
        self.stall_s += waited + (time.perf_counter() - t0 if miss else 0.0)
        out = rows[inv].reshape(*ids.shape, self.shape[1])
        if ids.device.type != "cpu":
            out = (out.pin_memory() if self.pin else out).to(ids.device, non_blocking=True)
        return out


class _PrefetchOnSample:
    """A ``StoppingCriteria`` that never stops: it prefetches the rows of the tokens just
    sampled (the next decoding step's inputs)."""

    def __init__(self, handle: Offloaded):
        self.handle = handle

    def __call__(self, input_ids, scores, **kwargs):
        self.handle.prefetch(input_ids[:, -1:])
        return torch.zeros(input_ids.size(0), dtype=torch.bool, device=input_ids.device)


class Offloaded:
    """The handle :func:`offload` / :func:`attach` return: prefetch, counters, restore."""

    def __init__(self, model: nn.Module, directory: Path, stores: dict[int, TableStore], pf):
        self.model, self.directory, self.stores, self._pf = model, directory, stores, pf

    def prefetch(self, next_input_ids: torch.Tensor) -> None:
        """Start reading the rows of ``next_input_ids`` (every layer) in the background;
        returns at once. A no-op when prefetch is off."""
        ids = next_input_ids.detach().cpu()
        self._pf.submit(lambda: [s.fetch(ids) for s in self.stores.values()], ids)

    def generate(self, input_ids: torch.Tensor, **kwargs) -> torch.Tensor:
        """``model.generate`` that prefetches the prompt's rows and then each sampled token's."""
        from transformers import StoppingCriteriaList

        crit = StoppingCriteriaList(kwargs.pop("stopping_criteria", None) or [])
        crit.append(_PrefetchOnSample(self))
        self.prefetch(input_ids)
        return self.model.generate(input_ids, stopping_criteria=crit, **kwargs)

    def stats(self) -> dict[str, float]:
        """Counters summed over layers; ``bytes_per_token`` is per looked-up input token (all
        layers), ``hit_rate`` over the unique rows each lookup needed."""
        s = list(self.stores.values())
        tokens = s[0].tokens if s else 0
        hits, misses = sum(x.hits for x in s), sum(x.misses for x in s)
        nbytes = sum(x.bytes_read for x in s)
        rows = sum(x.shape[0] for x in s)
        return {
            "tokens": tokens,
            "hits": hits,
            "misses": misses,
            "hit_rate": hits / (hits + misses) if hits + misses else float("nan"),
            "bytes_read": nbytes,
            "bytes_per_token": nbytes / tokens if tokens else float("nan"),
            "stall_s": sum(x.stall_s for x in s),
            "resident_rows": sum(len(x.cache) for x in s),
            "resident_fraction": sum(len(x.cache) for x in s) / rows if rows else 0.0,
        }

    def drop_caches(self) -> None:
        """Start cold: wait for any prefetch, empty every row cache and ask the OS to drop the
        table files from its page cache (``posix_fadvise(DONTNEED)``, where the platform has
        it; pages still mapped may stay resident), so reads after this come from the files."""
        self._pf.wait()
        for x in self.stores.values():
            with x.lock:
                x.cache.clear()
            if hasattr(os, "posix_fadvise"):
                fd = os.open(x.path, os.O_RDONLY)
                try:
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                finally:
                    os.close(fd)

    def reset_stats(self) -> None:
        for x in self.stores.values():
            x.tokens = x.hits = x.misses = x.bytes_read = 0
            x.stall_s = 0.0

    def restore(self) -> nn.Module:
        """Put the tables back into the model as parameters (from the files); close."""
        self._pf.close()
        mlps = stem_mlps(self.model)
        dev = self.model.get_input_embeddings().weight.device
        for i, s in self.stores.items():
            t = StemTable(*s.shape)
            with torch.no_grad():
                t.weight.copy_(torch.from_numpy(np.array(s.mm, dtype=np.float32)))
            mlps[i].table, mlps[i].store = t.to(dev), None
        self.stores = {}
        return self.model

    def close(self) -> None:
        self._pf.close()


def _check_header(directory: Path, model: nn.Module) -> dict:
    head = directory / HEADER
    if not head.is_file():
        raise OffloadError(
            f"{head} not found: {directory} is not a STEM offload directory; write one with "
            "fmlab.stem.offload(model, directory) or `fmlab stem offload`"
        )
    try:
        h = read_json(head)
        layers = {
            int(k): (v["file"], tuple(int(x) for x in v["shape"])) for k, v in h["layers"].items()
        }
        if h.get("dtype") != "float32":
            raise ValueError(f"dtype {h.get('dtype')!r}, expected float32")
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise OffloadError(
            f"{head} is not a valid table header ({e}); rewrite the directory with offload()"
        ) from e
    mlps = stem_mlps(model)
    if set(layers) != set(mlps):
        raise OffloadError(
            f"{head} holds tables for layers {sorted(layers)} but the model's STEM layers are "
            f"{sorted(mlps)}; offload this model again into a new directory"
        )
    for i, (name, shape) in layers.items():
        want = (model.config.vocab_size, mlps[i].intermediate_size)
        path = directory / name
        if shape != want:
            raise OffloadError(
                f"{path}: table shape {list(shape)} but layer {i} of the model needs {list(want)}; "
                "offload this model again into a new directory"
            )
        if not path.is_file():
            raise OffloadError(f"{path} is missing; offload the model again into a new directory")
        size, need = path.stat().st_size, shape[0] * shape[1] * ROW_BYTES
        if size != need:
            raise OffloadError(
                f"{path}: {size} bytes but a {shape[0]} x {shape[1]} float32 table needs {need} "
                f"({'truncated' if size < need else 'wrong shape or extra bytes'}); offload the "
                "model again into a new directory"
            )
    return layers


def attach(
    model: nn.Module, directory: str | os.PathLike, cache_rows: int = 1024, prefetch: bool = True
) -> Offloaded:
    """Serve ``model``'s STEM rows from an existing offload ``directory`` (validated first:
    header, layers, shapes and file sizes); the in-memory tables are dropped."""
    if cache_rows < 1:
        raise ValueError(f"cache_rows must be >= 1, got {cache_rows}")
    directory = Path(directory)
    layers = _check_header(directory, model)
    pf = _Prefetcher(prefetch)
    stores = {i: TableStore(directory / f, s, cache_rows, pf) for i, (f, s) in layers.items()}
    mlps = stem_mlps(model)
    for i, s in stores.items():
        mlps[i].store = s
        mlps[i].table = None
    return Offloaded(model, directory, stores, pf)


def offload(
    model: nn.Module,
    directory: str | os.PathLike,
    cache_rows: int = 1024,
    prefetch: bool = True,
    overwrite: bool = False,
) -> Offloaded:
    """Move ``model``'s STEM tables into ``directory`` (memory-mapped float32 rows) and serve
    lookups through a ``cache_rows``-row LRU cache per layer and, with ``prefetch``, a
    background thread; see the module docstring. Returns the :class:`Offloaded` handle."""
    write_tables(model, directory, overwrite=overwrite)
    return attach(model, directory, cache_rows=cache_rows, prefetch=prefetch)
