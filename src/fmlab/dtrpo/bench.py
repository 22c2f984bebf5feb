"""The dTRPO reproduction on :mod:`fmlab.core.experiment`: estimator fidelity, and the
training comparison with every arm tuned alike and the test split opened once.

- **Splits**: :func:`fmlab.dtrpo.data.dtrpo_splits` (train = SFT data, pairs = preference and
  online prompts, val = tuning, test = sealed), disjoint by prompt text, checked at run time;
  the pair sets actually used are checked again (:func:`~fmlab.dtrpo.data.check_disjoint`).
- **References**: one SFT model per seed (masked-diffusion pre-training, seeded init and
  batches), the π_ref of every arm at that seed; the dev seed's model is used for tuning.
- **Tuning**: :func:`fmlab.core.experiment.tune`: every arm, the same lr axis and a second
  axis of its own objective with as many values (β for the DPO arms, the KL weight for grpo,
  the negative weight for wd1), the same budget, edge optima widened; scored on val at the dev
  seed. ``sft`` has nothing to tune.
- **Test**: after ``open_test()``, :func:`~fmlab.core.experiment.run_arms` over the test seeds
  (a fresh reference and pair set per seed), resumable; paired per-seed and per-item intervals
  of dtrpo − sft, − dpo-exact and − dpo-d1 (equal cost: one forward per response each).
- **Costs**: forwards and tokens, training (policy + reference + online sampling) and data
  (the reference's sampling of the pairs).
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from fmlab.core.cliutil import log as log_stderr
from fmlab.core.experiment import (
    compare,
    format_delta,
    interval_plot,
    record_fields,
    run_arms,
    tune,
)
from fmlab.core.io import Memo, atomic_write_json, json_digest, read_json
from fmlab.core.results import ResultRecord, figure, mean_std, save_figure, write_record
from fmlab.core.train import TrainConfig
from fmlab.dtrpo.data import PairSet, check_disjoint, dtrpo_splits, make_pairs, take
from fmlab.dtrpo.defaults import DEFAULTS
from fmlab.dtrpo.model import DLLM, load_dllm, make_dllm, save_dllm
from fmlab.dtrpo.sampler import SamplerConfig

__all__ = ["ARMS", "BenchConfig", "quick", "run"]

# The arms of this bench (one registry): name -> its second tuned axis (None: nothing to tune).
ARMS: dict[str, str | None] = {
    "sft": None, "dtrpo": "beta", "dpo-exact": "beta", "dpo-d1": "beta", "dpo-elbo": "beta",
    "grpo": "kl_coef", "wd1": "wd1_neg",
}  # fmt: skip
VERSUS = ("sft", "dpo-exact", "dpo-d1")  # dtrpo − each, with intervals


@dataclass(frozen=True)
class BenchConfig:
    size: str = "llama-small"
    pretrain_steps: int = 3000
    pretrain_batch: int = 64
    pretrain_lr: float = 3e-3
    n_train: int = 2000  # SFT items per task
    n_test: int = 200  # test items per task
    n_pair_prompts: int = 200  # per task
    k: int = 8
    dev_seed: int = 0  # tuning (its reference and pairs) and the estimator study
    seeds: tuple[int, ...] = (1, 2, 3)  # test seeds: an SFT reference and pair set each
    arms: tuple[str, ...] = tuple(ARMS)
    steps: int = DEFAULTS["steps"]
    batch_pairs: int = DEFAULTS["batch_size"]
    lr_grid: tuple[float, ...] = (3e-5, 1e-4, 3e-4)
    axis_grid: dict = field(default_factory=lambda: {
        "beta": (0.5, 2.0, 8.0), "kl_coef": (0.01, 0.04, 0.16), "wd1_neg": (0.25, 1.0, 4.0)})  # fmt: skip
    budget: int = 9  # grid points per tuned arm (the whole 3 x 3 grid)
    max_widen: int = 2  # values added beyond an edge optimum, per axis, for every arm
    n_est_traj: int = 48  # trajectories for estimator fidelity
    est_draws: int = 32  # draws per stochastic estimator
    est_steps: tuple[int, ...] = (10, 40)  # dtrpo steps of the checkpoints scored
    est_lr: float = 5e-4  # a larger step, to reach a moderate KL for the fidelity study
    est_beta: float = 0.1
    threshold: float = 0.9

    @classmethod
    def quick(cls) -> BenchConfig:
        return cls(
            size="llama-tiny", pretrain_steps=20, pretrain_batch=32, n_train=60, n_test=6,
            n_pair_prompts=6, k=4, seeds=(1, 2), arms=("sft", "dtrpo", "dpo-exact", "dpo-d1"),
            steps=3, batch_pairs=4, lr_grid=(3e-4, 1e-3), axis_grid={"beta": (2.0,)}, budget=2,
            max_widen=1, n_est_traj=6, est_draws=3, est_steps=(2, 3),
        )  # fmt: skip

    def grid(self) -> dict[str, dict[str, list]]:
        """arm -> {axis: values}: the same lr axis and an equally long axis of its own."""
        unknown = [a for a in self.arms if a not in ARMS]
        if unknown:
            raise ValueError(f"unknown arms {unknown}; choose from: {', '.join(ARMS)}")
        return {a: {} if ARMS[a] is None else
                {"lr": list(self.lr_grid), ARMS[a]: list(self.axis_grid[ARMS[a]])}
                for a in self.arms}  # fmt: skip

    def to_dict(self) -> dict:
        return json.loads(json.dumps(dataclasses.asdict(self)))


class _Bench:
    """The bench's stages over one set of splits, each cached under ``work``."""

    def __init__(self, cfg: BenchConfig, splits, work: Path, log):
        self.cfg, self.work, self.log = cfg, work, log
        self.train_items = list(splits["train"])
        self.prompts = take(splits["pairs"], cfg.n_pair_prompts)
        self.probe = take(splits["val"], min(cfg.n_test, 50))  # logged while pre-training
        fields_ = ("size", "pretrain_steps", "pretrain_batch", "pretrain_lr", "n_train")
        self.ref_key = json_digest([cfg.to_dict()[f] for f in fields_], 10)
        self.pair_key = json_digest([self.ref_key, cfg.n_pair_prompts, cfg.k], 10)
        self.pair_checks: dict[int, dict] = {}
        self._refs: dict[int, DLLM] = {}

    def reference(self, seed: int) -> DLLM:
        """The SFT reference of ``seed`` (trained once, then loaded)."""
        from fmlab.dtrpo.data import build_tokenizer
        from fmlab.dtrpo.train import evaluate, pretrain

        if seed in self._refs:
            return self._refs[seed]
        d, cfg = self.work / f"ref-{self.ref_key}-{seed}", self.cfg
        if not (d / "model").is_dir():
            self.log(f"seed {seed}: pre-training the SFT reference ({cfg.pretrain_steps} steps)")
            model = make_dllm(build_tokenizer(), cfg.size, seed=seed)
            tcfg = TrainConfig(
                steps=cfg.pretrain_steps, batch_size=cfg.pretrain_batch, lr=cfg.pretrain_lr,
                warmup_steps=min(100, cfg.pretrain_steps // 10), ckpt_every=100, seed=seed,
                eval_every=max(cfg.pretrain_steps // 6, 1), progress=cfg.pretrain_steps > 500,
            )  # fmt: skip
            probe = lambda net: {"val_accuracy": evaluate(model, self.probe)["accuracy"]}  # noqa: E731
            res = pretrain(model, self.train_items, tcfg, d / "train", eval_fn=probe)
            atomic_write_json(d / "pretrain.json", {"wall_s": res.wall_s, "history": res.history})
            save_dllm(model, d / "model", overwrite=True)
        self._refs[seed] = load_dllm(d / "model")
        return self._refs[seed]

    def pairs(self, seed: int) -> PairSet:
        """K reference samples per pair prompt, best vs worst; checked disjoint from val/test."""
        d = self.work / f"pairs-{self.pair_key}-{seed}"
        if not (d / "pairs.json").is_file():
            self.log(f"seed {seed}: sampling {self.cfg.k} answers for {len(self.prompts)} prompts")
            make_pairs(self.reference(seed), self.prompts, self.cfg.k, seed).save(d, overwrite=True)
        ps = PairSet.load(d)
        self.pair_checks[seed] = check_disjoint({"pairs": ps.items})["overlaps"]  # raises
        return ps

    def train(self, arm: str, settings: dict, seed: int) -> tuple[DLLM, dict]:
        """``arm`` trained from the seed's reference with ``settings``; its costs."""
        from fmlab.dtrpo.train import ARMS as TRAINERS
        from fmlab.dtrpo.train import PrefConfig, save_counter, train_arm

        ref = self.reference(seed)
        if arm == "sft":
            return ref, {"policy": 0, "ref": 0, "sampling": 0, "tokens": 0, "total": 0,
                         "data_forwards": 0, "data_tokens": 0, "train_wall_s": 0.0}  # fmt: skip
        offline = TRAINERS[arm] is not None
        ps = self.pairs(seed) if offline else None
        extra = {k: v for k, v in settings.items() if k != "lr"}
        tcfg = TrainConfig(steps=self.cfg.steps, batch_size=self.cfg.batch_pairs,
                           lr=settings["lr"], warmup_steps=DEFAULTS["warmup_steps"],
                           weight_decay=DEFAULTS["weight_decay"], seed=seed, progress=False)  # fmt: skip
        run_dir = self.work / f"run-{arm}-{seed}"
        shutil.rmtree(run_dir, ignore_errors=True)  # an arm is the unit of resumption
        policy, t0 = ref.copy(), time.perf_counter()
        _, count = train_arm(policy, ref, PrefConfig(arm=arm, **extra), tcfg, ps, self.prompts,
                             run_dir)  # fmt: skip
        shutil.rmtree(run_dir, ignore_errors=True)
        cost = save_counter(count)
        cost["data_forwards"] = ps.sampling_forwards if offline else 0
        cost["data_tokens"] = ps.sampling_tokens if offline else 0
        cost["train_wall_s"] = time.perf_counter() - t0
        return policy, cost

    def score_val(self, arm: str, settings: dict, val) -> float:
        """Tuning: greedy val accuracy of ``arm`` trained at the dev seed."""
        from fmlab.dtrpo.train import evaluate

        policy, _ = self.train(arm, settings, self.cfg.dev_seed)
        return evaluate(policy, list(val))["accuracy"]

    def evaluate(self, arm: str, settings: dict, seed: int, test: list) -> dict:
        """Test metrics of one (arm, seed): accuracy, per-item solved, costs, KL, threshold."""
        from fmlab.dtrpo.train import evaluate, kl_to_ref

        policy, cost = self.train(arm, settings, seed)
        greedy = evaluate(policy, test)
        fast = evaluate(policy, test, SamplerConfig(temperature=0.0, threshold=self.cfg.threshold))
        out = {"accuracy": greedy["accuracy"], "solved": [float(x) for x in greedy["solved"]],
               **{f"acc_{t}": v for t, v in greedy["per_task"].items()},
               "policy_forwards": cost["policy"], "train_forwards": cost["total"],
               "train_tokens": cost["tokens"], "data_forwards": cost["data_forwards"],
               "data_tokens": cost["data_tokens"], "train_wall_s": cost["train_wall_s"],
               "total_forwards": cost["total"] + cost["data_forwards"],
               "total_tokens": cost["tokens"] + cost["data_tokens"],
               "threshold_accuracy": fast["accuracy"],
               "threshold_forwards_per_item": fast["forwards_per_item"],
               "threshold_solved": sum(fast["solved"])}  # fmt: skip
        out["kl_to_ref"] = 0.0 if arm == "sft" else kl_to_ref(policy, self.reference(seed),
                                                               test[:96], seed)  # fmt: skip
        return out


def run(cfg: BenchConfig, out: str | Path, log: Callable[[str], None] = log_stderr) -> list[Path]:
    """Every stage (each resumable); writes estimators.json and training.json with plots."""
    out = Path(out)
    work = out / ".dtrpo-work"
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    splits = dtrpo_splits(n_train=cfg.n_train, dev_seeds=(cfg.dev_seed,), test_seeds=cfg.seeds)
    bench = _Bench(cfg, splits, work, log)
    memo = Memo(work / "memo.json", key=cfg.to_dict())
    with splits.design("estimator fidelity at the dev seed"):
        est = memo.get_or_compute("estimators", lambda: _estimators(cfg, bench, log))
    tuning = tune(list(cfg.arms), cfg.grid(), bench.score_val, val=splits["val"],
                  budget=cfg.budget, max_widen=cfg.max_widen, seed=cfg.dev_seed, memo=memo,
                  scale=dict.fromkeys(("lr", *set(ARMS.values()) - {None}), "log"))  # fmt: skip
    splits.open_test("every tuned arm at the test seeds, once")
    test = take(splits["test"], cfg.n_test)
    runs = run_arms(tuning.chosen, splits.test_seeds,
                    lambda arm, s, seed: bench.evaluate(arm, s, seed, test), memo, log=log)  # fmt: skip
    for seed in splits.test_seeds:  # the run-time check of the pair sets actually used
        if any(a != "sft" for a in cfg.arms):
            bench.pairs(seed)
    wall = time.perf_counter() - t0
    return [_estimators_record(cfg, est, out, wall),
            _training_record(cfg, splits, tuning, runs, bench, out, wall)]  # fmt: skip


def _training_record(cfg, splits, tuning, runs, bench, out: Path, wall: float) -> Path:
    lead = "dtrpo" if "dtrpo" in runs.values else cfg.arms[0]
    ivs = [compare(runs, lead, b, "accuracy", items="solved") for b in VERSUS
           if b in runs.values and b != lead]  # fmt: skip
    summary = runs.summary()
    for arm, s in summary.items() if "sft" in summary else ():
        gains = [
            a - b
            for a, b in zip(
                runs.per_seed(arm, "accuracy"), runs.per_seed("sft", "accuracy"), strict=True
            )
        ]
        s["gain_over_sft"] = mean_std(gains)
    for s in summary.values():  # forwards per solved item, threshold decoding, over all seeds
        solved = s["threshold_solved"]["mean"]
        per = s["threshold_forwards_per_item"]["mean"] * 3 * cfg.n_test / solved if solved else None
        s["fwd_per_solved_threshold"] = per
    plots = ["accuracy_vs_cost.png", "intervals.png"]
    _cost_plot(summary, out / plots[0])
    interval_plot(out / plots[1], ivs, title="dtrpo − baseline, test accuracy")
    ref_hist = {s: read_json(bench.work / f"ref-{bench.ref_key}-{s}" / "pretrain.json")["history"]
                for s in (cfg.dev_seed, *cfg.seeds)}  # fmt: skip
    rec = ResultRecord(
        method="dtrpo",
        claim="dTRPO (one forward per response, block-attention layout) improves held-out "
        "accuracy over the SFT reference like exact-trajectory DPO at a fraction of its "
        "training forwards, and beats the d1 one-pass estimator at equal cost.",
        setup={
            **cfg.to_dict(),
            "command": "fmlab dtrpo bench",
            "test_items": 3 * cfg.n_test,
            "pair_prompt_checks": {str(k): v for k, v in bench.pair_checks.items()},
            "pretrain_history": ref_hist,
        },
        metrics=summary.get(lead, {}),
        baselines={a: s for a, s in summary.items() if a != lead},
        wall_s=wall,
        plots=plots,
        notes=[
            *[
                f"{p.a} − {p.b} test accuracy: {format_delta(p)} per item (bootstrap over "
                f"{p.per_item.n} test items, seed-averaged); per seed "
                f"{format_delta(p.per_seed) if p.per_seed else 'n/a'} (t, {len(cfg.seeds)} seeds)"
                for p in ivs
            ],
            f"Every arm was tuned on the val split ({len(splits['val'])} items) at dev seed "
            f"{cfg.dev_seed} with the same budget ({cfg.budget} grid points, up to "
            f"{cfg.max_widen} widenings per axis); the test split ({3 * cfg.n_test} items) was "
            f"opened once, after tuning, for test seeds {list(cfg.seeds)}, each with its own "
            "SFT reference and pair set.",
            "Greedy decoding, low-confidence remasking, 4 steps per block; threshold_* use "
            f"confidence-threshold decoding at {cfg.threshold}.",
            "Costs: train_forwards = policy (with backward) + reference + online sampling "
            "forwards, a packed forward counting as one; *_tokens are the tokens those "
            "forwards processed; data_* is the reference's sampling of the pairs (offline "
            "arms); total_* adds both.",
            "grpo uses one gradient step per sampled batch (μ = 1), so PPO clipping is inactive.",
        ],
        headline=["accuracy", "gain_over_sft", "policy_forwards", "train_tokens"],
        **record_fields(splits, tuning, ivs),
    )
    return write_record(rec, out / "training.json")


def _cost_plot(summary: dict, path: Path) -> None:
    plt = figure()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for arm, s in summary.items():
        x = max(s["train_forwards"]["mean"], 1.0)
        ax.errorbar(x, s["accuracy"]["mean"], yerr=s["accuracy"]["std"] or 0.0, marker="o",
                    capsize=3, label=arm)  # fmt: skip
    ax.set_xscale("log")
    ax.set_xlabel("training forward passes (policy + reference + online sampling; sft at 1)")
    ax.set_ylabel("test greedy accuracy (3 tasks)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save_figure(fig, plt, path)


def _estimators(cfg: BenchConfig, bench: _Bench, log) -> dict:
    """Every estimator of log π_θ/π_ref(τ) against the exact value on reference trajectories of
    the dev seed, at dtrpo checkpoints of small and moderate KL; the packed single pass
    against N_B separate passes (float32 and float64)."""
    from fmlab.dtrpo.estimators import estimate, single_pass_max_abs_diff
    from fmlab.dtrpo.sampler import Trajectories
    from fmlab.dtrpo.train import PrefConfig, train_arm

    ref, pairs = bench.reference(cfg.dev_seed), bench.pairs(cfg.dev_seed)
    idx = torch.arange(min(cfg.n_est_traj // 2, len(pairs)))
    traj = Trajectories.cat([pairs.chosen.select(idx), pairs.rejected.select(idx)])
    policy, run_dir = ref.copy(), bench.work / "est-run"
    shutil.rmtree(run_dir, ignore_errors=True)
    tcfg = TrainConfig(steps=max(cfg.est_steps), batch_size=cfg.batch_pairs, lr=cfg.est_lr,
                       warmup_steps=0, weight_decay=0.0, seed=0, progress=False)  # fmt: skip
    specs = {"dtrpo": {}, "d1": {}, "elbo-n1": {"n_mc": 1}, "elbo-n4": {"n_mc": 4},
             "tracerl-s2": {"shrink": 2}}  # fmt: skip
    out: dict = {"checkpoints": [], "single_pass_max_abs_diff": 0.0,
                 "single_pass_max_abs_diff_fp32": 0.0, "n_trajectories": len(traj)}  # fmt: skip
    for stop in sorted(cfg.est_steps):
        train_arm(policy, ref, PrefConfig(arm="dtrpo", beta=cfg.est_beta), tcfg, pairs,
                  out_dir=run_dir, stop_at=stop)  # fmt: skip
        log(f"estimators at dtrpo step {stop}")
        with torch.no_grad():
            exact = estimate(policy, traj, "exact").value - estimate(ref, traj, "exact").value
            row = {"step": stop, "kl_proxy_mean_abs_exact": float(exact.abs().mean()),
                   "exact": exact.tolist(), "exact_forwards": float(2 * traj.forwards.float().mean()),
                   "estimators": {}}  # fmt: skip
            for name, kw in specs.items():
                est = "tracerl" if name.startswith("tracerl") else name.split("-")[0]
                draws, fwd = [], 0.0
                for r in range(cfg.est_draws):
                    p, q = estimate(policy, traj, est, r, **kw), estimate(ref, traj, est, r, **kw)
                    draws.append(p.value - q.value)
                    fwd = float((p.forwards + q.forwards).float().mean())
                row["estimators"][name] = _fidelity(torch.stack(draws), exact, fwd)
            for m in (policy, ref):  # float64 measures the layout; float32 adds rounding
                out["single_pass_max_abs_diff_fp32"] = max(
                    out["single_pass_max_abs_diff_fp32"], single_pass_max_abs_diff(m, traj)
                )
                out["single_pass_max_abs_diff"] = max(
                    out["single_pass_max_abs_diff"],
                    single_pass_max_abs_diff(m.copy(torch.float64), traj))  # fmt: skip
        out["checkpoints"].append(row)
    shutil.rmtree(run_dir, ignore_errors=True)
    return out


def _fidelity(D: torch.Tensor, exact: torch.Tensor, fwd: float) -> dict:
    """Bias, variance and correlation of R draws ``D`` (R, N) against ``exact`` (N,)."""
    R = len(D)
    bias = D.mean(0) - exact
    se = D.std(0) / math.sqrt(R) if R > 1 else torch.zeros_like(bias)
    return {
        "bias_mean": float(bias.mean()), "bias_abs_mean": float(bias.abs().mean()),
        "bias_over_se_max": float((bias.abs() / se.clamp(min=1e-9)).max())
        if float(se.max()) > 0 else None,
        "variance_mean": float(D.var(0).mean()) if R > 1 else 0.0,
        "rmse_single_draw": float(((D - exact) ** 2).mean().sqrt()),
        "corr_single_draw": _corr(D[0], exact), "corr_mean_of_draws": _corr(D.mean(0), exact),
        "forwards_per_estimate": fwd, "single_draw": D[0].tolist(),
    }  # fmt: skip


def _corr(a: torch.Tensor, b: torch.Tensor) -> float | None:
    if float(a.std()) == 0 or float(b.std()) == 0:
        return None
    return float(torch.corrcoef(torch.stack([a, b]))[0, 1])


def _estimators_record(cfg, est: dict, out: Path, wall: float) -> Path:
    last = est["checkpoints"][-1]
    metrics: dict = {k: est[k] for k in ("single_pass_max_abs_diff",
                     "single_pass_max_abs_diff_fp32", "n_trajectories")} | {"draws": cfg.est_draws}  # fmt: skip
    for ck in est["checkpoints"]:
        metrics[f"step{ck['step']}"] = {
            "mean_abs_exact_log_ratio": ck["kl_proxy_mean_abs_exact"],
            "exact_forwards": ck["exact_forwards"],
            **{n: {k: v for k, v in e.items() if k != "single_draw"}
               for n, e in ck["estimators"].items()},
        }  # fmt: skip
    rows = {n: {"corr": e["corr_single_draw"], "bias_abs": e["bias_abs_mean"],
                "variance": e["variance_mean"], "forwards": e["forwards_per_estimate"]}
            for n, e in last["estimators"].items()}  # fmt: skip
    rows["exact"] = {"corr": 1.0, "bias_abs": 0.0, "variance": 0.0,
                     "forwards": last["exact_forwards"]}  # fmt: skip
    metrics.update(rows.pop("dtrpo"))
    plt = figure()
    names = list(last["estimators"])
    fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names), 3.2))
    ex = last["exact"]
    for ax, n in zip(axes, names, strict=True):
        e = last["estimators"][n]
        ax.scatter(ex, e["single_draw"], s=10)
        lo, hi = min(ex + e["single_draw"]), max(ex + e["single_draw"])
        ax.plot([lo, hi], [lo, hi], color="grey", lw=0.8)
        c = e["corr_single_draw"]
        ax.set_title(f"{n}  r={c:.2f}" if c is not None else n, fontsize=9)
        ax.set_xlabel("exact log-ratio")
    axes[0].set_ylabel("one estimate")
    save_figure(fig, plt, out / "estimator_scatter.png")
    rec = ResultRecord(
        method="dtrpo",
        claim="The one-forward dTRPO estimator is unbiased for the exact trajectory log-ratio "
        "and its block-attention pass equals N_B separate passes.",
        setup={**cfg.to_dict(), "command": "fmlab dtrpo bench"},
        metrics=metrics,
        baselines=rows,
        wall_s=wall,
        plots=["estimator_scatter.png"],
        notes=[
            f"Estimates of log π_θ/π_ref(τ) on {est['n_trajectories']} reference trajectories "
            f"(dev seed {cfg.dev_seed}) with π_θ = dTRPO after "
            f"{[c['step'] for c in est['checkpoints']]} steps; the table is the last "
            "checkpoint. corr: Pearson r of ONE draw with the exact value; bias: mean |mean "
            f"of {cfg.est_draws} draws − exact|; forwards: both models, per estimate.",
            "single_pass_max_abs_diff: max |Δ| over every per-token log-prob between the packed "
            "one-forward pass and N_B separate passes, both models, both checkpoints, in "
            "float64 (the layout itself); _fp32 is the same in float32.",
        ],
        headline=["single_pass_max_abs_diff", "corr", "forwards"],
    )
    return write_record(rec, out / "estimators.json")


def quick(out_dir: str | Path) -> ResultRecord:
    """`fmlab demo`'s smoke bench: a tiny model, two test seeds, four arms."""
    from fmlab.core.results import load_record

    run(BenchConfig.quick(), out_dir, log=lambda m: None)
    return ResultRecord(**load_record(Path(out_dir) / "training.json"))
