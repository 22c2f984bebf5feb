"""Interleaved timing: arms alternated round-robin (order rotated every repeat), warm-up
first, one thread count for all arms, median and spread, optional counters per arm.

Interleaving spreads drift (thermal throttling, other processes, page cache) over every arm
instead of charging it to whichever arm ran last; repeat ``r`` of each arm ran close in time
to repeat ``r`` of the others, so per-repeat seconds are paired (:func:`paired` works on them).
"""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["Timing", "bytes_read_counter", "measure_peak_rss", "timeit_interleaved"]


def bytes_read_counter() -> Callable[[], float]:
    """A counter for ``timeit_interleaved(counters=...)``: bytes this process has read through
    read() calls so far (psutil ``read_chars`` on Linux, else ``read_bytes``). Pages of a
    memory-mapped file (e.g. safetensors) are not read() and do not show."""
    import psutil

    proc = psutil.Process()

    def read() -> float:
        io = proc.io_counters()
        return float(getattr(io, "read_chars", io.read_bytes))

    return read


def measure_peak_rss(fn: Callable[[], Any], interval_s: float = 0.001) -> tuple[Any, float]:
    """Run ``fn()``; return ``(its result, peak RSS growth during it in MiB)``.

    A psutil thread samples the resident set every ``interval_s`` (a spike shorter than that
    can be missed); growth is measured from the RSS just before the call."""
    import psutil

    proc = psutil.Process()
    before = proc.memory_info().rss
    peak = [before]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            stop.wait(interval_s)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    try:
        out = fn()
    finally:
        stop.set()
        t.join()
    peak[0] = max(peak[0], proc.memory_info().rss)
    return out, (peak[0] - before) / 2**20


def _spread(ts: list[float]) -> dict[str, Any]:
    q1, med, q3 = (float(x) for x in np.percentile(ts, [25, 50, 75]))
    return {
        "median_s": med,
        "q1_s": q1,
        "q3_s": q3,
        "iqr_s": q3 - q1,
        "min_s": float(min(ts)),
        "max_s": float(max(ts)),
        "n": len(ts),
        "seconds": list(ts),
    }


@dataclass
class Timing:
    """What :func:`timeit_interleaved` measured; :meth:`to_record` goes into a record."""

    threads: int
    repeats: int
    warmup: int
    orders: list[list[str]]  # the arm order of each timed repeat
    seconds: dict[str, list[float]]  # arm -> seconds per repeat (repeat order)
    counters: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    peak_rss_mb: dict[str, float] = field(default_factory=dict)

    def median(self, name: str) -> float:
        return float(np.median(self.seconds[name]))

    def summary(self) -> dict[str, dict[str, Any]]:
        """arm -> median, quartiles, IQR, min, max and every repeat (seconds), counters."""
        out = {}
        for name, ts in self.seconds.items():
            out[name] = _spread(ts)
            for c, vals in self.counters.get(name, {}).items():
                out[name][c] = {"median": float(np.median(vals)), "values": list(vals)}
            if name in self.peak_rss_mb:
                out[name]["peak_rss_delta_mb"] = self.peak_rss_mb[name]
        return out

    def to_record(self) -> dict[str, Any]:
        return {
            "protocol": "round-robin, order rotated each repeat, warm-up first, gc between calls",
            "threads": self.threads,
            "repeats": self.repeats,
            "warmup": self.warmup,
            "orders": self.orders,
            "arms": self.summary(),
        }


def timeit_interleaved(
    fns: Mapping[str, Callable[[], Any]],
    repeats: int = 5,
    threads: int | None = None,
    warmup: int = 1,
    counters: Mapping[str, Callable[[], float]] | None = None,
    peak_rss: bool = False,
    log_call: Callable[[str, str, int], None] | None = None,
) -> Timing:
    """Time every arm ``fns[name]()`` ``repeats`` times, alternating arms.

    Each round runs every arm once; round ``r`` starts at arm ``r mod k`` (rotation), so no
    arm always runs first or last. ``warmup`` untimed rounds come first. ``torch`` runs with
    ``threads`` intra-op threads (default: the current setting) for every arm; the setting is
    restored afterwards and recorded.

    Args:
        counters: name -> a callable returning a cumulative reading (e.g.
            :func:`bytes_read_counter`); its change over each timed call is recorded.
        peak_rss: also measure each arm's peak RSS growth (:func:`measure_peak_rss`) in one
            extra untimed round, so the sampler thread does not perturb the timed calls.
        log_call: called as ``log_call(name, phase, round)`` before every call, phase one of
            ``"warmup"``, ``"timed"``, ``"rss"`` (tests use it to check the alternation).
    """
    import torch

    names = list(fns)
    if not names or repeats < 1 or warmup < 0:
        raise ValueError("timeit_interleaved needs at least one arm, repeats >= 1, warmup >= 0")
    old = torch.get_num_threads()
    torch.set_num_threads(threads if threads is not None else old)
    counters = dict(counters or {})
    res = Timing(
        torch.get_num_threads(),
        repeats,
        warmup,
        [],
        {n: [] for n in names},
        {n: {c: [] for c in counters} for n in names},
    )
    try:
        for r in range(warmup):
            for name in names[r % len(names) :] + names[: r % len(names)]:
                _call(fns[name], name, "warmup", r, log_call)
        for r in range(repeats):
            order = names[r % len(names) :] + names[: r % len(names)]
            res.orders.append(order)
            for name in order:
                gc.collect()
                if log_call is not None:  # outside the timed region
                    log_call(name, "timed", r)
                c0 = {c: f() for c, f in counters.items()}
                t0 = time.perf_counter()
                fns[name]()
                res.seconds[name].append(time.perf_counter() - t0)
                for c, f in counters.items():
                    res.counters[name][c].append(float(f() - c0[c]))
        if peak_rss:
            for name in names:
                gc.collect()
                _, res.peak_rss_mb[name] = measure_peak_rss(
                    lambda name=name: _call(fns[name], name, "rss", repeats, log_call)
                )
    finally:
        torch.set_num_threads(old)
    return res


def _call(fn, name, phase, r, log_call):
    if log_call is not None:
        log_call(name, phase, r)
    return fn()
