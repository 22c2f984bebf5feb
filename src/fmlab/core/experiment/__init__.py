"""The experiment harness every bench is built on.

- :class:`Splits`: named item sets built by one seeded function, checked disjoint by content
  hash, with a sealed test split and disjoint dev / test seeds.
- :func:`tune`: the same budget for every arm on the validation split; an edge-of-grid optimum
  warns (:class:`GridEdgeWarning`) and widens the axis.
- :func:`run_arms`: arms x seeds, resumable over :class:`fmlab.core.io.Memo`, per-seed values.
- :func:`paired` / :func:`compare`: paired per-seed (t) and per-item (bootstrap) intervals.
- :func:`timeit_interleaved`: arms alternated, warm-up, median and spread, threads recorded.
- :func:`record_fields`: the record's ``splits``, ``tuning``, ``seeds_seen_in_design`` and
  ``intervals``. See "Writing a bench" in docs/core.md.
"""

from fmlab.core.experiment.arms import ArmRuns, run_arms
from fmlab.core.experiment.record import interval_plot, record_fields, with_overrides
from fmlab.core.experiment.splits import (
    SealedSplitError,
    Split,
    SplitError,
    Splits,
    content_hash,
)
from fmlab.core.experiment.stats import (
    Interval,
    Paired,
    bootstrap_interval,
    compare,
    format_delta,
    paired,
    ratio_interval,
    t_interval,
)
from fmlab.core.experiment.timing import (
    Timing,
    bytes_read_counter,
    measure_peak_rss,
    timeit_interleaved,
)
from fmlab.core.experiment.tuning import ArmTuning, GridEdgeWarning, Tuning, tune

__all__ = [
    "ArmRuns",
    "ArmTuning",
    "GridEdgeWarning",
    "Interval",
    "Paired",
    "SealedSplitError",
    "Split",
    "SplitError",
    "Splits",
    "Timing",
    "Tuning",
    "bootstrap_interval",
    "bytes_read_counter",
    "compare",
    "content_hash",
    "format_delta",
    "interval_plot",
    "measure_peak_rss",
    "paired",
    "ratio_interval",
    "record_fields",
    "run_arms",
    "t_interval",
    "timeit_interleaved",
    "tune",
    "with_overrides",
]
