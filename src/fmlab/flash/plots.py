"""Plots of the search (the Pareto front) and of the latency model's fit."""

from __future__ import annotations

from pathlib import Path

from fmlab.core.results import figure, save_figure

__all__ = ["fit_plot", "pareto_plot"]


def fit_plot(path: Path, fit: dict[str, dict], title: str = "") -> Path:
    """Predicted vs measured latency, one panel per target (``fit``: target -> a dict with
    ``measured``, ``predicted`` and ``r2``, from ``LatencyModel.cross_validate`` or
    ``evaluate``)."""
    plt = figure()
    fig, axes = plt.subplots(1, len(fit), figsize=(3.6 * len(fit), 3.4), squeeze=False)
    for ax, (t, d) in zip(axes[0], fit.items(), strict=True):
        y, p = d["measured"], d["predicted"]
        ax.scatter(y, p, s=10)
        lo, hi = min(y + p), max(y + p)
        ax.plot([lo, hi], [lo, hi], "k:", lw=1)
        ax.set(xlabel=f"measured {t} (s)", ylabel="predicted (s)", title=f"R² {d['r2']:.3f}")
    if title:
        fig.suptitle(title)
    return save_figure(fig, plt, path)


def pareto_plot(path: Path, trials: list[dict], pareto: list[int], measured=None) -> Path:
    """Trials (predicted latency, perplexity), the predicted front and, when given, the
    front's members at their measured latency."""
    plt = figure()
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.scatter([t["latency"] for t in trials], [t["ppl"] for t in trials], s=10, alpha=0.4,
               label="trials (predicted latency)")  # fmt: skip
    f = sorted((trials[i] for i in pareto), key=lambda t: t["latency"])
    ax.plot([t["latency"] for t in f], [t["ppl"] for t in f], "o-", label="predicted front")
    if measured:
        ax.plot([m[0] for m in measured], [m[1] for m in measured], "s--",
                label="front members, measured latency")  # fmt: skip
    ax.set(xlabel="latency / backbone", ylabel="calibration perplexity (inherited)", yscale="log")
    ax.legend(fontsize=8)
    return save_figure(fig, plt, path)
