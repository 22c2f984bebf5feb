"""R-Sparse reproduction on the bundled SmolLM2-135M-Instruct.

Quality (``quality.json``): perplexity on a held-out document split vs model-level sparsity
for dense, TEAL-style (magnitude |x|, block-wise greedy per-projection sparsities), CATS-style
(gate thresholding), R-Sparse with the best uniform α and R-Sparse searched (evolutionary), each
under both protocols (``all`` tokens sparse; ``tail``: the official code's last 10%).
Thresholds come from a disjoint calibration split; search fitness from a third slice of it.
Greedy behaviour probes at 0% and 50%.

Speed (``speed.json``): batch-1 decode tokens/s with the KV cache (median of repeats, 2 torch
threads, the decode kernel on one thread) and prefill tokens/s, dense vs 50% R-Sparse vs 50%
TEAL-style, beside the analytic bytes of weights read per token.

Long runs print progress and resume: finished evaluations and searched recipes are kept in
``<out>/.rsparse-bench.partial.json`` and reused by the next run with the same settings.
"""

from __future__ import annotations

import statistics
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from fmlab.core.io import Memo
from fmlab.core.results import (
    ResultRecord,
    Timer,
    bar_plot,
    figure,
    peak_rss_mb,
    save_figure,
    write_record,
)
from fmlab.rsparse.cats import calibrate_cats, cats_sparsify, set_cats_protocol
from fmlab.rsparse.recipe import (
    Recipe,
    evolutionary_search,
    model_sparsity,
    module_params,
    realised_sparsity,
    recipe_loss,
    teal_greedy,
    uniform,
)
from fmlab.rsparse.sparse import PROTOCOLS, calibrate, rsparse_modules, set_protocol, sparsify

__all__ = ["QualityConfig", "quick", "run_quality", "run_speed", "shipped_recipe"]

RECIPES_DIR = Path(__file__).parent / "recipes"
PROBES = [
    "What is the capital of France?",
    "Name three colours of the rainbow.",
    "Translate 'good morning' into Spanish.",
    "What is 7 plus 5?",
]


@dataclass(frozen=True)
class QualityConfig:
    model: str = "smollm2-135m-instruct"
    sparsities: tuple[float, ...] = (0.3, 0.4, 0.5, 0.6, 0.7)
    calib_windows: int = 4  # × 512 tokens for thresholds (and the greedy's block inputs)
    search_tokens: int = 512  # fitness text for the searches, after the calibration tokens
    greedy_tokens: int = 256  # block inputs for TEAL's greedy (first calibration tokens)
    greedy_step: float = 0.025  # block-level sparsity step of the greedy
    test_tokens: int = 4096
    window: int = 512
    stride: int = 256
    uniform_alphas: tuple[float, ...] = (1.0, 0.95, 0.9, 0.8)
    population: int = 8
    generations: int = 12
    seed: int = 0
    probes: bool = True

    @classmethod
    def quick(cls) -> QualityConfig:
        return cls(
            sparsities=(0.5,),
            calib_windows=1,
            search_tokens=128,
            greedy_tokens=64,
            greedy_step=0.1,
            test_tokens=512,
            uniform_alphas=(1.0, 0.9),
            population=3,
            generations=1,
            probes=False,
        )


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def splits(tok, cfg: QualityConfig) -> dict[str, torch.Tensor]:
    """Token ids: calibration windows, search text (same split, later tokens), test text."""
    from fmlab.core.data.corpora import prose_documents, split_documents

    parts = split_documents(prose_documents(), (0.8, 0.1, 0.1), ("rest", "calib", "test"))
    calib = tok("\n\n".join(d.text for d in parts["calib"]))["input_ids"]
    test = tok("\n\n".join(d.text for d in parts["test"]))["input_ids"]
    n_cal = cfg.calib_windows * 512
    if len(calib) < n_cal + cfg.search_tokens + 1 or len(test) < cfg.test_tokens:
        raise ValueError("the prose corpus is too small for these calibration/search/test sizes")
    return {
        "calib": torch.tensor(calib[:n_cal]).reshape(cfg.calib_windows, 512),
        "search": torch.tensor(calib[n_cal : n_cal + cfg.search_tokens + 1])[None],
        "test": torch.tensor(test[: cfg.test_tokens]),
    }


