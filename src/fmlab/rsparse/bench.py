"""`fmlab rsparse bench`: quality judged on text that neither search nor selection saw
(``quality.json``), and speed (``speed.json``, :mod:`fmlab.rsparse.speed`).

Splits (:mod:`fmlab.rsparse.data`, content-hash disjoint, test sealed): thresholds, TEAL's
greedy inputs and the evolutionary search's fitness come from ``calib``; every choice (uniform
α, which of the search's finalists) is made on ``val`` through ``core.experiment.tune`` with the
same budget for every tuned arm; then the test split is opened once and every arm, at every
sparsity and under both protocols, is scored on it (``run_arms``, resumable), with per-window
bootstrap intervals of the differences. Arms (:data:`ARMS`): dense, TEAL-greedy, TEAL-uniform,
R-Sparse uniform α = 1, R-Sparse uniform α (tuned), R-Sparse searched, CATS.

The recipes the bench chooses go to ``<out>/recipes/`` (never into the package); the record
says, per sparsity, which recipe did best on test, for whoever decides what ships.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F

from fmlab.core.cliutil import log as _log
from fmlab.core.experiment import (
    compare,
    format_delta,
    record_fields,
    run_arms,
    tune,
)
from fmlab.core.io import Memo
from fmlab.core.results import ResultRecord, Timer, figure, peak_rss_mb, save_figure, write_record
from fmlab.rsparse.cats import calibrate_cats, cats_sparsify, set_cats_protocol
from fmlab.rsparse.data import load_model, text_splits
from fmlab.rsparse.recipe import (
    Recipe,
    check_budget,
    evolve,
    module_params,
    realised_sparsity,
    teal_greedy,
    uniform,
)
from fmlab.rsparse.sparse import calibrate, set_protocol, sparsify

__all__ = ["ARMS", "QualityConfig", "mean_nll", "quick", "run_quality", "window_nlls"]

# arm -> (scores weighted by ‖W_j‖?, what is tuned on val); one registry for the whole bench
ARMS = {
    "dense": (None, "nothing"),
    "teal-greedy": (False, "nothing (TEAL's greedy allocation on calib)"),
    "teal-uniform": (False, "nothing (uniform s, α = 1)"),
    "rsparse-uniform-a1": (True, "nothing (uniform s, α = 1)"),
    "rsparse-uniform": (True, "alpha"),
    "rsparse": (True, "which finalist of the evolutionary search"),
    "cats": (None, "nothing (gate threshold)"),
}
PROTOCOLS = ("all", "tail")
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
    calib_windows: int = 4  # × 512 tokens of 'calib' for thresholds
    search_tokens: int = 512  # search fitness: the 'calib' tokens after the windows
    greedy_tokens: int = 256  # TEAL's greedy block inputs (first calibration tokens)
    greedy_step: float = 0.025
    val_tokens: int = 2048
    test_tokens: int = 4096
    window: int = 512
    stride: int = 256
    uniform_alphas: tuple[float, ...] = (1.0, 0.95, 0.9, 0.8)  # its size is the tuning budget
    population: int = 8
    generations: int = 12
    seed: int = 0
    probes: bool = True
    measure_eval_rss: bool = True
    calib_text: str | None = None

    @classmethod
    def quick(cls) -> QualityConfig:
        # windows of 128 tokens: the test text gives 3 of them, the bootstrap's minimum items
        return cls(sparsities=(0.5,), calib_windows=1, search_tokens=128, greedy_tokens=64,
                   greedy_step=0.1, val_tokens=128, test_tokens=384, window=128, stride=128,
                   uniform_alphas=(1.0, 0.9), population=3, generations=1, probes=False,
                   measure_eval_rss=False)  # fmt: skip


@torch.no_grad()
def window_nlls(
    model, ids: torch.Tensor, window: int = 512, stride: int = 256, progress=None
) -> list[tuple[float, int]]:
    """(mean NLL, tokens) of each strided window's newly scored tokens: every token after the
    first is scored once, as in ``core.evaluate.perplexity``. The windows are the bootstrap's
    items; ``progress`` gets a line per window."""
    ids = ids.reshape(-1)
    begins = range(0, ids.numel() - 1, stride)
    out, prev_end, t0 = [], 1, time.perf_counter()
    for i, begin in enumerate(begins):
        end = min(begin + window, ids.numel())
        x = ids[begin:end][None]
        logits = model(input_ids=x).logits[0, :-1].float()
        first = max(prev_end, begin + 1) - (begin + 1)
        out.append(
            (float(F.cross_entropy(logits[first:], x[0, 1 + first :])), end - begin - 1 - first)
        )
        prev_end = end
        if progress:
            progress(f"window {i + 1}/{len(begins)} ({time.perf_counter() - t0:.0f} s)")
        if end == ids.numel():
            break
    return out


def mean_nll(per: list[tuple[float, int]]) -> float:
    return sum(n * c for n, c in per) / sum(c for _, c in per)


def _nll(model, ids, cfg) -> float:
    return mean_nll(window_nlls(model, ids, cfg.window, cfg.stride))


class _Models:
    """The two sparsified models (|x| and |x|·‖W_j‖ scores), calibrated once, reconfigured per
    arm; recipes per (arm, sparsity) on the search side."""

    def __init__(self, cfg: QualityConfig, ts, memo: Memo, log):
        self.cfg, self.ts, self.memo, self.log = cfg, ts, memo, log
        calib = list(ts.calib_windows(cfg.calib_windows)[:, None])
        self.calib = calib
        self.teal, self.tok = load_model(cfg.model)
        sparsify(self.teal, 0.0, 1.0, weighted=False)
        calibrate(self.teal, calib, progress=log)
        self.rs, _ = load_model(cfg.model)
        sparsify(self.rs, 0.0, 1.0, weighted=True, keep_svd=True)
        calibrate(self.rs, calib, progress=log)
        self.dense, _ = load_model(cfg.model)
        self.greedy = self._greedy()
        self.finalists: dict[float, list[dict]] = {}
        self.history: dict[str, list] = {}

    def _greedy(self) -> dict[float, dict]:
        got = self.memo.get("recipes|teal-greedy")
        if got is None:
            with Timer() as t:
                path = teal_greedy(self.teal, self.calib[0][:, : self.cfg.greedy_tokens],
                                   list(self.cfg.sparsities), self.cfg.greedy_step,
                                   progress=self.log)  # fmt: skip
            got = self.memo.put("recipes|teal-greedy", {f"{s:g}": r for s, r in path.items()})
            self.memo.put("seconds|teal-greedy", t.s)
        return {float(k): {n: tuple(v) for n, v in r.items()} for k, r in got.items()}

    def search(self, s: float) -> list[dict]:
        """The final population of the evolutionary search at ``s`` (best on calib first)."""
        if s in self.finalists:
            return self.finalists[s]
        key = f"recipes|rsparse|{s:g}"
        got = self.memo.get(key)
        if got is None:
            init = [{n: (v[0], 1.0) for n, v in self.greedy[s].items()},
                    uniform(self.rs, s, 1.0), uniform(self.rs, s, min(self.cfg.uniform_alphas))]  # fmt: skip
            with Timer() as t:
                ranked, hist = evolve(self.rs, self.ts.search_text(self.cfg.calib_windows,
                                      self.cfg.search_tokens), s, init, self.cfg.population,
                                      self.cfg.generations, seed=self.cfg.seed,
                                      progress=self.log)  # fmt: skip
            got = self.memo.put(key, {"ranked": [[loss, r] for loss, r in ranked],
                                      "history": hist, "seconds": t.s})  # fmt: skip
        self.history[f"{s:g}"] = got["history"]
        self.finalists[s] = [{n: tuple(v) for n, v in r.items()} for _, r in got["ranked"]]
        return self.finalists[s]

    def recipe(self, arm: str, s: float, params: dict) -> tuple[object, dict | None]:
        """(model, recipe) for an arm at sparsity ``s`` with its tuned ``params``."""
        if arm == "teal-greedy":
            return self.teal, self.greedy[s]
        if arm == "teal-uniform":
            return self.teal, uniform(self.teal, s, 1.0)
        if arm == "rsparse-uniform-a1":
            return self.rs, uniform(self.rs, s, 1.0)
        if arm == "rsparse-uniform":
            return self.rs, uniform(self.rs, s, float(params["alpha"]))
        if arm == "rsparse":
            i = int(params["candidate"].removeprefix("f"))
            return self.rs, self.search(s)[i]
        raise KeyError(f"unknown arm {arm!r}; choose one of: {', '.join(ARMS)}")

    def apply(self, arm: str, s: float, params: dict, protocol: str = "all"):
        """The model of ``arm`` configured at ``s`` under ``protocol`` (CATS: a fresh copy)."""
        if arm == "dense":
            return self.dense
        if arm == "cats":
            m, _ = load_model(self.cfg.model)
            cats_sparsify(m, s)
            calibrate_cats(m, self.calib)
            set_cats_protocol(m, protocol)
            return m
        model, rec = self.recipe(arm, s, params)
        sparsify(model, recipe=rec)
        set_protocol(model, protocol)
        return model


def _grids(cfg: QualityConfig, s: float) -> dict[str, dict]:
    n = len(cfg.uniform_alphas)  # the tuning budget, the same for both tuned arms
    return {
        "teal-greedy": {},
        "teal-uniform": {},
        "rsparse-uniform-a1": {},
        "rsparse-uniform": {"alpha": list(cfg.uniform_alphas)},
        "rsparse": {"candidate": [f"f{i}" for i in range(min(n, cfg.population))]},
    }


def _tune(cfg, models: _Models, ts, memo) -> dict:
    """Per sparsity, every choice made on 'val' (a design step: the test split is sealed)."""
    val_ids = ts.ids("val", cfg.val_tokens, "validation")
    tunings = {}
    for s in cfg.sparsities:
        with ts.splits.design(f"search at {s:g} on 'calib'"):
            models.search(s)
        grids = _grids(cfg, s)

        def score(arm, params, _val, s=s):
            return _nll(models.apply(arm, s, params), val_ids, cfg)

        tunings[f"{s:g}"] = tune(list(grids), grids, score, val=ts.splits["val"], mode="min",
                                 bounds={"alpha": (0.0, 1.0)}, memo=memo,
                                 context=f"s={s:g}")  # fmt: skip
        models.log(f"val choices at {s:g}: {tunings[f'{s:g}'].chosen}")
    return tunings


def _cats_ok(models: _Models, s: float) -> bool:
    from fmlab.rsparse.cats import gate_sparsity_for

    try:
        gate_sparsity_for(models.dense, s)
    except ValueError:
        return False
    return True


def _test_arms(cfg, models, tunings) -> dict[str, dict]:
    arms = {"dense": {"arm": "dense", "s": 0.0}}
    for s in cfg.sparsities:
        for arm, params in tunings[f"{s:g}"].chosen.items():
            arms[f"{arm}@{s:g}"] = {"arm": arm, "s": s, **params}
        if _cats_ok(models, s):
            arms[f"cats@{s:g}"] = {"arm": "cats", "s": s}
    return arms


def run_quality(out_dir: str | Path, cfg: QualityConfig = QualityConfig(), log=_log):
    """Search on calib, choose on val, score every arm on test; ``quality.json`` + recipes."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    memo = Memo(out / ".rsparse-quality.partial.json", asdict(cfg), log=log)
    with Timer() as total:
        _, tok = load_model(cfg.model)
        ts = text_splits(tok, cfg.seed, cfg.calib_text)
        models = _Models(cfg, ts, memo, log)
        tunings = _tune(cfg, models, ts, memo)
        ts.splits.open_test()
        test_ids = ts.ids("test", cfg.test_tokens, "test")

        def evaluate(name, st, _seed):
            res = {}
            for p in PROTOCOLS:
                model = models.apply(st["arm"], st["s"], st, p)
                per = window_nlls(model, test_ids, cfg.window, cfg.stride)
                res[f"ppl_{p}"] = math.exp(mean_nll(per))
                res[f"windows_{p}"] = [n for n, _ in per]
            if st["arm"] not in ("dense", "cats"):
                model = models.apply(st["arm"], st["s"], st)
                res["realised_sparsity"] = realised_sparsity(model)
            return res

        runs = run_arms(_test_arms(cfg, models, tunings), [cfg.seed], evaluate, memo, log=log)
        intervals = _intervals(cfg, runs)
        written = _write_recipes(cfg, models, tunings, out)
        extra = _probes_and_rss(cfg, models, tunings, memo, log)
    rec = _record(cfg, models, tunings, runs, intervals, written, extra, ts, memo, out)
    rec.wall_s = total.s
    write_record(rec, out / "quality.json")
    return rec


