"""`fmlab rsparse search|eval|bench`: recipes, perplexity (always labelled with its protocol)
and the reproduction."""

from __future__ import annotations

import json
import time
from pathlib import Path

import typer

from fmlab.core.cliutil import BENCH_OUT_HELP, bench_out, fail
from fmlab.core.cliutil import log as _log

app = typer.Typer(
    help="R-Sparse: training-free activation sparsity (sparse channels + low-rank rest).",
    no_args_is_help=True,
    add_completion=False,
)

METHODS = ("dense", "teal", "cats", "rsparse-uniform", "rsparse")
BUNDLED = "smollm2-135m-instruct"


@app.callback()
def _group() -> None:
    """R-Sparse commands."""


def _check_sparsity(s: float) -> None:
    if not 0 <= s < 1:
        fail(f"--sparsity must be in [0, 1), got {s}")


def _prepare(model: str, weighted: bool, keep_svd: bool = False):
    """Load, sparsify (all dense for now), calibrate on the calibration split."""
    from fmlab.core.models import load_pretrained
    from fmlab.rsparse import calibrate, sparsify
    from fmlab.rsparse.bench import QualityConfig, splits

    lm, tok = load_pretrained(model, device="cpu")
    ids = splits(tok, QualityConfig(model=model))
    sparsify(lm, 0.0, 1.0, weighted=weighted, keep_svd=keep_svd)
    calibrate(lm, [ids["calib"][i : i + 1] for i in range(len(ids["calib"]))])
    return lm, tok, ids


def _recipe(path: Path | None, model: str, method: str, sparsity: float):
    from fmlab.rsparse.bench import shipped_recipe
    from fmlab.rsparse.recipe import Recipe

    try:
        if path is not None:
            r = Recipe.load(path)
            if abs(r.target - sparsity) > 1e-9:
                _log(f"note: {path} was searched for sparsity {r.target:g}; using it as is")
            return r
        if model != BUNDLED:
            fail(
                f"no shipped recipe for {model}: run `fmlab rsparse search --model {model} "
                f"--method {method} --sparsity {sparsity:g} --out R.json`, then pass --recipe R.json"
            )
        return shipped_recipe(model, method, sparsity)
    except (FileNotFoundError, ValueError) as e:
        fail(str(e))


@app.command()
def search(
    sparsity: float = typer.Option(0.5, help="model-level sparsity target"),
    method: str = typer.Option("rsparse", help="rsparse (evolutionary) | teal (block-wise greedy)"),
    model: str = typer.Option(BUNDLED, help="bundled name or HF model directory"),
    out: Path = typer.Option(..., help="recipe JSON to write"),
    save: Path = typer.Option(None, help="also save the sparsified model to this directory"),
    generations: int = typer.Option(12, help="evolutionary search generations"),
    population: int = typer.Option(8, help="evolutionary search population"),
    seed: int = typer.Option(0),
) -> None:
    """Find a per-module (s, α) recipe for a model-level sparsity and write it as JSON."""
    from fmlab.rsparse.recipe import Recipe, evolutionary_search, teal_greedy, uniform
    from fmlab.rsparse.sparse import sparsify

    _check_sparsity(sparsity)
    if method not in ("rsparse", "teal"):
        fail(f"--method must be rsparse or teal, got {method!r}")
    if out.exists():
        fail(f"{out} already exists; choose another --out or remove it")
    if save is not None and save.exists():
        fail(f"{save} already exists; choose another --save directory or remove it")
    t0 = time.perf_counter()
    lm, tok, ids = _prepare(model, weighted=method == "rsparse", keep_svd=method == "rsparse")
    greedy = teal_greedy(lm, ids["calib"][:1, :256], [sparsity], progress=_log)[sparsity]
    meta = {"calib_windows": len(ids["calib"]), "seconds": None}
    if method == "teal":
        modules = greedy
        meta["search"] = "block-wise greedy"
    else:
        init = [
            {n: (v[0], 1.0) for n, v in greedy.items()},
            uniform(lm, sparsity, 0.9),
            uniform(lm, sparsity, 1.0),
        ]
        modules, hist = evolutionary_search(
            lm, ids["search"], sparsity, init, population, generations, seed=seed, progress=_log
        )
        meta.update(generations=generations, population=population, seed=seed, history=hist)
    meta["seconds"] = time.perf_counter() - t0
    recipe = Recipe(modules, sparsity, method, method == "rsparse", model, meta)
    recipe.save(out)
    typer.echo(f"wrote {out} ({len(modules)} modules, {meta['seconds']:.0f} s)")
    if save is not None:
        from fmlab.rsparse.store import save_sparse

        sparsify(lm, recipe=modules)
        save_sparse(lm, save, tok, meta={"recipe": str(out), "method": method})
        typer.echo(f"saved the sparsified model to {save}")


