"""Tempo on the dense benchmark (issue 16): a bench in which the claim is testable, on
:mod:`fmlab.core.experiment`.

Order, each step recorded:

1. :func:`fmlab.tempo.dense.dense_splits`: dev and test videos, disjoint by their frames,
   test sealed; dev training seed ``dev_seed``, test training seeds ``test_seeds``.
2. Design on dev, per frame encoder (``pixels`` and frozen ``efficientnet`` features): a
   query-agnostic and a query-aware stack trained at the dev seed; preconditions (a) and (b)
   (:func:`fmlab.tempo.dense.preconditions`) and the query-aware stack's Tempo accuracy at
   every budget, on dev. The encoder with the higher mean dev accuracy is used on test.
3. If (a) or (b) fails for that encoder, the bench stops here: the record says which failed
   and no arm is compared (fix the benchmark before comparing arms). The test split stays
   sealed.
4. ``splits.open_test()``; every arm of :data:`ARMS` at every budget (0.25–4 tokens/frame) on
   the test split, stacks trained per test seed (``run_arms`` over a ``Memo``: resumable;
   trained stacks are checkpointed under ``<out>/.dense-work``). Tokens fed to the global
   model never exceed B (checked for every question; the record has the largest used/B).
5. Paired intervals (per seed t and per question bootstrap) at every budget ≤ 1 token/frame:
   Tempo vs uniform sampling, pooling, agnostic + uniform, query-aware + uniform (ATA vs
   uniform, marked where ATA is active: B > N·m); Tempo vs random-score ATA, oracle vs
   Tempo, head vs tail truncation, Tempo vs m = 0. Record ``long_video.json`` + plots.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from fmlab.core.cliutil import log as log_stderr
from fmlab.core.experiment import (
    compare,
    format_delta,
    interval_plot,
    paired,
    record_fields,
    run_arms,
)
from fmlab.core.io import Memo
from fmlab.core.results import ResultRecord, figure, save_figure, write_record
from fmlab.tempo.dense import dense_splits, preconditions, score
from fmlab.tempo.model import FRAME_FEATURES, TempoConfig
from fmlab.tempo.pipeline import TrainConfig, train_stack

__all__ = ["ARMS", "DenseBenchConfig", "quick", "run"]

# arm -> (the stack it reads, the arm that stack is allocated under): the one registry of arms
ARMS: dict[str, tuple[str, str]] = {
    "frames": ("frames", "frames"),  # uniform frame sampling
    "pool": ("pool", "pool"),  # uniform spatio-temporal pooling
    "agnostic": ("agnostic", "uniform-alloc"),  # query-agnostic compressor + uniform
    "uniform-alloc": ("tempo", "uniform-alloc"),  # query-aware compressor + uniform
    "tempo": ("tempo", "tempo"),  # query-aware + ATA on its relevance, head truncation
    "random-ata": ("tempo", "random-ata"),  # ATA on random scores
    "oracle": ("tempo", "oracle"),  # ATA on the true target segments
    "tail": ("tempo", "tail"),  # ATA, tail truncation
    "m0": ("tempo", "m0"),  # ATA with minimum 0 (no temporal anchors)
}
# (a, b, what it tests): compared at every budget <= 1 token/frame
COMPARISONS = (
    ("tempo", "frames", "Tempo vs uniform frame sampling"),
    ("tempo", "pool", "Tempo vs pooling"),
    ("tempo", "agnostic", "Tempo vs query-agnostic + uniform"),
    ("tempo", "uniform-alloc", "ATA vs uniform allocation (query-aware)"),
    ("tempo", "random-ata", "relevance vs random scores"),
    ("oracle", "tempo", "headroom of the router"),
    ("tempo", "tail", "head vs tail truncation"),
    ("tempo", "m0", "temporal anchors (m=4) vs none (m=0)"),
)
MIN_TOKENS = 4  # ATA's m


def _default_train() -> TrainConfig:
    return TrainConfig(
        stages=(("align", 400, 64), ("qa-pretrain", 300, 256), ("long-sft", 100, 1024)),
        batch=8,
        budgets_per_segment=(1, 2, 4, 8, 16, 32),  # up to M = 32: the bench's 4 tokens/frame
        videos="dense",
        video_pool=128,  # 172k distinct frames over the 3 lengths: their features fit the cache
        checkpoint_every=25,
    )


@dataclass(frozen=True)
class DenseBenchConfig:
    n_frames: int = 1024  # 8.5 minutes at 2 fps, 128 segments
    n_dev: int = 16
    n_test: int = 40
    split_seed: int = 0
    dev_seed: int = 0  # training seed of the design stacks
    test_seeds: tuple[int, ...] = (1, 2, 3)
    tokens_per_frame: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0, 4.0)
    arms: tuple[str, ...] = tuple(ARMS)
    encoders: tuple[str, ...] = FRAME_FEATURES  # measured on dev; the better one goes to test
    precondition_tokens: tuple[int, ...] = (1, 2, 4, 8, 16, 32)  # per segment, for (a)
    precondition_tpf: float = 1.0  # the budget of (b), tokens/frame
    model: TempoConfig = field(default_factory=lambda: TempoConfig(mem_tokens=32))
    train: TrainConfig = field(default_factory=_default_train)
    threads: int = 1
    # stop before comparing arms when a precondition fails; only the quick form (which claims
    # nothing and must exercise every step) turns it off, and its record says so
    gate: bool = True

    def __post_init__(self):
        bad = [a for a in self.arms if a not in ARMS]
        if bad or "tempo" not in self.arms:
            raise ValueError(f"arms must include tempo and come from {', '.join(ARMS)}; got {bad}")
        bad = [e for e in self.encoders if e not in FRAME_FEATURES]
        if bad or not self.encoders:
            raise ValueError(f"encoders must come from {', '.join(FRAME_FEATURES)}; got {bad}")
        if self.train.videos != "dense":
            raise ValueError("the dense bench trains on dense videos: train.videos='dense'")
        if not self.test_seeds or self.dev_seed in self.test_seeds:
            raise ValueError("test_seeds must be non-empty and exclude dev_seed")

    def budgets(self) -> dict[float, int]:
        """tokens/frame -> B (visual tokens per video)."""
        return {r: max(1, round(r * self.n_frames)) for r in self.tokens_per_frame}

    @classmethod
    def quick(cls) -> DenseBenchConfig:
        """A run of about a minute on 2 cores that claims nothing: 64-frame videos."""
        return cls(
            n_frames=64,
            n_dev=2,
            n_test=2,
            test_seeds=(1, 2),
            tokens_per_frame=(0.25, 1.0, 4.0),
            precondition_tokens=(1, 4),
            model=TempoConfig(mem_tokens=32, d_svlm=32, d_llm=32, svlm_layers=1, llm_layers=1),
            train=TrainConfig(
                stages=(("align", 3, 64), ("long-sft", 3, 64)),
                batch=2,
                videos="dense",
                video_pool=4,
            ),
            gate=False,
        )


def _stack(work: Path, cfg: DenseBenchConfig, encoder: str, kind: str, seed: int, log):
    """One trained stack (checkpointed under ``work``: an interrupted training resumes)."""
    from fmlab.core.experiment import content_hash

    model = replace(cfg.model, frame_features=encoder)
    train = replace(cfg.train, seed=seed)
    # the folder names what was trained, so a changed schedule or model trains anew
    tag = content_hash({"model": asdict(model), "train": asdict(train)})[:10]
    out = work / f"{encoder}-{kind}-seed{seed}-{tag}"
    if (out / "tempo.json").is_file():
        from fmlab.tempo.pipeline import Stack

        return Stack.load(out)
    t0 = time.perf_counter()
    stack = train_stack(kind, out / "work", train, model, log=log)
    stack.save(out, {"train_seconds": time.perf_counter() - t0})
    return stack


def _summary(res: dict, n_frames: int) -> dict:
    """Per-budget scores -> metrics: accuracy, per family, tokens/frame, used/B."""
    out = {}
    for b, r in res.items():
        c = np.asarray(r["correct"])
        out[f"acc@{b}"] = float(c.mean())
        for fam in dict.fromkeys(r["family"]):
            out[f"{fam}_acc@{b}"] = float(c[np.asarray(r["family"]) == fam].mean())
        out[f"tokens_per_frame@{b}"] = float(np.mean(r["tokens"]) / n_frames)
        out[f"max_used_over_budget@{b}"] = float(max(r["tokens"]) / b)
        out[f"items@{b}"] = [float(x) for x in c]
    return out


def _design(splits, cfg: DenseBenchConfig, work: Path, memo: Memo, log) -> dict:
    """Step 2, on dev: preconditions and Tempo's dev accuracy per frame encoder."""
    budgets = cfg.budgets()
    out = {}
    for enc in cfg.encoders:
        if f"design/{enc}" in memo:
            out[enc] = memo.get(f"design/{enc}")
            # the record lists every design step, also those resumed from the memo
            with splits.design(f"preconditions ({enc}, resumed)"):
                pass
            continue
        agnostic = _stack(work, cfg, enc, "agnostic", cfg.dev_seed, log)
        tempo = _stack(work, cfg, enc, "tempo", cfg.dev_seed, log)
        pre = preconditions(agnostic, tempo, splits, cfg.precondition_tokens,
                            cfg.precondition_tpf, step=f"preconditions ({enc})")  # fmt: skip
        with splits.design(f"frame encoder on dev ({enc})"):
            res = score(tempo, list(splits["dev"]), "tempo", tuple(budgets.values()))
        acc = {str(r): float(np.mean(res[b]["correct"])) for r, b in budgets.items()}
        items = [x for b in budgets.values() for x in res[b]["correct"]]  # (budget, question)
        out[enc] = memo.put(f"design/{enc}", {
            "preconditions": pre, "dev_tempo_accuracy": acc,
            "dev_tempo_mean": float(np.mean(list(acc.values()))), "dev_tempo_items": items,
        })  # fmt: skip
        log(f"dev, {enc}: (a) {pre['a_holds']} (b) {pre['b_holds']}, tempo accuracy {acc}")
    return out


