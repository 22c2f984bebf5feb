"""The dTRPO reproduction: estimator fidelity and the training comparison, on a CPU.

Stages (each memoised under ``<out>/.dtrpo-work``, so an interrupted bench resumes):

1. **Reference.** One block-diffusion LM (``llama-small``, ~0.74M parameters) pre-trained
   with the masked-diffusion loss on the three tasks until accuracy is mid-range; it is the
   SFT reference π_ref of every arm and seed.
2. **Offline data**, per seed: K samples per prompt from π_ref, verifier rewards, best-vs-worst
   pairs (the trajectories are kept: dTRPO and exact DPO score them).
3. **Arms**, per seed, on the same pairs/prompts and the same number of optimizer steps:
   dtrpo, dpo-exact, dpo-d1, dpo-elbo, grpo (online), wd1 (online). Greedy held-out accuracy
   per task is measured at checkpoints against the forward passes spent so far.
4. **Estimators**: at checkpoints with small and moderate KL from π_ref, every estimator of
   log π_θ/π_ref(τ) against the exact value on reference trajectories; and the block-attention
   single pass against N_B separate passes.
5. **Generation efficiency**: forwards per solved item under confidence-threshold decoding
   before and after training.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from fmlab.core.cliutil import log as log_stderr
from fmlab.core.io import Memo, atomic_write_json, read_json
from fmlab.core.results import ResultRecord, Timer, mean_std, peak_rss_mb, write_record
from fmlab.core.train import TrainConfig
from fmlab.dtrpo.data import PairSet, dtrpo_splits, make_pairs, take
from fmlab.dtrpo.model import DLLM, load_dllm, make_dllm, save_dllm
from fmlab.dtrpo.sampler import SamplerConfig

__all__ = ["BenchConfig", "quick", "reference", "run"]


@dataclass(frozen=True)
class BenchConfig:
    size: str = "llama-small"
    pretrain_steps: int = 3000
    pretrain_batch: int = 64
    pretrain_lr: float = 3e-3
    n_train: int = 2000  # SFT items per task
    n_test: int = 200  # held-out items per task (final accuracy)
    n_curve: int = 100  # held-out items per task for the checkpoints along training
    n_pair_prompts: int = 200  # per task
    k: int = 8
    seeds: tuple[int, ...] = (0, 1, 2)
    arms: tuple[str, ...] = ("dtrpo", "dpo-exact", "dpo-d1", "dpo-elbo", "grpo", "wd1")
    steps: int = 120
    batch_pairs: int = 16
    # lr and β: the best held-out-validation setting of a small dtrpo sweep (see docs), used
    # unchanged for every arm; larger steps degraded every arm we tried.
    lr: float = 1e-4
    beta: float = 2.0
    checkpoints: int = 4  # evaluations along training
    n_est_traj: int = 48  # trajectories for estimator fidelity
    est_draws: int = 32  # draws per stochastic estimator
    est_steps: tuple[int, ...] = (10, 40)  # dtrpo steps of the checkpoints scored
    est_lr: float = 5e-4  # a larger step, to reach a moderate KL for the fidelity study
    est_beta: float = 0.1
    threshold: float = 0.9
    betas: tuple[float, ...] = (0.1, 0.5)  # extra dtrpo β values (seed 0)

    @classmethod
    def quick(cls) -> BenchConfig:
        return cls(
            size="llama-tiny", pretrain_steps=60, pretrain_batch=32, n_train=100, n_test=8, n_curve=4,
            n_pair_prompts=8, k=4, seeds=(0,), arms=("dtrpo", "dpo-d1"), steps=4,
            batch_pairs=4, checkpoints=2, n_est_traj=6, est_draws=4, est_steps=(2, 4), lr=5e-4,
            betas=(),
        )  # fmt: skip

    def to_dict(self) -> dict:
        return json.loads(json.dumps(dataclasses.asdict(self)))


def _work(out: Path) -> Path:
    w = out / ".dtrpo-work"
    w.mkdir(parents=True, exist_ok=True)
    return w


def reference(cfg: BenchConfig, work: Path, log: Callable[[str], None] = log_stderr) -> DLLM:
    """The SFT reference (trained once, then loaded)."""
    from fmlab.dtrpo.data import build_tokenizer
    from fmlab.dtrpo.train import evaluate, pretrain

    d = _ref_dir(cfg, work)
    if (d / "model").is_dir():
        return load_dllm(d / "model")
    log(f"pre-training the reference ({cfg.pretrain_steps} steps)")
    model = make_dllm(build_tokenizer(), cfg.size, seed=0)
    probe = take(dtrpo_splits(n_train=cfg.n_train)["val"], min(cfg.n_test, 50))

    def eval_fn(net):
        return {"accuracy": evaluate(model, probe)["accuracy"]}

    tcfg = TrainConfig(
        steps=cfg.pretrain_steps, batch_size=cfg.pretrain_batch, lr=cfg.pretrain_lr,
        warmup_steps=min(100, cfg.pretrain_steps // 10), eval_every=max(cfg.pretrain_steps // 6, 1),
        ckpt_every=100, seed=0, progress=cfg.pretrain_steps > 500,
    )  # fmt: skip
    train = list(dtrpo_splits(n_train=cfg.n_train)["train"])
    res = pretrain(model, train, tcfg, d / "train", eval_fn=eval_fn)
    if res.interrupted:
        raise KeyboardInterrupt
    atomic_write_json(d / "pretrain.json", {"wall_s": res.wall_s, "history": res.history})
    save_dllm(model, d / "model", overwrite=True)
    return model


def _ref_dir(cfg: BenchConfig, work: Path) -> Path:
    key = {k: v for k, v in cfg.to_dict().items()
           if k.startswith("pretrain") or k in ("size", "n_train")}  # fmt: skip
    key["probe"] = min(cfg.n_test, 50)  # the items of the accuracy logged while pre-training
    return work / f"ref-{_digest(key)}"


def _digest(obj) -> str:
    import hashlib

    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:10]


_ARM_FIELDS = ("size", "pretrain_steps", "pretrain_batch", "pretrain_lr", "n_train", "n_test", "n_curve",
               "n_pair_prompts", "k", "steps", "batch_pairs", "lr", "checkpoints", "threshold")  # fmt: skip


def _pairs(cfg: BenchConfig, ref: DLLM, seed: int, work: Path, log) -> PairSet:
    key = [cfg.to_dict()[f] for f in ("size", "pretrain_steps", "pretrain_batch", "pretrain_lr",
                                      "n_train", "n_pair_prompts", "k")]  # fmt: skip
    d = work / f"pairs-{_digest(key)}-{seed}"
    if (d / "pairs.json").is_file():
        return PairSet.load(d)
    log(f"seed {seed}: sampling {cfg.k} answers for {3 * cfg.n_pair_prompts} prompts")
    with Timer() as t:
        prompts = take(dtrpo_splits(n_train=cfg.n_train)["pairs"], cfg.n_pair_prompts)
        ps = make_pairs(ref, prompts, cfg.k, seed)
    ps.save(d, overwrite=True)
    atomic_write_json(d / "timing.json", {"wall_s": t.s})
    return ps


def _eval_both(model: DLLM, test, cfg: BenchConfig) -> dict:
    from fmlab.dtrpo.train import evaluate

    greedy = evaluate(model, test, SamplerConfig(temperature=0.0))
    fast = evaluate(model, test, SamplerConfig(temperature=0.0, threshold=cfg.threshold))
    return {"greedy": greedy, "threshold": fast}


def _run_arm(cfg, ref, pairs, arm, seed, beta, test, work, log) -> dict:
    import shutil

    from fmlab.dtrpo.train import PrefConfig, evaluate, kl_to_ref, save_counter, train_arm

    run_dir = work / f"run-{arm}-{seed}-{beta}"
    shutil.rmtree(run_dir, ignore_errors=True)  # an arm is the unit of resumption
    policy = ref.copy()
    pcfg = PrefConfig(arm=arm, beta=beta)
    tcfg = TrainConfig(steps=cfg.steps, batch_size=cfg.batch_pairs, lr=cfg.lr, warmup_steps=10,
                       weight_decay=0.0, seed=seed, progress=False, log_every=10)  # fmt: skip
    prompts = take(dtrpo_splits(n_train=cfg.n_train)["pairs"], cfg.n_pair_prompts)
    data_fwd = pairs.sampling_forwards if pcfg.arm not in ("grpo", "wd1") else 0
    curve_items = test[: 3 * cfg.n_curve]
    before = evaluate(ref, curve_items)
    curve = [{"step": 0, "train_forwards": 0, "total_forwards": data_fwd,
              "accuracy": before["accuracy"]}]  # fmt: skip
    totals = {"policy": 0, "ref": 0, "sampling": 0, "tokens": 0, "total": 0}
    wall = 0.0
    log(f"seed {seed}: training {arm} (β={beta})")
    for c in range(1, cfg.checkpoints + 1):
        stop = cfg.steps * c // cfg.checkpoints
        with Timer() as t:
            res, count = train_arm(policy, ref, pcfg, tcfg, pairs, prompts, run_dir, stop_at=stop)
        wall += t.s
        for k, v in save_counter(count).items():
            totals[k] += v
        ev = evaluate(policy, curve_items)
        curve.append({"step": res.steps, "train_forwards": totals["total"],
                      "total_forwards": totals["total"] + data_fwd, "accuracy": ev["accuracy"],
                      "loss": res.train_loss})  # fmt: skip
    after = _eval_both(policy, test, cfg)
    kl_items = test[: min(len(test), 96)]
    shutil.rmtree(run_dir, ignore_errors=True)
    return {
        "after": after,
        "curve": curve,
        "counts": totals,
        "data_sampling_forwards": data_fwd,
        "train_wall_s": wall,
        "kl_to_ref": kl_to_ref(policy, ref, kl_items, seed),
        "pairs": len(pairs),
    }


def _estimators(cfg: BenchConfig, ref: DLLM, pairs: PairSet, work: Path, log) -> dict:
    import shutil

    from fmlab.dtrpo.estimators import estimate, single_pass_max_abs_diff
    from fmlab.dtrpo.sampler import Trajectories
    from fmlab.dtrpo.train import PrefConfig, train_arm

    n = min(cfg.n_est_traj // 2, len(pairs))
    idx = torch.arange(n)
    traj = Trajectories.cat([pairs.chosen.select(idx), pairs.rejected.select(idx)])
    policy = ref.copy()
    run_dir = work / "est-run"
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
            t0 = time.perf_counter()
            ex_p, ex_r = estimate(policy, traj, "exact"), estimate(ref, traj, "exact")
            exact_s = time.perf_counter() - t0
            exact = ex_p.value - ex_r.value
            row = {"step": stop, "kl_proxy_mean_abs_exact": float(exact.abs().mean()),
                   "exact": exact.tolist(),
                   "exact_forwards": float((ex_p.forwards + ex_r.forwards).float().mean()),
                   "exact_s_per_traj": exact_s / len(traj), "estimators": {}}  # fmt: skip
            for name, kw in specs.items():
                est = "tracerl" if name.startswith("tracerl") else name.split("-")[0]
                draws, fwd, t0 = [], 0.0, time.perf_counter()
                for r in range(cfg.est_draws):
                    p, q = (
                        estimate(policy, traj, est, seed=r, **kw),
                        estimate(ref, traj, est, seed=r, **kw),
                    )
                    draws.append(p.value - q.value)
                    fwd = float((p.forwards + q.forwards).float().mean())
                secs = (time.perf_counter() - t0) / (cfg.est_draws * len(traj))
                D = torch.stack(draws)  # (R, N)
                bias = D.mean(0) - exact
                se = (
                    D.std(0) / math.sqrt(cfg.est_draws)
                    if cfg.est_draws > 1
                    else torch.zeros_like(bias)
                )
                row["estimators"][name] = {
                    "bias_mean": float(bias.mean()),
                    "bias_abs_mean": float(bias.abs().mean()),
                    "bias_over_se_max": float((bias.abs() / se.clamp(min=1e-9)).max())
                    if float(se.max()) > 0
                    else None,
                    "variance_mean": float(D.var(0).mean()) if cfg.est_draws > 1 else 0.0,
                    "rmse_single_draw": float(((D - exact) ** 2).mean().sqrt()),
                    "corr_single_draw": _corr(D[0], exact),
                    "corr_mean_of_draws": _corr(D.mean(0), exact),
                    "forwards_per_estimate": fwd,
                    "s_per_estimate": secs,
                    "single_draw": D[0].tolist(),
                }
            # The layout is exact in exact arithmetic; float32 leaves rounding of the order of
            # 1e-5 on log-probs near -15 (different key counts change the summation order).
            # The same check in float64 measures the layout itself.
            for m in (policy, ref):
                out["single_pass_max_abs_diff_fp32"] = max(
                    out["single_pass_max_abs_diff_fp32"], single_pass_max_abs_diff(m, traj)
                )
                out["single_pass_max_abs_diff"] = max(
                    out["single_pass_max_abs_diff"],
                    single_pass_max_abs_diff(m.copy(torch.float64), traj),
                )
        out["checkpoints"].append(row)
    shutil.rmtree(run_dir, ignore_errors=True)
    return out


def _corr(a: torch.Tensor, b: torch.Tensor) -> float | None:
    if float(a.std()) == 0 or float(b.std()) == 0:
        return None
    return float(torch.corrcoef(torch.stack([a, b]))[0, 1])


def run(cfg: BenchConfig, out: str | Path, log: Callable[[str], None] = log_stderr) -> list[Path]:
    """Run every stage (resuming finished ones); write estimators.json and training.json."""
    out = Path(out)
    work = _work(out)
    t0 = time.perf_counter()
    ref = reference(cfg, work, log)
    splits = dtrpo_splits(n_train=cfg.n_train)
    test = take(splits.open_test()["test"], cfg.n_test)
    memo = Memo(work / f"memo-{_digest([cfg.to_dict()[f] for f in _ARM_FIELDS])}.json")
    base = memo.get_or_compute("reference", lambda: _eval_both(ref, test, cfg))
    runs: dict[str, list[dict]] = {}
    pairs0 = None
    for seed in cfg.seeds:
        pairs = _pairs(cfg, ref, seed, work, log)
        pairs0 = pairs0 or pairs
        for arm in cfg.arms:
            r = memo.get_or_compute(f"{arm}:{seed}:{cfg.beta}",
                         lambda a=arm, s=seed, p=pairs: _run_arm(cfg, ref, p, a, s, cfg.beta, test, work, log))  # fmt: skip
            runs.setdefault(arm, []).append(r)
    sweep = {}
    for beta in cfg.betas:
        sweep[beta] = memo.get_or_compute(f"dtrpo:{cfg.seeds[0]}:{beta}",
                               lambda b=beta: _run_arm(cfg, ref, pairs0, "dtrpo", cfg.seeds[0], b, test, work, log))  # fmt: skip
    sweep[cfg.beta] = runs["dtrpo"][0] if "dtrpo" in runs else None
    est_key = (f"estimators-v2:{cfg.n_est_traj}:{cfg.est_draws}:{list(cfg.est_steps)}:"
               f"{cfg.est_lr}:{cfg.est_beta}")  # fmt: skip
    est = memo.get_or_compute(est_key, lambda: _estimators(cfg, ref, pairs0, work, log))
    wall = time.perf_counter() - t0
    ref_meta = read_json(_ref_dir(cfg, work) / "pretrain.json")
    paths = [
        _estimators_record(cfg, est, out, wall),
        _training_record(cfg, base, runs, sweep, ref_meta, out, wall),
    ]
    return paths


def _paired_ci(runs: list[dict], base: dict, n_boot: int = 4000) -> tuple[float, float, float]:
    """95% bootstrap interval over test items of the seed-averaged paired gain, and the
    bootstrap share of gains <= 0 (a one-sided p-value for "no gain")."""
    ref = torch.tensor(base["greedy"]["solved"], dtype=torch.float32)
    after = torch.tensor([r["after"]["greedy"]["solved"] for r in runs], dtype=torch.float32)
    diff = (after - ref).mean(0)  # (items,) gain per item, averaged over seeds
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(len(diff), (n_boot, len(diff)), generator=g)
    boots = diff[idx].mean(1)
    lo, hi = torch.quantile(boots, torch.tensor([0.025, 0.975])).tolist()
    return lo, hi, float((boots <= 0).float().mean())


def _arm_row(runs: list[dict], base: dict) -> dict:
    acc = [r["after"]["greedy"]["accuracy"] for r in runs]
    b = base["greedy"]["accuracy"]
    lo, hi, p = _paired_ci(runs, base)
    row = {
        "accuracy": mean_std(acc),
        "gain": mean_std([a - b for a in acc]),
        "gain_ci95_lo": lo,
        "gain_ci95_hi": hi,
        "p_no_gain": p,
        "train_forwards": mean_std([r["counts"]["total"] for r in runs])["mean"],
        "policy_forwards": mean_std([r["counts"]["policy"] for r in runs])["mean"],
        "data_forwards": mean_std([r["data_sampling_forwards"] for r in runs])["mean"],
        "train_wall_s": mean_std([r["train_wall_s"] for r in runs])["mean"],
        "kl_to_ref": mean_std([r["kl_to_ref"] for r in runs]),
        "fwd_per_solved_threshold": mean_std(
            [r["after"]["threshold"]["forwards_per_solved"] or float("nan") for r in runs]
        )["mean"],
        "threshold_accuracy": mean_std([r["after"]["threshold"]["accuracy"] for r in runs]),
    }
    for task in runs[0]["after"]["greedy"]["per_task"]:
        row[f"acc_{task}"] = mean_std([r["after"]["greedy"]["per_task"][task] for r in runs])
    return row


def _training_record(cfg, base, runs, sweep, ref_meta, out: Path, wall: float) -> Path:
    from fmlab.core.results import figure, save_figure

    rows = {arm: _arm_row(rs, base) for arm, rs in runs.items()}
    ref_row = {
        "accuracy": base["greedy"]["accuracy"],
        "gain": 0.0,
        "fwd_per_solved_threshold": base["threshold"]["forwards_per_solved"],
        "threshold_accuracy": base["threshold"]["accuracy"],
        **{f"acc_{t}": v for t, v in base["greedy"]["per_task"].items()},
    }
    lead = "dtrpo" if "dtrpo" in rows else next(iter(rows))
    metrics = dict(rows[lead])
    exact_fwd = rows.get("dpo-exact", {}).get("policy_forwards")
    if exact_fwd:
        metrics["policy_forwards_vs_exact"] = rows[lead]["policy_forwards"] / exact_fwd
    metrics["beta_sweep"] = {
        str(b): {"accuracy": r["after"]["greedy"]["accuracy"], "kl_to_ref": r["kl_to_ref"]}
        for b, r in sorted(sweep.items()) if r is not None
    }  # fmt: skip
    metrics["curves"] = {
        arm: [
            {"train_forwards": mean_std([r["curve"][i]["train_forwards"] for r in rs])["mean"],
             "total_forwards": mean_std([r["curve"][i]["total_forwards"] for r in rs])["mean"],
             "accuracy": mean_std([r["curve"][i]["accuracy"] for r in rs])}
            for i in range(len(rs[0]["curve"]))
        ]
        for arm, rs in runs.items()
    }  # fmt: skip
    metrics["pretrain_history"] = ref_meta["history"]
    baselines = {arm: row for arm, row in rows.items() if arm != lead}
    baselines["sft-reference"] = ref_row

    plt = figure()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for arm, pts in metrics["curves"].items():
        pts = pts[1:]  # step 0 (no training forwards) is the reference line
        x = [p["train_forwards"] for p in pts]
        y = [p["accuracy"]["mean"] for p in pts]
        e = [p["accuracy"]["std"] for p in pts]
        ax.errorbar(x, y, yerr=e, marker="o", capsize=3, label=arm)
    ax.set_xscale("log")
    ax.set_xlabel("training forward passes (policy + reference + online sampling)")
    ax.set_ylabel("held-out greedy accuracy (3 tasks)")
    ax.axhline(base["greedy"]["accuracy"], color="grey", ls=":", label="SFT reference")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save_figure(fig, plt, out / "accuracy_vs_forwards.png")

    rec = ResultRecord(
        method="dtrpo",
        claim="dTRPO (one forward per response, block-attention layout) improves held-out "
        "accuracy over the SFT reference like exact-trajectory DPO at a fraction of its "
        "training forwards, and beats the d1 one-pass estimator at equal cost.",
        setup={**cfg.to_dict(), "command": "fmlab dtrpo bench", "peak_rss_mb": peak_rss_mb()},
        metrics=metrics,
        baselines=baselines,
        wall_s=wall,
        plots=["accuracy_vs_forwards.png"],
        notes=[
            "Accuracy: greedy decoding (low-confidence remasking, 4 steps per block) on "
            f"{cfg.n_test} held-out items per task ({cfg.n_curve} per task at the checkpoints "
            f"along training); mean ± std over seeds {list(cfg.seeds)} "
            "(pair sampling, batch order and estimator draws vary; the SFT reference is one "
            "model shared by every seed).",
            "train_forwards counts sequence forwards: policy (with backward) + reference (no "
            "grad) + online sampling; a packed [prompt|clean|noised] forward counts as one.",
            "data_forwards: the reference's sampling of K answers per prompt (offline arms).",
            "gain_ci95_lo/hi: 95% bootstrap interval over test items of the paired gain "
            "(seed-averaged, same items as the reference); p_no_gain: bootstrap share <= 0.",
            "The bench memoises finished stages; after a resumed run wall_s covers only that "
            "run, while train_wall_s (per arm) is always the measured training time.",
            "grpo uses one gradient step per sampled batch (μ = 1), so PPO clipping is inactive.",
            f"lr {cfg.lr} and β {cfg.beta} were chosen by a small sweep of the dtrpo arm on a "
            "validation split (docs/dtrpo.md) and used unchanged for every arm: a choice that "
            "can favour dtrpo.",
        ],
        headline=["gain", "policy_forwards", "kl_to_ref"],
    )
    return write_record(rec, out / "training.json")


def _estimators_record(cfg, est: dict, out: Path, wall: float) -> Path:
    from fmlab.core.results import figure, save_figure

    last = est["checkpoints"][-1]
    metrics: dict = {"single_pass_max_abs_diff": est["single_pass_max_abs_diff"],
                     "single_pass_max_abs_diff_fp32": est["single_pass_max_abs_diff_fp32"],
                     "n_trajectories": est["n_trajectories"], "draws": cfg.est_draws}  # fmt: skip
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
    rows["exact"] = {
        "corr": 1.0,
        "bias_abs": 0.0,
        "variance": 0.0,
        "forwards": last["exact_forwards"],
    }
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
            f"with π_θ = dTRPO after {[c['step'] for c in est['checkpoints']]} steps; the table "
            "is the last checkpoint. corr: Pearson r of ONE draw with the exact value; bias: "
            f"mean |mean of {cfg.est_draws} draws − exact|; forwards: both models, per estimate.",
            "single_pass_max_abs_diff: max |Δ| over every per-token log-prob between the packed "
            "one-forward pass and N_B separate passes, both models, both checkpoints, in "
            "float64 (the layout itself); single_pass_max_abs_diff_fp32 is the same in float32, "
            "where attention over different key counts sums in a different order.",
            "bias_over_se_max: the largest |mean of draws − exact| / (its standard error) over "
            "the trajectories; about 3 is what 2 x 48 unbiased z-scores give, ELBO's is larger "
            "because it estimates the answer's likelihood, not the trajectory's.",
        ],
        headline=["single_pass_max_abs_diff", "corr", "forwards"],
    )
    return write_record(rec, out / "estimators.json")


def quick(out_dir: str | Path) -> ResultRecord:
    """`fmlab demo`'s smoke bench: a tiny model, one seed, two arms."""
    from fmlab.core.results import load_record

    run(BenchConfig.quick(), out_dir, log=lambda m: None)
    return ResultRecord(**load_record(Path(out_dir) / "training.json"))


