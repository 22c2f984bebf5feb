"""Tiny HF Llama builders for tests and CPU-scale experiments.

The generic builder takes every number; each named builder only fixes the numbers (the
torchtune pattern), so a model size is one line and every size is a real
``transformers.LlamaForCausalLM`` that round-trips through ``save_pretrained``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from transformers import LlamaConfig, LlamaForCausalLM

__all__ = ["MODEL_BUILDERS", "build_model", "llama", "llama_config"]


def llama_config(
    vocab_size: int,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int | None = None,
    intermediate_size: int | None = None,
    max_position_embeddings: int = 512,
    tie_word_embeddings: bool = True,
    rope_theta: float = 10000.0,
    **extra,
) -> LlamaConfig:
    """A LlamaConfig with the given numbers; intermediate defaults to 8/3·hidden rounded to 16."""
    if hidden_size % num_heads:
        raise ValueError(f"hidden_size {hidden_size} is not divisible by num_heads {num_heads}")
    kv = num_kv_heads or num_heads
    if num_heads % kv:
        raise ValueError(f"num_heads {num_heads} is not divisible by num_kv_heads {kv}")
    if intermediate_size is None:
        intermediate_size = ((8 * hidden_size // 3 + 15) // 16) * 16
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=kv,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=tie_word_embeddings,
        rope_parameters={"rope_type": "default", "rope_theta": rope_theta},
        attention_dropout=0.0,
        **extra,
    )


def llama(config: LlamaConfig, seed: int = 0) -> LlamaForCausalLM:
    """Build a randomly initialised LlamaForCausalLM from ``config`` with a fixed seed."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    return model


def _sized(**numbers) -> Callable[..., LlamaForCausalLM]:
    def build(vocab_size: int, seed: int = 0, **overrides) -> LlamaForCausalLM:
        return llama(llama_config(vocab_size, **{**numbers, **overrides}), seed=seed)

    build.__doc__ = f"Llama with {numbers} (overridable by keyword)."
    return build


MODEL_BUILDERS: dict[str, Callable[..., LlamaForCausalLM]] = {
    # ~0.1M params without embeddings: unit tests.
    "llama-tiny": _sized(hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2),
    # ~0.8M: quick benches.
    "llama-small": _sized(hidden_size=128, num_layers=4, num_heads=4, num_kv_heads=2),
    # ~4.7M: full benches on 2 cores.
    "llama-mini": _sized(hidden_size=256, num_layers=6, num_heads=8, num_kv_heads=4),
}


def build_model(name: str, vocab_size: int, seed: int = 0, **overrides) -> LlamaForCausalLM:
    """Build a named tiny model; unknown names list the valid ones."""
    try:
        builder = MODEL_BUILDERS[name]
    except KeyError:
        raise ValueError(
            f"unknown model builder {name!r}; choose one of: {', '.join(MODEL_BUILDERS)}"
        ) from None
    return builder(vocab_size, seed=seed, **overrides)