def _plot(path: Path, runs, cfg: DenseBenchConfig) -> Path:
    plt = figure()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    budgets = cfg.budgets()
    for arm in runs.values:
        m = [np.mean(runs.per_seed(arm, f"acc@{b}")) for b in budgets.values()]
        s = [np.std(runs.per_seed(arm, f"acc@{b}")) for b in budgets.values()]
        ax.errorbar(list(budgets), m, yerr=s, marker="o", capsize=3, label=arm)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("budget (visual tokens per frame)")
    ax.set_ylabel("test accuracy (mean ± std over seeds)")
    ax.axvline(MIN_TOKENS / cfg.model.seg_len, color="grey", ls=":", lw=1)  # B = N·m
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3)
    return save_figure(fig, plt, path)


def run(
    out_dir: str | Path,
    cfg: DenseBenchConfig = DenseBenchConfig(),
    log=log_stderr,
    design_only: bool = False,
    command: str = "fmlab tempo dense-bench",
) -> ResultRecord:
    """The dense bench (see the module doc); ``design_only``: stop after the dev steps (a
    design probe: the test split is never opened) and write ``dense_design.json``."""
    t_start = time.perf_counter()
    out = Path(out_dir)
    work = out / ".dense-work"
    torch.set_num_threads(cfg.threads)
    splits = dense_splits(cfg.split_seed, cfg.n_dev, cfg.n_test, cfg.n_frames,
                          dev_seeds=(cfg.dev_seed,), test_seeds=cfg.test_seeds)  # fmt: skip
    key = {k: v for k, v in asdict(cfg).items() if k not in ("arms", "threads")}
    memo = Memo(work / "memo.json", key, log=log)
    design = _design(splits, cfg, work, memo, log)
    chosen = max(cfg.encoders, key=lambda e: design[e]["dev_tempo_mean"])
    pre = design[chosen]["preconditions"]
    budgets = cfg.budgets()
    n_seg = cfg.n_frames // cfg.model.seg_len
    setup = {
        "command": command, "config": asdict(cfg), "budgets": {str(r): b for r, b in
        budgets.items()}, "segments": n_seg, "min_tokens": MIN_TOKENS,
        "ata_active_budgets": [b for b in budgets.values() if b > n_seg * MIN_TOKENS],
        "encoder_chosen_on_dev": chosen,
    }  # fmt: skip
    metrics = {"preconditions": pre, "design_on_dev": design, "encoder": chosen}
    claim = ("On dense long videos, Tempo (query-aware compression + ATA) answers needle "
             "questions better than uniform sampling, pooling and query-agnostic compression "
             "at <= 1 token/frame, and ATA beats uniform allocation where it is active, "
             "using no more tokens than B.")  # fmt: skip
    enc_note = ", ".join(f"{e} {design[e]['dev_tempo_mean']:.3f}" for e in cfg.encoders)
    notes = [f"frame encoder chosen on dev by Tempo's mean dev accuracy: {chosen} ({enc_note})"]
    if len(cfg.encoders) == 2:  # which reads frames better, on dev, with its interval
        e1, e2 = cfg.encoders
        p = paired(
            items_a=design[e1]["dev_tempo_items"],
            items_b=design[e2]["dev_tempo_items"],
            names=(e1, e2),
            metric="dev Tempo accuracy over budgets",
            headline=False,
        )
        metrics["encoder_comparison_on_dev"] = p.to_dict()
        better = e1 if p.main.lo > 0 else e2 if p.main.hi < 0 else None
        shown = f"{better} is better" if better else "neither is shown better (chosen by mean)"
        notes.append(f"{e1} − {e2} on dev: {format_delta(p)}: {shown}")
    failed = [p for p in ("a", "b") if not pre[f"{p}_holds"]]
    if failed and not cfg.gate and not design_only:
        notes.append(
            f"preconditions {' and '.join(failed)} failed on dev; arms compared anyway "
            "because this configuration does not gate (the quick form: claims nothing)"
        )
    if design_only or (failed and cfg.gate):
        status = ("design probe: stopped after the dev steps, test split not opened"
                  if design_only else f"preconditions {' and '.join(failed)} failed on dev: "
                  "arms not compared, test split not opened (fix the benchmark first)")  # fmt: skip
        metrics["status"] = status
        notes.append(status)
        rec = ResultRecord(method="tempo", claim=claim, setup=setup, metrics=metrics,
                           notes=notes, wall_s=time.perf_counter() - t_start,
                           **record_fields(splits))  # fmt: skip
        write_record(rec, out / ("dense_design.json" if design_only else "long_video.json"))
        log(status)
        return rec

    splits.open_test("the arms of issue 16 on the dense test videos, once")
    test = list(splits["test"])
    stacks: dict[tuple[str, int], object] = {}
    memories: dict[tuple[str, int], dict] = {}

    def evaluate(arm: str, settings: dict, seed: int) -> dict:
        kind, how = ARMS[arm]
        if (kind, seed) not in stacks:
            stacks[(kind, seed)] = _stack(work, cfg, chosen, kind, seed, log)
        mem = memories.setdefault((kind, seed), {})
        res = score(stacks[(kind, seed)], test, how, tuple(budgets.values()), seed, mem)
        return _summary(res, cfg.n_frames)

    memo_arms = Memo(work / "arms.json", {**key, "encoder": chosen}, log=log)
    runs = run_arms({a: {"encoder": chosen} for a in cfg.arms}, cfg.test_seeds, evaluate,
                    memo_arms, log=log)  # fmt: skip
    worst = max(max(runs.per_seed(a, f"max_used_over_budget@{b}")) for a in cfg.arms
                for b in budgets.values())  # fmt: skip
    metrics["max_tokens_used_over_budget"] = worst
    if worst > 1:
        raise RuntimeError(f"an arm used {worst:.3f}·B tokens: the budget check failed")
    intervals, verdicts = [], []
    for r, b in budgets.items():
        if r > 1:
            continue
        for a, o, what in COMPARISONS:
            if a not in cfg.arms or o not in cfg.arms:
                continue
            p = compare(runs, a, o, f"acc@{b}", items=f"items@{b}", headline=r == 1 and o in
                        ("frames", "pool", "agnostic", "uniform-alloc"))  # fmt: skip
            intervals.append(p)
            lo, hi = p.main.lo, p.main.hi
            seed_ok = p.per_seed is None or p.per_seed.lo > 0
            v = "wins" if lo > 0 and seed_ok else "LOSES" if hi < 0 else "no difference shown"
            active = "" if b > n_seg * MIN_TOKENS else " (ATA inactive: B <= N·m)"
            verdicts.append(f"{r:g} tokens/frame (B={b}): {what}: {a} − {o} "
                            f"{format_delta(p)} → {v}{active}")  # fmt: skip
    notes += verdicts
    s = runs.summary()
    metrics.update({"tempo": s["tempo"], "status": "arms compared on test"})
    plots = [_plot(out / "long_video.png", runs, cfg).name]
    if intervals:
        plots.append(interval_plot(out / "long_video_intervals.png", intervals).name)
    per_seed = {a: {str(sd): {k: v for k, v in runs.values[a][sd].items() if
                              not k.startswith("items@")} for sd in runs.seeds}
                for a in runs.values}  # fmt: skip
    metrics["per_seed"] = per_seed
    rec = ResultRecord(
        method="tempo", claim=claim, setup=setup, metrics=metrics,
        baselines={a: s[a] for a in s if a != "tempo"}, plots=plots, notes=notes,
        headline=[f"acc@{budgets[1.0]}"] if 1.0 in budgets else [],
        wall_s=time.perf_counter() - t_start, **record_fields(splits, None, intervals),
    )  # fmt: skip
    write_record(rec, out / "long_video.json")
    return rec


def quick(out_dir: str | Path | None = None, log=log_stderr) -> ResultRecord:
    """The quick form (claims nothing): every step of the full run on 64-frame videos and tiny
    stacks trained for a few steps; it compares the arms even when a precondition fails (and
    says so), so that the whole path runs."""
    import tempfile

    if out_dir is None:
        out_dir = tempfile.mkdtemp(prefix="fmlab-tempo-dense-")
    return run(
        out_dir, DenseBenchConfig.quick(), log=log, command="fmlab tempo dense-bench --quick"
    )
