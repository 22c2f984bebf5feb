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

# every arm of the quality record; "teal" is TEAL-greedy's short name
METHODS = ("dense", "teal-greedy", "teal", "teal-uniform", "cats", "rsparse-uniform", "rsparse")
SEARCH_METHODS = ("rsparse", "teal", "teal-greedy")
BUNDLED = "smollm2-135m-instruct"
CALIB_HELP = "calibration text file (.txt/.jsonl; default: the prose corpus' calib split)"


@app.callback()
def _group() -> None:
    """R-Sparse commands."""


def _check_sparsity(s: float) -> None:
    if not 0 <= s < 1:
        fail(f"--sparsity must be in [0, 1), got {s}")


def _check_file(path: Path | None, what: str) -> None:
    if path is not None and not path.is_file():
        fail(f"{path}: no such {what} file")


def _prepare(model: str, weighted: bool, calib_text: Path | None, keep_svd: bool = False):
    """Load, sparsify (all dense for now), calibrate on the calibration split (with progress)."""
    from fmlab.core.experiment import SplitError
    from fmlab.rsparse import calibrate, sparsify
    from fmlab.rsparse.bench import QualityConfig
    from fmlab.rsparse.data import load_model, text_splits

    try:
        lm, tok = load_model(model)
        ts = text_splits(tok, 0, calib_text)
        calib = list(ts.calib_windows(QualityConfig.calib_windows)[:, None])
    except (ValueError, FileNotFoundError, OSError, SplitError) as e:
        fail(str(e))
    sparsify(lm, 0.0, 1.0, weighted=weighted, keep_svd=keep_svd)
    calibrate(lm, calib, progress=_log)
    return lm, tok, ts


def _recipe(path: Path | None, model: str, method: str, sparsity: float):
    from fmlab.rsparse.recipe import Recipe, shipped_recipe

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
    calib_text: Path = typer.Option(None, help=CALIB_HELP),
    generations: int = typer.Option(12, help="evolutionary search generations"),
    population: int = typer.Option(8, help="evolutionary search population"),
    seed: int = typer.Option(0),
) -> None:
    """Find a per-module (s, α) recipe for a model-level sparsity and write it as JSON.

    The evolutionary search's fitness is the calibration text; its finalists are then judged on
    the validation split and the best there is written (the search overfits its own text)."""
    from fmlab.rsparse.bench import QualityConfig, mean_nll, window_nlls
    from fmlab.rsparse.recipe import Recipe, evolve, teal_greedy, uniform
    from fmlab.rsparse.sparse import sparsify

    _check_sparsity(sparsity)
    if method not in SEARCH_METHODS:
        fail(f"unknown search method {method!r}; choose one of: {', '.join(SEARCH_METHODS)}")
    method = "teal" if method == "teal-greedy" else method
    _check_file(calib_text, "calibration text")
    if out.exists():
        fail(f"{out} already exists; choose another --out or remove it")
    if save is not None and save.exists():
        fail(f"{save} already exists; choose another --save directory or remove it")
    t0 = time.perf_counter()
    cfg = QualityConfig()
    lm, tok, ts = _prepare(model, method == "rsparse", calib_text, keep_svd=method == "rsparse")
    greedy = teal_greedy(lm, ts.calib_windows(1)[:, : cfg.greedy_tokens], [sparsity],
                         progress=_log)[sparsity]  # fmt: skip
    meta: dict = {"calib_windows": cfg.calib_windows, "calib_text": str(calib_text or "")}
    if method == "teal":
        modules = greedy
        meta["search"] = "block-wise greedy"
    else:
        init = [{n: (v[0], 1.0) for n, v in greedy.items()}, uniform(lm, sparsity, 0.9),
                uniform(lm, sparsity, 1.0)]  # fmt: skip
        try:
            fit = ts.search_text(cfg.calib_windows, cfg.search_tokens)
            val = ts.ids("val", cfg.val_tokens, "validation")
        except ValueError as e:
            fail(str(e))
        ranked, hist = evolve(lm, fit, sparsity, init, population, generations, seed=seed,
                              progress=_log)  # fmt: skip
        val_nll = []
        for i, (_, rec) in enumerate(ranked):
            sparsify(lm, recipe=rec)
            val_nll.append(mean_nll(window_nlls(lm, val, cfg.window, cfg.stride)))
            _log(f"finalist {i + 1}/{len(ranked)}: validation nll {val_nll[-1]:.4f}")
        pick = min(range(len(ranked)), key=val_nll.__getitem__)
        modules = ranked[pick][1]
        meta.update(generations=generations, population=population, seed=seed, history=hist,
                    chosen_on_val=pick, val_nll=val_nll)  # fmt: skip
    meta["seconds"] = time.perf_counter() - t0
    recipe = Recipe(modules, sparsity, method, method == "rsparse", model, meta)
    recipe.save(out)
    typer.echo(f"wrote {out} ({len(modules)} modules, {meta['seconds']:.0f} s)")
    if save is not None:
        from fmlab.rsparse.store import save_sparse

        sparsify(lm, recipe=modules)
        save_sparse(lm, save, tok, meta={"recipe": str(out), "method": method})
        typer.echo(f"saved the sparsified model to {save}")


