"""Result records, plot helpers and the Markdown report.

A result record is one JSON file per bench with the fields of ARCHITECTURE.md: ``method``,
``claim`` (one sentence), ``setup`` (model, data, sizes, seeds, command line), ``metrics``
(ours), ``baselines`` (same metrics per baseline, measured in the same run), ``env``
(versions, CPU, threads) and ``wall_s``. Numbers in README and docs come from these files.
"""

from __future__ import annotations

import os
import platform
import re
import statistics
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fmlab.core.io import atomic_path, atomic_write_json, atomic_write_text, read_json

__all__ = [
    "REQUIRED_FIELDS",
    "ResultRecord",
    "Timer",
    "bar_plot",
    "delta_text",
    "doc_pages",
    "env_info",
    "format_interval",
    "grouped_bar_plot",
    "interval_lines",
    "line_plot",
    "load_record",
    "mean_std",
    "peak_rss_mb",
    "render_report",
    "render_results_table",
    "update_doc_records",
    "update_readme",
    "write_record",
]

REQUIRED_FIELDS = ("method", "claim", "setup", "metrics", "baselines", "env", "wall_s")


def env_info() -> dict[str, Any]:
    """Versions, CPU and thread facts for a result record."""
    import torch

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }
    for mod in ("transformers", "numpy", "safetensors", "tokenizers"):
        try:
            info[mod] = __import__(mod).__version__
        except Exception:  # pragma: no cover - optional packages
            info[mod] = None
    from fmlab import __version__

    info["fmlab"] = __version__
    return info


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB (ru_maxrss)."""
    import resource

    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024 if sys.platform != "darwin" else kb / 2**20


def mean_std(values: Sequence[float]) -> dict[str, Any]:
    """``{"mean", "std" (sample, 0 for one value), "n", "values"}`` for per-seed numbers."""
    vals = [float(v) for v in values]
    if not vals:
        raise ValueError("mean_std needs at least one value")
    return {
        "mean": statistics.fmean(vals),
        "std": statistics.stdev(vals) if len(vals) > 1 else 0.0,
        "n": len(vals),
        "values": vals,
    }


class Timer:
    """``with Timer() as t: ...; t.s`` — wall seconds of a block."""

    def __enter__(self):
        self._t0 = time.perf_counter()
        self.s = 0.0
        return self

    def __exit__(self, *exc):
        self.s = time.perf_counter() - self._t0
        return False


@dataclass
class ResultRecord:
    """One bench's result; see the module docstring for the meaning of each field."""

    method: str
    claim: str
    setup: dict[str, Any]
    metrics: dict[str, Any]
    baselines: dict[str, dict[str, Any]] = field(default_factory=dict)
    env: dict[str, Any] = field(default_factory=env_info)
    wall_s: float = 0.0
    plots: list[str] = field(default_factory=list)  # file names beside the JSON
    notes: list[str] = field(default_factory=list)  # deviations, caveats: shown in the report
    headline: list[str] = field(default_factory=list)  # metric keys for the README row
    # filled by fmlab.core.experiment.record_fields (optional, so older records still load):
    splits: dict[str, Any] = field(default_factory=dict)  # sizes, digests, overlaps, seal
    tuning: dict[str, Any] = field(default_factory=dict)  # every arm's grid, scores, choice
    seeds_seen_in_design: list[int] = field(default_factory=list)
    intervals: dict[str, Any] = field(default_factory=dict)  # label -> paired difference

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def write_record(record: ResultRecord, path: str | os.PathLike) -> Path:
    """Validate and atomically write ``record`` as JSON."""
    d = record.to_dict()
    missing = [k for k in REQUIRED_FIELDS if d.get(k) in (None, "")]
    if missing:
        raise ValueError(f"result record is missing {missing}")
    if not isinstance(d["baselines"], Mapping):
        raise ValueError("result record 'baselines' must map baseline name -> metrics")
    return atomic_write_json(path, d)


_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "method": (str,),
    "claim": (str,),
    "setup": (dict,),
    "metrics": (dict,),
    "baselines": (dict,),
    "env": (dict,),
    "wall_s": (int, float),
    "plots": (list,),
    "notes": (list,),
    "headline": (list,),
}


