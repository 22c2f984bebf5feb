"""`diagnose`: per-tensor geometry of the two deltas, streamed in row blocks.

Δ_post = Θ_post − Θ_base (what post-training changed), Δ_update = Θ'_base − Θ_base (what the
base update changed). Every statistic is a sum over elements (dot products and squared norms),
so it is accumulated block by block in float64 and peak memory is a few blocks whatever the
tensor's size (the whole-tensor version held six float64 copies of the largest tensor).
"""

from __future__ import annotations

import math
import os

import torch

from fmlab.core.checkpoint import TensorSource
from fmlab.param_delta.delta import (
    CHUNK_BYTES,
    VocabPolicy,
    _as_source,
    _Workspace,
    plan,
    row_blocks,
)
from fmlab.param_delta.files import progress_bar

__all__ = ["diagnose"]


@torch.no_grad()
def diagnose(
    post: str | os.PathLike | TensorSource,
    base: str | os.PathLike | TensorSource,
    new_base: str | os.PathLike | TensorSource,
    allow_pickle: bool = False,
    vocab_policy: VocabPolicy = "shared-rows",
    chunk_bytes: int = CHUNK_BYTES,
    progress: bool = False,
) -> list[dict]:
    """Per tensor: cosine(Δ_post, Δ_update), ‖Δ_post‖, ‖Δ_update‖, their ratio and ‖Δ_post‖/‖Θ_base‖.

    Near-orthogonal deltas are why adding them works (the paper's analysis). Vocabulary
    mismatches are compared on the shared rows. Norms are Frobenius norms (float64).
    """
    srcs = [
        _as_source(x, r, allow_pickle)
        for x, r in ((post, "post"), (base, "base"), (new_base, "new base"))
    ]
    p = plan(*srcs, vocab_policy=vocab_policy)
    ws = _Workspace(torch.float64)
    rows = []
    with progress_bar("diagnose", len(p.entries), progress) as advance:
        for e in p.entries:
            advance(0, e.name)
            dot = npost2 = nupd2 = nbase2 = 0.0
            numel = 0
            for r in row_blocks(e.out.shape, 8, chunk_bytes, e.shared_rows):
                pt = ws.load("post", srcs[0], e.post_key, r).reshape(-1)
                bt = ws.load("base", srcs[1], e.base_key, r).reshape(-1)
                nt = ws.load("new", srcs[2], e.new_key, r).reshape(-1)
                nbase2 += float(bt @ bt)
                pt.sub_(bt)  # Δ_post
                nt.sub_(bt)  # Δ_update
                dot += float(pt @ nt)
                npost2 += float(pt @ pt)
                nupd2 += float(nt @ nt)
                numel += pt.numel()
            npost, nupd, nbase = math.sqrt(npost2), math.sqrt(nupd2), math.sqrt(nbase2)
            cos = dot / (npost * nupd) if npost > 0 and nupd > 0 else float("nan")
            rows.append(
                {
                    "tensor": e.name,
                    "numel": numel,
                    "cosine": cos,
                    "post_delta_norm": npost,
                    "update_delta_norm": nupd,
                    "post_over_update": npost / nupd if nupd > 0 else float("inf"),
                    "post_delta_over_base": npost / nbase if nbase > 0 else float("inf"),
                }
            )
            advance(1)
    return rows
