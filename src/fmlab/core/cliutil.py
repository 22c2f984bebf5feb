"""Small helpers shared by the root CLI and every method's CLI."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

__all__ = ["BENCH_OUT_HELP", "bench_out", "fail", "log"]

BENCH_OUT_HELP = (
    "where records and plots go; default: a scratch folder under runs/bench/ (named on "
    "stderr). The committed records change only when asked, with --out docs/results/..."
)


def fail(msg: str, code: int = 2) -> None:
    """Print ``error: msg`` in red on stderr and exit with ``code`` (no traceback)."""
    typer.secho(f"error: {msg}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def log(msg: str) -> None:
    """A progress line on stderr (stdout stays machine-readable)."""
    print(msg, file=sys.stderr, flush=True)


def bench_out(method: str, out: Path | None, quick: bool = False) -> Path:
    """The directory a bench writes to: ``out`` when given, else the scratch folder
    ``runs/bench/<method>`` (``.../quick`` for a quick run). A committed record in
    ``docs/results/`` is replaced only when ``--out`` asks for it, and never by a quick run,
    whose numbers claim nothing."""
    if out is None:
        out = Path("runs") / "bench" / method / ("quick" if quick else "")
    elif quick and "docs/results" in Path(out).resolve().as_posix():
        fail(
            f"--out {out}: a quick run claims nothing, so it never replaces the committed "
            "records in docs/results; leave --out unset (runs/bench/...) or choose another folder"
        )
    log(f"records and plots go to {out}/")
    return Path(out)
