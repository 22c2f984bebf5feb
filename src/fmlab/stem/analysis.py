"""Analyses of a trained STEM model against a dense one.

:func:`angular_spread`: the paper credits STEM's knowledge capacity to a large angular spread
of its table rows. Here the FFN's "up" vectors of each layer are compared: the rows ``U_ℓ[t]``
of a STEM layer, and the up-projection outputs ``W_up x`` of a dense layer, for the same tokens
(each distinct token of the given blocks at its first position). The spread is the mean angle
between two different tokens' vectors (90° for orthogonal vectors, smaller when they crowd
into a cone).
"""

from __future__ import annotations

import math

import torch

from fmlab.stem.model import stem_mlps

__all__ = ["angular_spread", "first_positions"]


def first_positions(blocks: torch.Tensor, max_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(token ids, (block, position) of each one's first occurrence)`` for up to
    ``max_tokens`` distinct tokens of ``blocks`` ``(N, T)``, in order of first occurrence."""
    if blocks.dim() != 2 or blocks.numel() == 0:
        raise ValueError(
            f"blocks must be a non-empty (N, T) tensor, got shape {tuple(blocks.shape)}"
        )
    if max_tokens < 2:
        raise ValueError(f"max_tokens must be >= 2 (angles need two tokens), got {max_tokens}")
    flat = blocks.reshape(-1)
    seen: dict[int, int] = {}
    for i, t in enumerate(flat.tolist()):
        if t not in seen:
            seen[t] = i
            if len(seen) == max_tokens:
                break
    ids = torch.tensor(list(seen), dtype=torch.long)
    idx = torch.tensor(list(seen.values()), dtype=torch.long)
    T = blocks.shape[1]
    return ids, torch.stack([idx // T, idx % T], dim=1)


def _mean_angle_deg(v: torch.Tensor) -> float:
    u = torch.nn.functional.normalize(v.double(), dim=1)
    cos = (u @ u.T).clamp(-1.0, 1.0)
    n = cos.shape[0]
    off = cos[~torch.eye(n, dtype=torch.bool)]
    return math.degrees(torch.acos(off).mean().item())


@torch.no_grad()
def angular_spread(model, blocks: torch.Tensor, layers: list[int] | None = None,
                   max_tokens: int = 512) -> dict[str, float]:  # fmt: skip
    """Mean pairwise angle (degrees) between the FFN up vectors of distinct tokens, per layer
    (``"layer<i>"``) and their mean (``"mean"``). STEM layers give table rows, dense layers
    the up-projection output at the token's first position in ``blocks`` (one forward pass over
    the blocks that hold those positions). ``layers`` defaults to every layer but 0."""
    n_layers = model.config.num_hidden_layers
    layers = list(range(1, n_layers)) if layers is None else list(layers)
    bad = [i for i in layers if not 0 <= i < n_layers]
    if bad or not layers:
        raise ValueError(f"layers {bad or layers} out of range 0..{n_layers - 1}")
    ids, where = first_positions(blocks, max_tokens)
    stem = stem_mlps(model)
    decoder = model.model.layers
    captured: dict[int, torch.Tensor] = {}
    hooks = []
    dense_layers = [i for i in layers if i not in stem]
    rows_needed = torch.unique(where[:, 0])
    sub = blocks[rows_needed]
    remap = {int(r): j for j, r in enumerate(rows_needed.tolist())}
    for i in dense_layers:
        up = decoder[i].mlp.up_proj

        def hook(_m, _inp, out, i=i):
            captured[i] = out.detach()

        hooks.append(up.register_forward_hook(hook))
    was = model.training
    try:
        if dense_layers:
            model.eval()
            model(input_ids=sub)
    finally:
        model.train(was)
        for h in hooks:
            h.remove()
    out: dict[str, float] = {}
    for i in layers:
        if i in stem:
            vecs = stem[i].rows(ids.view(1, -1))[0]
        else:
            b = torch.tensor([remap[int(r)] for r in where[:, 0].tolist()])
            vecs = captured[i][b, where[:, 1]]
        out[f"layer{i}"] = _mean_angle_deg(vecs.float())
    out["mean"] = sum(out[f"layer{i}"] for i in layers) / len(layers)
    return out