def load_record(path: str | os.PathLike) -> dict[str, Any]:
    """Read a result record, checking its required fields and the type of every field the
    report reads; a problem is a ``ValueError`` naming the file and the field."""
    d = read_json(path)
    missing = [k for k in REQUIRED_FIELDS if k not in d] if isinstance(d, dict) else REQUIRED_FIELDS
    if missing:
        raise ValueError(f"{path}: not a result record (missing {list(missing)})")
    bad = [
        f"{k} is {type(d[k]).__name__}, not {' or '.join(t.__name__ for t in types)}"
        for k, types in _FIELD_TYPES.items()
        if k in d and (not isinstance(d[k], types) or isinstance(d[k], bool))
    ]
    bad += [
        f"baselines[{name!r}] is {type(m).__name__}, not a dict of metrics"
        for name, m in (d["baselines"].items() if isinstance(d["baselines"], dict) else ())
        if not isinstance(m, dict)
    ]
    bad += [
        f"headline entry {k!r} is not a metric name"
        for k in (d.get("headline") if isinstance(d.get("headline"), list) else ())
        if not isinstance(k, str)
    ]
    if bad:
        raise ValueError(
            f"{path}: not a valid result record ({'; '.join(bad)}); regenerate it with its bench"
        )
    return d


def figure():
    """pyplot on the non-interactive Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, plt, path: str | os.PathLike) -> Path:
    """Save ``fig`` atomically (format from the suffix) and close it."""
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=path.suffix.lstrip(".") or "png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def line_plot(
    path: str | os.PathLike,
    x: Sequence[float],
    series: Mapping[str, Sequence[float]],
    xlabel: str,
    ylabel: str,
    title: str = "",
    errors: Mapping[str, Sequence[float]] | None = None,
    logx: bool = False,
    logy: bool = False,
) -> Path:
    """One line per series over shared ``x``, with optional ±error bands; saved as PNG."""
    plt = figure()
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, ys in series.items():
        ax.plot(x, ys, marker="o", label=name)
        if errors and name in errors:
            lo = [y - e for y, e in zip(ys, errors[name], strict=True)]
            hi = [y + e for y, e in zip(ys, errors[name], strict=True)]
            ax.fill_between(x, lo, hi, alpha=0.2)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if logx:
        ax.set_xscale("log")
    if logy:
        ax.set_yscale("log")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    return save_figure(fig, plt, path)


def bar_plot(
    path: str | os.PathLike,
    values: Mapping[str, float],
    ylabel: str,
    title: str = "",
    errors: Mapping[str, float] | None = None,
) -> Path:
    """Bars for named values (e.g. arms), with optional error bars; saved as PNG."""
    plt = figure()
    fig, ax = plt.subplots(figsize=(max(4, 1.1 * len(values)), 4))
    names = list(values)
    errs = [errors.get(n, 0.0) for n in names] if errors else None
    ax.bar(names, [values[n] for n in names], yerr=errs, capsize=4, color="#4c72b0")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    plt.setp(ax.get_xticklabels(), rotation=20, ha="right")
    return save_figure(fig, plt, path)


def grouped_bar_plot(
    path: str | os.PathLike,
    groups: Mapping[str, Mapping[str, float]],
    ylabel: str,
    title: str = "",
    errors: Mapping[str, Mapping[str, float]] | None = None,
) -> Path:
    """Bars grouped on the x axis (e.g. splits), one colour per series (e.g. arms) with a
    legend, optional error bars of the same shape; saved as PNG."""
    plt = figure()
    series = list(dict.fromkeys(k for g in groups.values() for k in g))
    width = 0.8 / max(1, len(series))
    fig, ax = plt.subplots(figsize=(max(5, 0.35 * len(series) * len(groups) + 2), 4))
    for i, name in enumerate(series):
        xs = [j + (i - (len(series) - 1) / 2) * width for j in range(len(groups))]
        ys = [g.get(name, float("nan")) for g in groups.values()]
        errs = [errors.get(gk, {}).get(name, 0.0) for gk in groups] if errors else None
        ax.bar(xs, ys, width, yerr=errs, capsize=2, label=name)
    ax.set_xticks(range(len(groups)), list(groups))
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return save_figure(fig, plt, path)


def _fmt(v: Any) -> str:
    if isinstance(v, Mapping) and "mean" in v and "std" in v:
        return f"{_fmt(v['mean'])} ± {_fmt(v['std'])}"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return v
    return "…"  # nested structures are in the JSON


def _scalar_keys(*rows: Mapping[str, Any]) -> list[str]:
    keys: list[str] = []
    for row in rows:
        for k, v in row.items():
            if k not in keys and _fmt(v) != "…":
                keys.append(k)
    return keys


def delta_text(estimate: float, lo: float, hi: float, digits: int | None = None) -> str:
    """``"+0.019 [−0.001, +0.041]"``: a difference with its interval, rounded to two
    significant digits of the interval's width unless ``digits`` is given."""
    from math import floor, isfinite, log10

    if digits is None:
        w = abs(hi - lo)
        digits = min(6, max(0, 1 - floor(log10(w)))) if w and isfinite(w) else 3

    def signed(x: float) -> str:
        return f"{x:+.{digits}f}".replace("-", "−")

    return f"{signed(estimate)} [{signed(lo)}, {signed(hi)}]"


