"""`fmlab rdd`: build a prior, segment a demo, make arena demos, run the bench.

Demos: ``.npz`` (``features`` N x D or ``frames`` N x H x W x 3 uint8, optional truth
``boundaries`` K x 2 end exclusive and ``labels``), videos or folders of videos with an
annotations JSON, robomimic ``.hdf5``, LeRobot dataset directories: see :mod:`fmlab.rdd.demos`.
Prior (``.npz``, read with ``allow_pickle=False``): what ``Prior.save`` writes (keys, durations,
labels, mode, metric, encoder and a fitted encoder's arrays).
"""

from __future__ import annotations

import contextlib
import json
import warnings
from pathlib import Path

import numpy as np
import typer

from fmlab.core.cliutil import BENCH_OUT_HELP, bench_out, fail

app = typer.Typer(
    help="RDD: cut demonstrations into sub-tasks that match the policy's training data.",
    no_args_is_help=True,
    add_completion=False,
)


_CAMERA_HELP = "HDF5 obs key or LeRobot feature to read (a camera; a 2-D key gives features)"
_ANN_HELP = "sub-task annotations JSON {demo name: [[start, end, label], ...]}"


@contextlib.contextmanager
def _warnings_on_stderr():
    """RDD's warnings as plain ``warning: ...`` lines on stderr, not Python's file:line form."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            yield
        finally:
            for w in caught:
                typer.secho(f"warning: {w.message}", fg=typer.colors.YELLOW, err=True)


def _read(paths, camera, annotations, fps) -> list:
    from fmlab.rdd.demos import load_demos

    return [d for p in paths for d in load_demos(p, camera, annotations, fps)]


def _features(d, enc, what: str) -> np.ndarray:
    """A demo's features: its own, or its frames through the encoder (errors name the demo)."""
    from fmlab.rdd.prior import RDDError

    if d.features is not None:
        return d.features
    if enc is None:
        raise RDDError(
            f"{d.source}: has frames but no features, and {what} was built from features; "
            "build the prior from frame demos (it then carries its encoder), or pass features"
        )
    try:
        return enc.encode(d.frames)
    except RDDError as e:
        raise RDDError(f"{d.source}: {e}") from e


def _fit_encoder(name: str, demos: list):
    """The encoder ``name`` fitted on the frame demos (state-cnn on their state_features)."""
    from fmlab.core.cliutil import log
    from fmlab.rdd.encoders import get_encoder
    from fmlab.rdd.prior import RDDError

    framed = [d for d in demos if d.frames is not None]
    enc = get_encoder(name)
    if hasattr(enc, "log"):
        enc.log = log
    if name == "state-cnn":
        if missing := [d.source for d in framed if d.state_features is None]:
            raise RDDError(
                f"{missing[0]}: --encoder state-cnn learns to read the state from pixels and "
                "needs each demo's 'state_features' (N x T); use another encoder for demos "
                "without them"
            )
        log(f"fitting state-cnn on {sum(map(len, framed))} frames ({enc.steps} steps)")
        enc.fit([d.frames for d in framed], targets=[d.state_features for d in framed], log=log)
    elif name in ("pixels-pca", "tcn"):
        log(f"fitting {name} on {sum(map(len, framed))} frames")
        kw = {"log": log} if name == "tcn" else {}
        enc.fit([d.frames for d in framed], **kw)
    return enc


