"""Named item sets built by one seeded function, checked disjoint by content hash, with a
sealed test split and disjoint dev / test seeds.

The lifecycle a bench follows::

    splits = Splits.build(make_splits, seed=0, dev_seeds=(0, 1), test_seeds=(2, 3, 4))
    tuning = tune(ARMS, GRID, score_on_val, val=splits["val"], budget=8)  # a design step
    splits.open_test()  # once, after every design step: recorded
    runs = run_arms(tuning.chosen, splits.test_seeds, evaluate_on_test, memo)

Reading the sealed split (or the test seeds) before ``open_test()``, inside a design step, or
starting a design step after ``open_test()`` raises :class:`SealedSplitError`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import itertools
import json
import math
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["SealedSplitError", "Split", "SplitError", "Splits", "content_hash"]


class SplitError(ValueError):
    """Splits overlap, or seeds seen in design are test seeds, or a split is misused."""


class SealedSplitError(SplitError):
    """A sealed split (the test split, the test seeds) was used in a tuning or design step,
    or read before ``Splits.open_test()``."""


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _array_form(dtype: str, shape: Sequence[int], raw: bytes) -> dict[str, Any]:
    return {"__array__": dtype, "shape": list(shape), "sha256": _sha(raw)}


def _canonical(x: Any) -> Any:
    """A JSON-able form of ``x`` whose serialization (sorted keys) identifies its content.

    numpy arrays and torch tensors of equal dtype, shape and values get the same form."""
    if x is None or isinstance(x, (bool, str, int)):
        return x
    if isinstance(x, float):
        return x if math.isfinite(x) else {"__float__": repr(x)}
    if isinstance(x, np.generic):
        return _canonical(x.item())
    if isinstance(x, np.ndarray):
        if x.dtype == object:
            return {"__array__": "object", "shape": list(x.shape), "items": _canonical(x.tolist())}
        return _array_form(str(x.dtype), x.shape, np.ascontiguousarray(x).tobytes())
    if type(x).__module__.startswith("torch") and hasattr(x, "detach"):
        import torch

        t = x.detach().cpu().contiguous()
        raw = t.reshape(-1).view(torch.uint8).numpy().tobytes()
        return _array_form(str(t.dtype).removeprefix("torch."), t.shape, raw)
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        fields = {f.name: _canonical(getattr(x, f.name)) for f in dataclasses.fields(x)}
        return {"__dataclass__": type(x).__qualname__, **fields}
    if isinstance(x, Mapping):
        if all(isinstance(k, str) for k in x):
            return {k: _canonical(v) for k, v in x.items()}
        pairs = [[_canonical(k), _canonical(v)] for k, v in x.items()]
        return {"__map__": sorted(pairs, key=_dumps)}
    if isinstance(x, (list, tuple)):
        return [_canonical(v) for v in x]
    if isinstance(x, (set, frozenset)):
        return {"__set__": sorted((_canonical(v) for v in x), key=_dumps)}
    if isinstance(x, (bytes, bytearray, memoryview)):
        return {"__bytes__": _sha(bytes(x))}
    if isinstance(x, os.PathLike):
        return os.fspath(x)
    raise TypeError(
        f"cannot hash an item of type {type(x).__name__}: pass Splits(..., key=fn) where fn maps "
        "each item to what identifies it (a str, number, dict, list, array or tensor)"
    )


def _dumps(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def content_hash(item: Any) -> str:
    """Stable hex SHA-256 of an item's content: its canonical JSON form (sorted keys; numpy
    arrays and torch tensors by dtype, shape and bytes; dataclasses by class name and fields).

    Equal content gives equal hashes across processes and runs (unlike ``hash()``)."""
    return _sha(_dumps(_canonical(item)).encode("utf-8"))


class Split(Sequence):
    """A read-only view of one named split's items, with its size and content digest."""

    def __init__(self, name: str, items: tuple, digest: str, sealed: bool, owner: Splits):
        self.name, self.digest, self.sealed, self.owner = name, digest, sealed, owner
        self._items = items

    def __getitem__(self, i):
        return self._items[i]

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        flag = ", sealed" if self.sealed else ""
        return f"Split({self.name!r}, n={len(self)}, digest={self.digest[:12]}{flag})"


def _short(item: Any, width: int = 80) -> str:
    text = repr(item)
    return text if len(text) <= width else text[: width - 1] + "…"


