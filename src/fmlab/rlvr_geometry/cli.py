"""`fmlab rlvr-geometry`: analyze checkpoints against their base; measure its memory."""

from __future__ import annotations

from pathlib import Path

import typer

from fmlab.core.cliutil import BENCH_OUT_HELP, bench_out, fail

app = typer.Typer(
    help="RLVR three gates: parameter-level geometry of checkpoints against their base, and "
    "the RL-vs-SFT study (train, bench).",
    no_args_is_help=True,
    add_completion=False,
)


@app.callback()
def main() -> None:
    """RLVR three gates: parameter-level geometry of checkpoints against their base."""


@app.command("analyze")
def analyze_cmd(
    base: str = typer.Argument(..., help="the base checkpoint (HF dir, weight file, bundled name)"),
    ckpts: list[str] = typer.Argument(..., help="one or more checkpoints fine-tuned from BASE"),
    json_out: Path = typer.Option(..., "--json", help="where the JSON report goes"),
    plots: Path = typer.Option(None, help="directory for the PNG plots"),
    k: str = typer.Option(
        "1,4,16,64", "--k", help="subspace sizes for principal angles; k₀ = smallest above 1"
    ),
    alpha: float = typer.Option(0.5, help="fraction of entries in M_princ and M_low, in (0, 1)"),
    allow_pickle: bool = typer.Option(
        False, help="accept .bin pickle inputs (loaded weights_only)"
    ),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="progress bar on stderr"),
    threads: int = typer.Option(
        None, help="torch threads (1 is much faster when other jobs keep the cores busy)"
    ),
) -> None:
    """Every metric per 2-D weight, per layer type and overall; JSON report and plots."""
    from fmlab.core.io import CheckpointError
    from fmlab.rlvr_geometry import GeometryError, analyze, check_outputs, parse_ks, write_report

    try:
        check_outputs(json_out, plots)
        rep = analyze(
            base,
            ckpts,
            ks=parse_ks(k),
            alpha=alpha,
            progress=progress,
            allow_pickle=allow_pickle,
            threads=threads,
        )
        written = write_report(rep, json_out, plots)
    except (GeometryError, CheckpointError, FileNotFoundError, ValueError) as e:
        fail(str(e))
    for note in rep["notes"]:
        typer.echo(f"note: {note}")
    for c in rep["checkpoints"]:
        s = c["summary"]["overall"]
        typer.echo(
            f"{c['path']}: {s['n_tensors']} tensors, sparsity_bf16 {s['sparsity_bf16']:.4f}, "
            f"NSS {s['nss']:.3g}, max angle (k={rep['settings']['k'][-1]}) "
            f"{s['principal_angle_max_deg'][str(rep['settings']['k'][-1])]:.3g} deg"
        )
    for pr in rep["pairs"]:
        typer.echo(
            f"jaccard {pr['a']} / {pr['b']}: {pr['jaccard']} (random {pr['jaccard_random']})"
        )
    typer.echo(
        f"wrote {written['json'][0]}"
        + (f" and {len(written['plots'])} plots in {plots}" if plots else "")
        + f" in {rep['wall_s']:.1f} s"
    )


@app.command("measure-memory")
def measure_memory_cmd(
    out: Path = typer.Option(None, help=BENCH_OUT_HELP),
    work: Path = typer.Option(None, help="scratch directory for the modified copy (~0.6 GB)"),
) -> None:
    """Peak RSS and time of `analyze` on the bundled SmolLM2 vs a modified copy (subprocess)."""
    from fmlab.core.cliutil import log
    from fmlab.rlvr_geometry.memory import measure_memory

    out = bench_out("rlvr_geometry", out)
    try:
        rec = measure_memory(out, work=str(work) if work else None, log=log)
    except (FileNotFoundError, ValueError, RuntimeError) as e:
        fail(str(e))
    m = rec.metrics
    typer.echo(
        f"analyze: peak RSS {m['peak_rss_mb']:.0f} MiB for a {m['model_size_mb']:.0f} MiB model "
        f"({m['rss_over_model_size']:.2f}x), {m['wall_s']:.0f} s; wrote {out / 'analyze_memory.json'}"
    )