@app.command("build-prior")
def build_prior(
    demos: list[Path] = typer.Argument(
        ...,
        help="labelled demos: .npz files, videos or a folder of them (with annotations), "
        "robomimic .hdf5, a LeRobot dataset directory",
    ),
    out: Path = typer.Option(..., help="prior .npz to write"),
    mode: str = typer.Option("default", help="default: key = f(start)+f(end); ood: key = f(end)"),
    metric: str = typer.Option("angular", help="angular | l2"),
    encoder: str = typer.Option(
        None,
        help="for frame demos: efficientnet-lite0 (default, ImageNet-pretrained) | pixels-pca "
        "| tcn | state-cnn | hf:DIR (fitted on these demos)",
    ),
    motion: float = typer.Option(
        0.0, help="weight of the endpoints' velocities in the keys (0: off, as in the paper)"
    ),
    camera: str = typer.Option(None, help=_CAMERA_HELP),
    annotations: Path = typer.Option(None, help=_ANN_HELP),
    fps: float = typer.Option(None, help="resample videos to this frame rate (default: native)"),
) -> None:
    """One prior key per labelled interval of the given demos."""
    from fmlab.rdd.demos import check_truth
    from fmlab.rdd.encoders import DEFAULT_ENCODER
    from fmlab.rdd.prior import Prior, RDDError

    try:
        with _warnings_on_stderr():
            loaded = _read(demos, camera, annotations, fps)
            for d in loaded:
                if not d.labelled:
                    raise RDDError(
                        f"{d.source}: a prior demo needs its sub-tasks: 'boundaries' and "
                        "'labels' in an .npz, or an annotations JSON (--annotations)"
                    )
                check_truth(d, tile=False)
            framed = any(d.frames is not None for d in loaded)
            if encoder is None and framed:
                encoder = DEFAULT_ENCODER
            enc = _fit_encoder(encoder, loaded) if encoder is not None else None
            clips, labels = [], []
            for d in loaded:
                f = _features(d, enc, "the prior")
                for (s, e), lab in zip(d.boundaries, d.labels, strict=True):
                    clips.append(f[s:e])
                    labels.append(str(lab))
            prior = Prior.from_clips(
                clips, labels, mode=mode, metric=metric, encoder=encoder or "", motion=motion
            )
            if enc is not None:
                prior.encoder_state = {k: v for k, v in enc.state().items() if v is not None}
            prior.save(out)
    except (RDDError, OSError) as e:
        fail(str(e))
    typer.echo(f"wrote {out}: {len(prior)} intervals, {len(set(labels))} labels, dim {prior.dim}")


@app.command("segment")
def segment_cmd(
    demo: Path = typer.Argument(
        ...,
        help="demo(s): .npz (features, or frames), a video or a folder of videos, robomimic "
        ".hdf5, a LeRobot dataset directory; frames go through the prior's encoder",
    ),
    prior_path: Path = typer.Option(..., "--prior", help="prior .npz"),
    out: Path = typer.Option(
        ..., help="segmentation .json to write (one demo: the segmentation; several: a list)"
    ),
    alpha: float = typer.Option(None, help="duration weight (default 1, or 0 in ood mode)"),
    beta: float = typer.Option(0.0, help="weight of the UVD-start term"),
    min_len: int = typer.Option(2, help="shortest segment (frames)"),
    max_len: int = typer.Option(
        None, help="longest segment (frames; default twice the prior's longest interval)"
    ),
    index: str = typer.Option("exact", help="exact | faiss-flat | faiss-hnsw"),
    plot: Path = typer.Option(None, help="timeline PNG of the first demo (with its truth)"),
    camera: str = typer.Option(None, help=_CAMERA_HELP),
    annotations: Path = typer.Option(None, help=_ANN_HELP + " (the truth, for metrics)"),
    fps: float = typer.Option(None, help="resample videos to this frame rate (default: native)"),
) -> None:
    """Optimal segmentation of demos against a prior (JSON; metrics where a demo is labelled)."""
    from fmlab.core.io import atomic_write_text
    from fmlab.rdd.demos import check_truth
    from fmlab.rdd.encoders import get_encoder
    from fmlab.rdd.metrics import evaluate
    from fmlab.rdd.prior import Prior, RDDError
    from fmlab.rdd.segment import segment
    from fmlab.rdd.segmentation import Segmentation

    results, rows = [], []
    try:
        with _warnings_on_stderr():
            prior = Prior.load(prior_path, index=index)
            loaded = _read([demo], camera, annotations, fps)
            for d in loaded:
                check_truth(d, tile=True)
            enc = None
            if any(d.features is None for d in loaded) and prior.encoder:
                enc = get_encoder(prior.encoder, prior.encoder_state or None)
                if hasattr(enc, "log"):
                    from fmlab.core.cliutil import log

                    enc.log = log
            for d in loaded:
                f = _features(d, enc, str(prior_path))
                try:
                    seg = segment(f, prior, alpha, beta, min_len, max_len)
                except RDDError as e:
                    raise RDDError(f"{d.source}: {e}") from e
                r = {"demo": d.name, "source": d.source, **json.loads(seg.to_json())}
                truth = None
                if d.boundaries is not None:
                    truth = Segmentation(d.boundaries, d.labels or [], method="true")
                    r["metrics"] = evaluate(seg.boundaries, truth.boundaries)
                results.append(r)
                rows.append((d, seg, truth))
    except (RDDError, OSError) as e:
        fail(str(e))
    atomic_write_text(out, json.dumps(results[0] if len(results) == 1 else results, indent=2))
    for (d, seg, truth), r in zip(rows, results, strict=True):
        if len(rows) > 1:
            typer.echo(f"{d.name}:")
        for (s, e), lab in zip(seg.boundaries, seg.labels, strict=True):
            typer.echo(f"{s:6d} {e:6d}  {lab}")
        if truth is not None:
            typer.echo("vs truth: " + ", ".join(f"{k} {v:.3f}" for k, v in r["metrics"].items()))
    if plot is not None:
        from fmlab.rdd.plots import plot_timeline

        d, seg, truth = rows[0]
        plot_timeline(plot, {"true": truth, "RDD": seg} if truth else {"RDD": seg}, d.name)
    typer.echo(f"wrote {out}: {len(results)} demo(s), {sum(len(s) for _, s, _ in rows)} segments")