def format_interval(entry: Mapping[str, Any], compact: bool = False) -> str:
    """One line for an entry of a record's ``intervals``, e.g. ``Δ dtrpo − sft (acc):
    +0.019 [−0.001, +0.041] (per-item bootstrap, 95%, 600 items, p = 0.07; per-seed t: …)``;
    ``compact``: ``Δ acc dtrpo − sft = +0.019 [−0.001, +0.041]``. Empty if malformed."""
    per_item, per_seed = entry.get("per_item"), entry.get("per_seed")
    main = per_item or per_seed
    if not isinstance(main, Mapping) or not {"estimate", "lo", "hi"} <= set(main):
        return ""
    name, metric = f"{entry.get('a')} − {entry.get('b')}", entry.get("metric") or ""
    text = delta_text(main["estimate"], main["lo"], main["hi"])
    if compact:
        return f"Δ {metric + ' ' if metric else ''}{name} = {text}"
    unit = "items" if main is per_item else "seeds"
    detail = f"{main.get('method', '?')}, {main.get('level', 0.95):.0%}, {main.get('n')} {unit}"
    if main.get("p") is not None:
        detail += f", p = {main['p']:.2g}"
    if main is per_item and isinstance(per_seed, Mapping):
        seed_text = delta_text(per_seed["estimate"], per_seed["lo"], per_seed["hi"])
        detail += f"; per-seed t: {seed_text}, {per_seed.get('n')} seeds"
    return f"Δ {name}" + (f" ({metric})" if metric else "") + f": {text} ({detail})"


def interval_lines(
    d: Mapping[str, Any], headline_only: bool = False, compact: bool = False
) -> list[str]:
    """:func:`format_interval` of each entry of the record's ``intervals`` (only those
    flagged ``headline`` when ``headline_only``)."""
    ivs = d.get("intervals") or {}
    if not isinstance(ivs, Mapping):
        return []
    lines = []
    for e in ivs.values():
        if isinstance(e, Mapping) and (e.get("headline", True) or not headline_only):
            line = format_interval(e, compact)
            if line:
                lines.append(line)
    return lines


def render_record(d: Mapping[str, Any], rel_dir: str = ".") -> str:
    """Markdown for one record: claim, a metrics table (ours vs baselines), notes, plots."""
    lines = [f"### {d['method']}", "", f"**Claim.** {d['claim']}", ""]
    rows = {"fmlab (ours)": d["metrics"], **d.get("baselines", {})}
    keys = _scalar_keys(*rows.values())
    if keys:
        lines.append("| arm | " + " | ".join(keys) + " |")
        lines.append("|---" * (len(keys) + 1) + "|")
        for arm, m in rows.items():
            lines.append(f"| {arm} | " + " | ".join(_fmt(m.get(k, "")) for k in keys) + " |")
        lines.append("")
    ivs = interval_lines(d)
    if ivs:
        lines += ["**Differences** (paired, with intervals):", "", *(f"- {x}" for x in ivs), ""]
    cmd = d.get("setup", {}).get("command")
    lines.append(f"Wall time {_fmt(float(d['wall_s']))} s" + (f"; command: `{cmd}`" if cmd else ""))
    lines.append("")
    for note in d.get("notes", []):
        lines.append(f"- {note}")
    if d.get("notes"):
        lines.append("")
    for p in d.get("plots", []):
        lines.append(f"![{p}]({rel_dir}/{p})")
    lines.append("")
    return "\n".join(lines)