def _load_for_eval(method, sparsity, alpha, recipe, model, calib_text, sparse):
    """(model, tokenizer, text splits or None, info) for ``eval``."""
    from fmlab.rsparse import sparsify
    from fmlab.rsparse.recipe import realised_sparsity

    if sparse is not None:
        from fmlab.core.io import CheckpointError
        from fmlab.rsparse.store import load_sparse

        try:
            lm, tok, info = load_sparse(sparse)
        except CheckpointError as e:
            fail(str(e))
        return lm, tok, None, {**info, "method": f"loaded:{sparse}"}
    if method == "dense":
        from fmlab.rsparse.data import load_model

        try:
            lm, tok = load_model(model)
        except ValueError as e:
            fail(str(e))
        return lm, tok, None, {}
    if method == "cats":
        from fmlab.rsparse.cats import calibrate_cats, cats_sparsify
        from fmlab.rsparse.data import load_model, text_splits

        try:
            lm, tok = load_model(model)
            ts = text_splits(tok, 0, calib_text)
        except (ValueError, OSError) as e:
            fail(str(e))
        try:
            cats_sparsify(lm, sparsity)
        except ValueError as e:
            fail(str(e))
        calibrate_cats(lm, list(ts.calib_windows(4)[:, None]))
        return lm, tok, ts, {}
    weighted, modules = method.startswith("rsparse"), None
    if method in ("teal", "teal-greedy", "rsparse"):
        r = _recipe(recipe, model, "teal" if method.startswith("teal") else method, sparsity)
        modules, weighted = r.modules, r.weighted
    lm, tok, ts = _prepare(model, weighted, calib_text)
    try:
        sparsify(lm, sparsity, alpha if method == "rsparse-uniform" else 1.0, recipe=modules)
    except ValueError as e:
        fail(f"the recipe does not fit {model}: {e}")
    return lm, tok, ts, {"realised_sparsity": realised_sparsity(lm)}


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
    calib_text: Path = typer.Option(None, help=CALIB_HELP),
    model: str = typer.Option(BUNDLED, help="bundled name or HF model directory"),
    sparse: Path = typer.Option(None, help="a directory written by `search --save` instead"),
    max_tokens: int = typer.Option(4096, help="score at most this many tokens"),
    json_out: Path = typer.Option(None, "--json", help="write the result as JSON"),
) -> None:
    """Calibrate on a disjoint text, sparsify, then print (and record) perplexity."""
    import math

    import torch

    from fmlab.core.io import atomic_write_json
    from fmlab.rsparse import set_protocol
    from fmlab.rsparse.bench import mean_nll, window_nlls
    from fmlab.rsparse.cats import set_cats_protocol

    if method not in METHODS:
        fail(f"unknown method {method!r}; choose one of: {', '.join(METHODS)}")
    _check_sparsity(sparsity)
    if protocol not in ("all", "tail"):
        fail(f"--protocol must be all or tail, got {protocol!r}")
    _check_file(text, "text")
    _check_file(calib_text, "calibration text")
    t0 = time.perf_counter()
    lm, tok, ts, info = _load_for_eval(method, sparsity, alpha, recipe, model, calib_text, sparse)
    method = info.pop("method", method)
    set_protocol(lm, protocol)
    set_cats_protocol(lm, protocol)
    ids = _eval_ids(tok, ts, text, max_tokens)
    _log(f"scoring {len(ids)} tokens in windows of 512 (stride 256)")
    t1 = time.perf_counter()
    with torch.no_grad():
        per = window_nlls(lm, ids, 512, 256, progress=_log)
    nll = mean_nll(per)

    out = {
        "method": method,
        "sparsity": sparsity if method != "dense" else 0.0,
        "alpha": alpha if method == "rsparse-uniform" else None,
        "protocol": protocol if method != "dense" else "n/a",
        "model": model,
        "text": str(text) if text else "held-out prose split (test)",
        "calib_text": str(calib_text) if calib_text else "prose calib split",
        **info,
        "ppl": math.exp(nll),
        "nll": nll,
        "tokens": sum(c for _, c in per),
        "score_s": time.perf_counter() - t1,
        "wall_s": time.perf_counter() - t0,
    }
    typer.echo(json.dumps(out))
    if json_out is not None:
        atomic_write_json(json_out, out)