SWEEP_GRID: tuple[tuple[float, float], ...] = (
    (1e-4, 0.1), (2e-5, 0.1), (1e-4, 0.5), (1e-4, 2.0), (2e-4, 2.0), (2e-4, 5.0),
    (3e-4, 1.0), (3e-4, 3.0),
)  # fmt: skip


def run_sweep(
    cfg: BenchConfig,
    out: str | Path,
    grid: tuple[tuple[float, float], ...] = SWEEP_GRID,
    log: Callable[[str], None] = log_stderr,
) -> Path:
    """The (lr, β) sweep of the dtrpo arm that chose the bench's setting, on a validation
    split (50 items per task, disjoint from the test split), seed-0 pairs; writes sweep.json."""
    import shutil

    from fmlab.dtrpo.train import PrefConfig, evaluate, kl_to_ref, train_arm

    out = Path(out)
    work = _work(out)
    t0 = time.perf_counter()
    ref = reference(cfg, work, log)
    pairs = _pairs(cfg, ref, cfg.seeds[0], work, log)
    val = list(dtrpo_splits(n_train=cfg.n_train)["val"])
    memo = Memo(work / f"sweep-{_digest([cfg.to_dict()[f] for f in _ARM_FIELDS])}.json")
    base = memo.get_or_compute("reference", lambda: {"accuracy": evaluate(ref, val)["accuracy"]})
    rows = {}
    for lr, beta in grid:

        def one(lr=lr, beta=beta) -> dict:
            log(f"sweep: dtrpo lr {lr} β {beta}")
            run_dir = work / f"sweep-run-{lr}-{beta}"
            shutil.rmtree(run_dir, ignore_errors=True)
            pol = ref.copy()
            tc = TrainConfig(steps=cfg.steps, batch_size=cfg.batch_pairs, lr=lr, warmup_steps=10,
                             weight_decay=0.0, seed=0, progress=False)  # fmt: skip
            accs = []
            for stop in (cfg.steps // 3, 2 * cfg.steps // 3, cfg.steps):
                train_arm(pol, ref, PrefConfig(arm="dtrpo", beta=beta), tc, pairs,
                          out_dir=run_dir, stop_at=stop)  # fmt: skip
                accs.append(evaluate(pol, val)["accuracy"])
            shutil.rmtree(run_dir, ignore_errors=True)
            return {"lr": lr, "beta": beta, "val_accuracy": accs[-1], "curve": accs,
                    "kl_to_ref": kl_to_ref(pol, ref, val[:60])}  # fmt: skip

        rows[f"lr={lr},beta={beta}"] = memo.get_or_compute(f"{lr}:{beta}", one)
    best = max(rows, key=lambda k: rows[k]["val_accuracy"])
    rec = ResultRecord(
        method="dtrpo",
        claim="Validation sweep that chose the bench's lr and β for every arm.",
        setup={
            "command": "fmlab dtrpo bench --sweep",
            "val_items": len(val),
            "steps": cfg.steps,
            "batch_pairs": cfg.batch_pairs,
            "seed": cfg.seeds[0],
        },
        metrics={
            "best": best,
            "val_accuracy": rows[best]["val_accuracy"],
            "kl_to_ref": rows[best]["kl_to_ref"],
            "reference_val_accuracy": base["accuracy"],
        },
        baselines={
            k: {"val_accuracy": r["val_accuracy"], "kl_to_ref": r["kl_to_ref"]}
            for k, r in rows.items()
            if k != best
        },
        wall_s=time.perf_counter() - t0,
        notes=[
            "Validation: the val split of fmlab.dtrpo.data.dtrpo_splits (50 items per task), "
            "disjoint by prompt from the train, pairs and test splits.",
            "val_accuracy after the last step; the per-row curves are in the memo.",
        ],
        headline=["val_accuracy", "kl_to_ref"],
    )
    return write_record(rec, out / "sweep.json")