class Splits:
    """Named item sets (e.g. train / val / test) plus disjoint dev and test seeds.

    Args:
        items: split name -> sequence of items. Build them with one seeded function and use
            :meth:`build`, so every caller gets the same sets.
        key: maps an item to what identifies it for the disjointness check (e.g. its prompt
            text); default the whole item.
        sealed: names of the sealed splits (default ``("test",)`` when there is one).
        dev_seeds, test_seeds: seeds used while designing / only for the final evaluation.
        allow_overlap: pairs of splits allowed to share items (counted, not raised).

    Raises:
        SplitError: two splits share items (naming both and how many), or a seed is both a
            dev and a test seed.
    """

    def __init__(
        self,
        items: Mapping[str, Sequence[Any]],
        *,
        key: Callable[[Any], Any] | None = None,
        sealed: Iterable[str] | None = None,
        dev_seeds: Iterable[int] = (),
        test_seeds: Iterable[int] = (),
        allow_overlap: Iterable[tuple[str, str]] = (),
        seed: int | None = None,
        builder: str | None = None,
        params: Mapping[str, Any] | None = None,
    ):
        if not isinstance(items, Mapping) or not items:
            raise SplitError("Splits needs a non-empty mapping of split name -> items")
        self._items = {str(n): tuple(v) for n, v in items.items()}
        sealed = ("test",) if sealed is None and "test" in self._items else (sealed or ())
        self._sealed = tuple(sealed)
        unknown = [s for s in self._sealed if s not in self._items]
        if unknown:
            raise SplitError(f"cannot seal {unknown}: no such split; splits are {self.names}")
        self.key, self.seed, self.builder, self.params = key, seed, builder, dict(params or {})
        self._allow = {frozenset(p) for p in allow_overlap}
        ident = key or (lambda it: it)
        self._hashes = {n: [content_hash(ident(it)) for it in v] for n, v in self._items.items()}
        self._digests = {n: _sha("\n".join(sorted(h)).encode()) for n, h in self._hashes.items()}
        self.overlaps = self.check()
        self._dev, self._test = tuple(dev_seeds), tuple(test_seeds)
        both = sorted(set(self._dev) & set(self._test))
        if both:
            raise SplitError(
                f"seeds {both} are both dev and test seeds; choose test seeds never used while "
                "designing (dev_seeds and test_seeds must be disjoint)"
            )
        self._seen = set(self._dev)
        self._opened: dict[str, Any] | None = None
        self._design_depth = 0
        self.design_steps: list[str] = []

    @classmethod
    def build(
        cls,
        builder: Callable[..., Mapping[str, Sequence[Any]]],
        seed: int,
        *,
        key: Callable[[Any], Any] | None = None,
        sealed: Iterable[str] | None = None,
        dev_seeds: Iterable[int] = (),
        test_seeds: Iterable[int] = (),
        allow_overlap: Iterable[tuple[str, str]] = (),
        **params: Any,
    ) -> Splits:
        """Call ``builder(seed=seed, **params)`` (the one function that owns these splits) and
        check its result; the builder's name, seed and params go into :meth:`summary`."""
        items = builder(seed=seed, **params)
        if not isinstance(items, Mapping):
            raise SplitError(
                f"{builder.__qualname__} returned {type(items).__name__}; a split builder "
                "returns a mapping of split name -> items"
            )
        name = f"{builder.__module__}.{builder.__qualname__}"
        return cls(
            items,
            key=key,
            sealed=sealed,
            dev_seeds=dev_seeds,
            test_seeds=test_seeds,
            allow_overlap=allow_overlap,
            seed=seed,
            builder=name,
            params=params,
        )

    # -- the disjointness check -------------------------------------------------------------
    def check(self) -> dict[str, int]:
        """Count shared items (by content hash) for every pair of splits; raise
        :class:`SplitError` naming each overlapping pair not in ``allow_overlap``."""
        overlaps, bad = {}, []
        for a, b in itertools.combinations(self._items, 2):
            shared = set(self._hashes[a]) & set(self._hashes[b])
            overlaps[f"{a}/{b}"] = len(shared)
            if shared and frozenset((a, b)) not in self._allow:
                h = next(iter(shared))
                example = self._items[a][self._hashes[a].index(h)]
                bad.append(f"'{a}' and '{b}' share {len(shared)} items (e.g. {_short(example)})")
        if bad:
            raise SplitError(
                "splits overlap: " + "; ".join(bad) + ". Build every split in one seeded "
                "function so they are disjoint (compare by Splits(key=...) if items differ only "
                "in fields that do not identify them), or pass allow_overlap=[(a, b)] if the "
                "sharing is intended"
            )
        return overlaps

    # -- access -----------------------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        return list(self._items)

    @property
    def sealed(self) -> tuple[str, ...]:
        return self._sealed

    @property
    def opened(self) -> bool:
        """Whether :meth:`open_test` was called."""
        return self._opened is not None

    @property
    def in_design(self) -> bool:
        return self._design_depth > 0

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __getitem__(self, name: str) -> Split:
        if name not in self._items:
            raise KeyError(f"unknown split {name!r}; choose one of: {', '.join(self._items)}")
        sealed = name in self._sealed
        if sealed:
            self._guard(f"split {name!r}")
        return Split(name, self._items[name], self._digests[name], sealed, self)

    def _guard(self, what: str) -> None:
        if self.in_design:
            raise SealedSplitError(
                f"{what} is sealed and cannot be used in a design step "
                f"({self.design_steps[-1]!r}); tune and design on the dev data (e.g. 'val' and "
                "the dev seeds), then call splits.open_test() once for the final evaluation"
            )
        if not self.opened:
            raise SealedSplitError(
                f"{what} is sealed; call splits.open_test() once, after every tuning and design "
                "step, to evaluate the chosen settings on it (the record says it was opened)"
            )

    @property
    def dev_seeds(self) -> tuple[int, ...]:
        return self._dev

    @property
    def test_seeds(self) -> tuple[int, ...]:
        """The test seeds: sealed like the test split until :meth:`open_test`."""
        if self._test:
            self._guard("the test seeds")
        return self._test

    # -- the lifecycle ----------------------------------------------------------------------
    @contextlib.contextmanager
    def design(self, step: str = "design") -> Iterator[Splits]:
        """A tuning or design step: inside it every sealed split and the test seeds raise
        :class:`SealedSplitError`. Starting one after :meth:`open_test` raises too (choosing
        settings after seeing test results is tuning on test)."""
        if self.opened:
            raise SealedSplitError(
                f"design step {step!r} started after splits.open_test(); every tuning and design "
                "step must come before the test split is opened"
            )
        self.design_steps.append(step)
        self._design_depth += 1
        try:
            yield self
        finally:
            self._design_depth -= 1

    def open_test(self, reason: str = "final evaluation of the chosen settings") -> Splits:
        """Unseal the sealed splits and the test seeds, once, for the record's evaluation."""
        if self.in_design:
            raise SealedSplitError(
                f"open_test() called inside design step {self.design_steps[-1]!r}; open the "
                "test split only after every design step has finished"
            )
        if self.opened:
            raise SplitError(
                "the test split was already opened; evaluate every arm in that one pass "
                "(the record says the test split was used once)"
            )
        self._opened = {"reason": reason, "after_design_steps": list(self.design_steps)}
        return self

    def declare_seen(self, *seeds: int) -> None:
        """Declare seeds (beyond the dev seeds) that a design step looked at; a test seed
        raises :class:`SplitError`, since its results could no longer be a clean test."""
        clash = sorted(set(seeds) & set(self._test))
        if clash:
            raise SplitError(
                f"seeds {clash} were seen in design but are test seeds; pick test seeds that no "
                "design step has looked at"
            )
        self._seen.update(seeds)

    @property
    def seeds_seen_in_design(self) -> list[int]:
        """The dev seeds plus every seed given to :meth:`declare_seen`, sorted."""
        return sorted(self._seen)

    def summary(self) -> dict[str, Any]:
        """What the record's ``splits`` field holds: builder, seed, per-split size and digest,
        the overlap counts, the seal and whether (and after what) the test split was opened."""
        return {
            "builder": self.builder,
            "seed": self.seed,
            "params": json.loads(json.dumps(self.params, default=repr)),
            "key": getattr(self.key, "__qualname__", None) if self.key else None,
            "splits": {
                n: {"n": len(v), "unique": len(set(self._hashes[n])), "digest": self._digests[n]}
                for n, v in self._items.items()
            },
            "disjoint": not any(self.overlaps.values()),  # false only with allow_overlap
            "overlaps": dict(self.overlaps),
            "allowed_overlaps": sorted("/".join(sorted(p)) for p in self._allow),
            "sealed": list(self._sealed),
            "dev_seeds": list(self._dev),
            "test_seeds": list(self._test),
            "design_steps": list(self.design_steps),
            "test_opened": self._opened is not None,
            "test_opened_after": self._opened["after_design_steps"] if self._opened else None,
        }
