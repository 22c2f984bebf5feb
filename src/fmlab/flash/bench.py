"""`fmlab flash bench`: latency-model-guided pruning search on the bundled SmolLM2-135M.

Stages (each resumable through a :class:`~fmlab.core.io.Memo` under ``out/.memo``):

1. **Data** (one function, :func:`text_splits`): the prose corpus split by document into
   ``calib`` (importance scores, search perplexity), ``recover`` (distillation text), ``val``
   (learning-rate choice) and ``test`` (sealed: final perplexities), checked disjoint.
2. **Candidates** (:func:`candidate_splits`): archs drawn uniformly from the search space,
   ``fit`` and a sealed ``test`` set, disjoint by arch. Each is pruned from the backbone and
   measured on this CPU (:func:`~fmlab.flash.latency.measure_many`: fixed threads, warm-up,
   median of repeats); the backbone is re-measured every ``reference_every`` candidates to
   show drift.
3. **Latency model**: a GP (and gradient boosting) on ``fit``; k-fold R² and MAPE; the FLOP and
   parameter proxies' rank correlation; then held-out R² on the test candidates.
4. **Search**: NSGA-II on (predicted latency relative to the backbone, calibration perplexity
   of the inherited candidate); the predicted front's members are then measured: the
   measured front and both hypervolumes are recorded.
5. **Picks and baselines**: for each target latency the front's best candidate under it; for
   each pick, depth-only (top-n layers by block importance, full width) and uniform-width (all
   layers, one FFN width and KV count) baselines chosen by the latency model to match the
   pick's MEASURED latency, then measured themselves.
6. **Recovery**: every pick and baseline distilled from the backbone for the same token budget
   (learning rate chosen per arm family on ``val`` at the dev seed, equal grid), at each test
   seed; test perplexity per block, before and after, paired intervals pick - baseline.
7. **Speed**: the backbone and every recovered arm timed together (interleaved) on every
   target; attention skipping at a long context; ExecuTorch export of the first pick (prefill
   and static-KV-cache decode programs, each with parity) and ExecuTorch prefill and decode
   timing of the pick and the backbone.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from fmlab.core.cliutil import log
from fmlab.core.data import load_corpus, pack_documents, split_documents
from fmlab.core.evaluate import lm_loss
from fmlab.core.experiment import Splits, format_delta, paired, record_fields, run_arms, tune
from fmlab.core.io import Memo
from fmlab.core.results import ResultRecord, write_record
from fmlab.flash.arch import BackboneShape, FlashArch
from fmlab.flash.latency import LatencyModel, measure_many, targets
from fmlab.flash.plots import fit_plot, pareto_plot
from fmlab.flash.prune import Importance, calibration_ids, importance, prune, rank_attention
from fmlab.flash.recover import recover
from fmlab.flash.search import SearchSpace, hypervolume_2d, pareto_front, search

__all__ = ["BenchConfig", "candidate_splits", "quick", "run", "text_splits"]

CLAIM = (
    "Pruned SmolLM2-135M candidates found by NSGA-II over a measured-latency model reach "
    "lower perplexity than depth-only and uniform-width pruning at equal measured latency "
    "after the same distillation budget."
)


@dataclass
class BenchConfig:
    """Every number of the bench; ``quick()`` is the smoke-size preset."""

    model: str = "smollm2-135m-instruct"
    truncate: tuple[int, ...] | None = None  # keep only these backbone layers (quick runs)
    threads: int = 1  # for every timed call
    train_threads: int = 2  # for recovery (untimed)
    repeats: int = 5
    warmup: int = 1
    decode_tokens: int = 8  # tokens per timed decode call (more: less timer noise per token)
    prefill_lengths: tuple[int, ...] = (128, 512)
    decode_contexts: tuple[int, ...] = (128, 2048)
    candidates: int = 120
    test_candidates: int = 30
    reference_every: int = 10
    calib_rows: int = 8
    seq_len: int = 256
    eval_rows: int = 32
    search_trials: int = 200
    population: int = 24
    min_layers: int = 8
    pick_latency: tuple[float, ...] = (0.5, 0.65)
    recover_tokens: int = 51_200  # 25 steps of 8 x 256 tokens
    batch_size: int = 8
    lr_grid: tuple[float, ...] = (1e-4, 3e-4, 1e-3)
    tune_fraction: float = 0.25
    dev_seed: int = 0
    seeds: tuple[int, ...] = (1, 2, 3)
    long_context: int = 2048
    skip_counts: tuple[int, ...] = (0, 6, 12)
    export: bool = True
    # decode .pte parity: tokens decoded one by one from position 0 (past the 128 windows)
    export_decode_steps: int = 256
    front_measured: int = 12  # predicted-front members re-measured
    checkpoints: bool = True  # recovery runs checkpoint under out/.recover (resumable)
    space: dict[str, Any] = field(default_factory=dict)  # SearchSpace overrides

    @classmethod
    def quick(cls) -> BenchConfig:
        return cls(
            truncate=(0, 1, 2, 27, 28, 29), repeats=2, decode_tokens=2, prefill_lengths=(32,),
            decode_contexts=(32,), candidates=6, test_candidates=3, reference_every=10,
            calib_rows=2, seq_len=64, eval_rows=2, search_trials=8, population=4, min_layers=2,
            pick_latency=(0.75,), recover_tokens=2 * 64 * 2, batch_size=2, lr_grid=(3e-4,),
            seeds=(1,), long_context=128, skip_counts=(0, 3), export=False, front_measured=2,
            checkpoints=False,
        )  # fmt: skip

    def search_space(self) -> SearchSpace:
        return SearchSpace(**{"min_layers": self.min_layers, **self.space})


# -- data ---------------------------------------------------------------------------------


def text_splits(seed: int = 0) -> dict[str, list[str]]:
    """The prose corpus by document: calib 10%, recover 70%, val 10%, test 10%. Some topics
    of ``pydoc_data.topics`` repeat another's text; only the first copy is kept."""
    seen, unique = set(), []
    for d in load_corpus("prose"):
        if d.text not in seen:
            seen.add(d.text)
            unique.append(d)
    docs = split_documents(unique, (0.1, 0.7, 0.1, 0.1),
                           ("calib", "recover", "val", "test"), seed=seed)  # fmt: skip
    return {k: [d.text for d in v] for k, v in docs.items()}


