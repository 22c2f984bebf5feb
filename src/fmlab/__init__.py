"""fmlab: reference implementations of ten recent foundation-model methods."""

__version__ = "0.1.0"