@app.command("eval")
def eval_cmd(
    sparsity: float = typer.Option(0.5, help="model-level sparsity"),
    method: str = typer.Option("rsparse", help=" | ".join(METHODS)),
    recipe: Path = typer.Option(None, help="recipe JSON (default: the shipped one)"),
    alpha: float = typer.Option(1.0, help="rsparse-uniform: share of the budget for channels"),
    protocol: str = typer.Option(
        "all", help="all: every token sparse; tail: last 10% only (official code)"
    ),
    text: Path = typer.Option(None, help="text file to score (default: held-out prose split)"),
    model: str = typer.Option(BUNDLED, help="bundled name or HF model directory"),
    sparse: Path = typer.Option(None, help="a directory written by `search --save` instead"),
    max_tokens: int = typer.Option(4096, help="score at most this many tokens"),
    json_out: Path = typer.Option(None, "--json", help="write the result as JSON"),
) -> None:
    """Calibrate on a disjoint prose split, sparsify, then print (and record) perplexity."""
    import torch

    from fmlab.core.evaluate import perplexity
    from fmlab.core.io import atomic_write_text
    from fmlab.rsparse import set_protocol, sparsify
    from fmlab.rsparse.cats import calibrate_cats, cats_sparsify, set_cats_protocol
    from fmlab.rsparse.recipe import realised_sparsity

    if method not in METHODS:
        fail(f"unknown method {method!r}; choose one of: {', '.join(METHODS)}")
    _check_sparsity(sparsity)
    if protocol not in ("all", "tail"):
        fail(f"--protocol must be all or tail, got {protocol!r}")
    if text is not None and not text.is_file():
        fail(f"{text}: no such text file")
    t0 = time.perf_counter()
    info: dict = {}
    if sparse is not None:
        from fmlab.core.io import CheckpointError
        from fmlab.rsparse.store import load_sparse

        try:
            lm, tok, info = load_sparse(sparse)
        except CheckpointError as e:
            fail(str(e))
        method = f"loaded:{sparse}"
        set_protocol(lm, protocol)
    elif method == "dense":
        from fmlab.core.models import load_pretrained

        lm, tok = load_pretrained(model, device="cpu")
    elif method == "cats":
        from fmlab.core.models import load_pretrained
        from fmlab.rsparse.bench import QualityConfig, splits

        lm, tok = load_pretrained(model, device="cpu")
        try:
            cats_sparsify(lm, sparsity)
        except ValueError as e:
            fail(str(e))
        calib = splits(tok, QualityConfig(model=model))["calib"]
        calibrate_cats(lm, [calib[i : i + 1] for i in range(len(calib))])
        set_cats_protocol(lm, protocol)
    else:
        weighted = method != "teal"
        if method == "rsparse-uniform":
            modules = None
        else:
            r = _recipe(recipe, model, method, sparsity)
            modules, weighted = r.modules, r.weighted
        lm, tok, _ = _prepare(model, weighted)
        try:
            sparsify(lm, sparsity, alpha, recipe=modules)
        except ValueError as e:
            fail(f"the recipe does not fit {model}: {e}")
        set_protocol(lm, protocol)
        info["realised_sparsity"] = realised_sparsity(lm)
    if text is not None:
        body = text.read_text(encoding="utf-8")
        ids = tok(body)["input_ids"][:max_tokens]
    else:
        from fmlab.rsparse.bench import QualityConfig, splits

        ids = splits(tok, QualityConfig(model=model, test_tokens=min(max_tokens, 4096)))["test"]
        ids = ids[:max_tokens]
    if len(ids) < 2:
        fail("the text has fewer than 2 tokens; give a longer --text file")
    res = perplexity(lm, torch.as_tensor(ids), window=512, stride=256)
    out = {
        "method": method,
        "sparsity": sparsity if method != "dense" else 0.0,
        "alpha": alpha if method == "rsparse-uniform" else None,
        "protocol": protocol if method != "dense" else "n/a",
        "model": model,
        "text": str(text) if text else "held-out prose split",
        **info,
        **res,
        "wall_s": time.perf_counter() - t0,
    }
    typer.echo(json.dumps(out))
    if json_out is not None:
        atomic_write_text(json_out, json.dumps(out, indent=2))


@app.command()
def bench(
    out: Path = typer.Option(None, help=BENCH_OUT_HELP),
    quick: bool = typer.Option(False, help="a few-minute run that claims nothing"),
    speed_only: bool = typer.Option(False, help="only the decode/prefill speed record"),
    quality_only: bool = typer.Option(False, help="only the perplexity record"),
    repeats: int = typer.Option(5, help="speed: repeats per arm (median reported)"),
) -> None:
    """Perplexity vs sparsity for every method and protocol, and decode speed (records + plots)."""
    from fmlab.rsparse.bench import QualityConfig, run_quality, run_speed

    if speed_only and quality_only:
        fail("--speed-only and --quality-only exclude each other")
    out = bench_out("rsparse", out, quick)
    if not speed_only:
        cfg = QualityConfig.quick() if quick else QualityConfig()
        # searched recipes go beside the record, never into the installed package
        rec = run_quality(out, cfg, recipes_dir=None if quick else out / "recipes", log=_log)
        typer.echo(
            f"quality: ppl@50 {rec.metrics.get('ppl@50')} (dense {rec.metrics['dense_ppl']:.3f})"
        )
    if not quality_only:
        rec = run_speed(out, repeats=repeats, log=_log)
        typer.echo(f"speed: decode x{rec.metrics['decode_speedup_vs_dense']:.2f} vs dense")
