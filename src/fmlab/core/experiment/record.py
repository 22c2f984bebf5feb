"""The record fields the harness fills (``splits``, ``tuning``, ``seeds_seen_in_design``,
``intervals``) and a plot of paired differences with their intervals."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from fmlab.core.experiment.splits import Splits
from fmlab.core.experiment.stats import Paired
from fmlab.core.experiment.tuning import Tuning
from fmlab.core.results import figure, save_figure

__all__ = ["interval_plot", "record_fields"]


def record_fields(
    splits: Splits | None = None,
    tuning: Tuning | Mapping[str, Tuning] | None = None,
    intervals: Iterable[Paired] = (),
) -> dict[str, Any]:
    """Keyword arguments for :class:`fmlab.core.results.ResultRecord`:
    ``ResultRecord(method=..., ..., **record_fields(splits, tuning, intervals))``.

    ``tuning`` may map a name (e.g. a seed or an encoder) to each of several tunings."""
    out: dict[str, Any] = {}
    if splits is not None:
        out["splits"] = splits.summary()
        out["seeds_seen_in_design"] = splits.seeds_seen_in_design
    if isinstance(tuning, Tuning):
        out["tuning"] = tuning.to_record()
    elif tuning is not None:
        out["tuning"] = {str(k): t.to_record() for k, t in tuning.items()}
    ivs: dict[str, Any] = {}
    for p in intervals:
        if p.label in ivs:
            raise ValueError(f"two intervals are labelled {p.label!r}; give each a distinct metric")
        ivs[p.label] = p.to_dict()
    if ivs:
        out["intervals"] = ivs
    return out


def interval_plot(path: str | os.PathLike, intervals: Iterable[Paired], title: str = "") -> Path:
    """One row per difference: its estimate and interval, with a line at zero (PNG)."""
    rows = list(intervals)
    if not rows:
        raise ValueError("interval_plot needs at least one interval")
    plt = figure()
    fig, ax = plt.subplots(figsize=(6, 0.5 * len(rows) + 1.2))
    for i, p in enumerate(rows):
        iv = p.main
        ax.errorbar(
            iv.estimate,
            i,
            xerr=[[iv.estimate - iv.lo], [iv.hi - iv.estimate]],
            fmt="o",
            capsize=4,
            color="#4c72b0",
        )
    ax.axvline(0.0, color="grey", lw=1, ls="--")
    ax.set_yticks(range(len(rows)), [p.label for p in rows])
    ax.invert_yaxis()
    level = rows[0].main.level
    ax.set_xlabel(f"difference ({level:.0%} interval)")
    ax.set_title(title)
    ax.grid(axis="x", alpha=0.3)
    return save_figure(fig, plt, path)


def with_overrides(cfg, **kw):
    """``dataclasses.replace(cfg, ...)`` with the keywords that are not None (a CLI's unset
    options keep the config's defaults)."""
    return replace(cfg, **{k: v for k, v in kw.items() if v is not None})