def _ppl(model, ids, cfg) -> float:
    from fmlab.core.evaluate import perplexity

    return perplexity(model, ids, window=cfg.window, stride=cfg.stride)["ppl"]


def _probe(model, tok) -> list[str]:
    from fmlab.core.evaluate import generate

    return [a.strip() for a in generate(model, tok, PROBES, max_new_tokens=20)]


def run_quality(
    out_dir: str | Path,
    cfg: QualityConfig = QualityConfig(),
    recipes_dir: Path | None = RECIPES_DIR,
    log=_log,
) -> ResultRecord:
    from fmlab.core.models import load_pretrained

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    memo = Memo(out / ".rsparse-bench.partial.json", asdict(cfg), log=log)
    torch.manual_seed(cfg.seed)
    with Timer() as total:
        model, tok = load_pretrained(cfg.model, device="cpu")
        ids = splits(tok, cfg)
        calib = [ids["calib"][i : i + 1] for i in range(len(ids["calib"]))]
        ppl: dict[str, dict[str, dict[str, float]]] = {}  # method -> protocol -> "s" -> ppl
        probes: dict[str, list[str]] = {}
        extra: dict = {}

        def evaluate(model, method, s, protocol_setter, probe=False):
            for protocol in PROTOCOLS:
                key = f"{method}|{s}|{protocol}"
                val = memo.get(key)
                if val is None:
                    protocol_setter(protocol)
                    with Timer() as t:
                        val = _ppl(model, ids["test"], cfg)
                    memo.put(key, val)
                    log(f"{method} s={s:g} {protocol}: ppl {val:.3f} ({t.s:.0f} s)")
                ppl.setdefault(method, {}).setdefault(protocol, {})[f"{s:g}"] = val
            protocol_setter("all")
            if probe and cfg.probes:
                key = f"probe|{method}|{s}"
                if memo.get(key) is None:
                    memo.put(key, _probe(model, tok))
                probes[f"{method}@{s:g}"] = memo.get(key)

        # dense
        val = memo.get("dense")
        if val is None:
            val = _ppl(model, ids["test"], cfg)
            memo.put("dense", val)
        dense_ppl = val
        log(f"dense: ppl {dense_ppl:.3f}")
        if cfg.probes:
            if memo.get("probe|dense|0") is None:
                memo.put("probe|dense|0", _probe(model, tok))
            probes["dense@0"] = memo.get("probe|dense|0")

        # TEAL-style: magnitude scores, block-wise greedy per-projection sparsities
        sparsify(model, 0.0, 1.0, weighted=False)
        calibrate(model, calib)
        params = module_params(model)
        teal = memo.get("recipes|teal")
        if teal is None:
            with Timer() as t:
                teal = teal_greedy(
                    model,
                    ids["calib"][:1, : cfg.greedy_tokens],
                    list(cfg.sparsities),
                    block_step=cfg.greedy_step,
                    progress=log,
                )
            teal = {f"{s:g}": r for s, r in teal.items()}
            memo.put("recipes|teal", teal)
            memo.put("seconds|teal-greedy", t.s)
        teal = {k: {n: tuple(v) for n, v in r.items()} for k, r in teal.items()}
        for s in cfg.sparsities:
            sparsify(model, recipe=teal[f"{s:g}"])
            evaluate(model, "teal", s, lambda p: set_protocol(model, p), probe=s == 0.5)
        for s in cfg.sparsities:  # ablation: TEAL's scores with a uniform allocation
            sparsify(model, s, 1.0)
            evaluate(model, "teal-uniform", s, lambda p: set_protocol(model, p))

        # R-Sparse: |x|·‖W_j‖ scores, uniform α (best on the search text) and searched
        model, tok = load_pretrained(cfg.model, device="cpu")
        sparsify(model, 0.0, 1.0, weighted=True, keep_svd=True)
        calibrate(model, calib)
        best_alpha, searched, history = {}, {}, {}
        for s in cfg.sparsities:
            key = f"uniform-alpha|{s}"
            if memo.get(key) is None:
                losses = {
                    f"{a:g}": recipe_loss(model, ids["search"], uniform(model, s, a))
                    for a in cfg.uniform_alphas
                }
                memo.put(key, losses)
            losses = memo.get(key)
            best_alpha[f"{s:g}"] = float(min(losses, key=losses.get))
            extra.setdefault("uniform_alpha_search_loss", {})[f"{s:g}"] = losses
            sparsify(model, s, best_alpha[f"{s:g}"])
            evaluate(model, "rsparse-uniform", s, lambda p: set_protocol(model, p))
        for s in cfg.sparsities:
            key = f"recipes|rsparse|{s}"
            if memo.get(key) is None:
                init = [
                    {n: (v[0], 1.0) for n, v in teal[f"{s:g}"].items()},
                    uniform(model, s, best_alpha[f"{s:g}"]),
                    uniform(model, s, 1.0),
                ]
                with Timer() as t:
                    rec, hist = evolutionary_search(
                        model,
                        ids["search"],
                        s,
                        init,
                        population=cfg.population,
                        generations=cfg.generations,
                        seed=cfg.seed,
                        progress=log,
                    )
                memo.put(key, {"modules": rec, "history": hist, "seconds": t.s})
            got = memo.get(key)
            searched[f"{s:g}"] = {n: tuple(v) for n, v in got["modules"].items()}
            history[f"{s:g}"] = got["history"]
            sparsify(model, recipe=searched[f"{s:g}"])
            evaluate(model, "rsparse", s, lambda p: set_protocol(model, p), probe=s == 0.5)
            extra.setdefault("realised_sparsity", {})[f"{s:g}"] = realised_sparsity(model)
        rs_params = module_params(model)

        # CATS-style: gate thresholding (only up/down are saved; reaches ≤ 50% here)
        cats_reach = []
        for s in cfg.sparsities:
            try:
                m2, _ = load_pretrained(cfg.model, device="cpu")
                cats_sparsify(m2, s)
            except ValueError as e:
                extra.setdefault("cats_unreachable", {})[f"{s:g}"] = str(e)
                continue
            calibrate_cats(m2, calib)
            evaluate(m2, "cats", s, lambda p, m=m2: set_cats_protocol(m, p))
            cats_reach.append(s)

    # --- record -------------------------------------------------------------------------
    if recipes_dir is not None:
        for s in cfg.sparsities:
            meta = {
                "search_tokens": cfg.search_tokens,
                "calib_windows": cfg.calib_windows,
                "seed": cfg.seed,
            }
            Recipe(
                searched[f"{s:g}"],
                s,
                "rsparse",
                True,
                cfg.model,
                {**meta, "generations": cfg.generations, "population": cfg.population},
            ).save(recipes_dir / cfg.model / f"rsparse-{round(s * 100)}.json")
            Recipe(
                teal[f"{s:g}"], s, "teal", False, cfg.model, {**meta, "search": "block-wise greedy"}
            ).save(recipes_dir / cfg.model / f"teal-{round(s * 100)}.json")
    for s in cfg.sparsities:  # the searched and greedy recipes respect the budget
        assert abs(model_sparsity(searched[f"{s:g}"], rs_params) - s) < 1e-6
        assert abs(model_sparsity(teal[f"{s:g}"], params) - s) < 1e-6

    def row(method):
        d = {f"ppl_{p}@{k}": v for p, byk in ppl[method].items() for k, v in byk.items()}
        at50 = ppl[method].get("all", {}).get("0.5")
        if at50 is not None:
            d["ppl@50"] = at50
            d["delta_ppl@50"] = at50 - dense_ppl
        return d

    plot = _plot_quality(out / "quality.png", cfg, ppl, dense_ppl)
    alphas = {k: sum(a == 1.0 for _, a in r.values()) / len(r) for k, r in searched.items()}
    rec = ResultRecord(
        method="rsparse",
        claim=(
            "At 50% model-level sparsity (all tokens sparse), R-Sparse with a searched recipe has "
            "perplexity no worse than the TEAL-style baseline, and stays close to dense."
        ),
        setup={
            **asdict(cfg),
            "data": "prose corpus: document split 80/10/10; thresholds on 'calib', search fitness on later 'calib' tokens, perplexity on 'test'",
            "sparsity_definition": "parameter-weighted over the 7 block linears of every layer (embeddings / LM head dense)",
            "command": "fmlab rsparse bench",
            "resumed_entries": memo.resumed,
        },
        metrics={
            "dense_ppl": dense_ppl,
            **row("rsparse"),
            "ppl": ppl,
            "realised_sparsity": extra.get("realised_sparsity", {}),
            "share_alpha_1": alphas,
            "search_history": history,
            "uniform_alpha": best_alpha,
            "uniform_alpha_search_loss": extra.get("uniform_alpha_search_loss", {}),
            "probes": probes,
            "teal_greedy_s": memo.get("seconds|teal-greedy"),
            "search_s": {
                f"{s:g}": memo.get(f"recipes|rsparse|{s}")["seconds"] for s in cfg.sparsities
            },
            "peak_rss_mb": peak_rss_mb(),
        },
        baselines={
            "dense": {"ppl@50": dense_ppl, "delta_ppl@50": 0.0},
            "teal": row("teal"),
            "teal-uniform": row("teal-uniform"),
            "rsparse-uniform": row("rsparse-uniform"),
            **({"cats": row("cats")} if cats_reach else {}),
        },
        plots=[plot.name],
        headline=["dense_ppl", "ppl@50", "delta_ppl@50"],
        notes=[
            "Protocol 'all': every token of every forward is sparse. 'tail': only the last 10% of each forward's tokens (the official code's evaluation); with a 512-token window scored on its last 256 tokens, most scored tokens are then computed densely.",
            "A resumed run reuses finished evaluations and searches (setup.resumed_entries); wall_s then covers only the last run, and teal_greedy_s / search_s give the search costs.",
            "The evolutionary search is seeded with TEAL's greedy sparsities (α = 1), the best uniform α and uniform α = 1, so on the search text it cannot end worse than those seeds; on the test text it can.",
            *[f"CATS at {k}: {v}" for k, v in extra.get("cats_unreachable", {}).items()],
        ],
    )
    rec.wall_s = total.s
    write_record(rec, out / "quality.json")
    return rec


