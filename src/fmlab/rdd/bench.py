"""RDD reproduction on the seeded arena, built on :mod:`fmlab.core.experiment`.

Arms (one registry, ``METHODS`` x encoders): RDD with the paper's keys plus an optional motion weight, UVD,
uniform with the oracle K and random, each on a frame encoder. The default visual encoder is
the frozen ImageNet EfficientNet-Lite0 (:mod:`fmlab.core.vision`; the paper uses LIV);
``state-cnn`` (a CNN trained on arena frames to read the simulator's state) is kept as an arm
that is supervised on the arena itself, and labelled so.

Design and test are apart: every hyper-parameter of every arm (RDD's alpha and motion weight,
UVD's min_interval and gamma, uniform and random have none) is chosen by :func:`tune` with the
same budget on the training demos of the dev seeds (RDD leave-one-demo-out), grids widened while
the best point is on an edge. The test seeds (fresh: never looked at while designing; the old
record's seeds 0-9 all were) are opened once, after tuning. Per test seed the prior is built
from that seed's training demos and every arm segments that seed's test demos (standard,
adversarial, ood, not-at-rest: skills whose boundaries are at speed). RDD against UVD and uniform: paired per-seed and per-demo intervals.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from fmlab.core.cliutil import log as log_stderr
from fmlab.core.experiment import (
    Splits,
    compare,
    format_delta,
    record_fields,
    run_arms,
    tune,
)
from fmlab.core.io import Memo
from fmlab.core.results import (
    ResultRecord,
    Timer,
    grouped_bar_plot,
    line_plot,
    peak_rss_mb,
    write_record,
)
from fmlab.rdd import arena
from fmlab.rdd.encoders import PixelPCA, PretrainedImageEncoder, StateCNN, TCNEncoder
from fmlab.rdd.metrics import evaluate
from fmlab.rdd.plots import plot_timeline
from fmlab.rdd.prior import Prior
from fmlab.rdd.segment import Segmentation, label_segments, random_segment, segment, uniform_segment
from fmlab.rdd.uvd import uvd_segment

__all__ = ["METHODS", "ArenaConfig", "arm_names", "quick", "run_arena", "run_scaling"]

CLAIM = (
    "Cutting a demonstration where its intervals best match labelled sub-task intervals of the "
    "policy's training data (RDD, exact DP) recovers sub-task boundaries better than fully "
    "tuned UVD and uniform cutting with the oracle K, with a pretrained image encoder."
)
METRICS = ("miou", "boundary_f1", "official_iou", "k_error", "policy_success")
# method -> its tuning grid (one point: nothing to tune)
METHODS = {
    "rdd": {"alpha": [0.25, 1.0, 4.0], "motion": [0.0, 2.0, 8.0]},
    # ablation: RDD's DP forced to the oracle K, the one thing uniform cutting is given
    "rdd-k": {"alpha": [0.25, 1.0, 4.0], "motion": [0.0, 2.0, 8.0]},
    "uvd": {"min_interval": [4, 8, 16], "gamma": [0.02, 0.1, 0.5]},
    "uniform": {"k": ["oracle"]},
    "random": {"k": ["oracle"]},
}
ENCODER_NOTES = {
    "efficientnet-lite0": "frozen ImageNet EfficientNet-Lite0 (the default; the paper uses LIV)",
    "state-cnn": "a CNN supervised on arena frames to read the simulator state (arena-specific)",
    "pixels-pca": "PCA of 16x16 pixels fitted on the seed's training demos",
    "tcn": "a time-contrastive CNN trained on the seed's training demos (no labels)",
    "state": "the true simulator state (a ceiling)",
}


@dataclass(frozen=True)
class ArenaConfig:
    dev_seeds: tuple[int, ...] = (0, 1)  # designed and tuned on
    seeds: tuple[int, ...] = (105, 106, 107, 108, 109)  # test seeds, fresh
    # seen: the first record's seeds 0-9, and 100-104: the committed record's test seeds, whose
    # seed 100 the quick bench also scored while the harness bench was designed
    seen_in_design: tuple[int, ...] = (*range(10), *range(100, 105))
    prior_demos: int = 3  # training demos per task
    n_test: int = 5  # test demos per task and split
    splits: tuple[str, ...] = ("standard", "adversarial", "ood", "not-at-rest")
    encoders: tuple[str, ...] = ("efficientnet-lite0", "state-cnn")
    headline_encoder: str = "efficientnet-lite0"
    image_size: int = 64  # EfficientNet input side for the 32 x 32 arena frames (speed)
    pretrain_per_task: int = 20  # state-cnn's corpus (the pretrain split), demos per task
    state_cnn_steps: int = 1500
    tcn_steps: int = 300
    budget: int = 9  # grid points per tuned arm, the same for every arm
    min_len: int = 2
    tol: int = 3
    # torch intra-op threads while the bench runs (restored after). One: the arena's tensors are
    # tiny, and on a shared 2-core machine two OpenMP threads wait on each other (EfficientNet
    # at 32 px: 2.7 ms/frame with 1 thread, 44 ms with 2, measured under a load average of 9).
    threads: int = 1

    @classmethod
    def quick(cls) -> ArenaConfig:
        # test seed 90: not one of the full runs' (100-104, 105-109), which no quick run may see
        return cls(dev_seeds=(0,), seeds=(90,), prior_demos=1, n_test=1,
                   encoders=("efficientnet-lite0",), image_size=32, budget=4,
                   pretrain_per_task=2, state_cnn_steps=60, tcn_steps=60)  # fmt: skip


def arm_names(cfg: ArenaConfig) -> list[str]:
    return [f"{m}/{e}" for e in cfg.encoders for m in METHODS]


def make_splits(
    seed: int, tune_seeds, eval_seeds, prior_demos: int, n_test: int, splits, pretrain: int
):
    """The one function owning the bench's demos: ``val`` = the dev seeds' training demos
    (tuning), ``prior`` = every test seed's training demos (its retrieval prior and the
    self-trained encoders' data), ``pretrain`` = every test seed's state-cnn corpus, ``test`` =
    every test seed's test demos (sealed). All four are checked disjoint by content."""
    del seed
    val = [(s, ep) for s in tune_seeds for ep in arena.make_split(s, "train", prior_demos)]
    prior = [(s, ep) for s in eval_seeds for ep in arena.make_split(s, "train", prior_demos)]
    corpus = [(s, ep) for s in eval_seeds for ep in arena.make_split(s, "pretrain", pretrain)]
    test = [(s, ep) for s in eval_seeds for sp in splits for ep in arena.make_split(s, sp, n_test)]
    return {"val": val, "prior": prior, "pretrain": corpus, "test": test}


