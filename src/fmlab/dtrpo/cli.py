"""`fmlab dtrpo pretrain|sample|pairs|train|eval|bench`."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from fmlab.core.cliutil import BENCH_OUT_HELP, bench_out, fail
from fmlab.core.cliutil import log as _log

app = typer.Typer(
    help="dTRPO: trajectory-reduced preference optimization for block-diffusion LMs.",
    no_args_is_help=True,
    add_completion=False,
)


def _load(path: Path):
    from fmlab.core.io import CheckpointError
    from fmlab.dtrpo.model import load_dllm

    if not path.exists():
        fail(f"{path}: no such model; train one with `fmlab dtrpo pretrain --out DIR`")
    try:
        return load_dllm(path)
    except CheckpointError as e:
        fail(str(e))


def _sampler(threshold: float | None, temperature: float, steps: int):
    from fmlab.dtrpo.sampler import SamplerConfig

    try:
        return SamplerConfig(steps_per_block=steps, temperature=temperature, threshold=threshold)
    except ValueError as e:
        fail(str(e))


@app.command()
def pretrain(
    out: Path = typer.Option(..., help="run directory (resumes if it holds a checkpoint)"),
    steps: int = typer.Option(3000),
    size: str = typer.Option("llama-small", help="llama-tiny | llama-small | llama-mini"),
    n_per_task: int = typer.Option(2000, help="training items per task"),
    batch_size: int = typer.Option(64),
    lr: float = typer.Option(3e-3),
    seed: int = typer.Option(0),
) -> None:
    """Masked-diffusion SFT of a block-diffusion LM on the three tasks; writes OUT/model."""
    from fmlab.core.train import TrainConfig
    from fmlab.dtrpo.data import build_tokenizer, make_items
    from fmlab.dtrpo.model import make_dllm, save_dllm
    from fmlab.dtrpo.train import pretrain as run

    if (out / "model").exists():
        fail(f"{out}/model already exists; choose another --out")
    try:
        model = make_dllm(build_tokenizer(), size, seed=seed)
        cfg = TrainConfig(steps=steps, batch_size=batch_size, lr=lr, seed=seed)
    except ValueError as e:
        fail(str(e))
    res = run(model, make_items(n_per_task, seed), cfg, out / "train")
    if res.interrupted:
        fail(f"stopped at step {res.steps}; rerun the same command to resume", code=130)
    save_dllm(model, out / "model")
    typer.echo(json.dumps({"model": str(out / "model"), "steps": res.steps,
                           "train_loss": res.train_loss, "wall_s": round(res.wall_s, 1)}))  # fmt: skip


@app.command("sample")
def sample_cmd(
    model: Path = typer.Option(..., help="a model directory from `pretrain` or `train`"),
    prompt: list[str] = typer.Option(None, help="prompt(s); default: seeded task items"),
    n: int = typer.Option(2, help="items per task when no --prompt is given"),
    temperature: float = typer.Option(0.0),
    steps_per_block: int = typer.Option(4),
    threshold: float = typer.Option(None, help="confidence-threshold unmasking"),
    seed: int = typer.Option(0),
) -> None:
    """Sample answers and print each token's unmasking step (the recorded trajectory)."""
    import torch

    from fmlab.dtrpo.data import make_items, reward
    from fmlab.dtrpo.sampler import sample

    m = _load(model)
    items = None if prompt else make_items(n, seed + 1000)
    prompts = list(prompt) if prompt else [it.prompt for it in items]
    traj = sample(m, prompts, _sampler(threshold, temperature, steps_per_block),
                  torch.Generator().manual_seed(seed))  # fmt: skip
    for i, text in enumerate(m.decode(traj.answer)):
        row = {"prompt": prompts[i], "answer": text, "forwards": int(traj.forwards[i]),
               "unmask_step": traj.bstep[i].tolist()}  # fmt: skip
        if items is not None:
            row["reward"] = reward(items[i], text)
        typer.echo(json.dumps(row))


