"""The one registry of methods: what the CLI mounts, what `fmlab demo` runs, what docs/ lists.

A method is registered here once it exists; a test checks that every entry has its package,
its ``cli.app``, its ``docs/<method>.md`` and a line in ``fmlab --help``, and that no method
package or doc exists without an entry.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["METHODS", "Method", "get_method"]


@dataclass(frozen=True)
class Method:
    name: str  # CLI name, e.g. "param-delta"
    package: str  # import path, e.g. "fmlab.param_delta"
    summary: str  # one line for `fmlab --help`
    quick_bench: str | None = None  # "module:function", called as f(out_dir) -> ResultRecord
    # What `fmlab demo` says of the quick bench: what it just did, on which real input, and
    # how to read its (smoke-size) numbers.
    demo_says: str = ""
    full_bench: str = ""  # the command of the full reproduction
    full_bench_time: str = ""  # how long it takes here, in words (from its docs page)
    record: str = ""  # its committed headline record, relative to docs/results/

    @property
    def doc(self) -> str:
        """Path of the method's page, relative to the repository root."""
        return f"docs/{self.package.rsplit('.', 1)[-1]}.md"

    def load_app(self):
        """Import the method's Typer app (``<package>.cli:app``)."""
        return importlib.import_module(f"{self.package}.cli").app

    def load_quick_bench(self) -> Callable | None:
        if self.quick_bench is None:
            return None
        mod, fn = self.quick_bench.split(":")
        return getattr(importlib.import_module(mod), fn)


