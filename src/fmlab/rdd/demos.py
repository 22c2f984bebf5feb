"""Demonstrations from the formats robot data comes in, each checked before RDD sees it.

``load_demos(path)`` reads, by what ``path`` is:
- ``*.npz``: one demo, ``features`` (N x D) or ``frames`` (N x H x W x 3 uint8), optional truth
  ``boundaries`` (K x 2, end exclusive) and ``labels`` (K), optional ``state_features``;
- a video file (``.mp4``, ``.mov``, ...): one demo of frames (``fmlab.core.video``);
- a folder of videos: one demo per video, sorted by name; sub-task annotations from
  ``annotations.json`` in the folder (or ``annotations=``);
- ``*.hdf5`` / ``*.h5`` in robomimic's layout: one demo per ``data/demo_k``, frames from
  ``data/demo_k/obs/<camera>`` (a 2-D obs key gives features instead);
- a local LeRobot dataset directory (v2.x: ``meta/info.json``, ``data/**/episode_*.parquet``,
  ``videos/**/<camera>/episode_*.mp4``): one demo per episode, frames from the camera's video
  (a numeric column such as ``observation.state`` gives features instead).

Annotations JSON (frame indices of the demo as read, end exclusive)::

    {"<demo name>": [[0, 30, "reach"], [30, 52, "grasp"], ...], ...}

with the demo name the video's file stem, the HDF5 group (``demo_0``) or ``episode_000000``;
``{"start": s, "end": e, "label": l}`` objects work too.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

import numpy as np

from fmlab.core.video import VIDEO_SUFFIXES, VideoError, read_frames
from fmlab.rdd.prior import RDDError, RDDWarning

__all__ = ["Demo", "check_truth", "load_demos"]


@dataclass
class Demo:
    """One demonstration: frames or features, with the truth when it is labelled."""

    name: str
    source: str  # what error messages name: the file, or file:group
    frames: np.ndarray | None = None
    features: np.ndarray | None = None
    state_features: np.ndarray | None = None
    boundaries: list[tuple[int, int]] | None = None
    labels: list[str] | None = None

    def __len__(self) -> int:
        return len(self.features if self.features is not None else self.frames)

    @property
    def labelled(self) -> bool:
        return self.boundaries is not None and self.labels is not None


def check_truth(demo: Demo, tile: bool) -> None:
    """A demo's truth: one label per interval, every interval inside the demo, and either tiling
    [0, N) (``tile``: a demo to score against) or at least not overlapping (a prior demo, warns)."""
    if demo.boundaries is None:
        return
    n, b, src = len(demo), demo.boundaries, demo.source
    if demo.labels is not None and len(demo.labels) != len(b):
        raise RDDError(
            f"{src}: {len(b)} boundaries but {len(demo.labels)} labels; give exactly one label "
            "per (start, end) interval"
        )
    for i, (s, e) in enumerate(b):
        if not 0 <= s < e <= n:
            raise RDDError(
                f"{src}: interval {i} ({s}, {e}) is outside the demo's {n} frames or empty; "
                "intervals are [start, end) frame indices with 0 <= start < end <= N"
            )
    order = sorted(b)
    if tile:
        pos = 0
        for s, e in order:
            if s != pos:
                gap = "a gap" if s > pos else "an overlap"
                raise RDDError(
                    f"{src}: the truth must tile [0, {n}): {gap} at frame {min(s, pos)} "
                    f"(an interval starts at {s}, the previous ends at {pos}); fix the "
                    "boundaries, or drop them to segment without metrics"
                )
            pos = e
        if pos != n:
            raise RDDError(
                f"{src}: the truth must tile [0, {n}) but ends at frame {pos}; extend the last "
                "interval to N, or drop the boundaries to segment without metrics"
            )
    else:
        for (s0, e0), (s1, e1) in pairwise(order):
            if s1 < e0:
                warnings.warn(
                    f"{src}: prior intervals ({s0}, {e0}) and ({s1}, {e1}) overlap; each becomes "
                    "its own prior key, which is rarely meant; check the annotations",
                    RDDWarning,
                    stacklevel=2,
                )


def _truth_arrays(d: dict, src: str):
    if "boundaries" not in d:
        if "labels" in d:
            raise RDDError(f"{src}: has 'labels' but no 'boundaries'; add the (K x 2) boundaries")
        return None, None
    b = np.asarray(d["boundaries"])
    if b.ndim != 2 or b.shape[1] != 2 or not np.issubdtype(b.dtype, np.integer):
        raise RDDError(f"{src}: 'boundaries' must be (K x 2) integer frame indices, got {b.shape}")
    labels = [str(x) for x in np.asarray(d["labels"]).ravel()] if "labels" in d else None
    return [(int(s), int(e)) for s, e in b.tolist()], labels


def _npz(path: Path) -> Demo:
    from fmlab.core.io import read_npz

    try:
        d = read_npz(path, "an .npz demo", "write demos with `fmlab rdd make-demos` or np.savez")
    except ValueError as e:  # FileNotFoundError is an OSError, handled by the caller
        raise RDDError(str(e)) from e
    if "features" not in d and "frames" not in d:
        what = "holds no arrays" if not d else f"holds only {sorted(d)}"
        raise RDDError(
            f"{path}: {what}; a demo needs 'features' (N x D) or 'frames' (N x H x W x 3 uint8)"
        )
    b, labels = _truth_arrays(d, str(path))
    return Demo(path.stem, str(path), d.get("frames"), d.get("features"),
                d.get("state_features"), b, labels)  # fmt: skip


def _annotations(path: Path | None) -> dict:
    if path is None:
        return {}
    from fmlab.core.io import read_json

    try:
        raw = read_json(path)
    except (OSError, ValueError) as e:
        raise RDDError(
            f"{e}; annotations are JSON: {{demo name: [[start, end, label], ...]}}"
        ) from e
    if not isinstance(raw, dict):
        raise RDDError(f"{path}: annotations must be a JSON object {{demo name: [...]}}")
    out = {}
    for name, rows in raw.items():
        try:
            iv = [(int(r["start"]), int(r["end"]), str(r["label"])) if isinstance(r, dict)
                  else (int(r[0]), int(r[1]), str(r[2])) for r in rows]  # fmt: skip
        except (KeyError, IndexError, TypeError, ValueError) as e:
            raise RDDError(
                f"{path}: demo {name!r}: each interval is [start, end, label] or "
                f"{{'start', 'end', 'label'}} ({e!r})"
            ) from e
        out[str(name)] = ([(s, e) for s, e, _ in iv], [lab for _, _, lab in iv])
    return out


def _annotate(demos: list[Demo], ann: dict, ann_path: Path | None) -> list[Demo]:
    if ann and not set(ann) & {d.name for d in demos}:
        raise RDDError(
            f"{ann_path}: no annotated demo name matches the demos read ({demos[0].name}, ...); "
            "the keys are video file stems, HDF5 groups (demo_0) or episode_000000"
        )
    for d in demos:
        if d.name in ann:
            d.boundaries, d.labels = ann[d.name]
    return demos


def _video(path: Path, fps: float | None) -> Demo:
    try:
        return Demo(path.stem, str(path), frames=read_frames(path, fps))
    except VideoError as e:
        raise RDDError(str(e)) from e


def _array(x: np.ndarray, src: str, key: str, n: int | None = None) -> dict:
    """frames (N x H x W x 3 uint8) or features (N x D numeric) from a stored array."""
    a = np.asarray(x)
    if a.ndim == 4 and a.shape[-1] == 3:
        return {"frames": a.astype(np.uint8, copy=False)}
    if a.ndim == 2 and np.issubdtype(a.dtype, np.number):
        return {"features": a}
    raise RDDError(
        f"{src}: {key!r} has shape {a.shape}; pick a camera (N x H x W x 3) or a numeric (N x D) "
        "key with --camera"
    )


def _hdf5(path: Path, camera: str | None) -> list[Demo]:
    import h5py

    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise RDDError(f"{path}: not a readable HDF5 file ({e})") from e
    with f:
        if "data" not in f or not any(k.startswith("demo") for k in f["data"]):
            raise RDDError(
                f"{path}: not robomimic's layout (data/demo_k/obs/<camera>); groups: {list(f)}"
            )
        names = sorted((k for k in f["data"] if k.startswith("demo")),
                       key=lambda k: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", k)])  # fmt: skip
        demos = []
        for k in names:
            g, src = f["data"][k], f"{path}:data/{k}"
            obs = g.get("obs")
            if obs is None:
                raise RDDError(f"{src}: has no 'obs' group")
            cams = [c for c in obs if obs[c].ndim == 4 and obs[c].shape[-1] == 3]
            key = camera
            if key is None:
                if len(cams) != 1:
                    raise RDDError(
                        f"{src}: {'no camera' if not cams else 'several cameras'} in obs; pass "
                        f"--camera (one of: {', '.join(sorted(obs))})"
                    )
                key = cams[0]
            if key not in obs:
                raise RDDError(
                    f"{src}: no obs key {key!r}; choose one of: {', '.join(sorted(obs))}"
                )
            demos.append(Demo(k, src, **_array(obs[key][()], src, key)))
    return demos


def _lerobot(root: Path, camera: str | None, fps: float | None) -> list[Demo]:
    import pyarrow.parquet as pq

    from fmlab.core.io import read_json

    info = read_json(root / "meta" / "info.json")
    version = str(info.get("codebase_version", ""))
    if not version.startswith("v2"):
        raise RDDError(
            f"{root}: LeRobot dataset {version or '(no codebase_version)'}; this reader takes the "
            "v2.x layout (one parquet and one mp4 per episode)"
        )
    feats = info.get("features", {})
    videos = [k for k, v in feats.items() if v.get("dtype") == "video"]
    key = camera
    if key is None:
        if len(videos) != 1:
            raise RDDError(
                f"{root}: {'no video key' if not videos else 'several cameras'}; pass --camera "
                f"(one of: {', '.join(sorted(feats))})"
            )
        key = videos[0]
    if key not in feats:
        raise RDDError(f"{root}: no feature {key!r}; choose one of: {', '.join(sorted(feats))}")
    chunk = int(info.get("chunks_size", 1000))
    eps = sorted(int(m.group(1)) for p in (root / "data").rglob("episode_*.parquet")
                 if (m := re.search(r"episode_(\d+)", p.name)))  # fmt: skip
    if not eps:
        raise RDDError(f"{root}: no data/**/episode_*.parquet files")
    demos = []
    for e in eps:
        fmt = {"episode_chunk": e // chunk, "episode_index": e, "video_key": key}
        data = root / info["data_path"].format(**fmt)
        table = pq.read_table(data)
        name, src = f"episode_{e:06d}", str(data)
        if key in videos:
            vid = root / info["video_path"].format(**fmt)
            d = _video(vid, fps or float(info.get("fps") or 0) or None)
            n = table.num_rows
            if len(d.frames) < n:
                raise RDDError(f"{vid}: {len(d.frames)} frames for the {n} rows of {data}")
            demos.append(Demo(name, str(vid), frames=d.frames[:n]))
        else:
            col = np.stack(table.column(key).to_numpy(zero_copy_only=False)).astype(np.float64)
            demos.append(Demo(name, src, **_array(col, src, key)))
    return demos


def load_demos(
    path: str | Path,
    camera: str | None = None,
    annotations: str | Path | None = None,
    fps: float | None = None,
) -> list[Demo]:
    """Every demo at ``path`` (see the module docstring), annotated and checked."""
    path = Path(path)
    if not path.exists():
        raise RDDError(f"{path}: no such demo file or directory")
    ann_path = Path(annotations) if annotations else None
    if path.is_dir():
        if (path / "meta" / "info.json").is_file():
            demos = _lerobot(path, camera, fps)
        else:
            vids = sorted(p for p in path.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES)
            npzs = sorted(path.glob("*.npz"))
            if not vids and not npzs:
                raise RDDError(
                    f"{path}: no videos ({', '.join(VIDEO_SUFFIXES)}), .npz demos or LeRobot "
                    "meta/info.json in this directory"
                )
            demos = [_video(p, fps) for p in vids] + [_npz(p) for p in npzs]
            if ann_path is None and (path / "annotations.json").is_file():
                ann_path = path / "annotations.json"
    elif path.suffix.lower() == ".npz":
        demos = [_npz(path)]
    elif path.suffix.lower() in VIDEO_SUFFIXES:
        demos = [_video(path, fps)]
    elif path.suffix.lower() in (".hdf5", ".h5"):
        demos = _hdf5(path, camera)
    else:
        raise RDDError(
            f"{path}: unknown demo format {path.suffix!r}; give an .npz, a video, an .hdf5, a "
            "folder of videos or a LeRobot dataset directory"
        )
    return _annotate(demos, _annotations(ann_path), ann_path)