def candidate_splits(
    seed: int, n_fit: int, n_test: int, shape: dict, block: list, attention: list, space: dict
) -> dict[str, list[dict]]:
    """``n_fit + n_test`` distinct archs drawn from ``space`` (as dicts): fit, then test."""
    imp = Importance(block=block, attention=attention, ffn=[], kv=[], tokens=0)
    sp, sh, rng = SearchSpace(**space), BackboneShape(**shape), random.Random(seed)
    seen, archs = set(), []
    for _ in range(100 * (n_fit + n_test)):
        a = sp.sample(sh, imp, rng)
        if a.to_json() not in seen:
            seen.add(a.to_json())
            archs.append(a.to_dict())
        if len(archs) == n_fit + n_test:
            break
    return {"fit": archs[:n_fit], "test": archs[n_fit:]}


def _truncated(model, layers: tuple[int, ...]):
    """A ``LlamaForCausalLM`` of ``model``'s embeddings, head and the given layers only."""
    from transformers import LlamaForCausalLM

    cfg = type(model.config).from_dict({**model.config.to_dict(), "num_hidden_layers": len(layers)})
    small = LlamaForCausalLM(cfg)
    sd = {}
    for k, v in model.state_dict().items():
        if k.startswith("model.layers."):
            i, rest = k[len("model.layers.") :].split(".", 1)
            if int(i) not in layers:
                continue
            k = f"model.layers.{layers.index(int(i))}.{rest}"
        sd[k] = v
    small.load_state_dict(sd, strict=False)
    small.tie_weights()
    return small.eval()


def _blocks(tok, texts: list[str], seq_len: int) -> torch.Tensor:
    from fmlab.core.data import Document

    return pack_documents(tok, [Document(str(i), t, "prose") for i, t in enumerate(texts)],
                          seq_len)  # fmt: skip


# -- stages -------------------------------------------------------------------------------


def _measure(models: dict, cfg: BenchConfig) -> dict:
    return measure_many(models, cfg.prefill_lengths, cfg.decode_contexts, threads=cfg.threads,
                        repeats=cfg.repeats, warmup=cfg.warmup, decode_tokens=cfg.decode_tokens)  # fmt: skip


