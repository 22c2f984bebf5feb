"""`fmlab rsparse eval`: perplexity of a sparsified model, labelled with its protocol."""

from __future__ import annotations

import json
import time
from pathlib import Path

import typer

from fmlab.core.cliutil import fail

app = typer.Typer(
    help="R-Sparse: training-free activation sparsity (sparse channels + low-rank rest).",
    no_args_is_help=True,
    add_completion=False,
)


@app.callback()
def _group() -> None:
    """R-Sparse commands (more to come: search, bench)."""


# Uniform baselines available so far; the searched recipe, TEAL's greedy and CATS are not built yet.
METHODS = {"dense": None, "teal-uniform": 1.0, "rsparse-uniform": None}


def _texts(split: str, text: Path | None) -> str:
    from fmlab.core.data.corpora import prose_documents, split_documents

    if text is not None:
        if not text.is_file():
            fail(f"{text}: no such text file")
        return text.read_text(encoding="utf-8")
    parts = split_documents(prose_documents(), (0.8, 0.1, 0.1), ("rest", "calib", "test"))
    return "\n\n".join(d.text for d in parts[split])


@app.command("eval")
def eval_cmd(
    sparsity: float = typer.Option(0.5, help="module sparsity s (every block linear alike)"),
    method: str = typer.Option("rsparse-uniform", help="dense | teal-uniform | rsparse-uniform"),
    alpha: float = typer.Option(
        0.9, help="rsparse-uniform: share of the budget for sparse channels"
    ),
    protocol: str = typer.Option(
        "all", help="all: every token sparse; tail: last 10% only (official code)"
    ),
    text: Path = typer.Option(None, help="text file to score (default: held-out prose split)"),
    model: str = typer.Option("smollm2-135m-instruct", help="bundled name or HF model directory"),
    max_tokens: int = typer.Option(8192, help="score at most this many tokens"),
    json_out: Path = typer.Option(None, "--json", help="write the result as JSON"),
) -> None:
    """Calibrate on a disjoint prose split, then print (and record) perplexity."""
    import torch

    from fmlab.core.evaluate import perplexity
    from fmlab.core.io import atomic_write_text
    from fmlab.core.models import load_pretrained
    from fmlab.rsparse import calibrate, set_protocol, sparsify

    if method not in METHODS:
        fail(f"unknown method {method!r}; choose one of: {', '.join(METHODS)}")
    if not 0 <= sparsity < 1:
        fail(f"--sparsity must be in [0, 1), got {sparsity}")
    lm, tok = load_pretrained(model)
    t0 = time.perf_counter()
    if method != "dense":
        a = METHODS[method] if METHODS[method] is not None else alpha
        sparsify(lm, sparsity, a)
        calib = torch.tensor(tok(_texts("calib", None))["input_ids"][:2048]).reshape(4, 512)
        calibrate(lm, [calib[i : i + 1] for i in range(4)])
        try:
            set_protocol(lm, protocol)
        except ValueError as e:
            fail(str(e))
    ids = tok(_texts("test", text))["input_ids"][:max_tokens]
    res = perplexity(lm, ids, window=512, stride=256)
    out = {
        "method": method,
        "sparsity": sparsity,
        "alpha": alpha if method == "rsparse-uniform" else METHODS[method],
        "protocol": protocol if method != "dense" else "n/a",
        "model": model,
        **res,
        "wall_s": time.perf_counter() - t0,
    }
    typer.echo(json.dumps(out))
    if json_out is not None:
        atomic_write_text(json_out, json.dumps(out, indent=2))