def _plot_quality(path: Path, cfg, ppl, dense_ppl, ymax: float = 1000.0) -> Path:
    """Perplexity vs sparsity, one panel per protocol; points above ``ymax`` sit on the top
    edge as open triangles (CATS at 50% is ~1e11 and would flatten everything else)."""
    plt = figure()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, protocol in zip(axes, PROTOCOLS, strict=True):
        for i, (method, byp) in enumerate(ppl.items()):
            xs = [100 * float(k) for k in byp[protocol]]
            ys = list(byp[protocol].values())
            color = f"C{i}"
            ax.plot(xs, [min(y, ymax) for y in ys], marker="o", color=color, label=method)
            off = [(x, y) for x, y in zip(xs, ys, strict=True) if y > ymax]
            for x, y in off:
                ax.plot([x], [ymax], marker="^", ms=10, mfc="none", color=color)
                ax.annotate(f"{y:.0e}", (x, ymax), textcoords="offset points", xytext=(4, -12),
                            fontsize=7, color=color)  # fmt: skip
        ax.axhline(dense_ppl, color="k", ls="--", lw=1, label="dense")
        ax.set_yscale("log")
        ax.set_ylim(dense_ppl * 0.9, ymax * 1.1)
        ax.set_xlabel("model-level sparsity (%)")
        ax.set_title(f"protocol: {protocol}")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"perplexity ({cfg.test_tokens} held-out tokens)")
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{cfg.model}: perplexity vs sparsity (lower is better)")
    return save_figure(fig, plt, path)