class _Features:
    """Per (seed, encoder): the fitted encoder's features of an episode, computed once."""

    def __init__(self, cfg: ArenaConfig, log, splits: Splits | None = None):
        self.cfg, self.log, self.enc, self.cache = cfg, log, {}, {}
        self.data = {}  # (split, seed) -> the checked demos of a test seed (prior, pretrain)
        for name in ("prior", "pretrain") if splits is not None else ():
            for s, ep in splits[name]:
                self.data.setdefault((name, s), []).append(ep)

    def demos(self, split: str, seed: int, n: int) -> list:
        """A seed's ``split`` demos: the content-checked ones for a test seed, else made."""
        made = "train" if split == "prior" else split
        return self.data.get((split, seed)) or arena.make_split(seed, made, n)

    def _fit(self, seed: int, name: str):
        cfg = self.cfg
        if name == "state":
            return None
        if name == "efficientnet-lite0":
            return PretrainedImageEncoder(cfg.image_size)
        if name == "state-cnn":
            corpus = self.demos("pretrain", seed, cfg.pretrain_per_task)
            return StateCNN(steps=cfg.state_cnn_steps).fit(
                [e.frames for e in corpus], seed, [arena.state_features(e.states) for e in corpus],
                log=self.log,
            )  # fmt: skip
        enc = PixelPCA() if name == "pixels-pca" else TCNEncoder(steps=cfg.tcn_steps)
        return enc.fit([e.frames for e in self.demos("prior", seed, cfg.prior_demos)], seed)

    def __call__(self, seed: int, name: str, ep) -> np.ndarray:
        key = (seed, name, hashlib.sha1(ep.frames).digest())  # not id(): episodes are remade
        if key not in self.cache:
            if (seed, name) not in self.enc:
                t0 = time.perf_counter()
                self.enc[(seed, name)] = self._fit(seed, name)
                self.log(f"seed {seed}: {name} ready in {time.perf_counter() - t0:.1f} s")
            enc = self.enc[(seed, name)]
            self.cache[key] = (arena.state_features(ep.states) if enc is None
                               else enc.encode(ep.frames))  # fmt: skip
        return self.cache[key]


