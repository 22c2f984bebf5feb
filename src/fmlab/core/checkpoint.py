"""Stream checkpoints tensor by tensor: a lazy reader and a streaming safetensors writer.

Weight-arithmetic tools (ParamΔ, checkpoint geometry analysis) touch every tensor of two or
more models. Here memory stays at a few tensors whatever the model size:

- :class:`TensorSource` is a read-only view of a checkpoint (HF directory with sharded or
  single safetensors, a single file, pickle ``.bin`` only when allowed, a bundled model name,
  or an in-memory state dict) that loads one tensor at a time.
- :class:`SafetensorsStreamWriter` writes a safetensors file whose header is known in advance
  (names, dtypes, shapes) and whose tensors arrive one at a time, so no shard is ever held in
  memory. :func:`write_sharded` plans shards and writes the HF index.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from fmlab.core.io import CheckpointError, load_torch_file, read_json, safetensors_header

__all__ = [
    "SAFETENSORS_DTYPES",
    "SafetensorsStreamWriter",
    "TensorSource",
    "TensorSpec",
    "parse_size",
    "plan_shards",
    "write_sharded",
]

SAFETENSORS_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
_DTYPE_CODES = {v: k for k, v in SAFETENSORS_DTYPES.items()}
INDEX_NAME = "model.safetensors.index.json"


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * torch.empty((), dtype=self.dtype).element_size()


class TensorSource:
    """Lazy, read-only tensors of one checkpoint; ``get`` loads a single tensor.

    Build with :meth:`open` (a path or a bundled model name) or :meth:`from_state_dict`.
    """

    def __init__(
        self,
        name: str,
        specs: dict[str, TensorSpec],
        loader: Callable[[str, tuple[int, int] | None], torch.Tensor],
        config: dict | None = None,
        root: Path | None = None,
        files: list[Path] | None = None,
    ):
        self.name = name
        self._specs = specs
        self._loader = loader
        self.config = config
        self.root = root  # the checkpoint directory, if any
        self.files = files or []  # the weight files
        # whether get() returns a fresh tensor the caller may modify (file reads do; a wrapped
        # state dict hands out the caller's own tensors)
        self.fresh = bool(files)

    def keys(self) -> list[str]:
        return list(self._specs)

    def __contains__(self, key: str) -> bool:
        return key in self._specs

    def __iter__(self):
        return iter(self._specs)

    def __len__(self) -> int:
        return len(self._specs)

    def spec(self, key: str) -> TensorSpec:
        return self._specs[key]

    def get(self, key: str, rows: tuple[int, int] | None = None) -> torch.Tensor:
        """Tensor ``key``, or only its rows ``start:stop`` (read alone from a file source)."""
        if key not in self._specs:
            raise KeyError(f"{self.name}: no tensor {key!r}")
        if rows is None:
            return self._loader(key, None)
        if not self._specs[key].shape:
            raise ValueError(f"{key} is a scalar; it has no rows")
        return self._loader(key, rows)

    @property
    def tied_embeddings(self) -> bool:
        """Whether the config ties the LM head to the input embedding (HF default: True)."""
        if self.config is None:
            return not any(k.endswith("lm_head.weight") for k in self._specs)
        return bool(self.config.get("tie_word_embeddings", True))

    @classmethod
    def from_state_dict(
        cls, sd: Mapping[str, torch.Tensor], name: str = "state_dict", config: dict | None = None
    ):
        specs = {k: TensorSpec(k, v.dtype, tuple(v.shape)) for k, v in sd.items()}
        return cls(
            name,
            specs,
            lambda k, rows: sd[k] if rows is None else sd[k][rows[0] : rows[1]],
            config=config,
        )

    @classmethod
    def open(cls, where: str | os.PathLike, allow_pickle: bool = False) -> TensorSource:
        """Open a checkpoint directory, a single weight file, or a bundled model name."""
        path = Path(where).expanduser()
        if not path.exists():
            from fmlab.core.models.pretrained import BUNDLED_MODELS, resolve_model_dir

            if str(where) in BUNDLED_MODELS:
                path = resolve_model_dir(str(where))
            else:
                raise FileNotFoundError(
                    f"{where}: no such checkpoint directory or file (bundled names: "
                    f"{', '.join(BUNDLED_MODELS)})"
                )
        if path.is_file():
            return cls._open_files(str(path), path.parent, [path], None, allow_pickle)
        config = read_json(path / "config.json") if (path / "config.json").is_file() else None
        if (path / INDEX_NAME).is_file():
            index = read_json(path / INDEX_NAME)
            wmap = index.get("weight_map")
            if not isinstance(wmap, dict) or not wmap:
                raise CheckpointError(f"{path / INDEX_NAME}: no 'weight_map'; the index is corrupt")
            files = sorted({path / f for f in wmap.values()})
            missing = [str(f) for f in files if not f.is_file()]
            if missing:
                raise CheckpointError(
                    f"{path}: the index lists shard files that are missing: {', '.join(missing)}"
                )
            src = cls._open_files(str(path), path, files, config, allow_pickle)
            absent = sorted(set(wmap) - set(src.keys()))
            if absent:
                raise CheckpointError(
                    f"{path / INDEX_NAME}: {len(absent)} tensors listed in the index are not in "
                    f"their shards (first: {absent[0]!r}); the checkpoint is incomplete"
                )
            return src
        files = sorted(path.glob("*.safetensors"))
        if not files:
            files = sorted([*path.glob("pytorch_model*.bin"), *path.glob("*.pt")])
        if not files:
            raise CheckpointError(
                f"{path}: no weights found (*.safetensors, {INDEX_NAME} or pytorch_model*.bin)"
            )
        return cls._open_files(str(path), path, files, config, allow_pickle)

    @classmethod
    def _open_files(cls, name, root, files, config, allow_pickle) -> TensorSource:
        specs: dict[str, TensorSpec] = {}
        where: dict[str, tuple[Path, int, int]] = {}  # name -> (file, absolute offset, nbytes)
        pickled: dict[str, torch.Tensor] = {}
        for f in files:
            if f.suffix == ".safetensors":
                data_start, header = safetensors_header(f)
                for k, (code, shape, start, stop) in header.items():
                    if code not in SAFETENSORS_DTYPES:
                        raise CheckpointError(f"{f}: tensor {k!r} has unsupported dtype {code}")
                    if k in specs:
                        raise CheckpointError(f"{root}: tensor {k!r} appears in two files")
                    specs[k] = TensorSpec(k, SAFETENSORS_DTYPES[code], tuple(shape))
                    if stop - start != specs[k].nbytes:
                        raise CheckpointError(
                            f"{f}: tensor {k!r} has {stop - start} bytes, its shape needs {specs[k].nbytes}"
                        )
                    where[k] = (f, data_start + start, stop - start)
            else:
                sd = _load_pickle_mmap(f, allow_pickle)
                for k, v in sd.items():
                    specs[k] = TensorSpec(k, v.dtype, tuple(v.shape))
                    pickled[k] = v

        def load(key: str, rows: tuple[int, int] | None) -> torch.Tensor:
            if key in pickled:
                t = pickled[key]
                return t if rows is None else t[rows[0] : rows[1]]
            # A plain read into a fresh buffer rather than an mmap: mapped file pages count in
            # the process's resident memory, so reading three multi-GB checkpoints through mmap
            # would show (and on a tight machine cost) their whole size.
            f, offset, nbytes = where[key]
            spec = specs[key]
            shape = spec.shape
            if rows is not None:
                row_bytes = nbytes // shape[0] if shape[0] else 0
                start, stop = max(0, rows[0]), min(shape[0], rows[1])
                offset, nbytes = offset + start * row_bytes, max(0, stop - start) * row_bytes
                shape = (max(0, stop - start), *shape[1:])
            if nbytes == 0:
                return torch.empty(shape, dtype=spec.dtype)
            buf = bytearray(nbytes)
            with open(f, "rb") as fh:
                fh.seek(offset)
                if fh.readinto(buf) != nbytes:
                    raise CheckpointError(
                        f"{f}: could not read tensor {key!r} (file changed or truncated)"
                    )
            return torch.frombuffer(buf, dtype=spec.dtype).reshape(shape)

        return cls(name, specs, load, config=config, root=Path(root), files=list(files))


def _load_pickle_mmap(path: Path, allow_pickle: bool) -> dict[str, torch.Tensor]:
    if not allow_pickle:
        return load_torch_file(path, allow_pickle=False)  # raises with the explanation
    try:  # mmap keeps a multi-GB .bin out of RAM until a tensor is touched
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:
        return load_torch_file(path, allow_pickle=True)


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?i?B)?\s*$", re.I)


def parse_size(size: int | str) -> int:
    """Bytes from ``5GB``, ``500MB``, ``1.5GiB`` or an int."""
    if isinstance(size, int):
        return size
    m = _SIZE.match(size)
    if not m:
        raise ValueError(f"cannot parse size {size!r}; use e.g. 2GB, 500MB or a byte count")
    unit = (m.group(2) or "B").upper()
    base = 1024 if "I" in unit else 1000
    power = {"B": 0, "K": 1, "M": 2, "G": 3, "T": 4}[unit[0] if unit != "B" else "B"]
    return int(float(m.group(1)) * base**power)


class SafetensorsStreamWriter:
    """Write a safetensors file tensor by tensor, in the order of ``specs``.

    The header (names, dtypes, shapes, offsets) is written first; each :meth:`write` appends
    one tensor's bytes, so memory holds only the tensor being written. :meth:`close` checks
    that every declared tensor arrived.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        specs: list[TensorSpec],
        metadata: dict[str, str] | None = None,
    ):
        self.path = Path(path)
        self.specs = list(specs)
        header: dict[str, object] = {"__metadata__": {"format": "pt", **(metadata or {})}}
        offset = 0
        for s in self.specs:
            if s.dtype not in _DTYPE_CODES:
                raise ValueError(f"dtype {s.dtype} cannot be stored in safetensors")
            header[s.name] = {
                "dtype": _DTYPE_CODES[s.dtype],
                "shape": list(s.shape),
                "data_offsets": [offset, offset + s.nbytes],
            }
            offset += s.nbytes
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)  # data starts 8-byte aligned
        self._f = open(self.path, "wb")  # noqa: SIM115 - closed in close()
        self._f.write(len(raw).to_bytes(8, "little"))
        self._f.write(raw)
        self._next = 0
        self._partial = 0  # bytes written so far of the current tensor

    def write(self, name: str, tensor: torch.Tensor) -> None:
        """Append ``tensor``, or the next block of its rows (consecutive calls with the same
        name and ``shape[1:]``, rows adding up to ``shape[0]``)."""
        if self._next >= len(self.specs):
            raise ValueError(f"{self.path}: unexpected extra tensor {name!r}")
        s = self.specs[self._next]
        whole = tuple(tensor.shape) == s.shape
        block = (
            len(s.shape) >= 1
            and tuple(tensor.shape[1:]) == s.shape[1:]
            and tensor.ndim == len(s.shape)
        )
        if name != s.name or tensor.dtype != s.dtype or not (whole or block):
            raise ValueError(
                f"{self.path}: expected {s.name} {s.dtype} {s.shape}, got {name} "
                f"{tensor.dtype} {tuple(tensor.shape)}"
            )
        flat = tensor.detach().to("cpu").contiguous().reshape(-1)
        nbytes = flat.numel() * flat.element_size()
        if self._partial + nbytes > s.nbytes:
            raise ValueError(f"{self.path}: more rows than {s.name} {s.shape} has")
        self._f.write(memoryview(flat.view(torch.uint8).numpy()))
        self._partial += nbytes
        if self._partial == s.nbytes:
            self._next += 1
            self._partial = 0

    @property
    def complete(self) -> int:
        """How many tensors have been written in full."""
        return self._next

    def close(self) -> None:
        self._f.close()
        if self._next != len(self.specs):
            missing = [s.name for s in self.specs[self._next :]]
            raise ValueError(
                f"{self.path}: {len(missing)} tensors never written (first: {missing[0]})"
            )

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *_):
        if exc_type is None:
            self.close()
        else:
            self._f.close()
        return False


