"""``FlashArch``: one pruned candidate of a Llama-style backbone, as plain data.

An arch names, for every KEPT backbone layer (in backbone order): its FFN width, its number of
KV heads (query heads follow the backbone's query/KV ratio, so grouped-query attention keeps
its shape) and its attention mode:

- ``"full"``: causal attention over the whole context;
- ``"window:W"``: causal attention over the last ``W`` positions (sliding window);
- ``"skip"``: the layer drops attention (and its KV cache) and keeps its FFN.

An FFN width of 0 drops the layer's FFN (the attention stays). Everything is validated against
the backbone's shape (:class:`BackboneShape`) before any work; every problem is reported at
once (:class:`FlashArchError`, a ``ValueError``).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "ATTENTION_MODES",
    "BackboneShape",
    "FlashArch",
    "FlashArchError",
    "parse_attention",
]

ATTENTION_MODES = ("full", "window:W", "skip")


class FlashArchError(ValueError):
    """An arch that cannot be built on its backbone; the message lists every problem and the fix."""


@dataclass(frozen=True)
class BackboneShape:
    """The numbers of a Llama-style backbone an arch is checked against."""

    num_layers: int
    hidden_size: int
    intermediate_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int

    @property
    def q_per_kv(self) -> int:
        return self.num_heads // self.num_kv_heads

    @classmethod
    def of(cls, config) -> BackboneShape:
        """The shape of a ``LlamaConfig`` (or a model with ``.config``)."""
        config = getattr(config, "config", config)
        heads = config.num_attention_heads
        kv = config.num_key_value_heads or heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        return cls(
            num_layers=config.num_hidden_layers,
            hidden_size=config.hidden_size,
            intermediate_size=config.intermediate_size,
            num_heads=heads,
            num_kv_heads=kv,
            head_dim=head_dim,
        )


def parse_attention(mode: str) -> tuple[str, int | None]:
    """``"full"`` -> ``("full", None)``, ``"window:64"`` -> ``("window", 64)``,
    ``"skip"`` -> ``("skip", None)``; anything else raises :class:`FlashArchError`."""
    if mode in ("full", "skip"):
        return mode, None
    if isinstance(mode, str) and mode.startswith("window:"):
        w = mode.split(":", 1)[1]
        if w.isdigit() and int(w) >= 1:
            return "window", int(w)
    raise FlashArchError(
        f"attention mode {mode!r} is not one of {', '.join(ATTENTION_MODES)} "
        "(W a positive integer, e.g. 'window:256')"
    )


@dataclass
class FlashArch:
    """A pruned candidate: per kept backbone layer, FFN width, KV heads and attention mode.

    Attributes:
        layers: the kept backbone layer indices, ascending (e.g. ``[0, 1, 3, 5]``).
        ffn: FFN width of each kept layer (0 drops the FFN).
        kv_heads: KV heads of each kept layer; its query heads are ``kv * q_per_kv``.
        attention: ``"full" | "window:W" | "skip"`` for each kept layer.
    """

    layers: list[int]
    ffn: list[int]
    kv_heads: list[int]
    attention: list[str] = field(default_factory=list)

    def __post_init__(self):
        self.layers = [int(i) for i in self.layers]
        n = len(self.layers)
        self.ffn = _broadcast(self.ffn, n)
        self.kv_heads = _broadcast(self.kv_heads, n)
        self.attention = _broadcast(self.attention or "full", n, cast=str)

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def uniform(cls, shape: BackboneShape) -> FlashArch:
        """The backbone itself: every layer, full width, every KV head, full attention."""
        n = shape.num_layers
        return cls(list(range(n)), [shape.intermediate_size] * n, [shape.num_kv_heads] * n)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FlashArch:
        """From JSON-like data; ``ffn``/``kv_heads``/``attention`` may be one value for all."""
        if not isinstance(d, dict):
            raise FlashArchError(f"an arch is a JSON object, got {type(d).__name__}")
        known = {"layers", "ffn", "kv_heads", "attention"}
        unknown = sorted(set(d) - known)
        missing = sorted({"layers", "ffn", "kv_heads"} - set(d))
        problems = []
        if unknown:
            problems.append(f"unknown keys {unknown} (valid: {', '.join(sorted(known))})")
        if missing:
            problems.append(f"missing keys {missing}")
        if problems:
            raise FlashArchError("bad arch: " + "; ".join(problems))
        try:
            return cls(d["layers"], d["ffn"], d["kv_heads"], d.get("attention", "full"))
        except (TypeError, ValueError) as e:
            if isinstance(e, FlashArchError):
                raise
            raise FlashArchError(f"bad arch: {e}") from None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str) -> FlashArch:
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as e:
            raise FlashArchError(f"an arch must be JSON: {e}") from None

    @classmethod
    def load(cls, path: str | Path) -> FlashArch:
        """Read an arch from a JSON file; errors name the file."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"arch file {path} does not exist; write one as JSON, e.g. "
                                    '{"layers": [0, 1, 2], "ffn": 768, "kv_heads": 3}')  # fmt: skip
        try:
            return cls.from_json(path.read_text())
        except FlashArchError as e:
            raise FlashArchError(f"{path}: {e}") from None

    def save(self, path: str | Path) -> None:
        from fmlab.core.io import atomic_write_json

        atomic_write_json(Path(path), self.to_dict())

    # -- checks -------------------------------------------------------------------------------
    def problems(self, shape: BackboneShape) -> list[str]:
        """Every reason this arch cannot be built on ``shape`` (empty when it can)."""
        out: list[str] = []
        n = len(self.layers)
        if n == 0:
            return ["the arch keeps no layers: keep at least one backbone layer"]
        for name in ("ffn", "kv_heads", "attention"):
            if len(getattr(self, name)) != n:
                out.append(f"{name} has {len(getattr(self, name))} entries for {n} kept layers")
        bad = [i for i in self.layers if not 0 <= i < shape.num_layers]
        if bad:
            out.append(f"layers {bad} are not backbone layers (0..{shape.num_layers - 1})")
        if self.layers != sorted(set(self.layers)):
            out.append(f"layers {self.layers} must be ascending without repeats")
        wide = [w for w in self.ffn if w > shape.intermediate_size]
        if wide:
            out.append(f"FFN widths {sorted(set(wide))} exceed the backbone's "
                       f"{shape.intermediate_size}: choose widths in 0..{shape.intermediate_size}")  # fmt: skip
        if any(w < 0 for w in self.ffn):
            out.append("FFN widths must be >= 0 (0 drops the FFN)")
        kvs = sorted(set(self.kv_heads))
        bad_kv = [k for k in kvs if not 1 <= k <= shape.num_kv_heads]
        if bad_kv:
            out.append(f"KV heads {bad_kv} out of range: the backbone has {shape.num_kv_heads} "
                       f"KV heads, choose 1..{shape.num_kv_heads}")  # fmt: skip
        if shape.num_heads % shape.num_kv_heads:
            out.append(f"the backbone's {shape.num_heads} query heads are not divisible by its "
                       f"{shape.num_kv_heads} KV heads")  # fmt: skip
        modes = []
        for m in self.attention:
            try:
                modes.append(parse_attention(m)[0])
            except FlashArchError as e:
                out.append(str(e))
        if modes and all(m == "skip" for m in modes):
            out.append("every kept layer skips attention: keep attention in at least one layer")
        return out

    def validate(self, shape: BackboneShape) -> FlashArch:
        """Raise :class:`FlashArchError` listing every problem; return ``self`` when valid."""
        probs = self.problems(shape)
        if probs:
            raise FlashArchError("invalid arch: " + "; ".join(probs))
        return self

    # -- summaries ----------------------------------------------------------------------------
    def modes(self) -> list[tuple[str, int | None]]:
        return [parse_attention(m) for m in self.attention]

    def is_uniform(self, shape: BackboneShape) -> bool:
        return self == FlashArch.uniform(shape)

    def describe(self) -> str:
        """A one-line summary, e.g. ``'24 layers, FFN 768-1536, KV 1-3, 4 skip, 2 window'``."""
        modes = [m for m, _ in self.modes()]
        return (f"{len(self.layers)} layers, FFN {min(self.ffn)}-{max(self.ffn)}, "
                f"KV {min(self.kv_heads)}-{max(self.kv_heads)}, {modes.count('skip')} skip, "
                f"{modes.count('window')} window")  # fmt: skip


def _broadcast(value, n: int, cast=int) -> list:
    if isinstance(value, int | str) and not isinstance(value, bool):
        return [cast(value)] * n
    return [cast(v) for v in value]