def _prior(train, feats, motion: float = 0.0) -> Prior:
    clips = [(lab, feats(ep)[sl]) for ep in train for lab, sl in ep.clips()]
    return Prior.from_clips([c for _, c in clips], [lab for lab, _ in clips], motion=motion)


def _segment(method: str, p: dict, f, ep, prior: Prior | None, rng, cfg) -> Segmentation:
    k = len(ep.boundaries)
    if method == "rdd":
        return segment(f, prior, p["alpha"], 0.0, cfg.min_len)
    if method == "rdd-k":
        return segment(f, prior, p["alpha"], 0.0, cfg.min_len, k=k)
    if method == "uvd":
        return uvd_segment(f, int(p["min_interval"]), float(p["gamma"]))
    if method == "uniform":
        return uniform_segment(len(f), k)
    return random_segment(len(f), k, rng)


def _score(ep, seg: Segmentation, prior: Prior, f, tol: int) -> dict:
    if not seg.labels:
        seg = label_segments(f, prior, seg)
    m = evaluate(seg.boundaries, ep.boundaries, tol)
    plan = [(lab, ep.states[e - 1]) for (_, e), lab in zip(seg.boundaries, seg.labels, strict=True)]
    m["policy_success"] = float(arena.success(arena.execute(ep.states[0], plan), ep.states[-1]))
    return m


def _val_score(arm: str, p: dict, val, feats: _Features, cfg: ArenaConfig) -> float:
    """Mean mIoU on the dev seeds' training demos; RDD leave-one-demo-out (each demo against
    a prior of the others of its seed)."""
    method, enc = arm.split("/")
    scores, rng = [], np.random.default_rng(0)
    for s, ep in val:
        f = feats(s, enc, ep)
        prior = None
        if method.startswith("rdd"):
            others = [e for t, e in val if t == s and e is not ep]
            prior = _prior(others, lambda e, s=s: feats(s, enc, e), p["motion"])
        seg = _segment(method, p, f, ep, prior, rng, cfg)
        scores.append(evaluate(seg.boundaries, ep.boundaries)["miou"])
    return float(np.mean(scores))


@contextlib.contextmanager
def _torch_threads(n: int):
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def run_arena(out_dir: str | Path, cfg: ArenaConfig | None = None, log=log_stderr) -> ResultRecord:
    """The arena bench (module docstring), at ``cfg.threads`` torch threads."""
    cfg = cfg or ArenaConfig()
    with _torch_threads(cfg.threads):
        return _run_arena(out_dir, cfg, log)