@app.command()
def pairs(
    model: Path = typer.Option(..., help="the reference model"),
    out: Path = typer.Option(..., help="directory for the pair set"),
    n_per_task: int = typer.Option(200, help="prompts per task"),
    k: int = typer.Option(8, help="samples per prompt"),
    seed: int = typer.Option(0),
) -> None:
    """Sample K answers per prompt from the reference, score them, keep best-vs-worst pairs."""
    from fmlab.dtrpo.data import make_items, make_pairs

    if out.exists():
        fail(f"{out} already exists; choose another --out")
    m = _load(model)
    try:
        ps = make_pairs(m, make_items(n_per_task, seed + 2000), k, seed)
    except ValueError as e:
        fail(str(e))
    ps.save(out)
    typer.echo(json.dumps({"pairs": len(ps), "prompts": 3 * n_per_task,
                           "sampling_forwards": ps.sampling_forwards, "out": str(out)}))  # fmt: skip


@app.command("train")
def train_cmd(
    model: Path = typer.Option(..., help="the reference (SFT) model to start from"),
    out: Path = typer.Option(..., help="run directory (resumes if it holds a checkpoint)"),
    arm: str = typer.Option("dtrpo", help="dtrpo | dpo-exact | dpo-d1 | dpo-elbo | grpo | wd1"),
    pairs_dir: Path = typer.Option(None, "--pairs", help="pair set (offline arms)"),
    steps: int = typer.Option(150),
    batch_size: int = typer.Option(16, help="pairs per step (offline arms)"),
    lr: float = typer.Option(5e-4),
    beta: float = typer.Option(0.1),
    seed: int = typer.Option(0),
) -> None:
    """Preference/RL training from the reference; writes OUT/model and OUT/counts.json."""
    from fmlab.core.io import CheckpointError, atomic_write_json
    from fmlab.core.train import TrainConfig
    from fmlab.dtrpo.data import PairSet, make_items
    from fmlab.dtrpo.model import save_dllm
    from fmlab.dtrpo.train import ARMS, PrefConfig, save_counter, train_arm

    try:
        cfg = PrefConfig(arm=arm, beta=beta)
        tcfg = TrainConfig(steps=steps, batch_size=batch_size, lr=lr, seed=seed, warmup_steps=10)
    except ValueError as e:
        fail(str(e))
    ps = None
    if ARMS[arm] is not None:
        if pairs_dir is None:
            fail(f"arm {arm} is offline: give --pairs DIR (from `fmlab dtrpo pairs`)")
        try:
            ps = PairSet.load(pairs_dir)
        except CheckpointError as e:
            fail(str(e))
    policy, ref = _load(model), _load(model)
    res, count = train_arm(policy, ref, cfg, tcfg, ps, make_items(200, seed + 2000), out / "train")
    if res.interrupted:
        fail(f"stopped at step {res.steps}; rerun the same command to resume", code=130)
    save_dllm(policy, out / "model", overwrite=True)
    atomic_write_json(out / "counts.json", {"arm": arm, **save_counter(count)})
    typer.echo(json.dumps({"model": str(out / "model"), "steps": res.steps,
                           "loss": res.train_loss, **save_counter(count)}))  # fmt: skip


@app.command("eval")
def eval_cmd(
    model: Path = typer.Option(...),
    n_per_task: int = typer.Option(100),
    threshold: float = typer.Option(None, help="confidence-threshold decoding"),
    steps_per_block: int = typer.Option(4),
    seed: int = typer.Option(0),
) -> None:
    """Greedy accuracy per task on held-out items (and forwards per solved item)."""
    from fmlab.dtrpo.bench import heldout_items
    from fmlab.dtrpo.train import evaluate

    m = _load(model)
    res = evaluate(m, heldout_items(n_per_task), _sampler(threshold, 0.0, steps_per_block), seed)
    typer.echo(json.dumps(res, indent=1))


@app.command()
def bench(
    out: Path = typer.Option(None, help=BENCH_OUT_HELP),
    quick: bool = typer.Option(False, help="a small, fast configuration (smoke test)"),
    sweep: bool = typer.Option(False, help="run the validation (lr, β) sweep instead"),
) -> None:
    """Estimator fidelity and the training comparison (resumable); writes estimators.json and
    training.json with plots. --sweep writes sweep.json (how lr and β were chosen)."""
    from fmlab.dtrpo.bench import BenchConfig, run, run_sweep

    cfg = BenchConfig.quick() if quick else BenchConfig()
    out = bench_out("dtrpo", out, quick)
    if sweep:
        typer.echo(str(run_sweep(cfg, out, log=_log)))
        return
    for path in run(cfg, out, log=_log):
        typer.echo(str(path))
