"""Several deltas in one pass: Θ'_base + Σᵢ αᵢ(Θ_postᵢ − Θ_baseᵢ), from a YAML or JSON recipe.

Example (``recipe.yaml``)::

    new_base: llama3.1-base/
    out: merged/                 # optional; --out overrides
    deltas:
      - {post: llama3-inst/, base: llama3-base/, weight: 1.0}
      - {post: llama3-code/, base: llama3-base/, weight: 0.5}
    dtype: bfloat16              # optional, and every other option of param_delta

Relative paths are taken from the recipe file's folder; a bundled model name stays a name.
Unknown keys, missing keys and wrong types are errors naming the key and the valid ones.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field, fields
from pathlib import Path

from fmlab.core.models.pretrained import BUNDLED_MODELS
from fmlab.param_delta.delta import CHUNK_BYTES, Term, _as_source, merge_terms

__all__ = ["DeltaSpec", "Recipe", "RecipeError", "load_recipe", "run_recipe"]


class RecipeError(ValueError):
    """The recipe file is malformed; the message names every bad key."""


@dataclass
class DeltaSpec:
    post: str
    base: str
    weight: float = 1.0


@dataclass
class Recipe:
    new_base: str
    deltas: list[DeltaSpec]
    out: str | None = None
    dtype: str | None = None
    compute_dtype: str = "float32"
    vocab_policy: str = "error"
    tokenizer_policy: str = "error"
    tokenizer_from: str = "new-base"
    chat_template_from: str = "post"
    max_shard_size: str = "5GB"
    allow_pickle: bool = False
    check_finite: bool = True
    source: str = field(default="", repr=False)  # the file it came from

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "source"}
        d["deltas"] = [vars(x) for x in self.deltas]
        return d


_TYPES = {
    "new_base": str,
    "deltas": list,
    "out": (str, type(None)),
    "dtype": (str, type(None)),
    "compute_dtype": str,
    "vocab_policy": str,
    "tokenizer_policy": str,
    "tokenizer_from": str,
    "chat_template_from": str,
    "max_shard_size": (str, int),
    "allow_pickle": bool,
    "check_finite": bool,
}
_REQUIRED = ("new_base", "deltas")
_DELTA_KEYS = ("post", "base", "weight")


def _where(base: Path, p: str) -> str:
    if p in BUNDLED_MODELS or os.path.isabs(p):
        return p
    return str((base / p).resolve())


def parse_recipe(data: object, source: str = "recipe", root: Path | None = None) -> Recipe:
    """A :class:`Recipe` from parsed YAML/JSON, every problem reported at once."""
    problems: list[str] = []
    if not isinstance(data, dict):
        raise RecipeError(f"{source}: the recipe must be a mapping with new_base and deltas")
    for k in sorted(set(data) - set(_TYPES)):
        problems.append(f"unknown key {k!r}; valid keys: {', '.join(_TYPES)}")
    for k in _REQUIRED:
        if k not in data:
            problems.append(f"missing key {k!r}")
    for k, t in _TYPES.items():
        if k in data and not isinstance(data[k], t):
            problems.append(f"{k!r} must be {getattr(t, '__name__', 'a string')}, got {data[k]!r}")
    deltas: list[DeltaSpec] = []
    raw = data.get("deltas")
    if isinstance(raw, list):
        if not raw:
            problems.append("'deltas' is empty; give at least one {post, base, weight}")
        for i, d in enumerate(raw):
            at = f"deltas[{i}]"
            if not isinstance(d, dict):
                problems.append(f"{at} must be a mapping with post, base and weight")
                continue
            for k in sorted(set(d) - set(_DELTA_KEYS)):
                problems.append(f"{at}: unknown key {k!r}; valid keys: {', '.join(_DELTA_KEYS)}")
            for k in ("post", "base"):
                if not isinstance(d.get(k), str):
                    problems.append(f"{at}: {k!r} must be a checkpoint path or bundled name")
            w = d.get("weight", 1.0)
            if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w):
                problems.append(f"{at}: 'weight' must be a finite number, got {w!r}")
            elif isinstance(d.get("post"), str) and isinstance(d.get("base"), str):
                deltas.append(DeltaSpec(d["post"], d["base"], float(w)))
    if problems:
        lines = "\n".join(f"  - {p}" for p in problems)
        raise RecipeError(f"{source}: {len(problems)} problem(s) in the recipe:\n{lines}")
    root = root or Path.cwd()
    kw = {k: data[k] for k in _TYPES if k in data and k not in ("deltas", "new_base", "out")}
    return Recipe(
        new_base=_where(root, data["new_base"]),
        deltas=[DeltaSpec(_where(root, d.post), _where(root, d.base), d.weight) for d in deltas],
        out=_where(root, data["out"]) if data.get("out") else None,
        source=source,
        **kw,
    )


def load_recipe(path: str | os.PathLike) -> Recipe:
    """Read a ``.json``, ``.yaml`` or ``.yml`` recipe (YAML through ``yaml.safe_load``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such recipe file")
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() in (".yaml", ".yml"):
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise RecipeError(f"{path}: not valid YAML ({e})") from e
    elif path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise RecipeError(f"{path}: not valid JSON ({e})") from e
    else:
        raise RecipeError(f"{path}: a recipe is a .json, .yaml or .yml file")
    return parse_recipe(data, str(path), path.parent.resolve())


def run_recipe(
    recipe: Recipe | str | os.PathLike,
    out: str | os.PathLike | None = None,
    dry_run: bool = False,
    progress: bool = False,
    hash_inputs: bool = True,
    chunk_bytes: int = CHUNK_BYTES,
) -> dict:
    """Write the recipe's merge (streamed like :func:`fmlab.param_delta.param_delta`); return
    the manifest, which also holds the recipe."""
    r = recipe if isinstance(recipe, Recipe) else load_recipe(recipe)
    target = out if out is not None else r.out
    if target is None and not dry_run:
        raise RecipeError(f"{r.source}: no output directory; set 'out' in the recipe or pass --out")
    nb = _as_source(r.new_base, "new base", r.allow_pickle)
    terms = [
        Term(
            _as_source(d.post, f"post[{i}]", r.allow_pickle),
            _as_source(d.base, f"base[{i}]", r.allow_pickle),
            d.weight,
        )
        for i, d in enumerate(r.deltas)
    ]
    return merge_terms(
        terms,
        nb,
        target if target is not None else Path("/nonexistent-dry-run"),
        dtype=r.dtype,
        compute_dtype=r.compute_dtype,
        vocab_policy=r.vocab_policy,
        max_shard_size=r.max_shard_size,
        dry_run=dry_run,
        progress=progress,
        hash_inputs=hash_inputs,
        chunk_bytes=chunk_bytes,
        tokenizer_policy=r.tokenizer_policy,
        tokenizer_from=r.tokenizer_from,
        chat_template_from=r.chat_template_from,
        check_finite=r.check_finite,
        extra={"recipe": r.to_dict()},
    )