def _run_arena(out_dir: str | Path, cfg: ArenaConfig, log) -> ResultRecord:
    out = Path(out_dir)
    splits = Splits.build(make_splits, seed=0, key=lambda it: it[1].frames,
                          dev_seeds=cfg.dev_seeds, test_seeds=cfg.seeds,
                          tune_seeds=cfg.dev_seeds, eval_seeds=cfg.seeds,
                          prior_demos=cfg.prior_demos, n_test=cfg.n_test, splits=cfg.splits,
                          pretrain=cfg.pretrain_per_task)  # fmt: skip
    splits.declare_seen(*cfg.seen_in_design)
    feats = _Features(cfg, log, splits)
    arms = arm_names(cfg)
    grid = {a: METHODS[a.split("/")[0]] for a in arms}
    with Timer() as t:
        tuning = tune(arms, grid, lambda a, p, val: _val_score(a, p, val, feats, cfg),
                      val=splits["val"], budget=cfg.budget)  # fmt: skip
        splits.open_test()
        test = splits["test"]
        test_eps = [ep for _, ep in test]
        by_seed = {s: [ep for t_, ep in test if t_ == s] for s in splits.test_seeds}

        def run(arm: str, p: dict, seed: int) -> dict:
            method, enc = arm.split("/")
            fs = lambda ep: feats(seed, enc, ep)  # noqa: E731
            prior = _prior(feats.demos("prior", seed, cfg.prior_demos), fs,
                           p.get("motion", 0.0) if method.startswith("rdd") else 0.0)  # fmt: skip
            rng, res = np.random.default_rng(seed), {}
            for sp in cfg.splits:
                eps = [ep for ep in by_seed[seed] if ep.split == sp]
                rows = [_score(ep, _segment(method, p, fs(ep), ep, prior, rng, cfg), prior,
                               fs(ep), cfg.tol) for ep in eps]  # fmt: skip
                for m in METRICS:
                    res[f"{sp}/{m}"] = float(np.mean([r[m] for r in rows]))
                for m in ("miou", "boundary_f1"):
                    res[f"{sp}/per_demo_{m}"] = [r[m] for r in rows]
            return res

        memo = Memo(out / ".memo" / "arena.json", key={"cfg": asdict(cfg), "chosen": tuning.chosen})
        runs = run_arms(tuning.chosen, list(splits.test_seeds), run, memo, log=log)
    summary = runs.summary()
    head = cfg.headline_encoder
    ours = f"rdd/{head}"
    intervals = [
        compare(runs, ours, f"{base}/{enc_b}", f"{sp}/{m}", items=f"{sp}/per_demo_{m}",
                headline=sp == "standard", items_across_seeds="distinct")
        for sp in cfg.splits for base, enc_b in (("uvd", head), ("uniform", head))
        for m in ("miou", "boundary_f1")
    ] + [  # the ablation: does the oracle K close RDD's gap to uniform cutting?
        compare(runs, f"rdd-k/{head}", f"uniform/{head}", f"{sp}/{m}", items=f"{sp}/per_demo_{m}",
                headline=False, items_across_seeds="distinct")
        for sp in cfg.splits for m in ("miou", "boundary_f1")
    ] + [  # the measured causes: what the oracle K adds, and RDD-K with the arena encoder
        compare(runs, a, b, f"{sp}/miou", items=f"{sp}/per_demo_miou", headline=False,
                items_across_seeds="distinct")
        for sp in cfg.splits
        for a, b in ((f"rdd-k/{head}", f"rdd/{head}"),
                     *((("rdd-k/state-cnn", "uniform/state-cnn"),) if "state-cnn" in cfg.encoders else ()))
    ]  # fmt: skip
    std = {a: {m: summary[a][f"standard/{m}"] for m in METRICS} for a in arms}
    # how unequal the true sub-task durations are (uniform cutting with the oracle K is exact
    # when they are equal): the coefficient of variation within each test demo, per split
    duration_cv = {
        sp: float(np.mean([np.std(d) / np.mean(d) for d in
                           ([e - b for b, e in ep.boundaries] for ep in test_eps if ep.split == sp)]))
        for sp in cfg.splits
    }  # fmt: skip
    metrics = {**std[ours], "by_arm": summary, "tuning_chosen": tuning.chosen,
               "true_duration_cv": duration_cv, "peak_rss_mb": peak_rss_mb()}  # fmt: skip
    baselines = {(a.replace(f"/{head}", "") if a.endswith(f"/{head}") else
                  a + (" (supervised on the arena)" if "state-cnn" in a else "")): std[a]
                 for a in arms if a != ours}  # fmt: skip
    plots = []
    for m in ("miou", "boundary_f1"):
        vals = {sp: {a: summary[a][f"{sp}/{m}"]["mean"] for a in arms} for sp in cfg.splits}
        errs = {sp: {a: summary[a][f"{sp}/{m}"]["std"] for a in arms} for sp in cfg.splits}
        grouped_bar_plot(out / f"arena_{m}.png", vals, m,
                         f"{m} per split and arm (test seeds, mean ± std)", errs)  # fmt: skip
        plots.append(f"arena_{m}.png")
    ep = next(e for e in by_seed[cfg.seeds[0]] if e.split == cfg.splits[-1])
    fs = lambda e: feats(cfg.seeds[0], head, e)  # noqa: E731
    prior = _prior(feats.demos("prior", cfg.seeds[0], cfg.prior_demos), fs,
                   tuning.chosen[ours]["motion"])  # fmt: skip
    rows = {"true": Segmentation(ep.boundaries, ep.labels, method="true")}
    for a in (ours, f"uvd/{head}", f"uniform/{head}"):
        seg = _segment(a.split("/")[0], tuning.chosen[a], fs(ep), ep, prior, None, cfg)
        rows[a.split("/")[0].upper()] = (
            label_segments(fs(ep), prior, seg) if not seg.labels else seg
        )
    plot_timeline(out / "arena_timeline.png", rows, f"one {ep.split} demo ({ep.tags[0]}), {head}")
    plots.append("arena_timeline.png")
    fields = record_fields(splits, tuning, intervals)
    rec = ResultRecord(
        method="rdd",
        claim=CLAIM,
        setup={
            **asdict(cfg),
            "arms": arms,
            "grids": grid,
            "command": "fmlab rdd bench",
            "encoders_meaning": {e: ENCODER_NOTES[e] for e in cfg.encoders},
        },
        metrics=metrics,
        baselines=baselines,
        plots=plots,
        # policy_success stays in metrics, not the headline: it is near its floor (0 for every arm
        # on most ood seeds) and has no interval
        headline=["miou", "boundary_f1"],
        notes=[
            f"Headline: {ours} on the standard split of the test seeds {list(cfg.seeds)}; every "
            "split and arm is in metrics.by_arm.",
            f"Every arm tuned with the same budget ({cfg.budget} grid points, widened on an edge) "
            f"on the training demos of dev seeds {list(cfg.dev_seeds)}; see tuning.",
            "state-cnn arms are supervised on arena frames (they read the simulator state), so "
            "they are an arena-specific reference, not a general encoder.",
            "The standard, adversarial and ood tasks chain skills that ease in and out (most "
            "boundaries near rest; those into and out of press_button are at speed); the not-at-rest split chains sweep, catch and handover, which "
            "start at the previous skill's velocity and end moving (every boundary at speed), "
            "reported as its own split.",
            *[f"{p.a} − {p.b} ({p.metric}): {format_delta(p)}" for p in intervals],
        ],
        **fields,
    )
    rec.notes += verdicts(fields["intervals"], cfg.headline_encoder)
    rec.notes += causes(summary, cfg, duration_cv)
    rec.wall_s = t.s
    write_record(rec, out / "arena.json")
    return rec


