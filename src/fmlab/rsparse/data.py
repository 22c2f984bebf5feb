"""The one place that owns R-Sparse's text: calibration, validation and test splits, and the
model loader every command uses.

Splits (document-level, by a seeded hash of each document's id, over the prose corpus):
``calib`` (thresholds τ, TEAL's greedy inputs and the search's fitness text), ``val`` (choosing
among searched recipes and uniform α) and ``test`` (the quality table; sealed until every
design step is done). ``--calib-text FILE`` replaces ``calib`` by the documents of a user file;
every split is then still checked disjoint from the others by content hash
(:class:`fmlab.core.experiment.Splits`), and a calibration file that contains a piece of any
val or test document (probes of 160 characters) is refused.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from fmlab.core.experiment import Splits

__all__ = ["WINDOW", "TextSplits", "load_model", "make_splits", "text_splits", "token_ids"]

WINDOW = 512  # calibration window (tokens), as the official code
FRACTIONS = (0.7, 0.1, 0.1, 0.1)
NAMES = ("rest", "calib", "val", "test")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")


def make_splits(seed: int = 0, calib_text: str | None = None) -> dict[str, list[str]]:
    """Document texts of ``calib``, ``val`` and ``test``: the prose corpus split 70/10/10/10 by
    document (the first 70% unused); ``calib`` is a user file's documents when given."""
    from fmlab.core.data.corpora import prose_documents, read_text_documents, split_documents

    parts = split_documents(prose_documents(), FRACTIONS, NAMES, seed=seed)
    calib = parts["calib"]
    if calib_text is not None:
        calib = read_text_documents(calib_text)
        if not any(d.text.strip() for d in calib):
            raise ValueError(f"{calib_text}: the calibration text is empty; give a text file")
        _refuse_held_out_text(calib_text, calib, parts)
    return {
        "calib": [d.text for d in calib if d.text.strip()],
        "val": [d.text for d in parts["val"]],
        "test": [d.text for d in parts["test"]],
    }


PROBE_CHARS = 160  # length of each probe taken from a held-out document


def _refuse_held_out_text(path, calib, parts) -> None:
    """A user calibration file is one document (or a few), so the content-hash check of
    ``Splits`` would only catch a held-out document copied whole and alone. Also refuse a file
    that contains a piece of any val or test document: three probes (start, middle, end) of
    each, looked up as substrings (whitespace normalised)."""
    from fmlab.core.experiment.splits import SplitError

    text = " ".join(" ".join(d.text.split()) for d in calib)
    for name in ("val", "test"):
        for d in parts[name]:
            doc = " ".join(d.text.split())
            if len(doc) < PROBE_CHARS:
                probes = [doc] if len(doc) >= 40 else []
            else:
                mid = (len(doc) - PROBE_CHARS) // 2
                probes = [doc[:PROBE_CHARS], doc[mid : mid + PROBE_CHARS], doc[-PROBE_CHARS:]]
            if any(p in text for p in probes):
                raise SplitError(
                    f"{path}: the calibration text contains part of a {name!r} document of "
                    "the prose corpus, so that split would no longer be held out; remove it "
                    "or calibrate on other text"
                )


class TextSplits:
    """The checked splits plus their token ids (tokenized once, on demand)."""

    def __init__(self, tok, seed: int = 0, calib_text: str | os.PathLike | None = None):
        self.tok = tok
        self.calib_text = None if calib_text is None else str(calib_text)
        self.splits = Splits.build(make_splits, seed=seed, calib_text=self.calib_text)
        self._ids: dict[str, list[int]] = {}

    def ids(self, name: str, n: int, what: str) -> torch.Tensor:
        """The first ``n`` token ids of split ``name`` (raises naming the split if short)."""
        if name not in self._ids:
            text = "\n\n".join(self.splits[name])  # the sealed test split raises here
            self._ids[name] = self.tok(text)["input_ids"]
        return token_ids(self._ids[name], n, what, self._source(name))

    def _source(self, name: str) -> str:
        if name == "calib" and self.calib_text:
            return self.calib_text
        return f"the prose corpus' {name!r} split"

    def calib_windows(self, windows: int) -> torch.Tensor:
        """(windows, WINDOW) calibration token ids."""
        return self.ids("calib", windows * WINDOW, "calibration").reshape(windows, WINDOW)

    def search_text(self, windows: int, tokens: int) -> torch.Tensor:
        """(1, tokens + 1) ids of the calibration split after the calibration windows (the
        search's fitness text: same split as τ, other tokens)."""
        ids = self.ids("calib", windows * WINDOW + tokens + 1, "calibration + search")
        return ids[windows * WINDOW :][None]


def token_ids(ids: list[int], n: int, what: str, source: str) -> torch.Tensor:
    if len(ids) < n:
        raise ValueError(
            f"{source} has {len(ids)} tokens, fewer than the {n} the {what} needs; give a "
            "longer text (--calib-text) or ask for fewer tokens"
        )
    return torch.tensor(ids[:n], dtype=torch.long)


def text_splits(tok, seed: int = 0, calib_text=None) -> TextSplits:
    return TextSplits(tok, seed, calib_text)


def load_model(name_or_dir: str, dtype: str | None = "float32"):
    """``(model, tokenizer)`` of a bundled name or a HF directory; a directory without a
    tokenizer is an error that says so (R-Sparse needs one to read its calibration text)."""
    from fmlab.core.models import load_pretrained

    path = Path(name_or_dir).expanduser()
    if path.is_dir() and not any((path / f).is_file() for f in TOKENIZER_FILES):
        raise ValueError(
            f"{path}: the model folder has no tokenizer (none of {', '.join(TOKENIZER_FILES)}); "
            "R-Sparse tokenizes its calibration text with it. Save one beside the weights with "
            "tokenizer.save_pretrained(DIR)"
        )
    return load_pretrained(name_or_dir, dtype=dtype, device="cpu")