def plan_shards(specs: list[TensorSpec], max_shard_bytes: int) -> list[list[TensorSpec]]:
    """Greedy, order-preserving split of ``specs`` into shards of at most ``max_shard_bytes``
    (a tensor larger than the limit gets a shard of its own)."""
    shards: list[list[TensorSpec]] = [[]]
    size = 0
    for s in specs:
        if shards[-1] and size + s.nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(s)
        size += s.nbytes
    return shards if shards[0] else []


def write_sharded(
    out_dir: str | os.PathLike,
    specs: list[TensorSpec],
    tensors: Iterable[tuple[str, torch.Tensor]],
    max_shard_size: int | str = "5GB",
    metadata: dict[str, str] | None = None,
) -> list[Path]:
    """Stream ``tensors`` (in ``specs`` order) into HF-style shards in ``out_dir``.

    Each item is a whole tensor or the next block of its rows, so a tensor never has to be in
    memory at once.

    One shard is written as ``model.safetensors``; more as
    ``model-0000i-of-0000n.safetensors`` plus ``model.safetensors.index.json``.
    """
    out = Path(out_dir)
    shards = plan_shards(specs, parse_size(max_shard_size))
    n = len(shards)
    names = (
        ["model.safetensors"]
        if n == 1
        else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
    )
    it = iter(tensors)
    weight_map: dict[str, str] = {}
    for fname, shard in zip(names, shards, strict=True):
        with SafetensorsStreamWriter(out / fname, shard, metadata) as w:
            for s in shard:
                target = w.complete + 1
                while w.complete < target:
                    w.write(*next(it))  # the whole tensor or its next block of rows
                weight_map[s.name] = fname
    if n > 1:
        index = {"metadata": {"total_size": sum(s.nbytes for s in specs)}, "weight_map": weight_map}
        (out / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")
    return [out / f for f in names]