METHODS: tuple[Method, ...] = (
    Method(
        name="param-delta",
        package="fmlab.param_delta",
        summary="ParamΔ: transfer post-training to an updated base by weight arithmetic.",
        quick_bench="fmlab.param_delta.bench:quick",
        demo_says="trained a tiny Llama on a generated fact world, post-trained it (SFT), "
        "continued its base on new facts, and transferred the post-training to the new base by "
        "weight arithmetic; one seed and 60 SFT steps, so the accuracies only show that it runs",
        full_bench="fmlab param-delta bench",
        full_bench_time="about 16 min on 2 cores (3 seeds)",
        record="param_delta/transfer.json",
    ),
    Method(
        name="rsparse",
        package="fmlab.rsparse",
        summary="R-Sparse: training-free activation sparsity (sparse channels + low-rank rest).",
        quick_bench="fmlab.rsparse.bench:quick",
        demo_says="made the bundled SmolLM2-135M, cut to its first 2 layers for speed, 50% "
        "activation-sparse without training (R-Sparse, a one-generation search; alpha and the "
        "finalist chosen on validation text) and measured perplexity on a few hundred unseen "
        "tokens against dense, TEAL and CATS; a search this short is not the shipped recipe",
        full_bench="fmlab rsparse bench",
        full_bench_time="about 65 min on 2 cores (quality about 45, speed about 20 on a quiet CPU)",
        record="rsparse/quality.json",
    ),
    Method(
        name="tempo",
        package="fmlab.tempo",
        summary="Tempo: query-aware video token compression with adaptive allocation.",
        quick_bench="fmlab.tempo.bench:quick",
        demo_says="generated short needle videos (written and read back as real mp4), "
        "trained a tiny Tempo stack for a few steps and answered questions at two small visual "
        "token budgets; a few steps teach it nothing yet, so accuracies near 0 are expected",
        full_bench="fmlab tempo bench",
        full_bench_time="over an hour on 2 cores (3 seeds, each training its own stacks); "
        "resumable",
        record="tempo/budget_sweep.json",
    ),
    Method(
        name="dtrpo",
        package="fmlab.dtrpo",
        summary="dTRPO: single-forward trajectory preference optimization for diffusion LMs.",
        quick_bench="fmlab.dtrpo.bench:quick",
        demo_says="pretrained a tiny block-diffusion LM for a few dozen steps on addition, "
        "countdown and sudoku, sampled preference pairs from it and ran a handful of dTRPO and "
        "d1-DPO steps; that moves nothing, so a gain of 0 is expected",
        full_bench="fmlab dtrpo bench",
        full_bench_time="about 3.5 h on 2 cores from nothing; resumable",
        record="dtrpo/training.json",
    ),
    Method(
        name="rdd",
        package="fmlab.rdd",
        summary="RDD: cut demonstrations into sub-tasks by retrieval against the policy's data.",
        quick_bench="fmlab.rdd.bench:quick",
        demo_says="generated robot-arena demonstrations (frames and states), encoded them "
        "with the pretrained EfficientNet-Lite0, built a retrieval prior and cut held-out "
        "demos into sub-tasks with RDD, UVD and uniform; with one seed and a handful of demos "
        "the scores are noisy",
        full_bench="fmlab rdd bench",
        record="rdd/arena.json",
    ),
    Method(
        name="stem",
        package="fmlab.stem",
        summary="STEM: FFN up-projection as a per-layer token-indexed table; offload, edit.",
        quick_bench="fmlab.stem.bench:quick",
        demo_says="built a BPE vocabulary and a fact world, trained tiny dense, half-STEM, "
        "all-but-0 STEM and widened-dense models for 8 steps, edited facts by copying table "
        "rows and served the tables from memory-mapped files with prefetch; 8 steps learn "
        "nothing, so recall and edit success near chance are expected",
        full_bench="fmlab stem bench --out docs/results/stem",
        record="",  # not run yet: no committed record
    ),
    Method(
        name="flash",
        package="fmlab.flash",
        summary="MobileLLM-Flash: latency-model-guided pruning search; attention skipping; export.",
        quick_bench="fmlab.flash.bench:quick",
        demo_says="cut the bundled SmolLM2-135M to 6 of its layers, pruned and measured 9 "
        "candidates on this CPU, fitted a GP latency model, ran an 8-trial NSGA-II search and "
        "distilled one pick for 2 steps beside depth-only and uniform-width baselines; 9 "
        "candidates and 2 steps only show that it runs (held-out R² and perplexities mean nothing)",
        full_bench="fmlab flash bench --out docs/results/flash",
        full_bench_time="about 6-7 h on 2 cores (estimated from stage timings, not run yet); "
        "resumable",
        record="",  # not run yet: no committed record
    ),
    Method(
        name="rlvr-geometry",
        package="fmlab.rlvr_geometry",
        summary="RLVR three gates: parameter geometry of checkpoints vs their base; RL vs SFT.",
        quick_bench="fmlab.rlvr_geometry.study:quick",
        demo_says="ran the RL-vs-SFT pipeline (GRPO and SFT through fmlab.core.rl, then the "
        "geometry of each checkpoint) on a tiny random model for 3 steps with a smoke reward; "
        "its verdicts test nothing",
        full_bench="fmlab rlvr-geometry bench",
        full_bench_time="about 4-6 h on 2 shared cores (8 runs of 60 GRPO/SFT steps on SmolLM2)",
    ),
    Method(
        name="autothink",
        package="fmlab.autothink",
        summary="VideoAuto-R1: answer, think only when unsure (real early exit), reward.",
        quick_bench="fmlab.autothink.bench:quick",
        demo_says="generated synthetic needle videos with perception and reasoning questions, "
        "gave six tiny video-QA models (CNN frame encoder + Llama) a few warm-start and GRPO "
        "steps (direct-only, always-think, switch, VideoAuto-R1 and two reward ablations) and "
        "answered with the real early exit; a dozen steps teach nothing, so accuracies near 0 "
        "are expected",
        full_bench="fmlab autothink bench",
        full_bench_time="about 3 h on 2 cores (estimated, not run: 3 seeds, 19 trained "
        "models); resumable",
        record="",  # not run yet: no committed record
    ),
    Method(
        name="nc",
        package="fmlab.neural_computer",
        summary="Neural Computers: record a real terminal / toy desktop, train a runtime, play it.",
        quick_bench="fmlab.neural_computer.bench:quick",
        demo_says="recorded one real sandboxed bash episode per script family and a few toy "
        "desktop sessions, trained tiny runtimes for 12 steps (actions in every block vs at the "
        "input, cursor mask vs raw coordinates, goal vs random data) and read their frames back "
        "by glyph matching; 12 steps learn nothing, so scores equal to copy-last-frame and "
        "an echo accuracy of 0 are expected",
        full_bench="fmlab nc bench --out docs/results/neural_computer",
        full_bench_time="about 10 h on 2 cores (estimated, not run yet); resumable",
        record="",  # not run yet: no committed record
    ),
)


def get_method(name: str) -> Method:
    """Look up a method by CLI name; unknown names list the valid ones."""
    for m in METHODS:
        if m.name == name:
            return m
    valid = ", ".join(m.name for m in METHODS) or "(none registered yet)"
    raise ValueError(f"unknown method {name!r}; choose one of: {valid}")
