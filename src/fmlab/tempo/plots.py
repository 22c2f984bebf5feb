"""Allocation heat-map: a filmstrip of segment thumbnails, relevance and kept tokens."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fmlab.core.results import figure, save_figure


def plot_allocation(
    path: str | Path,
    frames: np.ndarray,
    scores,
    alloc,
    seg_len: int,
    query: str,
    truth=None,
) -> Path:
    plt = figure()
    n = len(alloc)
    fig, axes = plt.subplots(3, 1, figsize=(max(6, 0.45 * n), 4.2), sharex=True,
                             gridspec_kw={"height_ratios": [1.1, 1, 1]})  # fmt: skip
    mids = [min(len(frames) - 1, i * seg_len + seg_len // 2) for i in range(n)]
    axes[0].imshow(np.concatenate([frames[m] for m in mids], axis=1), extent=(-0.5, n - 0.5, 0, 1),
                   aspect="auto")  # fmt: skip
    axes[0].set_yticks([])
    axes[0].set_title(f"query: {query!r}", fontsize=9)
    axes[1].imshow(np.asarray(scores, dtype=float)[None], cmap="viridis", vmin=0, vmax=1,
                   aspect="auto", extent=(-0.5, n - 0.5, 0, 1))  # fmt: skip
    axes[1].set_yticks([])
    axes[1].set_ylabel("relevance", fontsize=8)
    if truth is not None:
        for i in np.flatnonzero(np.asarray(truth) > 0):
            axes[1].plot([i], [0.5], marker="*", color="red", ms=9)
    axes[2].bar(range(n), alloc, color="#4c72b0")
    axes[2].set_ylabel("tokens kept", fontsize=8)
    axes[2].set_xlabel("segment")
    fig.tight_layout()
    return save_figure(fig, plt, path)