def render_report(results_dir: str | os.PathLike, out: str | os.PathLike | None = None) -> str:
    """Gather every record under ``results_dir`` into one Markdown report (written to ``out``)."""
    root = Path(results_dir)
    if not root.is_dir():
        raise FileNotFoundError(
            f"{root}: no results directory; pass --results DIR (e.g. runs/bench/<method> after "
            "a bench, or docs/results in the fmlab repository)"
        )
    out_path = Path(out) if out is not None else None
    base = out_path.parent if out_path is not None else root
    records = _records(root)
    parts = ["# fmlab results report", ""]
    parts += [render_record(d, os.path.relpath(p.parent, base)) for p, d in records]
    if not records:
        parts.append(f"No result records found under `{root}`.")
    text = "\n".join(parts)
    if out_path is not None:
        atomic_write_text(out_path, text)
    return text


README_START = "<!-- results:start (generated by `fmlab report --readme README.md`) -->"
README_END = "<!-- results:end -->"


def _records(results_dir: Path) -> list[tuple[Path, dict[str, Any]]]:
    """Every record under ``results_dir``: each ``*.json`` outside hidden files and folders
    (memos and partial files live there). One that is truncated or not a record is an error
    naming the file, never silently left out."""
    out, problems = [], []
    for p in sorted(results_dir.rglob("*.json")):
        if any(part.startswith(".") for part in p.relative_to(results_dir).parts):
            continue
        try:
            out.append((p, load_record(p)))
        except ValueError as e:
            problems.append(str(e))
    if problems:
        raise ValueError(
            "invalid result records (regenerate each with its bench, or restore it with "
            "`git checkout -- FILE`):\n  " + "\n  ".join(problems)
        )
    return out


def doc_pages(results_dir: str | os.PathLike) -> list[Path]:
    """The method pages beside a results directory (``docs/*.md`` for ``docs/results``)."""
    return sorted(Path(results_dir).resolve().parent.glob("*.md"))


def render_results_table(results_dir: str | os.PathLike, base: str | os.PathLike = ".") -> str:
    """The README results table: one row per record with its headline metrics, ours vs
    every baseline, each linked to its record."""
    root = Path(results_dir)
    lines = [
        "| method | record | headline (ours) | baselines (same run) |",
        "|---|---|---|---|",
    ]
    for p, d in _records(root):
        keys = d.get("headline") or _scalar_keys(d["metrics"])[:3]
        ours = ", ".join(f"{k} = {_fmt(d['metrics'].get(k))}" for k in keys if k in d["metrics"])
        ours = "; ".join(x for x in (ours, *interval_lines(d, True, compact=True)) if x)
        bases = "; ".join(
            f"{name}: " + ", ".join(f"{k} = {_fmt(m[k])}" for k in keys if k in m)
            for name, m in d.get("baselines", {}).items()
            if any(k in m for k in keys)
        )
        rel = os.path.relpath(p, base)
        doc = root.resolve().parent / f"{d['method']}.md"  # docs/<method>.md beside docs/results
        link = os.path.relpath(doc, Path(base).resolve())
        method = f"[{d['method']}]({link})" if doc.is_file() else d["method"]
        lines.append(f"| {method} | [{p.stem}]({rel}) | {ours} | {bases or '—'} |")
    return "\n".join(lines)


def update_readme(readme: str | os.PathLike, results_dir: str | os.PathLike) -> str:
    """Replace the README's generated results table (between the markers) from the records."""
    readme = Path(readme)
    text = readme.read_text(encoding="utf-8")
    if README_START not in text or README_END not in text:
        raise ValueError(
            f"{readme}: results markers not found; add the lines\n{README_START}\n{README_END}"
        )
    head, rest = text.split(README_START, 1)
    _, tail = rest.split(README_END, 1)
    table = render_results_table(results_dir, readme.parent)
    new = f"{head}{README_START}\n{table}\n{README_END}{tail}"
    atomic_write_text(readme, new)
    return new


_RECORD_BLOCK = re.compile(
    r"(<!-- record: (?P<path>[^ ]+) -->\n)(?P<body>.*?)(<!-- /record -->)", re.S
)


def update_doc_records(doc: str | os.PathLike, write: bool = True) -> str:
    """Regenerate every ``<!-- record: REL.json -->`` ... ``<!-- /record -->`` block of a doc
    page from the record it names (path relative to the page)."""
    doc = Path(doc)
    text = doc.read_text(encoding="utf-8")

    def sub(m: re.Match) -> str:
        rec_path = doc.parent / m.group("path")
        d = load_record(rec_path)
        body = render_record(d, os.path.relpath(rec_path.parent, doc.parent))
        return f"{m.group(1)}{body}\n{m.group(4)}"

    new = _RECORD_BLOCK.sub(sub, text)
    if write and new != text:
        atomic_write_text(doc, new)
    return new
