"""`fmlab rlvr-geometry`: analyze checkpoints against their base; measure its memory."""

from __future__ import annotations

from pathlib import Path

import typer

from fmlab.core.cliutil import BENCH_OUT_HELP, bench_out, fail

app = typer.Typer(
    help="RLVR three gates: parameter-level geometry of checkpoints against their base "
    "(the RL-vs-SFT study is not built yet).",
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
