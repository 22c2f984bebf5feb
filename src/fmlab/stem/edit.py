"""Knowledge editing by rows: make the model treat ``source`` with ``target``'s knowledge.

:func:`edit` copies ``target``'s STEM rows into ``source``'s token rows in the STEM layers
(all, or ``layers``). The prompt is unchanged and so is the compute: the same lookups happen,
they just return other rows. :func:`revert` restores the saved rows bit for bit.

Which rows (the multi-token rule):

1. Both spellings are edited: the entity as written (``"Zorbak"``, sentence-initial) and with a
   leading space (``" Zorbak"``, mid-sentence), since a byte-level BPE gives them different
   tokens.
2. For each spelling the two token sequences are aligned at their LAST token: source token
   ``-k`` takes target token ``-k``'s rows for ``k = 1..min(len_s, len_t)``. When ``source`` is
   longer, its leading extra tokens keep their rows; when ``target`` is longer, its leading
   extra tokens are not copied. (The last token is where the entity is complete; rows of
   earlier tokens still reach it through attention.)
3. A source token that is also used by other words (a common sub-word) changes for them too;
   the bench measures this as locality. If one source token would receive two different
   target rows, the later assignment (the last-token-aligned one) wins.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from fmlab.stem.model import StemError, stem_mlps

__all__ = ["Edit", "EditError", "edit", "edit_pairs", "revert"]


class EditError(StemError):
    """An edit that cannot be made; the message names the entity or layer and the fix."""


@dataclass
class Edit:
    """What :func:`edit` changed: per layer, the row ids and their original rows."""

    source: str
    target: str
    pairs: list[tuple[int, int]]  # (source token id, target token id)
    saved: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    reverted: bool = False


def _encode(tokenizer, text: str) -> list[int]:
    if not text or not text.strip():
        raise EditError(f"entity {text!r} is empty; give the entity's text, e.g. 'Zorbak'")
    ids = tokenizer.encode(text, add_special_tokens=False)
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    if not ids or any(i in special for i in ids) or tokenizer.decode(ids) != text:
        raise EditError(
            f"the tokenizer cannot encode entity {text!r} (it comes back as "
            f"{tokenizer.decode(ids)!r}); use an entity made of characters its vocabulary has"
        )
    return ids


def edit_pairs(tokenizer, source: str, target: str) -> list[tuple[int, int]]:
    """The (source id, target id) row copies of the multi-token rule (module docstring)."""
    pairs: dict[int, int] = {}
    for prefix in ("", " "):
        s, t = _encode(tokenizer, prefix + source), _encode(tokenizer, prefix + target)
        for k in range(min(len(s), len(t)), 0, -1):  # last-aligned; the last token written last
            pairs[s[-k]] = t[-k]
    return [(a, b) for a, b in pairs.items() if a != b]


def edit(
    model: nn.Module, tokenizer, source: str, target: str, layers: list[int] | None = None
) -> Edit:
    """Copy ``target``'s STEM rows into ``source``'s rows in ``layers`` (default: every STEM
    layer); returns the :class:`Edit` that :func:`revert` undoes."""
    mlps = stem_mlps(model)
    if not mlps:
        raise EditError(
            "the model has no STEM layers; knowledge editing by rows needs a STEM model"
        )
    chosen = sorted(mlps) if layers is None else sorted(set(layers))
    bad = [i for i in chosen if i not in mlps]
    if bad:
        raise EditError(f"layers {bad} are not STEM layers; choose from {sorted(mlps)}")
    if any(mlps[i].table is None for i in chosen):
        raise EditError("the tables are offloaded; edit before offloading (or call restore())")
    pairs = edit_pairs(tokenizer, source, target)
    e = Edit(source, target, pairs)
    if not pairs:
        return e
    n = model.config.vocab_size
    if max(max(p) for p in pairs) >= n:
        raise EditError(
            f"the tokenizer gives ids beyond the model's {n}-row tables; use the tokenizer the "
            "model was trained with"
        )
    src = torch.tensor([a for a, _ in pairs])
    tgt = torch.tensor([b for _, b in pairs])
    with torch.no_grad():
        for i in chosen:
            w = mlps[i].table.weight
            e.saved[i] = (src.clone(), w[src].clone())
            w[src] = w[tgt]
    return e


def revert(model: nn.Module, e: Edit) -> None:
    """Undo ``e`` exactly (revert several edits in the reverse order they were made)."""
    if e.reverted:
        raise EditError(f"the edit {e.source!r} -> {e.target!r} was already reverted")
    mlps = stem_mlps(model)
    with torch.no_grad():
        for i, (rows, old) in e.saved.items():
            mlps[i].table.weight[rows] = old
    e.reverted = True
