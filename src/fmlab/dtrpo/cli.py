"""`fmlab dtrpo pretrain|sample|pairs|train|eval|bench`."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import typer

from fmlab.core.cliutil import BENCH_OUT_HELP, bench_out, fail
from fmlab.core.cliutil import log as _log
from fmlab.dtrpo.defaults import DEFAULTS

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


def _splits(n_train: int = 1):
    """The one split function's splits (n_train only sizes the SFT split; the others and the
    test split do not depend on it)."""
    from fmlab.dtrpo.data import dtrpo_splits

    try:
        return dtrpo_splits(n_train=n_train)
    except ValueError as e:
        fail(str(e))


def _take(split, n: int, flag: str):
    from fmlab.dtrpo.data import take

    try:
        return take(split, n)
    except ValueError as e:
        fail(f"{flag} {n}: {e}")


def _check_steps(model, steps: int) -> None:
    if not 1 <= steps <= model.block_length:
        fail(
            f"--steps-per-block {steps}: a block of this model has {model.block_length} tokens "
            f"and each step unmasks at least one; choose 1 to {model.block_length}"
        )


def _sampler(model, threshold: float | None, temperature: float, steps: int):
    from fmlab.dtrpo.sampler import SamplerConfig

    _check_steps(model, steps)
    try:
        return SamplerConfig(steps_per_block=steps, temperature=temperature, threshold=threshold)
    except ValueError as e:
        fail(str(e))


@contextlib.contextmanager
def _progress(what: str):
    """A progress bar on stderr (stdout carries results): yields ``update(done, total)``."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    bar = Progress(TextColumn(f"[bold]{what}"), BarColumn(), MofNCompleteColumn(),
                   TimeRemainingColumn(), console=Console(stderr=True))  # fmt: skip
    task = bar.add_task(what, total=None)
    with bar:
        yield lambda done, total: bar.update(task, completed=done, total=total)


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
    from fmlab.dtrpo.data import build_tokenizer
    from fmlab.dtrpo.model import make_dllm, save_dllm
    from fmlab.dtrpo.train import pretrain as run

    if (out / "model").exists():
        fail(f"{out}/model already exists; choose another --out")
    try:
        model = make_dllm(build_tokenizer(), size, seed=seed)
        cfg = TrainConfig(steps=steps, batch_size=batch_size, lr=lr, seed=seed)
    except ValueError as e:
        fail(str(e))
    res = run(model, list(_splits(n_per_task)["train"]), cfg, out / "train")
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

    from fmlab.dtrpo.data import reward
    from fmlab.dtrpo.sampler import sample

    m = _load(model)
    items = None if prompt else _take(_splits()["val"], n, "--n")
    prompts = list(prompt) if prompt else [it.prompt for it in items]
    cfg = _sampler(m, threshold, temperature, steps_per_block)
    with _progress("sample") as bar:
        traj = sample(m, prompts, cfg, torch.Generator().manual_seed(seed), progress=bar)
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
    from fmlab.dtrpo.data import make_pairs

    if out.exists():
        fail(f"{out} already exists; choose another --out")
    m = _load(model)
    prompts = _take(_splits()["pairs"], n_per_task, "--n-per-task")
    try:
        with _progress(f"pairs: {k} samples x {len(prompts)} prompts") as bar:
            ps = make_pairs(m, prompts, k, seed, progress=bar)
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
    pairs_dir: Path = typer.Option(
        None,
        "--pairs",
        help="pair set dir (`fmlab dtrpo pairs`) or a JSONL file of "
        '{"prompt", "chosen", "rejected"} lines (offline arms)',
    ),
    steps_per_block: int = typer.Option(
        4, help="JSONL pairs: steps per block of the recovered (teacher-forced) decode order"
    ),
    steps: int = typer.Option(DEFAULTS["steps"]),
    batch_size: int = typer.Option(DEFAULTS["batch_size"], help="pairs per step (offline arms)"),
    lr: float = typer.Option(DEFAULTS["lr"], help="the bench's validated setting"),
    beta: float = typer.Option(DEFAULTS["beta"], help="DPO temperature (validated setting)"),
    seed: int = typer.Option(0),
) -> None:
    """Preference/RL training from the reference; writes OUT/model and OUT/counts.json.

    Runs under torchrun too (DDP, gloo on CPU): gradients go through the DDP wrapper, rank 0
    alone writes and prints; counts.json sums the forwards of every process and holds each
    replica's parameter checksum."""
    from fmlab.core.train import TrainConfig, _dist_info, _maybe_init_dist, param_checksum
    from fmlab.dtrpo.train import PrefConfig, train_arm

    try:
        cfg = PrefConfig(arm=arm, beta=beta)
        tcfg = TrainConfig(steps=steps, batch_size=batch_size, lr=lr, seed=seed,
                           warmup_steps=DEFAULTS["warmup_steps"],
                           weight_decay=DEFAULTS["weight_decay"])  # fmt: skip
    except ValueError as e:
        fail(str(e))
    policy, ref = _load(model), _load(model)
    ps = _offline_pairs(arm, pairs_dir, ref, steps_per_block)
    prompts = list(_splits()["pairs"])  # the online arms' prompts
    started = _maybe_init_dist()  # kept open past train() to gather counts and checksums
    rank, world = _dist_info()
    try:
        res, count = train_arm(policy, ref, cfg, tcfg, ps, prompts, out / "train")
        counts = _gather(count, world)
        sums = _gather_objects(param_checksum(policy.net), world)
    finally:
        if started:
            import torch.distributed as dist

            dist.destroy_process_group()
    if res.interrupted:
        fail(f"stopped at step {res.steps}; rerun the same command to resume", code=130)
    if rank == 0:
        from fmlab.core.io import atomic_write_json
        from fmlab.dtrpo.model import save_dllm

        save_dllm(policy, out / "model", overwrite=True)
        info = {"arm": arm, **counts, "world_size": world, "param_checksums": sums}
        atomic_write_json(out / "counts.json", info)
        typer.echo(json.dumps({"model": str(out / "model"), "steps": res.steps,
                               "loss": res.train_loss, **counts}))  # fmt: skip


