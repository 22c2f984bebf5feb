"""Model substrate: the bundled SmolLM2 loader, tiny HF Llama builders and tokenizers."""

from fmlab.core.models.pretrained import (
    BUNDLED_MODELS,
    bundled_model_status,
    check_model_dir,
    load_pretrained,
    resolve_device,
    resolve_dtype,
    resolve_model_dir,
)
from fmlab.core.models.tiny import MODEL_BUILDERS, build_model, llama, llama_config
from fmlab.core.models.tokenizer import (
    CHAT_TEMPLATE,
    DOC_SEP,
    SPECIAL_TOKENS,
    train_bpe_tokenizer,
    train_char_tokenizer,
)

__all__ = [
    "BUNDLED_MODELS",
    "CHAT_TEMPLATE",
    "DOC_SEP",
    "MODEL_BUILDERS",
    "SPECIAL_TOKENS",
    "build_model",
    "bundled_model_status",
    "check_model_dir",
    "llama",
    "llama_config",
    "load_pretrained",
    "resolve_device",
    "resolve_dtype",
    "resolve_model_dir",
    "train_bpe_tokenizer",
    "train_char_tokenizer",
]
