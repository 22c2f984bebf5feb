"""The one registry of methods: what the CLI mounts, what `fmlab demo` runs, what docs/ lists.

A method is registered here once it exists; a test checks that every entry has its package,
its ``cli.app``, its ``docs/<method>.md`` and a line in ``fmlab --help``, and that no method
package or doc exists without an entry.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["METHODS", "Method", "get_method"]


@dataclass(frozen=True)
class Method:
    name: str  # CLI name, e.g. "param-delta"
    package: str  # import path, e.g. "fmlab.param_delta"
    summary: str  # one line for `fmlab --help`
    quick_bench: str | None = None  # "module:function", called as f(out_dir) -> ResultRecord

    @property
    def doc(self) -> str:
        """Path of the method's page, relative to the repository root."""
        return f"docs/{self.package.rsplit('.', 1)[-1]}.md"

    def load_app(self):
        """Import the method's Typer app (``<package>.cli:app``)."""
        return importlib.import_module(f"{self.package}.cli").app

    def load_quick_bench(self) -> Callable | None:
        if self.quick_bench is None:
            return None
        mod, fn = self.quick_bench.split(":")
        return getattr(importlib.import_module(mod), fn)


METHODS: tuple[Method, ...] = (
    Method(
        name="param-delta",
        package="fmlab.param_delta",
        summary="ParamΔ: transfer post-training to an updated base by weight arithmetic.",
        quick_bench="fmlab.param_delta.bench:quick",
    ),
    Method(
        name="rsparse",
        package="fmlab.rsparse",
        summary="R-Sparse: training-free activation sparsity (sparse channels + low-rank rest).",
        quick_bench="fmlab.rsparse.bench:quick",
    ),
    Method(
        name="tempo",
        package="fmlab.tempo",
        summary="Tempo: query-aware video token compression with adaptive allocation.",
        quick_bench="fmlab.tempo.bench:quick",
    ),
    Method(
        name="dtrpo",
        package="fmlab.dtrpo",
        summary="dTRPO: single-forward trajectory preference optimization for diffusion LMs.",
        quick_bench="fmlab.dtrpo.bench:quick",
    ),
    Method(
        name="rdd",
        package="fmlab.rdd",
        summary="RDD: cut demonstrations into sub-tasks by retrieval against the policy's data.",
        quick_bench="fmlab.rdd.bench:quick",
    ),
)


def get_method(name: str) -> Method:
    """Look up a method by CLI name; unknown names list the valid ones."""
    for m in METHODS:
        if m.name == name:
            return m
    valid = ", ".join(m.name for m in METHODS) or "(none registered yet)"
    raise ValueError(f"unknown method {name!r}; choose one of: {valid}")