def verdicts(intervals: dict, head: str = "efficientnet-lite0") -> list[str]:
    """One note per paired comparison (``intervals`` as the record holds them): RDD wins or
    loses only where every interval it has (per-seed t, needing 2+ seeds; per-demo bootstrap)
    excludes 0."""
    out = []
    for iv in intervals.values():
        (a, enc), (b, _), m = iv["a"].split("/"), iv["b"].split("/"), iv["metric"]
        a = a.upper() + ("" if enc == head else f" ({enc})")  # the encoder, where not the headline
        have = {k: iv[k] for k in ("per_seed", "per_item") if iv.get(k)}
        # every interval must exclude 0 on the same side: the smallest lower and largest upper
        lo, hi = min(x["lo"] for x in have.values()), max(x["hi"] for x in have.values())
        word = "wins over" if lo > 0 else "LOSES to" if hi < 0 else "is not shown to differ from"
        cis = ", ".join(
            f"{k.replace('per_item', 'per-demo').replace('_', '-')} [{x['lo']:+.3f}, {x['hi']:+.3f}]"
            for k, x in have.items()
        )
        out.append(f"{m}: {a} {word} {b} (Δ {iv['estimate']:+.3f}; {cis})")
    return out


def causes(summary: dict, cfg: ArenaConfig, duration_cv: dict) -> list[str]:
    """The measured causes of RDD's mIoU gap to uniform cutting with the oracle K, per split:
    the share closed by giving RDD the oracle K (rdd-k), and the same with the arena-supervised
    encoder (state-cnn) in place of the pretrained one."""
    head, out = cfg.headline_encoder, []
    for sp in cfg.splits:
        m = lambda a, e=head, sp=sp: summary[f"{a}/{e}"][f"{sp}/miou"]["mean"]  # noqa: E731
        gap = m("uniform") - m("rdd")
        line = (f"{sp}: mIoU gap to uniform {gap:+.3f} with {head}; the oracle K closes "
                f"{m('rdd-k') - m('rdd'):+.3f} of it (RDD's K error {summary[f'rdd/{head}'][f'{sp}/k_error']['mean']:.2f} segments)")  # fmt: skip
        if "state-cnn" in cfg.encoders:
            line += (f"; with state-cnn features RDD-K − uniform = "
                     f"{m('rdd-k', 'state-cnn') - m('uniform', 'state-cnn'):+.3f}")  # fmt: skip
        out.append(line + f"; true durations' CV within a demo {duration_cv[sp]:.2f}.")
    return out