def _intervals(cfg, runs) -> list:
    out = []
    for s in cfg.sparsities:
        for other in ("rsparse-uniform-a1", "teal-uniform", "teal-greedy"):
            a, b = f"rsparse@{s:g}", f"{other}@{s:g}"
            if a in runs.values and b in runs.values:
                p = compare(runs, a, b, "ppl_all", items="windows_all")
                out.append(replace(p, metric=f"window nll (all) @{s:g}", headline=s == 0.5))
    return out


def _write_recipes(cfg, models: _Models, tunings, out: Path) -> list[str]:
    """Every arm's recipe (tuned arms: the val choice) beside the record
    (``<out>/recipes/<model>/``), never into the installed package: what ships is decided from
    the test table (``best_on_test``)."""
    written = []
    folder = out / "recipes" / Path(cfg.model).name
    meta = {"calib_windows": cfg.calib_windows, "search_tokens": cfg.search_tokens,
            "seed": cfg.seed, "calib_text": cfg.calib_text}  # fmt: skip
    files = {"rsparse": "rsparse", "teal-greedy": "teal", "teal-uniform": "teal-uniform",
             "rsparse-uniform": "rsparse-uniform", "rsparse-uniform-a1": "rsparse-uniform-a1"}  # fmt: skip
    for s in cfg.sparsities:
        chosen = tunings[f"{s:g}"].chosen
        for arm, name in files.items():
            _, rec = models.recipe(arm, s, chosen[arm])
            check_budget(rec, module_params(models.rs), s)
            info = {**meta, "arm": arm, "chosen_on_val": chosen[arm]}
            path = folder / f"{name}-{round(s * 100)}.json"
            weighted = ARMS[arm][0]
            Recipe(rec, s, name.split("-")[0], weighted, cfg.model, info).save(path)
            written.append(str(path))
    return written