@app.command("make-demos")
def make_demos(
    out: Path = typer.Option(..., help="directory for the demo .npz files"),
    split: str = typer.Option(
        "train", help="train | standard | adversarial | ood | not-at-rest | pretrain"
    ),
    per_task: int = typer.Option(1, help="demos per task"),
    seed: int = typer.Option(0),
) -> None:
    """Write seeded arena demos (frames, state features, boundaries, labels) as .npz."""
    from fmlab.core.io import atomic_path
    from fmlab.rdd import arena

    if split not in arena.SPLIT_IDS:
        fail(f"unknown split {split!r}; choose one of: {', '.join(arena.SPLIT_IDS)}")
    out.mkdir(parents=True, exist_ok=True)
    eps = arena.make_split(seed, split, per_task)
    for i, ep in enumerate(eps):
        path = out / f"{split}_{i:03d}_{ep.tags[0]}.npz"
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez_compressed(
                f,
                frames=ep.frames,
                state_features=arena.state_features(ep.states),
                boundaries=np.array(ep.boundaries),
                labels=np.array(ep.labels),
            )
    typer.echo(f"wrote {len(eps)} demos to {out}")


@app.command("bench")
def bench(
    out: Path = typer.Option(None, help=BENCH_OUT_HELP),
    quick: bool = typer.Option(
        False, help="one seed, small sets (about 20-40 s): runs, claims nothing"
    ),
    seeds: int = typer.Option(None, help="number of test seeds (default 5)"),
    first_seed: int = typer.Option(
        None,
        help="test seeds run from here (default 105; --quick: 90, apart from the full runs' "
        "test seeds); they must not meet the dev seeds or the seeds seen while designing "
        "(0-9, 100-104; 105-109 for --quick)",
    ),
    scaling: bool = typer.Option(True, help="also time segmentation for N = 100 .. 10,000"),
) -> None:
    """The arena reproduction (RDD vs UVD vs uniform vs random) and the scaling record."""
    from fmlab.core.experiment import with_overrides
    from fmlab.rdd.bench import ArenaConfig, run_arena, run_scaling

    cfg = ArenaConfig.quick() if quick else ArenaConfig()
    out = bench_out("rdd", out, quick)
    if (seeds is not None and seeds < 1) or (first_seed is not None and first_seed < 0):
        fail("--seeds must be >= 1 and --first-seed >= 0")
    n = seeds or len(cfg.seeds)
    first = cfg.seeds[0] if first_seed is None else first_seed
    cfg = with_overrides(cfg, seeds=tuple(range(first, first + n)))
    full_test = set(range(105, 110)) if quick else set()  # a smoke run never sees them
    if seen := sorted(set(cfg.seeds) & {*cfg.dev_seeds, *cfg.seen_in_design, *full_test}):
        fail(
            f"test seeds {seen} were looked at while designing (or are the full run's); "
            f"choose seeds outside {sorted({*cfg.dev_seeds, *cfg.seen_in_design, *full_test})}"
        )
    rec = run_arena(out, cfg)
    m, b = rec.metrics, rec.baselines
    typer.echo(
        f"standard split, {cfg.headline_encoder}: mIoU RDD {m['miou']['mean']:.3f} vs UVD "
        f"{b['uvd']['miou']['mean']:.3f} vs uniform {b['uniform']['miou']['mean']:.3f}; boundary F1 "
        f"{m['boundary_f1']['mean']:.3f} vs {b['uvd']['boundary_f1']['mean']:.3f} vs "
        f"{b['uniform']['boundary_f1']['mean']:.3f}"
    )
    if scaling and not quick:
        s = run_scaling(out)
        typer.echo(f"10,000 frames: {s.metrics['seconds_10k']:.2f} s")
