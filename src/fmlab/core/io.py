"""Safe file I/O: atomic writes, atomic output directories, hashing, safe checkpoint loading.

Every file fmlab writes goes through here, so that an interrupted or failed command leaves
either the complete result or nothing at all, never a half-written file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "CacheDirError",
    "CheckpointError",
    "Memo",
    "atomic_dir",
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "cache_dir",
    "check_safetensors_file",
    "load_torch_file",
    "read_json",
    "read_npz",
    "recover_swap",
    "safetensors_header",
    "sha256_file",
]


class CheckpointError(ValueError):
    """A checkpoint or model directory is missing, corrupt or of an unsupported format."""


class CacheDirError(OSError):
    """The fmlab cache directory cannot be created or written."""


def cache_dir() -> Path:
    """The fmlab cache directory: ``$FMLAB_CACHE`` or ``~/.cache/fmlab`` (created on demand).

    Raises :class:`CacheDirError` naming the variable and the fix when the directory cannot be
    created or written (it is a file, or a read-only location)."""
    env = os.environ.get("FMLAB_CACHE")
    root = Path(env if env else Path.home() / ".cache" / "fmlab").expanduser()
    where = f"FMLAB_CACHE={env}" if env else f"the default cache directory {root}"
    fix = "point FMLAB_CACHE at a writable directory, e.g. export FMLAB_CACHE=/tmp/fmlab-cache"
    if root.exists() and not root.is_dir():
        raise CacheDirError(f"{where} is not a directory; {fix}")
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CacheDirError(f"{where} cannot be created ({e.strerror or e}); {fix}") from e
    if not os.access(root, os.W_OK | os.X_OK):
        raise CacheDirError(f"{where} is not writable; {fix}")
    return root


def _umask() -> int:
    # os.umask can only be read by setting it; restore it at once.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _apply_umask(path: str | os.PathLike, directory: bool = False) -> None:
    """Give a mkstemp/mkdtemp result the permissions a plain open()/mkdir() would have had
    (they create 0600 / 0700 files regardless of the umask)."""
    os.chmod(path, (0o777 if directory else 0o666) & ~_umask())


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same directory and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        _apply_umask(tmp)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; it replaces ``path`` only if the block succeeds.

    For writers that want a file name rather than bytes (``torch.save``, ``save_file``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        _apply_umask(tmp)
        yield Path(tmp)
        if Path(tmp).is_file():  # a writer may have replaced the file with its own
            _apply_umask(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Atomically write UTF-8 text."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int = 2) -> Path:
    """Atomically write ``obj`` as JSON (validated by serializing before anything is written)."""
    text = json.dumps(obj, indent=indent, sort_keys=False, default=_json_default) + "\n"
    return atomic_write_text(path, text)


def _json_default(o: Any) -> Any:
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "item") and callable(o.item):  # numpy / torch scalars
        return o.item()
    if hasattr(o, "tolist"):
        return o.tolist()
    raise TypeError(f"object of type {type(o).__name__} is not JSON serializable")


def read_npz(path: str | os.PathLike, what: str = "an .npz file", fix: str = "") -> dict:
    """Every array of an ``.npz`` file, read eagerly (``np.load`` is lazy and would fail later).

    Pickled (object) arrays are refused. A missing, truncated or foreign file raises
    ``ValueError`` naming the file, what it should have been and ``fix``."""
    import zipfile

    import numpy as np

    path = Path(path)
    tail = f"; {fix}" if fix else ""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (expected {what}){tail}")
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (OSError, EOFError, zipfile.BadZipFile) as e:
        raise ValueError(f"{path}: not {what} (truncated or another format: {e}){tail}") from e
    except ValueError as e:
        if "pickle" in str(e).lower():
            raise ValueError(
                f"{path}: holds pickled (object) data, which fmlab never loads (unpickling can "
                f"run code); expected {what}{tail}"
            ) from e
        raise ValueError(f"{path}: not {what} ({e}){tail}") from e


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file, naming the file when it is missing or malformed."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e}); regenerate or fix the file") from e


class Memo:
    """Finished results of a long job in one JSON file, rewritten atomically after every entry,
    so an interrupted job resumes where it stopped.

    ``key`` describes the settings the results belong to; a file written under other settings
    is ignored and will be overwritten. A file that is not a memo at all (truncated, not JSON)
    is never overwritten: it is moved aside to ``<name>.corrupt`` with a warning, and the job
    starts afresh. Values are stored as JSON (tuples come back as lists)."""

    def __init__(self, path: str | os.PathLike, key: Any = None, log=None):
        self.path, self.key = Path(path), json.loads(json.dumps(key, default=_json_default))
        self.data: dict[str, Any] = {}
        if self.path.is_file():
            try:
                d = read_json(self.path)
            except ValueError:
                d = None
            if not (isinstance(d, dict) and "data" in d and "key" in d):
                aside = self.path.with_name(self.path.name + ".corrupt")
                os.replace(self.path, aside)
                warnings.warn(
                    f"{self.path}: not a readable memo (truncated or corrupt); moved it to "
                    f"{aside} and starting afresh (delete that file once you do not need it)",
                    stacklevel=2,
                )
            elif d.get("key") == self.key:
                self.data = d["data"]
        self.resumed = len(self.data)
        if self.resumed and log is not None:
            log(f"resuming: {self.resumed} finished entries in {self.path}")

    def __contains__(self, name: str) -> bool:
        return name in self.data

    def get(self, name: str, default: Any = None) -> Any:
        return self.data.get(name, default)

    def put(self, name: str, value: Any) -> Any:
        self.data[name] = json.loads(json.dumps(value, default=_json_default))
        atomic_write_json(self.path, {"key": self.key, "data": self.data})
        return self.data[name]

    def get_or_compute(self, name: str, fn) -> Any:
        """The stored value of ``name``, computing (and storing) it with ``fn()`` first if new."""
        return self.data[name] if name in self.data else self.put(name, fn())


@contextlib.contextmanager
def atomic_dir(final: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary directory that becomes ``final`` only if the block succeeds.

    The temporary directory lives beside ``final`` (same filesystem, so the rename is atomic).
    On any exception it is removed, leaving nothing behind. An existing ``final`` is an error
    unless ``overwrite`` is set, in which case it is replaced only after success.
    """
    final = Path(final)
    old = final.with_name(f".{final.name}.old")
    recover_swap(final)
    if final.exists() and not overwrite:
        raise FileExistsError(
            f"{final} already exists; choose another output path or remove it first "
            "(fmlab never writes into an existing output directory)"
        )
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".partial", dir=final.parent))
    try:
        yield tmp
        _apply_umask_tree(tmp)  # writers such as safetensors create their files 0600
        if final.exists():  # overwrite=True: swap in after success only
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def recover_swap(final: str | os.PathLike) -> bool:
    """Finish what a kill between the two renames of ``atomic_dir(overwrite=True)`` left: the
    last good directory sits at ``.NAME.old`` and ``NAME`` is missing. Readers of a directory
    that is replaced in place (checkpoints) call this before they look; returns whether it
    restored anything."""
    final = Path(final)
    old = final.with_name(f".{final.name}.old")
    if old.is_dir() and not final.exists():
        os.replace(old, final)
        return True
    return False