def _probes_and_rss(cfg, models: _Models, tunings, memo, log) -> dict:
    from fmlab.core.evaluate import generate

    extra: dict = {}
    if cfg.probes and 0.5 in cfg.sparsities:
        for name, arm, s in (("dense@0", "dense", 0.5), ("rsparse@0.5", "rsparse", 0.5)):
            key = f"probe|{name}"
            if memo.get(key) is None:
                model = models.apply(arm, s, tunings["0.5"].chosen.get(arm, {}))
                memo.put(key, [a.strip() for a in generate(model, models.tok, PROBES, 20)])
            extra.setdefault("probes", {})[name] = memo.get(key)
    if cfg.measure_eval_rss:
        from fmlab.core.measure import fmlab_executable, measure_command

        log("measuring the peak RSS of `fmlab rsparse eval` in its own process")
        cmd = [str(fmlab_executable()), "rsparse", "eval", "--max-tokens", "1024"]
        got = measure_command(cmd)
        extra["eval_peak_rss_mb"] = got["peak_rss_mb"]
        extra["eval_command"] = " ".join(cmd[1:])
        extra["eval_returncode"] = got["returncode"]
    return extra


def _record(cfg, models, tunings, runs, intervals, written, extra, ts, memo, out):
    values = {a: runs.values[a][cfg.seed] for a in runs.values}
    ppl = {}  # arm -> protocol -> sparsity -> ppl
    for name, v in values.items():
        arm, _, s = name.partition("@")
        for p in PROTOCOLS:
            ppl.setdefault(arm, {}).setdefault(p, {})[s or "0"] = v[f"ppl_{p}"]
    best = {}
    for s in cfg.sparsities:
        cands = {a: ppl[a]["all"][f"{s:g}"] for a in ppl if f"{s:g}" in ppl[a]["all"]}
        best[f"{s:g}"] = min(cands, key=cands.get)
    dense = ppl["dense"]["all"]["0"]

    def row(arm):
        d = {f"ppl_{p}@{k}": v for p, byk in ppl[arm].items() for k, v in byk.items()}
        if "0.5" in ppl[arm]["all"]:
            d["ppl@50"] = ppl[arm]["all"]["0.5"]
            d["delta_ppl@50"] = d["ppl@50"] - dense
        return d

    plot = _plot_quality(out / "quality.png", cfg, ppl, dense)
    notes = [f"{p.label}: {format_delta(p)}" for p in intervals]
    return ResultRecord(
        method="rsparse",
        claim="On test text that neither search nor selection saw, R-Sparse's searched recipe at "
        "50% has perplexity no worse than uniform α = 1 and TEAL-uniform.",
        setup={
            **asdict(cfg),
            "arms": {a: t for a, (_, t) in ARMS.items()},
            "command": "fmlab rsparse bench --quality-only",
            "resumed_entries": memo.resumed,
            "recipes_written": written,
            "sparsity_definition": "parameter-weighted over the 7 block linears",
        },
        metrics={
            "dense_ppl": dense,
            **row("rsparse"),
            "ppl": ppl,
            "best_on_test": best,
            "search_history": models.history,
            "peak_rss_mb": peak_rss_mb(),
            "teal_greedy_s": memo.get("seconds|teal-greedy"),
            **extra,
        },
        baselines={a: row(a) for a in ppl if a != "rsparse"},
        plots=[plot.name],
        headline=["dense_ppl", "ppl@50", "delta_ppl@50"],
        notes=[
            "τ, TEAL's greedy and the search fitness use 'calib'; uniform α and the searched "
            "finalist are chosen on 'val' (core.experiment.tune, equal budget); every arm is "
            "scored once on 'test' after splits.open_test().",
            "Protocol 'all': every token sparse. 'tail': only the last 10% of each forward.",
            "Intervals: per-window bootstrap of the paired NLL differences (one search seed).",
            *notes,
        ],
        **record_fields(ts.splits, tunings, intervals),
    )