@app.command("train")
def train_cmd(
    out: Path = typer.Option(..., help="run directory (checkpoints, metrics, model/); resumable"),
    kind: str = typer.Option("rl", help="rl (DAPO-style GRPO, beta 0) or sft"),
    model: str = typer.Option("smollm2-135m-instruct", help="bundled name or HF directory"),
    steps: int = typer.Option(60, help="optimizer steps"),
    lr: float = typer.Option(None, help="learning rate (default: 1e-6 for rl, 1e-5 for sft)"),
    seed: int = typer.Option(0),
    bf16: bool = typer.Option(
        True, "--bf16/--fp32", help="weight storage (fp32 optimizer either way)"
    ),
    beta: float = typer.Option(0.0, help="KL penalty to the base (rl)"),
    threads: int = typer.Option(1, help="torch threads"),
) -> None:
    """One arm of the study on the addition task: RL or SFT from MODEL, saved as an HF model."""
    from dataclasses import replace

    import torch

    from fmlab.core.models.pretrained import load_pretrained
    from fmlab.core.rl import GRPOConfig, master_adamw, train_grpo, train_sft
    from fmlab.core.train import TrainConfig
    from fmlab.rlvr_geometry.study import StudyConfig, last_int_reward, make_splits

    if kind not in ("rl", "sft"):
        fail(f"--kind must be rl or sft, got {kind!r}")
    torch.set_num_threads(threads)
    cfg = StudyConfig()
    rows = make_splits(0, cfg.digits, cfg.n_train, cfg.n_test)["train"]
    try:
        m, tok = load_pretrained(model, dtype="bfloat16" if bf16 else "float32", device="cpu")
    except (FileNotFoundError, ValueError, OSError) as e:
        fail(str(e))
    tcfg = TrainConfig(steps=steps, lr=lr or (cfg.rl_lr if kind == "rl" else cfg.sft_lr),
                       warmup_steps=0, weight_decay=0.0, seed=seed,
                       batch_size=cfg.num_generations * cfg.prompts_per_step)  # fmt: skip
    if kind == "rl":
        g = replace(GRPOConfig(), num_generations=cfg.num_generations,
                    prompts_per_step=cfg.prompts_per_step, max_new_tokens=cfg.max_new_tokens,
                    loss_type="dapo", epsilon_high=0.28, beta=beta)  # fmt: skip
        res = train_grpo(m, tok, rows, [last_int_reward], g, tcfg, out, optimizers=master_adamw())
    else:
        res = train_sft(m, tok, [(r["prompt"], r["answer"]) for r in rows], tcfg, out,
                        optimizers=master_adamw())  # fmt: skip
    res.raise_if_signalled()
    typer.echo(f"{kind}: {res.steps} steps in {res.wall_s:.0f} s; model in {out / 'model'}; "
               f"analyze it with: fmlab rlvr-geometry analyze <base> {out / 'model'} --json r.json")  # fmt: skip


@app.command("bench")
def bench_cmd(
    out: Path = typer.Option(None, help=BENCH_OUT_HELP),
    quick: bool = typer.Option(False, help="a tiny random model, 3 steps (claims nothing)"),
    steps: int = typer.Option(None, help="optimizer steps per arm (default 60)"),
    rl_seeds: int = typer.Option(None, help="number of RL seeds (default 3)"),
    model: str = typer.Option(
        None,
        help="the base (default: the bundled SmolLM2-135M); 'control': the plateau base that "
        "`bench --control` pretrained into the same --out",
    ),
    arms: str = typer.Option(
        None,
        help="comma-separated interventions run beside rl and sft, replacing the default set; "
        "'gates' = rl-lr,rl-fp32,rl-rotated,rl-beta,rl-clip (the full run's default), 'peft' = "
        "rl-lora,rl-pissa,rl-milora,rl-mask-principal,rl-mask-offprincipal; names and groups mix",
    ),
    control: bool = typer.Option(
        False,
        "--control",
        help="the short-pretrain control instead: pretrain a small Llama here, RL and SFT from "
        "an early and a plateau checkpoint of that run; writes control.json",
    ),
) -> None:
    """RL vs SFT from one base and the interventions of the three gates (docs/rlvr_geometry.md)."""
    from fmlab.core.experiment import with_overrides
    from fmlab.rlvr_geometry.control import ControlError
    from fmlab.rlvr_geometry.study import StudyConfig, StudyError, parse_arms, run_study

    if control:
        if model or arms:
            fail("--control pretrains its own two bases and runs rl and sft only; drop --model "
                 "and --arms")  # fmt: skip
        _control(out, quick, steps, rl_seeds)
        return
    if model == "control" and steps is not None:
        fail("--model control runs the recipe the control tuned on DEV for its base (lrs and "
             "steps, in control.json); drop --steps")  # fmt: skip
    out = bench_out("rlvr_geometry", out, quick)
    cfg = StudyConfig.quick() if quick else StudyConfig()
    try:
        cfg = with_overrides(cfg, steps=steps, model=model,
                             rl_seeds=tuple(range(rl_seeds)) if rl_seeds else None,
                             interventions=parse_arms(arms) if arms else None)  # fmt: skip
    except ValueError as e:
        fail(str(e))
    try:
        rec = run_study(out, cfg)
    except (StudyError, ControlError) as e:
        fail(str(e))
    for name, v in rec.metrics["predictions"].items():
        typer.echo(f"{name}: {v['verdict']}")
    typer.echo(f"wrote {out / 'study.json'}")


def _control(out: Path | None, quick: bool, steps: int | None, rl_seeds: int | None) -> None:
    """`bench --control`: the short-pretrain control (fmlab.rlvr_geometry.control)."""
    from dataclasses import replace

    from fmlab.core.experiment import SplitError, with_overrides
    from fmlab.rlvr_geometry.control import ControlConfig, ControlError, run_control

    cfg = ControlConfig.quick() if quick else ControlConfig()
    try:
        study = with_overrides(cfg.study, steps=steps,
                               rl_seeds=tuple(range(rl_seeds)) if rl_seeds else None)  # fmt: skip
        cfg = replace(cfg, study=study)
    except ValueError as e:
        fail(str(e))
    out = bench_out("rlvr_geometry", out, quick)
    try:
        rec = run_control(out, cfg)
    except (ControlError, SplitError) as e:
        fail(str(e))
    b = rec.metrics["bases"]
    typer.echo(f"bases: short = step {b['short']['step']}, long = step {b['long']['step']} "
               f"({'plateau' if b['plateau_reached'] else 'step budget, no plateau'})")  # fmt: skip
    for name, v in rec.metrics["predictions"].items():
        typer.echo(f"{name}: {v['verdict']}")
    typer.echo(f"wrote {out / 'control.json'}")