def _apply_umask_tree(root: Path) -> None:
    _apply_umask(root, directory=True)
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            _apply_umask(Path(dirpath) / d, directory=True)
        for f in filenames:
            _apply_umask(Path(dirpath) / f)


def json_digest(obj: Any, length: int = 12) -> str:
    """A short SHA-256 of ``obj`` as canonical JSON: a folder or memo name that changes when a
    configuration does."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:length]


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def safetensors_header(
    path: str | os.PathLike,
) -> tuple[int, dict[str, tuple[str, list[int], int, int]]]:
    """Read and validate a safetensors header against the file size.

    Returns ``(data_start, {name: (dtype code, shape, start, end)})`` where ``start``/``end``
    are byte offsets relative to ``data_start``. Reads only the header, so it is cheap for
    multi-GB shards. A truncated or corrupt file raises :class:`CheckpointError` naming it.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    size = path.stat().st_size
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise ValueError("file shorter than the 8-byte header length")
            n = int.from_bytes(head, "little")
            if n <= 0 or 8 + n > size:
                raise ValueError(f"header length {n} does not fit in a {size}-byte file")
            header = json.loads(f.read(n))
    except (ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(
            f"{path}: not a valid safetensors file ({e}); the file is truncated or corrupt, "
            "re-download or re-save it"
        ) from e
    out: dict[str, tuple[str, list[int], int, int]] = {}
    end = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            start, stop = (int(x) for x in info["data_offsets"])
            out[name] = (info["dtype"], list(info["shape"]), start, stop)
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"{path}: malformed header entry for tensor {name!r}") from e
        end = max(end, stop)
    if 8 + n + end > size:
        raise CheckpointError(
            f"{path}: truncated (header promises {8 + n + end} bytes, file has {size}); "
            "re-download or re-save it"
        )
    return 8 + n, out


def check_safetensors_file(path: str | os.PathLike) -> dict[str, tuple[str, list[int]]]:
    """Validate a safetensors file's header against its size; return {name: (dtype, shape)}."""
    _, header = safetensors_header(path)
    return {k: (code, shape) for k, (code, shape, _, _) in header.items()}


def load_torch_file(path: str | os.PathLike, allow_pickle: bool = False) -> dict[str, torch.Tensor]:
    """Load a tensor dict from ``.safetensors`` or (only when allowed) a pickle ``.bin``/``.pt``.

    Pickle files can run arbitrary code when unpickled; they are refused unless
    ``allow_pickle=True``, and then loaded with ``weights_only=True``.
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        check_safetensors_file(path)
        return load_file(str(path))
    if not allow_pickle:
        raise CheckpointError(
            f"{path}: pickle checkpoints are refused because unpickling can run code; convert "
            "it to safetensors or pass allow_pickle=True (loaded with weights_only=True)"
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{path}: could not load with weights_only=True ({e})") from e