def _offline_pairs(arm: str, path: Path | None, ref, steps_per_block: int):
    """The pair set of an offline arm (None for online arms): a saved pair set, or JSONL pairs
    whose decode order is recovered under the reference. Pairs on test prompts are refused."""
    from fmlab.core.experiment import SplitError
    from fmlab.core.io import CheckpointError
    from fmlab.dtrpo.data import PairSet, check_disjoint, load_jsonl_pairs
    from fmlab.dtrpo.train import ARMS

    if ARMS[arm] is None:
        return None
    if path is None:
        fail(f"arm {arm} is offline: give --pairs DIR (from `fmlab dtrpo pairs`) or a JSONL file")
    try:
        if path.is_file():
            _check_steps(ref, steps_per_block)
            with _progress("recovering decode orders (teacher-forced, reference)") as bar:
                ps = load_jsonl_pairs(path, ref, steps_per_block, bar)
        else:
            ps = PairSet.load(path)
        check_disjoint({"pairs": ps.items})
    except SplitError as e:
        fail(f"{e}. These pairs share prompts with the held-out test split (or val) that `fmlab "
             "dtrpo eval` and the bench report on; drop those pairs, or make pairs with `fmlab "
             "dtrpo pairs`, which draws its prompts from the pairs split")  # fmt: skip
    except (CheckpointError, ValueError, FileNotFoundError) as e:
        fail(str(e))
    return ps


def _gather(count, world: int) -> dict:
    """The forward counters summed over processes (a collective under torchrun)."""
    from fmlab.dtrpo.train import save_counter

    out = save_counter(count)
    if world > 1:
        import torch
        import torch.distributed as dist

        t = torch.tensor([out[k] for k in out], dtype=torch.float64)
        dist.all_reduce(t)
        out = {k: int(v) for k, v in zip(out, t.tolist(), strict=True)}
    return out


def _gather_objects(obj, world: int) -> list:
    if world == 1:
        return [obj]
    import torch.distributed as dist

    got: list = [None] * world
    dist.all_gather_object(got, obj)
    return got


@app.command("eval")
def eval_cmd(
    model: Path = typer.Option(...),
    n_per_task: int = typer.Option(100),
    threshold: float = typer.Option(None, help="confidence-threshold decoding"),
    steps_per_block: int = typer.Option(4),
    seed: int = typer.Option(0),
) -> None:
    """Greedy accuracy per task on the held-out TEST split only (and forwards per solved item).

    The test split is disjoint by prompt text from every prompt pretrain, pairs, train and the
    bench's tuning use (fmlab.dtrpo.data.dtrpo_splits); the output names it and its digest."""
    from fmlab.dtrpo.train import evaluate

    m = _load(model)
    splits = _splits().open_test("fmlab dtrpo eval")
    test = _take(splits["test"], n_per_task, "--n-per-task")
    _log(f"eval: greedy decoding of the held-out test split, {n_per_task} items per task")
    cfg = _sampler(m, threshold, 0.0, steps_per_block)
    with _progress("eval (test split)") as bar:
        res = evaluate(m, test, cfg, seed, progress=bar)
    res["split"] = {"name": "test", "items": len(test), "digest": splits["test"].digest,
                    "disjoint_from": [n for n in splits.names if n != "test"]}  # fmt: skip
    typer.echo(json.dumps(res, indent=1))


@app.command()
def convert(
    src: Path = typer.Option(..., help="an HF causal LM checkpoint directory (Llama, Qwen2, ...)"),
    out: Path = typer.Option(..., help="where the block-diffusion model goes"),
    gen_length: int = typer.Option(24, help="answer length in tokens"),
    block_length: int = typer.Option(8, help="tokens per block"),
) -> None:
    """Turn an HF causal LM into a block-diffusion LM every dtrpo command takes: adds a mask
    (and pad / end) token if missing, checks the 4-D-mask block forward, saves the geometry."""
    from fmlab.core.io import CheckpointError
    from fmlab.dtrpo.adapter import convert_causal_lm

    if out.exists():
        fail(f"{out} already exists; choose another --out")
    try:
        path = convert_causal_lm(src, out, gen_length, block_length)
    except (CheckpointError, ValueError) as e:
        fail(str(e))
    typer.echo(json.dumps({"model": str(path), "gen_length": gen_length,
                           "block_length": block_length}))  # fmt: skip


@app.command()
def bench(
    out: Path = typer.Option(None, help=BENCH_OUT_HELP),
    quick: bool = typer.Option(False, help="a small, fast configuration (smoke test)"),
) -> None:
    """Estimator fidelity and the training comparison on the experiment harness (resumable):
    an SFT reference per seed, every arm tuned on val alike, the test split opened once,
    paired intervals; writes estimators.json and training.json with plots."""
    from fmlab.dtrpo.bench import BenchConfig, run

    cfg = BenchConfig.quick() if quick else BenchConfig()
    out = bench_out("dtrpo", out, quick)
    for path in run(cfg, out, log=_log):
        typer.echo(str(path))