def _measure_candidates(backbone, imp, cands, cfg, memo, tag) -> tuple[list[dict], list[dict]]:
    """Measured latency of every candidate (memoised) and the backbone's reference runs."""
    out, refs = [], []
    for k, a in enumerate(cands):
        if k % cfg.reference_every == 0:
            refs.append(memo.get_or_compute(f"{tag}:ref{k}", lambda: _measure({"b": backbone}, cfg)
                                            ["latency"]["b"]))  # fmt: skip

        def one(a=a):
            m = prune(backbone, FlashArch.from_dict(a), scores=imp)
            return _measure({"c": m}, cfg)["latency"]["c"]

        out.append(memo.get_or_compute(f"{tag}:{FlashArch.from_dict(a).to_json()}", one))
        log(f"measured {tag} candidate {k + 1}/{len(cands)}")
    return out, refs


def _rel(pred: dict[str, float], ref: dict[str, float]) -> float:
    """Mean over targets of latency / backbone latency (1.0 = as slow as the backbone)."""
    return sum(pred[t] / ref[t] for t in ref) / len(ref)


def _ppl(model, blocks: torch.Tensor) -> float:
    return math.exp(lm_loss(model, blocks, batch_size=4))


def _per_block_nll(model, blocks: torch.Tensor) -> list[float]:
    return [lm_loss(model, blocks[i : i + 1], batch_size=1) for i in range(len(blocks))]


def _closest(options: list[FlashArch], lm: LatencyModel, ref: dict, goal: float) -> FlashArch:
    return min(options, key=lambda a: abs(_rel(lm.predict(a), ref) - goal))


def _families(shape, imp) -> dict[str, list[FlashArch]]:
    """The baseline families: depth-only (top-n layers by block importance, full width) and
    uniform width (all layers, one FFN width and one KV count)."""
    from fmlab.flash.prune import rank_layers

    depth = [FlashArch(rank_layers(imp, n), shape.intermediate_size, shape.num_kv_heads)
             for n in range(1, shape.num_layers + 1)]  # fmt: skip
    widths = range(16, shape.intermediate_size + 1, 16)
    width = [FlashArch(list(range(shape.num_layers)), w, k) for w in widths
             for k in range(1, shape.num_kv_heads + 1)]  # fmt: skip
    return {"depth": depth, "width": width}


def _matched(options, lm, ref, goal: float, measure_rel, rounds: int = 3, tol: float = 0.03):
    """The option whose MEASURED relative latency is closest to ``goal``: pick by prediction,
    measure, correct the prediction by the measured/predicted ratio at that point, repeat
    (at most ``rounds`` measurements). Returns ``(arch, measured relative latency, tries)``."""
    target, tries = goal, []
    for _ in range(rounds):
        a = _closest(options, lm, ref, target)
        if any(a == t[0] for t in tries):
            break
        m = measure_rel(a)
        tries.append((a, m))
        if abs(m / goal - 1) <= tol:
            break
        target *= goal / m  # the model is off by m/pred here: aim where it lands on goal
    a, m = min(tries, key=lambda t: abs(t[1] / goal - 1))
    return a, m, [{"arch": t[0].to_dict(), "measured_rel": t[1]} for t in tries]


def _picks(res, goals) -> list[FlashArch]:
    """For each goal, the front member with the lowest perplexity at or under it."""
    front = [res.trials[i] for i in res.pareto]
    out = []
    for g in goals:
        under = [t for t in front if t["latency"] <= g] or [min(front, key=lambda t: t["latency"])]
        out.append(FlashArch.from_dict(min(under, key=lambda t: t["ppl"])["arch"]))
    return out


def _skip_arch(shape, imp, k: int) -> FlashArch:
    """The backbone with its ``k`` least important attention blocks skipped."""
    layers = list(range(shape.num_layers))
    skip = set(rank_attention(imp, layers)[:k])
    return FlashArch(layers, shape.intermediate_size, shape.num_kv_heads,
                     ["skip" if i in skip else "full" for i in layers])  # fmt: skip