def _eval_ids(tok, ts, text: Path | None, max_tokens: int):
    import torch

    if text is not None:
        ids = tok(text.read_text(encoding="utf-8"))["input_ids"][:max_tokens]
    else:
        from fmlab.rsparse.data import text_splits

        ts = ts or text_splits(tok)
        ts.splits.open_test("fmlab rsparse eval scores the held-out test split")
        try:
            ids = ts.ids("test", min(max_tokens, 4096), "evaluation").tolist()
        except ValueError as e:
            fail(str(e))
    if len(ids) < 2:
        fail("the text has fewer than 2 tokens; give a longer --text file")
    return torch.as_tensor(ids)


@app.command()
def bench(
    out: Path = typer.Option(None, help=BENCH_OUT_HELP),
    quick: bool = typer.Option(False, help="a few-minute run that claims nothing"),
    speed_only: bool = typer.Option(False, help="only the decode/prefill speed record"),
    quality_only: bool = typer.Option(False, help="only the perplexity record"),
    calib_text: Path = typer.Option(None, help=CALIB_HELP),
    repeats: int = typer.Option(None, help="speed: repeats per cell (median; at least 5 full)"),
) -> None:
    """Perplexity on unseen text for every method and protocol, and decode/prefill speed.

    Records, plots and the chosen recipes go to --out only (never into the package)."""
    from fmlab.core.experiment import with_overrides
    from fmlab.rsparse.bench import QualityConfig, quick_config, run_quality
    from fmlab.rsparse.speed import SpeedConfig, run_speed

    if speed_only and quality_only:
        fail("--speed-only and --quality-only exclude each other")
    _check_file(calib_text, "calibration text")
    if repeats is not None and repeats < (2 if quick else 5):
        fail(f"--repeats must be at least {2 if quick else 5} (the median of the repeats)")
    out = bench_out("rsparse", out, quick)
    if not speed_only:
        cfg = quick_config(out) if quick else QualityConfig()
        cfg = with_overrides(cfg, calib_text=str(calib_text) if calib_text else None)
        rec = run_quality(out, cfg, log=_log)
        typer.echo(
            f"quality: ppl@50 {rec.metrics.get('ppl@50')} (dense {rec.metrics['dense_ppl']:.3f})"
        )
    if not quality_only:
        scfg = with_overrides(SpeedConfig.quick() if quick else SpeedConfig(), repeats=repeats)
        rec = run_speed(out, scfg, log=_log)
        typer.echo(f"speed: decode x{rec.metrics['decode_speedup_vs_dense']:.2f} vs dense")
