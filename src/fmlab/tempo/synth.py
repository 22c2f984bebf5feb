"""Moved to :mod:`fmlab.core.data.videos` (shared by the video methods); re-exported here so
existing imports keep working."""

from fmlab.core.data.videos import (
    ANSWERS,
    COLOURS,
    FAMILIES,
    SHAPES,
    SIZE,
    Needle,
    Question,
    SynthVideo,
    draw_needle,
    make_split,
    make_video,
)

_draw = draw_needle  # the name dense.py used before the move

__all__ = [
    "ANSWERS",
    "COLOURS",
    "FAMILIES",
    "SHAPES",
    "SIZE",
    "Needle",
    "Question",
    "SynthVideo",
    "make_split",
    "make_video",
]