def _plots(out: Path, res, measured_front, held: dict) -> list[str]:
    pareto_plot(out / "pareto.png", res.trials, res.pareto, measured_front)
    fit_plot(out / "latency_fit.png", held, "held-out candidates")
    return ["pareto.png", "latency_fit.png"]


def _recovery_arms(picks, baselines) -> dict[str, dict]:
    arms = {}
    for k, p in enumerate(picks):
        arms[f"pick{k}"] = {"arch": p.to_dict()}
        for name, a in baselines[k].items():
            arms[f"{name}{k}"] = {"arch": a.to_dict()}
    return arms


def _recover_eval(backbone, imp, blocks, settings, seed, cfg, out, tokens) -> Any:
    """Prune ``settings['arch']``, distil for ``tokens`` at ``settings['lr']``; the model."""
    m = prune(backbone, FlashArch.from_dict(settings["arch"]), scores=imp).train()
    tag = f"{FlashArch.from_dict(settings['arch']).to_json()}:{settings['lr']}:{seed}:{tokens}"
    import hashlib

    d = out / ".memo" / "recover" / hashlib.sha256(tag.encode()).hexdigest()[:16]
    torch.set_num_threads(cfg.train_threads)
    try:
        res = recover(
            m,
            backbone,
            blocks,
            tokens,
            d if cfg.checkpoints else None,
            batch_size=cfg.batch_size,
            lr=settings["lr"],
            seed=seed,
            progress=False,
        )
    finally:
        torch.set_num_threads(cfg.threads)
    res.raise_if_signalled("fmlab flash bench (recovery)")
    return m.eval()


# -- the bench ----------------------------------------------------------------------------


