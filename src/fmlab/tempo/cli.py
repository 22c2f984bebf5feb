"""`fmlab tempo make-video|compress|answer|train|bench|dense-bench`."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from fmlab.core.cliutil import BENCH_OUT_HELP, bench_out, fail
from fmlab.core.cliutil import log as _log

app = typer.Typer(
    help="Tempo: query-aware long-video compression with Adaptive Token Allocation.",
    no_args_is_help=True,
    add_completion=False,
)


def _default_model() -> Path:
    from fmlab.core.io import cache_dir

    return cache_dir() / "tempo" / "tempo"


def _load(model: Path | None, zero_shot: bool = False):
    """A trained Tempo stack; with ``zero_shot``, also a bare Hugging Face vision-language
    checkpoint, used as the compressor (relevance and allocation need no training)."""
    from fmlab.core.io import CheckpointError
    from fmlab.tempo.pipeline import Stack

    path = model or _default_model()
    if not path.exists():
        fail(f"{path}: no trained Tempo model; run `fmlab tempo train --out {path}` first")
    try:
        if zero_shot and not (path / "tempo.json").is_file() and (path / "config.json").is_file():
            from fmlab.tempo.hf import HFCompressor

            return Stack("tempo", compressor=HFCompressor.from_pretrained(path)).eval()
        stack = Stack.load(path)
    except CheckpointError as e:
        hint = (
            ""
            if zero_shot or not (path / "config.json").is_file()
            else (
                "; a Hugging Face vision-language checkpoint needs a trained global model first: "
                f"`fmlab tempo train --compressor {path} --out DIR`"
            )
        )
        fail(f"{e}{hint}")
    if stack.kind != "tempo":
        fail(f"{path} is a '{stack.kind}' baseline, not a Tempo model")
    return stack


def _stream(video: Path, fps: float, max_frames: int, size: int):
    """The video opened for streaming, its samples planned from the metadata."""
    from fmlab.core.video import VideoError, open_video

    if max_frames < 1:
        fail(f"--max-frames must be >= 1, got {max_frames}")
    try:
        return open_video(video, fps=fps, max_frames=max_frames, size=(size, size))
    except VideoError as e:
        fail(str(e))


def _chunks(stream, seg_len: int, batch_segments: int, thumbs: list | None = None):
    """Chunks of ``batch_segments`` segments; the middle frame of each segment into ``thumbs``."""
    for frames, _ in stream.chunks(batch_segments * seg_len):
        if thumbs is not None:
            mids = range(seg_len // 2, len(frames) + seg_len // 2, seg_len)
            thumbs.extend(frames[min(i, len(frames) - 1)] for i in mids)
        yield frames


def _run(fn):
    """``fn()``, with a video or model error turned into a clear exit and warnings (budget,
    unknown question words) printed as one line each on stderr."""
    import warnings

    from fmlab.core.video import VideoError

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            out = fn()
        except (VideoError, ValueError) as e:
            fail(str(e))
    for w in caught:
        _log(f"warning: {w.message}")
    return out


OVER_HELP = (
    "with more segments than budget tokens, give every segment one token anyway (the paper's "
    "rule; exceeds the budget) instead of dropping the least relevant segments to none"
)


BATCH_HELP = "segments compressed per forward (memory grows with it, not with the video)"


@app.command("make-video")
def make_video_cmd(
    out: Path = typer.Argument(..., help="mp4 to write"),
    seed: int = typer.Option(0),
    frames: int = typer.Option(128, help="frames at 2 fps"),
) -> None:
    """Write a seeded synthetic needle video to a real mp4 and print its questions."""
    from fmlab.core.data.videos import make_video

    if out.exists():
        fail(f"{out} already exists; choose another path")
    try:
        v = make_video(seed, frames)
    except ValueError as e:
        fail(str(e))
    v.write(out)
    typer.echo(json.dumps({"video": str(out), "frames": frames, "questions": [
        {"family": q.family, "question": q.text, "answer": q.answer} for q in v.questions
    ]}, indent=1))  # fmt: skip


@app.command()
def compress(
    video: Path = typer.Argument(..., help="a video file (mp4, mkv, webm, ...)"),
    query: str = typer.Option(..., help="the question the compression is for"),
    budget: int = typer.Option(64, help="visual tokens for the whole video"),
    model: Path = typer.Option(
        None,
        help="a trained Tempo model (default: the cache), or a local Hugging Face "
        "vision-language checkpoint used zero-shot as the compressor",
    ),
    fps: float = typer.Option(2.0),
    max_frames: int = typer.Option(1024),
    batch_segments: int = typer.Option(16, help=BATCH_HELP),
    allow_over_budget: bool = typer.Option(False, help=OVER_HELP),
    plot: Path = typer.Option(None, help="write the allocation heat-map here (PNG)"),
    json_out: Path = typer.Option(None, "--json", help="also write the result here (JSON)"),
) -> None:
    """Per-segment relevance, allocation and tokens/frame under a budget (streamed: memory does
    not grow with the video's length)."""
    import time

    import numpy as np
    import torch

    if budget < 1 or batch_segments < 1:
        fail(f"--budget and --batch-segments must be >= 1, got {budget}, {batch_segments}")
    stack = _load(model, zero_shot=True)
    if not stack.hf:  # a Hugging Face compressor reads any words
        unknown = _run(lambda: stack.vocab.check(query, "query"))
        if unknown:
            _log(f"warning: the query words {unknown} are not in the tiny model's vocabulary; "
                 "they are read as unknown (see `fmlab tempo make-video` for its questions)")  # fmt: skip
    stream = _stream(video, fps, max_frames, stack.cfg.frame_size)
    thumbs: list = []
    t0 = time.perf_counter()
    with torch.no_grad():
        _, info = _run(lambda: stack.blocks(
            _chunks(stream, stack.cfg.seg_len, batch_segments, thumbs), query, budget, "tempo",
            allow_over_budget=allow_over_budget,
        ))  # fmt: skip
    wall = time.perf_counter() - t0
    alloc, scores, t = info["alloc"], info["scores"], info["frames"]
    out = {
        "video": str(video),
        "duration_s": round(stream.info.duration, 3),
        "frames": t,
        "decoded_frames": stream.decoded,
        "segments": len(alloc),
        "budget": budget,
        "tokens_used": int(sum(alloc)),
        "tokens_per_frame": sum(alloc) / t,
        "seconds": round(wall, 3),
        "decoded_frames_per_s": round(stream.decoded / wall, 1),
        "relevance": [round(float(s), 4) for s in scores],
        "allocation": alloc,
    }
    typer.echo(json.dumps(out, indent=1))
    if json_out is not None:
        from fmlab.core.io import atomic_write_json

        atomic_write_json(json_out, out)
    if plot is not None:
        from fmlab.tempo.plots import plot_allocation

        plot_allocation(plot, np.stack(thumbs), scores, alloc, 1, query)
        _log(f"wrote {plot}")


@app.command()
def answer(
    video: Path = typer.Argument(...),
    question: str = typer.Option(...),
    budget: int = typer.Option(64),
    model: Path = typer.Option(None),
    fps: float = typer.Option(2.0),
    max_frames: int = typer.Option(1024),
    batch_segments: int = typer.Option(16, help=BATCH_HELP),
    allow_over_budget: bool = typer.Option(False, help=OVER_HELP),
    options: str = typer.Option(
        None, help="multiple choice: comma-separated options (default: short answer)"
    ),
) -> None:
    """Answer a question about a video: a short answer, or one of --options."""
    if budget < 1 or batch_segments < 1:
        fail(f"--budget and --batch-segments must be >= 1, got {budget}, {batch_segments}")
    stack = _load(model)
    stream = _stream(video, fps, max_frames, stack.cfg.frame_size)
    opts = [o.strip() for o in options.split(",") if o.strip()] if options is not None else None
    chunks = _chunks(stream, stack.cfg.seg_len, batch_segments)
    out = _run(
        lambda: stack.answer(chunks, question, budget, opts, batch_segments, allow_over_budget)
    )
    out["p"] = round(out["p"], 4)
    out["probabilities"] = {k: round(q, 4) for k, q in out["probabilities"].items()}
    typer.echo(json.dumps(out))


@app.command()
def train(
    out: Path = typer.Option(None, help="model directory (default: the cache)"),
    kind: str = typer.Option("tempo", help="tempo | agnostic | frames | pool"),
    seed: int = typer.Option(0),
    quick: bool = typer.Option(False, help="a short schedule (for trying things)"),
    no_random_prefix: bool = typer.Option(False, help="train without random prefix truncation"),
    compressor: Path = typer.Option(
        None, help="a local Hugging Face vision-language checkpoint as the compressor"
    ),
    freeze_backbone: bool = typer.Option(
        False, help="with --compressor: train only its memory tokens and the global model"
    ),
    videos: str = typer.Option(
        "needle", help="training videos: needle (the first benchmark's) | dense (issue 16's)"
    ),
    frame_features: str = typer.Option(
        "pixels",
        help="what the frame encoder reads: pixels (learned from scratch) | efficientnet "
        "(frozen EfficientNet-Lite0 feature maps, cached per frame)",
    ),
) -> None:
    """Train a stack through the stages (align, qa-pretrain, long-sft); resumable."""
    from fmlab.core.io import CheckpointError
    from fmlab.tempo.pipeline import KINDS, TrainConfig, train_stack

    if kind not in KINDS:
        fail(f"--kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if compressor is not None and kind not in ("tempo", "agnostic"):
        fail(f"--compressor needs --kind tempo or agnostic, got {kind!r}")
    from fmlab.tempo.model import FRAME_FEATURES, TempoConfig
    from fmlab.tempo.pipeline import VIDEO_SOURCES

    if videos not in VIDEO_SOURCES:
        fail(f"--videos must be one of {', '.join(VIDEO_SOURCES)}, got {videos!r}")
    if frame_features not in FRAME_FEATURES:
        fail(f"--frame-features must be one of {', '.join(FRAME_FEATURES)}, got {frame_features!r}")
    if frame_features != "pixels" and compressor is not None:
        fail("--frame-features applies to the tiny compressor, not to a --compressor checkpoint")
    out = out or _default_model()
    cfg = TrainConfig(seed=seed, random_prefix=not no_random_prefix, videos=videos)
    if videos == "dense":  # dense videos come in whole quarters of segments: >= 64 frames
        cfg = TrainConfig(
            stages=(("align", 300, 64), ("qa-pretrain", 300, 128), ("long-sft", 400, 256)),
            seed=seed, random_prefix=not no_random_prefix, videos=videos, video_pool=256,
        )  # fmt: skip
    if quick:
        first = 64 if videos == "dense" else 32
        cfg = TrainConfig(
            stages=(("align", 40, first), ("qa-pretrain", 40, 64), ("long-sft", 40, 128)),
            seed=seed,
            random_prefix=not no_random_prefix,
            checkpoint_every=40,
            videos=videos,
        )
    model_cfg = TempoConfig(frame_features=frame_features) if compressor is None else None
    try:
        stack = train_stack(
            kind, out, cfg, model_cfg, log=_log, compressor=compressor,
            freeze_backbone=freeze_backbone,
        )  # fmt: skip
    except CheckpointError as e:
        fail(str(e))
    stack.save(out, {"train": cfg.__dict__ | {"stages": [list(s) for s in cfg.stages]}})
    typer.echo(f"saved {kind} model to {out}")


@app.command()
def bench(
    out: Path = typer.Option(None, help=BENCH_OUT_HELP),
    quick: bool = typer.Option(False, help="a ~10-second run that claims nothing"),
    seeds: int = typer.Option(3, help="seeds (each trains its own stacks)"),
    arms: str = typer.Option("", help="comma-separated arms (default: all)"),
    long_video: bool = typer.Option(
        False, help="instead: peak RSS of compress on a 60-minute vs a 1-minute video"
    ),
) -> None:
    """Budget sweep of every arm on the synthetic needle videos (resumable)."""
    from dataclasses import replace

    if long_video:
        from fmlab.tempo.longvideo import run_long_video

        out = bench_out("tempo", out, quick)
        minutes = (0.25, 1.0) if quick else (1.0, 60.0)
        m = run_long_video(out, minutes=minutes, log=_log).metrics
        typer.echo(f"peak RSS ratio {m['peak_rss_ratio_long_over_short']:.3f}, "
                   f"{m['decoded_frames_per_s_long']:.0f} frames/s")  # fmt: skip
        return

    from fmlab.tempo.bench import BenchConfig, run
    from fmlab.tempo.pipeline import ARMS

    cfg = BenchConfig.quick() if quick else BenchConfig(seeds=tuple(range(seeds)))
    out = bench_out("tempo", out, quick)
    if arms:
        chosen = tuple(a.strip() for a in arms.split(","))
        bad = [a for a in chosen if a not in ARMS]
        if bad or "tempo" not in chosen:
            fail(f"--arms must include tempo and come from {', '.join(ARMS)}; got {arms!r}")
        cfg = replace(cfg, arms=chosen)
    rec = run(out, cfg, log=_log)
    b = cfg.budgets[1] if len(cfg.budgets) > 1 else cfg.budgets[0]
    typer.echo(f"tempo needle accuracy at B={b}: {rec.metrics[f'needle_acc@{b}']['mean']:.3f}")


@app.command("dense-bench")
def dense_bench(
    out: Path = typer.Option(None, help=BENCH_OUT_HELP),
    quick: bool = typer.Option(
        False, help="a ~1-minute run on 64-frame videos that claims nothing"
    ),
    seeds: int = typer.Option(3, help="test seeds (each trains its own stacks)"),
    design_only: bool = typer.Option(
        False, help="stop after the dev steps (preconditions, encoder choice): a design probe"
    ),
    threads: int = typer.Option(1, help="torch threads"),
) -> None:
    """Issue 16's dense benchmark: preconditions on dev first (stops if one fails), then every
    arm at 0.25-4 tokens/frame on the sealed test split (resumable)."""
    from dataclasses import replace

    from fmlab.tempo.dense_bench import DenseBenchConfig, run

    if seeds < 2 or threads < 1:
        fail(f"--seeds must be >= 2 (paired intervals) and --threads >= 1; got {seeds}, {threads}")
    cfg = (
        DenseBenchConfig.quick()
        if quick
        else DenseBenchConfig(test_seeds=tuple(range(1, seeds + 1)))
    )
    cfg = replace(cfg, threads=threads)
    out = bench_out("tempo", out, quick)
    command = (
        "fmlab tempo dense-bench"
        + (" --quick" if quick else "")
        + (" --design-only" if design_only else "")
    )
    rec = run(out, cfg, log=_log, design_only=design_only, command=command)
    typer.echo(rec.metrics["status"])
    pre = rec.metrics["preconditions"]
    typer.echo(f"preconditions on dev: (a) {pre['a_holds']}, (b) {pre['b_holds']}")
