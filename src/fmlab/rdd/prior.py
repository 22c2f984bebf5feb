"""The prior: one key per labelled sub-task interval of the policy's training data.

An interval [s, e) of per-frame features f is keyed by concat(f[s], f[e-1]) ("default" mode) or
f[e-1] alone ("ood" mode). With ``motion = w > 0`` each endpoint also carries its velocity inside
the interval: the start part is [f[s], w (f[s+1] - f[s])] and the end part
[f[e-1], w (f[e-1] - f[e-2])], so a cut in the middle of a movement no longer looks like a
finished sub-task (intervals then need at least 2 frames). Retrieval is k = 1 nearest neighbour under the angular distance
sqrt(2 - 2 cos) (what Annoy's "angular" metric, used by the official code, returns) or L2.

Exact search never materialises the interval keys: with concatenated keys both the dot product
and the squared norms split into a start part and an end part, so the distance of every
candidate interval to every prior key is a sum of two entries of (N x P) matrices computed once
per demo. ANN search (faiss) materialises the keys in chunks and queries them in batches.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from fmlab.core.io import atomic_path, read_npz

__all__ = ["INDEXES", "METRICS", "MODES", "Prior", "RDDError", "RDDWarning", "check_features"]

Mode = Literal["default", "ood"]
MODES = ("default", "ood")
METRICS = ("angular", "l2")
# exact: the decomposed search above; faiss-flat: faiss brute force on materialised keys;
# faiss-hnsw: faiss HNSW graph (approximate).
INDEXES = ("exact", "faiss-flat", "faiss-hnsw")
_CHUNK = 4_000_000  # elements of a (intervals x keys) distance block


class RDDError(ValueError):
    """Bad input to RDD, with what is wrong and how to fix it."""


class RDDWarning(UserWarning):
    """Input RDD accepts but that probably is not what was meant (it says why and what to do)."""


def check_features(x, what: str, dim: int | None = None) -> np.ndarray:
    """An (N x D) finite float array, or an RDDError naming ``what`` and the fix."""
    a = np.asarray(x)
    if a.ndim != 2:
        raise RDDError(f"{what}: features must be a 2-D (frames x dims) array, got shape {a.shape}")
    if a.shape[0] == 0:
        raise RDDError(f"{what}: no frames")
    if not np.issubdtype(a.dtype, np.number):
        raise RDDError(f"{what}: features must be numeric, got dtype {a.dtype}")
    if dim is not None and a.shape[1] != dim:
        raise RDDError(
            f"{what}: feature dimension {a.shape[1]} does not match the prior's {dim}; encode the "
            "demo with the encoder the prior was built with"
        )
    if not np.isfinite(a).all():
        bad = np.argwhere(~np.isfinite(a))[0]
        raise RDDError(f"{what}: NaN or inf at frame {bad[0]}, dim {bad[1]}; clean the features")
    return a.astype(np.float64, copy=False)


@dataclass
class Prior:
    """Keys, durations (frames) and labels of the prior's sub-task intervals."""

    keys: np.ndarray  # (P x K) float
    durations: np.ndarray  # (P,) int, frames
    labels: np.ndarray  # (P,) str
    dim: int  # per-frame feature dimension D
    mode: Mode = "default"
    metric: str = "angular"
    index: str = "exact"
    encoder: str = ""
    encoder_state: dict = field(default_factory=dict)  # a fitted encoder's arrays
    motion: float = 0.0  # weight of the endpoint velocities in the key (0: off, the paper)
    _ann: object = field(default=None, repr=False, compare=False)

    def __post_init__(self):
        if self.mode not in MODES:
            raise RDDError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.metric not in METRICS:
            raise RDDError(f"metric must be one of {METRICS}, got {self.metric!r}")
        if self.index not in INDEXES:
            raise RDDError(f"index must be one of {INDEXES}, got {self.index!r}")
        self.keys = np.asarray(self.keys, dtype=np.float64)
        self.durations = np.asarray(self.durations, dtype=np.int64)
        self.labels = np.asarray(self.labels, dtype=str)
        if len(self.keys) == 0:
            raise RDDError("the prior is empty: build it from at least one labelled clip")
        if not (math.isfinite(self.motion) and self.motion >= 0):
            raise RDDError(f"motion must be a finite weight >= 0, got {self.motion}")
        k = self.part * (2 if self.mode == "default" else 1)
        if self.keys.ndim != 2 or self.keys.shape[1] != k:
            raise RDDError(f"keys must be (P x {k}) for dim {self.dim} in {self.mode} mode")
        if not (len(self.durations) == len(self.labels) == len(self.keys)):
            raise RDDError("keys, durations and labels must have the same length")
        if (self.durations < 1).any():
            raise RDDError("every prior interval needs a duration of at least 1 frame")

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def part(self) -> int:
        """Width of one endpoint's part of a key."""
        return self.dim * (2 if self.motion else 1)

    @classmethod
    def from_clips(
        cls,
        clips: Sequence[np.ndarray],
        labels: Sequence[str],
        mode: Mode = "default",
        index: str = "exact",
        metric: str = "angular",
        encoder: str = "",
        motion: float = 0.0,
    ) -> Prior:
        """One key per clip: ``clips[i]`` is the (L_i x D) features of one labelled interval."""
        if len(clips) == 0:
            raise RDDError("no clips: the prior needs at least one labelled sub-task interval")
        if len(clips) != len(labels):
            raise RDDError(f"{len(clips)} clips but {len(labels)} labels")
        dim = None
        keys, durs = [], []
        for i, c in enumerate(clips):
            a = check_features(c, f"clip {i} ({labels[i]})", dim)
            dim = a.shape[1]
            if motion and len(a) < 2:
                raise RDDError(
                    f"clip {i} ({labels[i]}) has 1 frame; motion keys need clips of >= 2 frames"
                )
            keys.append(_interval_key(a, 0, len(a), mode, motion))
            durs.append(len(a))
        if len(clips) == 1 or len(set(map(str, labels))) == 1:
            import warnings

            what = "one clip" if len(clips) == 1 else f"{len(clips)} clips of one label"
            warnings.warn(
                f"the prior holds {what} ({labels[0]!r}): every segment retrieves it, so the "
                "labels say nothing and the cuts follow its duration alone; add labelled demos "
                "of the other sub-tasks",
                RDDWarning,
                stacklevel=2,
            )
        return cls(np.stack(keys), np.array(durs), np.array(labels, dtype=str), dim, mode, metric,
                   index, encoder, motion=motion)  # fmt: skip

    def with_index(self, index: str) -> Prior:
        """The same prior searched through another index."""
        return Prior(self.keys, self.durations, self.labels, self.dim, self.mode, self.metric,
                     index, self.encoder, self.encoder_state, self.motion)  # fmt: skip

    # -- persistence -------------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        """Write an ``.npz`` (no pickled objects) atomically."""
        path = Path(path)
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez(
                f,
                keys=self.keys.astype(np.float32),
                durations=self.durations,
                labels=self.labels.astype(str),
                dim=np.array(self.dim),
                mode=np.array(self.mode),
                metric=np.array(self.metric),
                encoder=np.array(self.encoder),
                motion=np.array(self.motion),
                **{f"enc.{k}": np.asarray(v) for k, v in self.encoder_state.items()},
            )

    @classmethod
    def load(cls, path: str | Path, index: str = "exact") -> Prior:
        """Load a prior written by :meth:`save`; a missing, truncated or foreign file raises
        :class:`RDDError` naming it and the fix."""
        path = Path(path)
        if not path.is_file():
            raise RDDError(f"{path}: no such prior file; build one with `fmlab rdd build-prior`")
        try:
            z = read_npz(path, "an RDD prior", "rebuild it with `fmlab rdd build-prior`")
            z = _NpzView(z)
            need = {"keys", "durations", "labels", "dim", "mode"}
            if missing := need - set(z.files):
                raise RDDError(f"{path}: not an RDD prior (missing {sorted(missing)})")
            return cls(z["keys"], z["durations"], z["labels"], int(z["dim"]), str(z["mode"]),
                       str(z["metric"]) if "metric" in z.files else "angular", index,
                       str(z["encoder"]) if "encoder" in z.files else "",
                       {k[4:]: z[k] for k in z.files if k.startswith("enc.")},
                       float(z["motion"]) if "motion" in z.files else 0.0)  # fmt: skip
        except (OSError, ValueError) as e:
            if isinstance(e, RDDError):
                raise
            msg = str(e)
            if "build-prior" not in msg:
                msg = f"{path}: unreadable prior ({e}); rebuild it with `fmlab rdd build-prior`"
            raise RDDError(msg) from e

    # -- retrieval ----------------------------------------------------------------------------
    def search(self, features: np.ndarray, starts: np.ndarray, ends: np.ndarray):
        """Nearest prior key of each interval [starts[i], ends[i]) of ``features``.

        Returns (distance, neighbour index), each shaped like ``starts``."""
        f = check_features(features, "demo", self.dim)
        starts, ends = np.asarray(starts), np.asarray(ends)
        shape = starts.shape
        s, e = starts.ravel(), ends.ravel() - 1
        if self.index == "exact":
            d, nn = self._exact(f, s, e)
        else:
            d, nn = self._faiss(f, s, e)
        return d.reshape(shape), nn.reshape(shape)

    def _exact(self, f: np.ndarray, s: np.ndarray, e: np.ndarray):
        k = self.keys
        fs_part, fe_part = endpoint_parts(f, self.motion)
        fe = fe_part @ k[:, -self.part :].T  # (N x P) end-frame dot products
        fe2 = (fe_part * fe_part).sum(1)
        k2 = (k * k).sum(1)
        if self.mode == "default":
            fs = fs_part @ k[:, : self.part].T
            fs2 = (fs_part * fs_part).sum(1)
        dist = np.empty(len(s))
        nn = np.empty(len(s), dtype=np.int64)
        step = max(1, _CHUNK // len(k))
        for i in range(0, len(s), step):
            si, ei = s[i : i + step], e[i : i + step]
            dot = fe[ei]
            q2 = fe2[ei]
            if self.mode == "default":
                dot = dot + fs[si]
                q2 = q2 + fs2[si]
            if self.metric == "angular":
                cos = dot / np.sqrt(np.maximum(q2[:, None] * k2[None, :], 1e-300))
                j = cos.argmax(1)
                c = np.clip(cos[np.arange(len(j)), j], -1.0, 1.0)
                dist[i : i + step] = np.sqrt(np.maximum(2.0 - 2.0 * c, 0.0))
            else:
                d2 = q2[:, None] - 2 * dot + k2[None, :]
                j = d2.argmin(1)
                dist[i : i + step] = np.sqrt(np.maximum(d2[np.arange(len(j)), j], 0.0))
            nn[i : i + step] = j
        return dist, nn

    def _faiss(self, f: np.ndarray, s: np.ndarray, e: np.ndarray):
        import faiss

        if self._ann is None:
            keys = self._prep(self.keys)
            if self.index == "faiss-flat":
                ann = faiss.IndexFlatL2(keys.shape[1])
            else:
                ann = faiss.IndexHNSWFlat(keys.shape[1], 32)
                ann.hnsw.efSearch = 64
            ann.add(keys)
            self._ann = ann
        fs_part, fe_part = endpoint_parts(f, self.motion)
        dist = np.empty(len(s))
        nn = np.empty(len(s), dtype=np.int64)
        step = max(1, _CHUNK // self.keys.shape[1])
        for i in range(0, len(s), step):
            q = fe_part[e[i : i + step]]
            if self.mode == "default":
                q = np.concatenate([fs_part[s[i : i + step]], q], 1)
            d2, j = self._ann.search(self._prep(q), 1)
            dist[i : i + step] = np.sqrt(np.maximum(d2[:, 0], 0.0))
            nn[i : i + step] = j[:, 0]
        return dist, nn

    def _prep(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        if self.metric == "angular":  # L2 between unit vectors = sqrt(2 - 2 cos)
            x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-30)
        return x


def endpoint_parts(f: np.ndarray, motion: float) -> tuple[np.ndarray, np.ndarray]:
    """Per frame t, its key part as an interval's first frame and as its last frame.

    Without motion both are f[t]. With motion w: [f[t], w (f[t+1] - f[t])] as a start and
    [f[t], w (f[t] - f[t-1])] as an end (the velocity inside the interval; the missing neighbour
    of the demo's last/first frame gives 0, and no interval of >= 2 frames uses it)."""
    if not motion:
        return f, f
    d = np.zeros_like(f)
    d[1:] = f[1:] - f[:-1]
    fwd = np.concatenate([d[1:], np.zeros_like(f[:1])])
    return np.concatenate([f, motion * fwd], 1), np.concatenate([f, motion * d], 1)


def _interval_key(f: np.ndarray, s: int, e: int, mode: str, motion: float = 0.0) -> np.ndarray:
    """The key of one interval [s, e) of f, built directly from its frames."""
    first, last = f[s], f[e - 1]
    if motion:
        first = np.concatenate([first, motion * (f[s + 1] - f[s])])
        last = np.concatenate([last, motion * (f[e - 1] - f[e - 2])])
    return np.concatenate([first, last]) if mode == "default" else np.asarray(last)


def naive_distance(prior: Prior, features: np.ndarray, s: int, e: int) -> tuple[float, int]:
    """Nearest key of one interval by direct comparison with every key (for tests)."""
    q = _interval_key(np.asarray(features, np.float64), s, e, prior.mode, prior.motion)
    best, arg = math.inf, -1
    for j, k in enumerate(prior.keys):
        if prior.metric == "angular":
            c = float(q @ k) / max(math.sqrt(float(q @ q) * float(k @ k)), 1e-300)
            d = math.sqrt(max(2.0 - 2.0 * min(1.0, max(-1.0, c)), 0.0))
        else:
            d = float(np.sqrt(((q - k) ** 2).sum()))
        if d < best:
            best, arg = d, j
    return best, arg


class _NpzView(dict):
    """The arrays of an .npz read by :func:`fmlab.core.io.read_npz`, with ``np.load``'s
    ``.files`` so the loader reads the same either way."""

    @property
    def files(self) -> list[str]:
        return list(self)