def run(out_dir: str | Path, cfg: BenchConfig | None = None, command: str = "fmlab flash bench"):
    """Run the bench (see the module docstring); writes ``flash.json`` and plots in ``out_dir``."""
    from fmlab.core.models import load_pretrained

    cfg = cfg or BenchConfig()
    out = Path(out_dir)
    t0 = time.perf_counter()
    torch.set_num_threads(cfg.threads)
    backbone, tok = load_pretrained(cfg.model)
    if cfg.truncate:
        backbone = _truncated(backbone, cfg.truncate)
    backbone.eval().requires_grad_(False)
    shape = BackboneShape.of(backbone)
    memo = Memo(out / ".memo" / "flash.json", key={"cfg": asdict(cfg)})

    text = Splits.build(text_splits, seed=0, dev_seeds=(cfg.dev_seed,), test_seeds=cfg.seeds)
    calib = calibration_ids(list(text["calib"]), tok, cfg.seq_len, cfg.calib_rows)
    calib_blocks = torch.cat([calib, calib[:, :1]], 1)  # (N, T + 1) for lm_loss
    imp = importance(backbone, calib)
    log(f"importance on {imp.tokens} calibration tokens")
    space = cfg.search_space()
    cands = Splits.build(candidate_splits, seed=0, key=lambda a: FlashArch.from_dict(a).to_json(),
                         n_fit=cfg.candidates, n_test=cfg.test_candidates, shape=shape.__dict__,
                         block=imp.block, attention=imp.attention, space=space.to_dict())  # fmt: skip

    # 2-3: measure, fit, cross-validate (design), then the held-out candidates once
    fit_archs = [FlashArch.from_dict(a) for a in cands["fit"]]
    fit_lat, refs = _measure_candidates(backbone, imp, list(cands["fit"]), cfg, memo, "fit")
    ref = {t: sorted(r[t] for r in refs)[len(refs) // 2] for t in refs[0]}  # median reference
    with cands.design("latency model: fit and cross-validate"):
        lm = LatencyModel(shape, "gp").fit(fit_archs, fit_lat)
        cv = lm.cross_validate()
        gbr = LatencyModel(shape, "gbr").fit(fit_archs, fit_lat).cross_validate()
    cands.open_test("held-out latency error of the fitted model")
    test_lat, _ = _measure_candidates(backbone, imp, list(cands["test"]), cfg, memo, "test")
    held = lm.evaluate([FlashArch.from_dict(a) for a in cands["test"]], test_lat)

    # 4: search on calibration perplexity and predicted latency; measure the predicted front
    def ppl_of(a):
        return _ppl(prune(backbone, a, scores=imp), calib_blocks)

    with text.design("search on calibration perplexity"):
        res = memo.get_or_compute("search", lambda: search(
            shape, imp, lambda a: _rel(lm.predict(a), ref), ppl_of, space=space,
            trials=cfg.search_trials, population=cfg.population, seed=0, log=log).to_dict())  # fmt: skip
    from fmlab.flash.search import SearchResult

    res = SearchResult(**{**res, "reference": tuple(res["reference"])})
    front_archs = res.pareto_archs()[: cfg.front_measured]
    meas = [_measure({"c": prune(backbone, a, scores=imp)}, cfg)["latency"]["c"]
            for a in front_archs]  # fmt: skip
    front_ppl = [res.trials[i]["ppl"] for i in res.pareto[: cfg.front_measured]]
    measured_front = [(_rel(m, ref), p) for m, p in zip(meas, front_ppl, strict=True)]
    measured_front = [measured_front[i] for i in pareto_front(measured_front)]

    # 5: picks and baselines at equal measured latency
    picks = _picks(res, cfg.pick_latency)
    pick_meas = [
        _measure({"c": prune(backbone, a, scores=imp)}, cfg)["latency"]["c"] for a in picks
    ]
    fams = _families(shape, imp)

    def measure_rel(a):
        key = f"baseline:{a.to_json()}"
        return memo.get_or_compute(key, lambda: _rel(_measure({"c": prune(backbone, a,
                                   scores=imp)}, cfg)["latency"]["c"], ref))  # fmt: skip

    baselines, matching = [], []
    for k, m in enumerate(pick_meas):
        goal = _rel(m, ref)
        chosen_k = {}
        for fam, options in fams.items():
            a, got, tries = _matched(options, lm, ref, goal, measure_rel)
            chosen_k[fam] = a
            matching.append({"pick": k, "family": fam, "pick_rel": goal, "baseline_rel": got,
                             "tries": tries})  # fmt: skip
        baselines.append(chosen_k)
    arms = _recovery_arms(picks, baselines)

    # 6: recovery; lr per arm family on val at the dev seed, then the sealed test at test seeds
    rec_blocks = _blocks(tok, list(text["recover"]), cfg.seq_len)
    mid = len(picks) // 2
    fam = {f: arms[f"{f}{mid}"]["arch"] for f in ("pick", "depth", "width")}
    tune_tokens = max(1, int(cfg.recover_tokens * cfg.tune_fraction))

    def score_val(arm, params, val):
        s = {"arch": fam[arm], "lr": params["lr"]}
        m = _recover_eval(backbone, imp, rec_blocks, s, cfg.dev_seed, cfg, out, tune_tokens)
        return _ppl(m, _blocks(tok, list(val), cfg.seq_len)[: cfg.eval_rows])

    tuning = tune(list(fam), {"lr": list(cfg.lr_grid)}, score_val, val=text["val"],
                  mode="min", memo=Memo(out / ".memo" / "tune.json", key=asdict(cfg)))  # fmt: skip
    text.open_test("test perplexity of the recovered picks and baselines")
    test_blocks = _blocks(tok, list(text["test"]), cfg.seq_len)[: cfg.eval_rows]
    chosen = {a: {**s, "lr": tuning.chosen[a.rstrip("0123456789")]["lr"]} for a, s in arms.items()}

    def evaluate(arm, settings, seed):
        before = prune(backbone, FlashArch.from_dict(settings["arch"]), scores=imp)
        nll0 = _per_block_nll(before, test_blocks)
        m = _recover_eval(backbone, imp, rec_blocks, settings, seed, cfg, out, cfg.recover_tokens)
        nll = _per_block_nll(m, test_blocks)
        return {"ppl": math.exp(sum(nll) / len(nll)), "ppl_before": math.exp(sum(nll0) / len(nll0)),
                "per_block_nll": nll}  # fmt: skip

    runs = run_arms(chosen, text.test_seeds, evaluate, Memo(out / ".memo" / "arms.json",
                    key={"cfg": asdict(cfg), "arms": chosen}))  # fmt: skip
    base_nll = _per_block_nll(backbone, test_blocks)
    return _finish(out, cfg, command, t0, backbone, imp, shape, text, cands, lm, cv, gbr, held,
                   res, measured_front, picks, baselines, chosen, runs, tuning, base_nll, memo,
                   matching)  # fmt: skip


def _speed(backbone, imp, shape, chosen, cfg, memo) -> dict:
    """Backbone and every arm's (pruned, not yet recovered: same shapes) latency, interleaved."""

    def go():
        ms = {"backbone": backbone}
        for arm, s in chosen.items():
            ms[arm] = prune(backbone, FlashArch.from_dict(s["arch"]), scores=imp)
        r = _measure(ms, cfg)
        skip = {f"skip{k}": prune(backbone, _skip_arch(shape, imp, k), scores=imp)
                for k in cfg.skip_counts}  # fmt: skip
        long = measure_many(skip, (), (cfg.long_context,), threads=cfg.threads,
                            repeats=cfg.repeats, warmup=cfg.warmup,
                            decode_tokens=cfg.decode_tokens)  # fmt: skip
        return {"eager": r, "skip": long}

    return memo.get_or_compute("speed", go)


def _export(backbone, imp, pick, cfg, out) -> dict:
    """The first pick's prefill and decode ``.pte`` with their parity checks, then ExecuTorch
    latency of the pick and the backbone on every target, interleaved per target."""
    if not cfg.export:
        return {"status": "not run (--quick skips the ExecuTorch export)"}
    from fmlab.flash.export import ExportError, export, export_decode, measure_pte_many

    try:
        m = prune(backbone, pick, scores=imp)
        # weights are not committed: the .pte stays in the (git-ignored) work folder
        d = out / ".memo" / "export"
        rep = export(m, d / "pick0.pte", seq_len=cfg.prefill_lengths[0])
        n = cfg.export_decode_steps
        rep["decode"] = export_decode(m, d / "pick0-decode.pte", max_len=n, steps=n)
        lat = measure_pte_many({"pick0": m, "backbone": backbone}, cfg.prefill_lengths,
                               cfg.decode_contexts, threads=cfg.threads, repeats=cfg.repeats,
                               warmup=cfg.warmup, decode_tokens=cfg.decode_tokens)  # fmt: skip
        rep["latency"], rep["timing"] = lat["latency"], lat["timing"]
        rep["decode_cache"] = "static, max_len = context + decode_tokens per decode target"
        rep["speedup"] = {t: lat["latency"]["backbone"][t] / v
                          for t, v in lat["latency"]["pick0"].items()}  # fmt: skip
        return rep
    except ExportError as e:
        return {"status": "failed", "error": str(e)}


def _finish(out, cfg, command, t0, backbone, imp, shape, text, cands, lm, cv, gbr, held, res,
            measured_front, picks, baselines, chosen, runs, tuning, base_nll, memo, matching):  # fmt: skip
    speed = _speed(backbone, imp, shape, chosen, cfg, memo)
    eager = speed["eager"]
    tgt = targets(cfg.prefill_lengths, cfg.decode_contexts)
    timing = eager["timing"]
    speedup = {a: {t: eager["latency"]["backbone"][t] / eager["latency"][a][t] for t in tgt}
               for a in chosen}  # fmt: skip
    s = runs.summary()
    intervals, notes = [], []
    for k in range(len(picks)):
        for b in ("depth", "width"):
            p = paired(runs.per_seed(f"pick{k}", "ppl") if len(cfg.seeds) > 1 else None,
                       runs.per_seed(f"{b}{k}", "ppl") if len(cfg.seeds) > 1 else None,
                       items_a=[runs.values[f"pick{k}"][sd]["per_block_nll"] for sd in cfg.seeds],
                       items_b=[runs.values[f"{b}{k}"][sd]["per_block_nll"] for sd in cfg.seeds],
                       names=(f"pick{k}", f"{b}{k}"), metric=f"nll_pick{k}_vs_{b}")  # fmt: skip
            intervals.append(p)
            lat_ratio = _rel(eager["latency"][f"pick{k}"], eager["latency"][f"{b}{k}"])
            notes.append(f"pick{k} − {b}{k} test NLL: {format_delta(p)}; measured latency "
                         f"pick/baseline (mean over targets) {lat_ratio:.3f}")  # fmt: skip
        for t in tgt:
            pt = paired(items_a=timing[t]["arms"]["backbone"]["seconds"],
                        items_b=timing[t]["arms"][f"pick{k}"]["seconds"],
                        names=("backbone", f"pick{k}"), metric=f"seconds_{t}_pick{k}",
                        headline=False)  # fmt: skip
            intervals.append(pt)
    export_rep = _export(backbone, imp, picks[0], cfg, out)
    for t, rec in export_rep.get("timing", {}).items():
        intervals.append(paired(items_a=rec["arms"]["backbone"]["seconds"],
                                items_b=rec["arms"]["pick0"]["seconds"], names=("backbone", "pick0"),
                                metric=f"seconds_{t}_pick0_executorch", headline=False))  # fmt: skip
    plots = _plots(out, res, measured_front, held)
    base_ppl = math.exp(sum(base_nll) / len(base_nll))
    skip_lat = {k: v[f"decode@{cfg.long_context}"] for k, v in speed["skip"]["latency"].items()}
    notes += [
        "search space, importance scores and recovery budget are fmlab's own choices "
        "(MobileLLM-Flash publishes none)",
        f"attention skipping, decode s/token at {cfg.long_context} context: "
        + ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in skip_lat.items()),
        "speed-ups are of the pruned shapes (recovery changes weights, not shapes)",
    ]
    metrics = {
        "latency_model": {
            "gp_cv": cv,
            "gbr_cv": gbr,
            "held_out": {
                t: {k: v for k, v in d.items() if k in ("r2", "mape", "n")} for t, d in held.items()
            },
        },
        "search": {
            "hypervolume_predicted": res.hypervolume,
            "reference": res.reference,
            "hypervolume_measured": hypervolume_2d(measured_front, res.reference),
            "pareto": [res.trials[i] for i in res.pareto],
            "measured_front": measured_front,
            "trials": len(res.trials),
        },
        "picks": {
            f"pick{k}": {
                **s[f"pick{k}"],
                "arch": p.to_dict(),
                "describe": p.describe(),
                "speedup": speedup[f"pick{k}"],
            }
            for k, p in enumerate(picks)
        },
        "backbone_test_ppl": base_ppl,
        "speed": {
            "eager": {"latency": eager["latency"], "timing": timing},
            "skip_decode_long_context": skip_lat,
        },
        "export": export_rep,
        "lr_chosen": {a: v["lr"] for a, v in tuning.chosen.items()},
        "baseline_matching": matching,
    }
    t_pre = next(t for t in tgt if t.startswith("prefill"))
    t_dec = next((t for t in tgt if t.startswith("decode")), None)
    metrics.update(
        pick0_prefill_speedup=speedup["pick0"][t_pre],
        pick0_decode_speedup=speedup["pick0"][t_dec] if t_dec else None,
        pick0_ppl_over_backbone=s["pick0"]["ppl"]["mean"] / base_ppl,
        latency_heldout_r2_min=min(d["r2"] for d in held.values()),
    )
    baselines_rec = {a: {**s[a], "arch": chosen[a]["arch"], "speedup": speedup[a]}
                     for a in chosen if not a.startswith("pick")}  # fmt: skip
    rec = ResultRecord(
        method="flash",
        claim=CLAIM,
        setup={
            "config": asdict(cfg),
            "command": command,
            "backbone": cfg.model,
            "shape": shape.__dict__,
            "calibration_tokens": imp.tokens,
        },
        metrics=metrics,
        baselines=baselines_rec,
        wall_s=time.perf_counter() - t0,
        plots=plots,
        notes=notes,
        headline=[
            "pick0_prefill_speedup",
            "pick0_decode_speedup",
            "pick0_ppl_over_backbone",
            "latency_heldout_r2_min",
        ],
        **record_fields(text, tuning, intervals),
    )
    rec.splits = {"text": text.summary(), "candidates": cands.summary()}
    write_record(rec, out / "flash.json")
    return rec


def quick(out_dir: str | Path) -> ResultRecord:
    """The quick bench (`fmlab demo`): SmolLM2 cut to 6 layers, a dozen candidates, a few
    search trials and recovery steps, one seed, no export; its numbers claim nothing."""
    return run(out_dir, BenchConfig.quick(), command="fmlab flash bench --quick")
