"""Arms x seeds, resumable over :class:`fmlab.core.io.Memo`, per-seed values kept."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fmlab.core.cliutil import log as _stderr_log
from fmlab.core.experiment.splits import content_hash
from fmlab.core.results import mean_std

__all__ = ["ArmRuns", "run_arms"]


def _is_scalar(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


@dataclass
class ArmRuns:
    """What :func:`run_arms` measured: ``values[arm][seed]`` is that run's metrics dict."""

    settings: dict[str, dict[str, Any]]
    seeds: list[int]
    values: dict[str, dict[int, dict[str, Any]]]
    computed: int = 0
    resumed: int = 0

    def per_seed(self, arm: str, metric: str) -> list[Any]:
        """``metric`` of ``arm`` for every seed, in seed order (paired across arms)."""
        if arm not in self.values:
            raise KeyError(f"unknown arm {arm!r}; choose one of: {', '.join(self.values)}")
        try:
            return [self.values[arm][s][metric] for s in self.seeds]
        except KeyError:
            have = ", ".join(self.values[arm][self.seeds[0]])
            raise KeyError(f"arm {arm!r} has no metric {metric!r}; it has: {have}") from None

    def mean_std(self, arm: str) -> dict[str, dict[str, Any]]:
        """:func:`fmlab.core.results.mean_std` over seeds of every scalar metric of ``arm``."""
        first = self.values[arm][self.seeds[0]]
        return {m: mean_std(self.per_seed(arm, m)) for m, v in first.items() if _is_scalar(v)}

    def summary(self) -> dict[str, dict[str, dict[str, Any]]]:
        """arm -> metric -> mean_std: the record's ``metrics`` / ``baselines`` material."""
        return {arm: self.mean_std(arm) for arm in self.values}


def run_arms(
    arms: Mapping[str, Mapping[str, Any]] | Sequence[str],
    seeds: Sequence[int],
    evaluate: Callable[[str, dict[str, Any], int], Mapping[str, Any]],
    memo=None,
    *,
    log: Callable[[str], None] | None = _stderr_log,
) -> ArmRuns:
    """Run every arm at every seed: ``evaluate(arm, settings, seed) -> {metric: value}``.

    Seeds are the outer loop, so an interrupted run leaves every arm with the same seeds done.
    With a ``memo`` each (arm, settings, seed) result is stored as soon as it is computed and
    a rerun takes it from there (the entry name carries a hash of the settings, so changed
    settings are recomputed). Values may be scalars or per-item lists (for :func:`paired`).
    Progress goes to ``log`` (stderr by default; ``None`` for silence).

    Args:
        arms: arm name -> settings (e.g. ``tuning.chosen``), or arm names (no settings).
    """
    settings = (
        {a: dict(s) for a, s in arms.items()}
        if isinstance(arms, Mapping)
        else {a: {} for a in arms}
    )
    seeds = list(seeds)
    if not settings or not seeds:
        raise ValueError("run_arms needs at least one arm and one seed")
    runs = ArmRuns(settings, seeds, {a: {} for a in settings})
    total, done = len(settings) * len(seeds), 0
    for seed in seeds:
        for arm, s in settings.items():
            name = f"{arm}|seed={seed}|{content_hash(s)[:12]}"
            done += 1
            if memo is not None and name in memo:
                runs.values[arm][seed] = dict(memo.get(name))
                runs.resumed += 1
                continue
            t0 = time.perf_counter()
            value = evaluate(arm, dict(s), seed)
            if not isinstance(value, Mapping):
                raise TypeError(
                    f"evaluate({arm!r}, ..., seed={seed}) returned {type(value).__name__}; "
                    "it must return a dict of metric name -> value"
                )
            value = dict(memo.put(name, dict(value))) if memo is not None else dict(value)
            runs.values[arm][seed] = value
            runs.computed += 1
            if log is not None:
                shown = ", ".join(f"{k}={v:.4g}" for k, v in value.items() if _is_scalar(v))
                log(
                    f"[{done}/{total}] {arm} seed {seed}: {shown} ({time.perf_counter() - t0:.1f} s)"
                )
    if log is not None and runs.resumed:
        log(f"run_arms: {runs.resumed} of {total} runs resumed from {memo.path}")
    return runs
