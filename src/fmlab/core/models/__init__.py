"""Model substrate: the bundled SmolLM2 loader, tiny HF Llama builders and tokenizers.

Names resolve lazily (PEP 562): ``from fmlab.core.models import resolve_dtype`` loads only
``pretrained`` (torch), not transformers, which costs ~2 s of start-up on the CLI paths that never
build a model (``fmlab param-delta``)."""

from __future__ import annotations

import importlib

_WHERE = {
    "BUNDLED_MODELS": "pretrained",
    "bundled_model_status": "pretrained",
    "check_model_dir": "pretrained",
    "load_pretrained": "pretrained",
    "resolve_device": "pretrained",
    "resolve_dtype": "pretrained",
    "resolve_model_dir": "pretrained",
    "verify_cache": "pretrained",
    "MODEL_BUILDERS": "tiny",
    "build_model": "tiny",
    "llama": "tiny",
    "llama_config": "tiny",
    "CHAT_TEMPLATE": "tokenizer",
    "DOC_SEP": "tokenizer",
    "SPECIAL_TOKENS": "tokenizer",
    "train_bpe_tokenizer": "tokenizer",
    "train_char_tokenizer": "tokenizer",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
