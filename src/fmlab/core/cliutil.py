"""Small helpers shared by the root CLI and every method's CLI."""

from __future__ import annotations

import sys

import typer

__all__ = ["fail", "log"]


def fail(msg: str, code: int = 2) -> None:
    """Print ``error: msg`` in red on stderr and exit with ``code`` (no traceback)."""
    typer.secho(f"error: {msg}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def log(msg: str) -> None:
    """A progress line on stderr (stdout stays machine-readable)."""
    print(msg, file=sys.stderr, flush=True)