def shipped_recipe(model: str, method: str, sparsity: float) -> Recipe:
    """The recipe shipped with the package for a bundled model (``method`` rsparse | teal)."""
    path = RECIPES_DIR / model / f"{method}-{round(sparsity * 100)}.json"
    if not path.is_file():
        have = (
            sorted(p.stem for p in (RECIPES_DIR / model).glob("*.json"))
            if (RECIPES_DIR / model).is_dir()
            else []
        )
        raise FileNotFoundError(
            f"no shipped {method} recipe for {model} at {sparsity:g} ({path.name}); shipped: "
            f"{', '.join(have) or 'none'}. Run `fmlab rsparse search --sparsity {sparsity:g}` to make one."
        )
    return Recipe.load(path)


# --- speed ---------------------------------------------------------------------------------


@torch.no_grad()
def _decode_tps(model, prompt_ids: torch.Tensor, new_tokens: int) -> float:
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    out = model(input_ids=prompt_ids, past_key_values=cache, use_cache=True)
    nxt = out.logits[:, -1:].argmax(-1)
    t0 = time.perf_counter()
    for _ in range(new_tokens):
        out = model(input_ids=nxt, past_key_values=cache, use_cache=True)
        nxt = out.logits[:, -1:].argmax(-1)
    return new_tokens / (time.perf_counter() - t0)