def run_scaling(
    out_dir: str | Path, ns=(100, 300, 1000, 3000, 10000), repeats: int = 3, log=log_stderr
) -> ResultRecord:
    """Segmentation seconds vs demo length N (state features of a long arena demo)."""
    out = Path(out_dir)
    train = arena.make_split(0, "train", 3)
    feats = lambda ep: arena.state_features(ep.states)  # noqa: E731
    prior = _prior(train, feats)
    long = np.concatenate(
        [arena.state_features(ep.states) for ep in arena.make_split(1, "standard", 30)]
    )
    if len(long) < max(ns):
        raise ValueError(f"the long demo has {len(long)} frames, fewer than N = {max(ns)}")
    seconds: dict[str, dict[str, float]] = {}
    with Timer() as total:
        motion = _prior(train, feats, motion=5.0)
        for index, p in (("exact", prior), ("faiss-hnsw", prior.with_index("faiss-hnsw")),
                         ("exact+motion", motion)):  # fmt: skip
            for n in ns:
                ts = []
                for _ in range(repeats):
                    t0 = time.perf_counter()
                    segment(long[:n], p, min_len=2, max_len=100)
                    ts.append(time.perf_counter() - t0)
                seconds.setdefault(index, {})[str(n)] = float(np.median(ts))
                log(f"scaling {index} N={n}: {seconds[index][str(n)]:.3f} s")
    xs = list(ns)
    line_plot(out / "scaling.png", xs, {k: [v[str(n)] for n in ns] for k, v in seconds.items()}, "frames N", "seconds",
              "RDD segmentation time (max_len 100, 2 cores)", logx=True, logy=True)  # fmt: skip
    big = str(ns[-1])
    rec = ResultRecord(
        method="rdd",
        claim=f"Exact RDD segmentation of a {ns[-1]}-frame demo (max_len 100) takes seconds on 2 cores.",
        setup={
            "ns": list(ns),
            "repeats": repeats,
            "prior_size": len(prior),
            "dim": prior.dim,
            "min_len": 2,
            "max_len": 100,
            "command": "fmlab rdd bench --scaling",
        },
        metrics={
            "seconds": seconds["exact"],
            "seconds_10k": seconds["exact"][big],
            "seconds_by_index": seconds,
            "retrievals_10k": int(sum(min(100, e) - 1 for e in range(2, ns[-1] + 1))),
            "peak_rss_mb": peak_rss_mb(),
        },
        plots=["scaling.png"],
        headline=["seconds_10k"],
        notes=[
            "Median of repeats. 'exact' splits the concatenated key's distance into start and end parts (two N x P matrices); faiss-hnsw materialises every candidate key and queries an HNSW graph; exact+motion is exact search with motion keys (weight 5, keys twice as wide)."
        ],
    )
    rec.wall_s = total.s
    write_record(rec, out / "scaling.json")
    return rec


def quick(out_dir: str | Path) -> ResultRecord:
    """The ~1-minute version used by `fmlab demo` (one seed, small sets: runs, claims nothing)."""
    return run_arena(out_dir, ArenaConfig.quick(), log=lambda *_: None)
