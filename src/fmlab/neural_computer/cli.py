"""`fmlab nc`: record, train, play, eval, bench (thin over fmlab.neural_computer)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import typer

from fmlab.core.cliutil import BENCH_OUT_HELP, bench_out, fail, log

app = typer.Typer(
    help="Neural Computers: record a real terminal / toy desktop, train a learned runtime, "
    "play it live.",
    no_args_is_help=True,
    add_completion=False,
)


@app.command("record")
def record_cmd(
    out: Path = typer.Option(..., help="trace directory (one sub-directory per episode)"),
    kind: str = typer.Option("terminal", help="terminal | gui"),
    episodes: int = typer.Option(3, help="episodes per family (terminal) or regime (gui)"),
    families: str = typer.Option("everyday,arithmetic,routine", help="terminal script families"),
    regimes: str = typer.Option("goal,random-slow,random-fast", help="GUI action regimes"),
    frames: int = typer.Option(120, help="frames per GUI episode"),
    seed: int = typer.Option(0, help="first episode seed"),
    rows: int = typer.Option(10),
    cols: int = typer.Option(40),
    fmt: str = typer.Option("png", "--frames-format", help="png (lossless) | mp4"),
    command_timeout: float = typer.Option(3.0, help="seconds before a command is interrupted"),
) -> None:
    """Record episodes: bash in a sandboxed pseudo-terminal, or the toy desktop."""
    from fmlab.neural_computer import (
        FAMILIES,
        REGIMES,
        RecorderConfig,
        SandboxViolation,
        make_script,
        record_gui,
        record_terminal,
        write_episode,
    )  # fmt: skip

    if kind not in ("terminal", "gui"):
        fail(f"--kind {kind!r}: choose terminal or gui")
    names = [
        x.strip() for x in (families if kind == "terminal" else regimes).split(",") if x.strip()
    ]
    valid = FAMILIES if kind == "terminal" else REGIMES
    bad = [n for n in names if n not in valid]
    if bad or not names:
        fail(f"unknown {'families' if kind == 'terminal' else 'regimes'} {bad}; choose from: "
             f"{', '.join(valid)}")  # fmt: skip
    rc = RecorderConfig(rows=rows, cols=cols, command_timeout_s=command_timeout)
    n = 0
    try:
        for name in names:
            for i in range(episodes):
                s = seed + i
                ep_name = f"{kind}-{name}-{s}"
                if kind == "terminal":
                    ep = record_terminal(make_script(name, s), rc, seed=s, name=ep_name,
                                         extra_meta={"family": name})  # fmt: skip
                else:
                    ep = record_gui(name, frames, s, name=ep_name)
                write_episode(ep, out / ep_name, frames=fmt)
                n += 1
                log(f"{ep_name}: {len(ep.frames)} frames, status {ep.meta['status']}")
    except (SandboxViolation, ValueError, FileExistsError, OSError) as e:
        fail(str(e))
    typer.echo(f"recorded {n} episodes into {out}")


def _episodes(traces: Path, kind: str):
    from fmlab.neural_computer import TraceWarning, load_episodes

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", TraceWarning)
        eps = load_episodes(traces, kind=kind)
    for w in caught:
        log(f"warning: {w.message}")
    if not eps:
        fail(f"{traces}: no complete {kind} episodes; record some with "
             f"`fmlab nc record --kind {kind} --out {traces}`")  # fmt: skip
    return eps


@app.command("train")
def train_cmd(
    traces: Path = typer.Option(..., help="a trace directory from fmlab nc record"),
    out: Path = typer.Option(..., help="run directory (checkpoint, metrics, model/); resumes"),
    kind: str = typer.Option("terminal", help="terminal | gui"),
    injection: str = typer.Option("block", help="block (inside every block) | input"),
    cursor_mask: bool = typer.Option(
        True, "--cursor-mask/--raw-coordinates", help="GUI: draw the action's cursor as a mask"
    ),
    dim: int = typer.Option(128),
    layers: int = typer.Option(4),
    heads: int = typer.Option(4),
    steps: int = typer.Option(1500),
    batch_size: int = typer.Option(8),
    window: int = typer.Option(8, help="frames per training window (BPTT length)"),
    lr: float = typer.Option(2e-3),
    self_feed: float = typer.Option(0.0, help="probability of feeding back own frames"),
    seed: int = typer.Option(0),
) -> None:
    """Train the action-conditioned runtime on CPU (resumable; about 1.7 s a step at the
    defaults on one core, so the default 1,500 steps take about 45 min)."""
    import torch

    from fmlab.core.train import TrainConfig
    from fmlab.neural_computer import NCConfig, count_params, train_nc

    torch.set_num_threads(1)
    eps = _episodes(traces, kind)
    h, w = eps[0].frames.shape[1:]
    try:
        cfg = NCConfig(height=h, width=w, dim=dim, layers=layers, heads=heads, injection=injection,
                       mouse=kind == "gui", cursor_mask=kind == "gui" and cursor_mask)  # fmt: skip
        tcfg = TrainConfig(steps=steps, batch_size=batch_size, lr=lr, seed=seed,
                           warmup_steps=max(1, steps // 20))  # fmt: skip
        model, res = train_nc(eps, cfg, tcfg, out, window=window, self_feed=self_feed)
    except ValueError as e:
        fail(str(e))
    res.raise_if_signalled("fmlab nc train")
    typer.echo(f"trained {res.steps} steps ({count_params(model):,} parameters): loss "
               f"{res.train_loss:.5f}; model in {out / 'model'}")  # fmt: skip


def _load(model: Path):
    from fmlab.neural_computer import load_model

    try:
        return load_model(model)[0]
    except (ValueError, OSError) as e:
        fail(str(e))


@app.command("eval")
def eval_cmd(
    model: Path = typer.Option(..., help="a model directory (<run>/model)"),
    traces: Path = typer.Option(..., help="held-out trace directory"),
    json_out: bool = typer.Option(False, "--json", help="print every metric as JSON"),
) -> None:
    """Evaluate on held-out episodes: OCR char/line accuracy, echo, cursor, probes, PSNR/SSIM,
    closed-loop horizon vs copy-last-frame (terminal); cursor and counter accuracy (GUI)."""
    import torch

    from fmlab.neural_computer import evaluate_gui, evaluate_terminal

    torch.set_num_threads(1)
    m = _load(model)
    kind = "gui" if m.cfg.mouse else "terminal"
    eps = _episodes(traces, kind)
    if eps[0].frames.shape[1:] != (m.cfg.height, m.cfg.width):
        fail(f"{traces}: frames are {eps[0].frames.shape[1:]}, the model takes "
             f"{(m.cfg.height, m.cfg.width)}")  # fmt: skip
    r = evaluate_terminal(m, eps) if kind == "terminal" else evaluate_gui(m, eps)
    if json_out:
        typer.echo(json.dumps(r, indent=2))
        return
    for k, v in r.items():
        if isinstance(v, float):
            typer.echo(f"{k:28s} {v:.4f}")
        elif not isinstance(v, list) or k.startswith("horizon"):
            typer.echo(f"{k:28s} {v}")


@app.command("play")
def play_cmd(
    model: Path = typer.Option(..., help="a model directory (<run>/model)"),
    mode: str = typer.Option("terminal", help="terminal (this terminal) | web (127.0.0.1 page)"),
    fps: float = typer.Option(15.0, help="frames the model generates per second"),
    port: int = typer.Option(8765, help="web mode: port on 127.0.0.1"),
) -> None:
    """Closed loop: the model is the computer. Keys (and, on the web page, clicks) go to the
    model, not to a shell; its frames come back live with the measured frame rate."""
    import torch

    from fmlab.neural_computer.play import play_terminal, serve_web

    torch.set_num_threads(1)
    m = _load(model)
    if mode == "terminal":
        try:
            r = play_terminal(m, fps=fps)
        except OSError as e:
            fail(str(e))
        typer.echo(f"{r['ticks']} frames generated, {r['fps']:.1f} frames/s at the end")
    elif mode == "web":
        try:
            server, rt = serve_web(m, port=port, fps=fps)
        except (ValueError, OSError) as e:
            fail(str(e))
        log(f"serving http://127.0.0.1:{server.server_address[1]}/ (Ctrl-C stops)")
        try:
            server.serve_forever()
        finally:
            rt.stop.set()
            server.server_close()
    else:
        fail(f"--mode {mode!r}: choose terminal or web")


@app.command("bench")
def bench_cmd(
    out: Path = typer.Option(None, help=BENCH_OUT_HELP),
    quick: bool = typer.Option(
        False, help="one seed, tiny models (about a minute; claims nothing)"
    ),
    seeds: int = typer.Option(3, help="training seeds of the test runs (full run)"),
) -> None:
    """Record traces, tune and train every arm x seed, evaluate (see docs/neural_computer.md).
    The full run takes many hours on 2 cores (resumable)."""
    from fmlab.neural_computer.bench import BenchConfig, run

    cfg = BenchConfig.quick_config() if quick else BenchConfig(seeds=tuple(range(seeds)))
    out = bench_out("neural_computer", out, quick)
    recs = run(out, cfg, command="fmlab nc bench" + (" --quick" if quick else ""))
    for r in recs:
        shown = ", ".join(f"{k} {r.metrics[k]['mean']:.3f}" for k in r.headline if k in r.metrics)
        typer.echo(f"{r.claim[:60]}...: {shown}")
    typer.echo(f"wrote {out}/terminal.json and {out}/gui.json")
