"""The output type every segmenter (RDD, UVD, uniform, random) shares: its own module, so that
``segment`` and ``uvd`` both import it and neither imports the other."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from itertools import pairwise

from fmlab.rdd.prior import RDDError

__all__ = ["Segmentation"]


@dataclass
class Segmentation:
    """Segments [start, end) covering [0, N) in order, with per-segment label and score."""

    boundaries: list[tuple[int, int]]
    labels: list[str] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    method: str = "rdd"

    def __post_init__(self):
        self.boundaries = [(int(s), int(e)) for s, e in self.boundaries]
        pos = 0
        for i, (s, e) in enumerate(self.boundaries):
            if s != pos or e <= s:
                why = f"starts at {s}, not {pos}" if s != pos else "is empty"
                raise RDDError(
                    f"segments must tile [0, N) in order, each starting where the last ended; "
                    f"segment {i} ({s}, {e}) {why}"
                )
            pos = e
        if self.labels and len(self.labels) != len(self.boundaries):
            raise RDDError(
                f"{len(self.boundaries)} segments but {len(self.labels)} labels; give one label "
                "per segment"
            )

    @property
    def n_frames(self) -> int:
        return self.boundaries[-1][1] if self.boundaries else 0

    @property
    def total(self) -> float:
        return float(sum(self.scores))

    def __len__(self) -> int:
        return len(self.boundaries)

    def cuts(self) -> list[int]:
        """Internal boundaries: the start frame of every segment but the first."""
        return [s for s, _ in self.boundaries[1:]]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_cuts(cls, cuts, n: int, method: str, labels=None) -> Segmentation:
        edges = [0, *sorted(int(c) for c in cuts), n]
        return cls(list(pairwise(edges)), list(labels or []), [], method)
