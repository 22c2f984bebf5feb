"""Timeline plot: segmentations of one demo stacked, one coloured bar per labelled segment."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from fmlab.core.results import figure, save_figure
from fmlab.rdd.segment import Segmentation

__all__ = ["plot_timeline"]


def plot_timeline(path: str | Path, rows: Mapping[str, Segmentation], title: str = "") -> Path:
    plt = figure()
    labels = sorted({lab for seg in rows.values() for lab in seg.labels})
    colors = {lab: plt.cm.tab10(i % 10) for i, lab in enumerate(labels)}
    fig, ax = plt.subplots(figsize=(9, 0.6 * len(rows) + 1.0))
    for y, seg in enumerate(reversed(list(rows.values()))):
        names = seg.labels or [""] * len(seg)
        for (s, e), lab in zip(seg.boundaries, names, strict=True):
            ax.barh(y, e - s, left=s, color=colors.get(lab, "lightgray"), edgecolor="black")
            ax.text((s + e) / 2, y, lab.replace("_", " ")[:7], ha="center", va="center", fontsize=6)
    ax.set_yticks(range(len(rows)), list(reversed(list(rows))))
    ax.set_xlabel("frame")
    if title:
        ax.set_title(title)
    return save_figure(fig, plt, path)