@torch.no_grad()
def _prefill_tps(model, ids: torch.Tensor) -> float:
    t0 = time.perf_counter()
    model(input_ids=ids)
    return ids.numel() / (time.perf_counter() - t0)


def _weight_bytes(model) -> dict[str, float]:
    """Analytic fp32 bytes of weights read per decoded token (block linears, and in total with
    the LM head; norms and the one embedding row are negligible and left out)."""
    mods = rsparse_modules(model)
    if mods:
        block = sum(m.weights_read() for m in mods.values())
    else:
        block = sum(
            m.weight.numel()
            for n, m in model.named_modules()
            if isinstance(m, torch.nn.Linear)
            and n.rsplit(".", 1)[-1]
            in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
        )
    head = model.get_output_embeddings().weight.numel()
    esz = next(model.parameters()).element_size()
    return {"block_linear_bytes": block * esz, "total_bytes": (block + head) * esz}


def _us_per_call(fn, copies: int, calls: int) -> float:
    for i in range(50):
        fn(i % copies)
    t0 = time.perf_counter()
    for i in range(calls):
        fn(i % copies)
    return (time.perf_counter() - t0) / calls * 1e6


def kernel_microbench(shapes, keep=(1.0, 0.5), copies: int = 48, calls: int = 1500) -> list[dict]:
    """Microseconds per call of torch's dense ``mv`` and of the decode kernel at each kept
    fraction, with weights out of cache (``copies`` matrices in rotation, as in a real decode,
    where every layer's weights are read once per token)."""
    import functools

    import numpy as np

    from fmlab.rsparse import kernel

    rows = []
    g = torch.Generator().manual_seed(0)
    for d_out, d_in in shapes:
        ws = [torch.randn(d_out, d_in, generator=g) for _ in range(copies)]
        wts = [w.t().contiguous().numpy() for w in ws]
        x = torch.randn(d_in, generator=g)
        xn, cn, y = x.numpy(), np.ones(d_in, np.float32), np.empty(d_out, np.float32)
        e_in, e_out = np.zeros((d_in, 0), np.float32), np.zeros((d_out, 0), np.float32)

        def dense(i, ws=ws, x=x):
            return torch.mv(ws[i], x)

        def sparse(i, tau, wts=wts, args=(xn, cn, e_in, e_out, y)):
            xv, c, a, b, out = args
            kernel.sparse_lowrank_gemv(xv, wts[i], c, tau, a, b, out)

        row = {"shape": [d_out, d_in], "dense_mv_us": _us_per_call(dense, copies, calls)}
        for frac in keep:
            tau = float(np.quantile(np.abs(xn), 1 - frac)) if frac < 1 else -1.0
            row[f"kernel_{round(frac * 100)}_us"] = _us_per_call(
                functools.partial(sparse, tau=tau), copies, calls
            )
        rows.append(row)
    return rows