def _plot_quality(path: Path, cfg, ppl, dense_ppl, ymax: float = 1000.0) -> Path:
    """Test perplexity vs sparsity, one panel per protocol (points above ``ymax`` clipped)."""
    plt = figure()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, protocol in zip(axes, PROTOCOLS, strict=True):
        for i, (arm, byp) in enumerate(ppl.items()):
            if arm == "dense":
                continue
            xs = [100 * float(k) for k in byp[protocol]]
            ys = [min(y, ymax) for y in byp[protocol].values()]
            ax.plot(xs, ys, marker="o", color=f"C{i}", label=arm)
        ax.axhline(dense_ppl, color="k", ls="--", lw=1, label="dense")
        ax.set_yscale("log")
        ax.set_xlabel("model-level sparsity (%)")
        ax.set_title(f"protocol: {protocol}")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"test perplexity ({cfg.test_tokens} tokens)")
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{cfg.model}: held-out perplexity vs sparsity (lower is better)")
    return save_figure(fig, plt, path)


def _cut_model(layers: int, out: Path) -> str:
    """The bundled SmolLM2 cut to its first ``layers`` decoder layers, saved once under ``out``
    (with its tokenizer): the quick bench's model, so that every stage runs in seconds."""
    path = out / f".smollm2-first-{layers}-layers"
    if not (path / "config.json").is_file():
        from fmlab.core.io import atomic_dir

        model, tok = load_model("smollm2-135m-instruct")
        model.model.layers = model.model.layers[:layers]
        model.config.num_hidden_layers = layers
        if getattr(model.config, "layer_types", None):
            model.config.layer_types = model.config.layer_types[:layers]
        with atomic_dir(path, overwrite=True) as tmp:
            model.save_pretrained(tmp)
            tok.save_pretrained(tmp)
    return str(path)


def quick(out_dir: str | Path):
    """A small version for `fmlab demo`: SmolLM2 cut to its first 2 layers, one sparsity, a
    tiny search (claims nothing)."""
    out = Path(out_dir)
    return run_quality(out, quick_config(out), log=lambda *_: None)


def quick_config(out_dir: str | Path) -> QualityConfig:
    """:meth:`QualityConfig.quick` on the bundled SmolLM2 cut to 2 layers (saved in ``out_dir``)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return replace(QualityConfig.quick(), model=_cut_model(2, out))
