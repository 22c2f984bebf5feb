"""`fmlab rdd`: build a prior, segment a demo, make arena demos, run the bench.

File formats (``.npz``, read with ``allow_pickle=False``):
- demo: ``features`` (N x D float) or ``frames`` (N x H x W x 3 uint8); optionally the truth,
  ``boundaries`` (K x 2 int, end exclusive) and ``labels`` (K str);
- prior: what ``Prior.save`` writes (keys, durations, labels, mode, metric, encoder and a
  fitted encoder's arrays).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import typer

from fmlab.core.cliutil import BENCH_OUT_HELP, bench_out, fail
from fmlab.core.io import read_npz

app = typer.Typer(
    help="RDD: cut demonstrations into sub-tasks that match the policy's training data.",
    no_args_is_help=True,
    add_completion=False,
)


def _load_demo(path: Path) -> dict:
    from fmlab.rdd.prior import RDDError

    if not path.is_file():
        raise RDDError(f"{path}: no such demo file")
    try:
        d = read_npz(path, "an .npz demo", "write demos with `fmlab rdd make-demos` or np.savez")
    except ValueError as e:
        raise RDDError(str(e)) from e
    if "features" not in d and "frames" not in d:
        raise RDDError(f"{path}: a demo needs 'features' (N x D) or 'frames' (N x H x W x 3)")
    return d


def _features(d: dict, path: Path, encoder) -> np.ndarray:
    from fmlab.rdd.prior import RDDError

    if "features" in d:
        return d["features"]
    if encoder is None:
        raise RDDError(
            f"{path}: has frames but no features; pass --encoder (pixels-pca, tcn, hf:DIR)"
        )
    return encoder.encode(d["frames"])


def _truth(d: dict):
    from fmlab.rdd.segment import Segmentation

    if "boundaries" not in d:
        return None
    labels = [str(x) for x in d["labels"]] if "labels" in d else []
    return Segmentation([tuple(b) for b in d["boundaries"].tolist()], labels, method="true")


@app.command("build-prior")
def build_prior(
    demos: list[Path] = typer.Argument(
        ..., help="labelled demo .npz files (with boundaries, labels)"
    ),
    out: Path = typer.Option(..., help="prior .npz to write"),
    mode: str = typer.Option("default", help="default: key = f(start)+f(end); ood: key = f(end)"),
    metric: str = typer.Option("angular", help="angular | l2"),
    encoder: str = typer.Option(
        None, help="for frame demos: pixels-pca | tcn | state-cnn | hf:DIR (fitted on these demos)"
    ),
    motion: float = typer.Option(
        0.0, help="weight of the endpoints' velocities in the keys (0: off, as in the paper)"
    ),
) -> None:
    """One prior key per labelled interval of the given demos."""
    from fmlab.rdd.encoders import get_encoder
    from fmlab.rdd.prior import Prior, RDDError

    try:
        loaded = [(p, _load_demo(p)) for p in demos]
        for p, d in loaded:
            if "boundaries" not in d or "labels" not in d:
                raise RDDError(f"{p}: a prior demo needs 'boundaries' and 'labels'")
        enc = None
        if encoder is not None:
            with_frames = [d for _, d in loaded if "frames" in d]
            enc = get_encoder(encoder)
            if encoder == "state-cnn":
                if any("state_features" not in d for d in with_frames):
                    raise RDDError("--encoder state-cnn learns from the demos' 'state_features'")
                enc.fit([d["frames"] for d in with_frames],
                        targets=[d["state_features"] for d in with_frames])  # fmt: skip
            else:
                enc.fit([d["frames"] for d in with_frames])
        clips, labels = [], []
        for p, d in loaded:
            f = _features(d, p, enc)
            for (s, e), lab in zip(d["boundaries"].tolist(), d["labels"].tolist(), strict=True):
                if not 0 <= s < e <= len(f):
                    raise RDDError(
                        f"{p}: interval ({s}, {e}) is outside the demo's {len(f)} frames"
                    )
                clips.append(f[s:e])
                labels.append(str(lab))
        prior = Prior.from_clips(
            clips, labels, mode=mode, metric=metric, encoder=encoder or "", motion=motion
        )
        if enc is not None:
            prior.encoder_state = {k: v for k, v in enc.state().items() if v is not None}
        prior.save(out)
    except RDDError as e:
        fail(str(e))
    typer.echo(f"wrote {out}: {len(prior)} intervals, {len(set(labels))} labels, dim {prior.dim}")


@app.command("segment")
def segment_cmd(
    demo: Path = typer.Argument(
        ..., help="demo .npz (features, or frames with the prior's encoder)"
    ),
    prior_path: Path = typer.Option(..., "--prior", help="prior .npz"),
    out: Path = typer.Option(..., help="segmentation .json to write"),
    alpha: float = typer.Option(None, help="duration weight (default 1, or 0 in ood mode)"),
    beta: float = typer.Option(0.0, help="weight of the UVD-start term"),
    min_len: int = typer.Option(2, help="shortest segment (frames)"),
    max_len: int = typer.Option(100, help="longest segment (frames)"),
    index: str = typer.Option("exact", help="exact | faiss-flat | faiss-hnsw"),
    plot: Path = typer.Option(None, help="timeline PNG (with the truth when the demo has it)"),
) -> None:
    """Optimal segmentation of one demo against a prior (JSON; metrics if the demo is labelled)."""
    from fmlab.core.io import atomic_write_text
    from fmlab.rdd.encoders import get_encoder
    from fmlab.rdd.metrics import evaluate
    from fmlab.rdd.prior import Prior, RDDError
    from fmlab.rdd.segment import segment

    try:
        prior = Prior.load(prior_path, index=index)
        d = _load_demo(demo)
        enc = None
        if "features" not in d:
            if not prior.encoder:
                raise RDDError(f"{demo}: has only frames, and {prior_path} was built from features")
            enc = get_encoder(prior.encoder, prior.encoder_state or None)
        seg = segment(_features(d, demo, enc), prior, alpha, beta, min_len, max_len)
    except RDDError as e:
        fail(str(e))
    result = json.loads(seg.to_json())
    truth = _truth(d)
    if truth is not None:
        result["metrics"] = evaluate(seg.boundaries, truth.boundaries)
    atomic_write_text(out, json.dumps(result, indent=2))
    for (s, e), lab in zip(seg.boundaries, seg.labels, strict=True):
        typer.echo(f"{s:6d} {e:6d}  {lab}")
    if truth is not None:
        typer.echo("vs truth: " + ", ".join(f"{k} {v:.3f}" for k, v in result["metrics"].items()))
    if plot is not None:
        from fmlab.rdd.plots import plot_timeline

        rows = {"true": truth, "RDD": seg} if truth is not None else {"RDD": seg}
        plot_timeline(plot, rows, demo.name)
    typer.echo(f"wrote {out}: {len(seg)} segments")


@app.command("make-demos")
def make_demos(
    out: Path = typer.Option(..., help="directory for the demo .npz files"),
    split: str = typer.Option("train", help="train | standard | adversarial | ood"),
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
        False, help="one seed, small sets (about 20 s): runs, claims nothing"
    ),
    seeds: int = typer.Option(None, help="number of seeds (default 5)"),
    first_seed: int = typer.Option(0, help="seeds run from here (a replication on fresh seeds)"),
    scaling: bool = typer.Option(True, help="also time segmentation for N = 100 .. 10,000"),
) -> None:
    """The arena reproduction (RDD vs UVD vs uniform vs random) and the scaling record."""
    from fmlab.rdd.bench import ArenaConfig, run_arena, run_scaling, with_overrides

    cfg = ArenaConfig.quick() if quick else ArenaConfig()
    out = bench_out("rdd", out, quick)
    if (seeds is not None and seeds < 1) or first_seed < 0:
        fail("--seeds must be >= 1 and --first-seed >= 0")
    n = seeds or len(cfg.seeds)
    cfg = with_overrides(cfg, seeds=tuple(range(first_seed, first_seed + n)))
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