def run_speed(
    out_dir: str | Path,
    model_name: str = "smollm2-135m-instruct",
    sparsity: float = 0.5,
    repeats: int = 5,
    new_tokens: int = 64,
    prefill_tokens: int = 512,
    threads: int = 2,
    log=_log,
) -> ResultRecord:
    from fmlab.core.models import load_pretrained

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)
    prompt = torch.randint(100, 40000, (1, 64), generator=g)
    pre = torch.randint(100, 40000, (1, prefill_tokens), generator=g)
    results: dict[str, dict] = {}
    with Timer() as total:
        model, tok = load_pretrained(model_name, device="cpu")
        cfg = QualityConfig(model=model_name)
        calib = splits(tok, cfg)["calib"]
        calib = [calib[i : i + 1] for i in range(len(calib))]

        def arm(model, name, note):
            _decode_tps(model, prompt, 4)  # warm-up (first call compiles the kernel)
            dec = [_decode_tps(model, prompt, new_tokens) for _ in range(repeats)]
            pf = [_prefill_tps(model, pre) for _ in range(repeats)]
            results[name] = {
                "decode_tokens_per_s": statistics.median(dec),
                "decode_runs": dec,
                "prefill_tokens_per_s": statistics.median(pf),
                "prefill_runs": pf,
                **_weight_bytes(model),
                "note": note,
            }
            log(
                f"{name}: decode {results[name]['decode_tokens_per_s']:.1f} tok/s, prefill {results[name]['prefill_tokens_per_s']:.0f} tok/s"
            )

        arm(model, "dense", "HF model as loaded (nn.Linear, torch GEMV on 2 threads)")
        sources = {}
        for method, weighted in (("rsparse", True), ("teal", False)):
            model, tok = load_pretrained(model_name, device="cpu")
            try:
                r = shipped_recipe(model_name, method, sparsity)
                modules, sources[method] = r.modules, "shipped recipe"
            except FileNotFoundError:
                modules, sources[method] = None, "uniform (no shipped recipe)"
            sparsify(model, sparsity, 1.0, recipe=modules, weighted=weighted)
            calibrate(model, calib)
            arm(
                model,
                f"{method}-{round(sparsity * 100)}",
                f"{sources[method]}; decode kernel (numba, 1 thread)",
            )
            if method == "rsparse":  # the same kernel with every channel kept: its layout's share
                for m in rsparse_modules(model).values():
                    m.configure(0.0, 1.0)
                    m.set_threshold(-1.0)  # scores are >= 0: every channel passes, kernel path
                arm(
                    model, "kernel-dense", "every channel kept but forced through the decode kernel"
                )
        shapes = sorted({tuple(m.weight.shape) for m in rsparse_modules(model).values()})
        micro = kernel_microbench(shapes)
        for row in micro:
            log(f"kernel {row}")
    dense = results["dense"]["decode_tokens_per_s"]
    for r in results.values():
        r["decode_speedup_vs_dense"] = r["decode_tokens_per_s"] / dense
        r["prefill_speedup_vs_dense"] = (
            r["prefill_tokens_per_s"] / results["dense"]["prefill_tokens_per_s"]
        )
    main = f"rsparse-{round(sparsity * 100)}"
    bar_plot(
        out / "speed.png",
        {k: v["decode_tokens_per_s"] for k, v in results.items()},
        "decode tokens/s (batch 1)",
        f"{model_name}: decode speed, 2 cores",
    )
    rec = ResultRecord(
        method="rsparse",
        claim=f"Batch-1 decode with the KV cache is faster at {sparsity:.0%} R-Sparse than dense on this CPU.",
        setup={
            "model": model_name,
            "sparsity": sparsity,
            "repeats": repeats,
            "new_tokens": new_tokens,
            "prompt_tokens": prompt.shape[1],
            "prefill_tokens": prefill_tokens,
            "torch_threads": threads,
            "recipes": sources,
            "command": "fmlab rsparse bench --speed-only",
        },
        metrics={
            **{k: v for k, v in results[main].items() if k != "note"},
            "kernel_microbench": micro,
            "peak_rss_mb": peak_rss_mb(),
        },
        baselines={k: v for k, v in results.items() if k != main},
        plots=["speed.png"],
        headline=["decode_tokens_per_s", "decode_speedup_vs_dense", "prefill_speedup_vs_dense"],
        notes=[
            "Decode tokens/s: median over repeats of a 64-token greedy continuation of a 64-token prompt (prefill not timed). Prefill: one forward of 512 tokens.",
            "Prefill (many tokens) runs the masked dense GEMM plus the low-rank product, so it is slower than dense by construction; only batch-1 decode uses the kernel.",
            "'kernel-dense' forces every channel through the decode kernel: the part of the speed-up that comes from the kernel's memory layout rather than from skipping channels.",
        ],
    )
    rec.wall_s = total.s
    write_record(rec, out / "speed.json")
    return rec


def quick(out_dir: str | Path) -> ResultRecord:
    """A few-minute version for `fmlab demo`: one sparsity, tiny search, no probes (claims nothing)."""
    return run_quality(out_dir, QualityConfig.quick(), recipes_dir=None, log=lambda *_: None)


def with_overrides(cfg: QualityConfig, **kw) -> QualityConfig:
    return replace(cfg, **{k: v for k, v in kw.items() if v is not None})
