"""The STEM model: a Hugging Face Llama whose FFN up-projection, in chosen layers, is a
per-layer token-indexed embedding table.

A SwiGLU FFN computes ``W_down(SiLU(W_gate x) ⊙ W_up x)``. In a STEM layer ℓ it computes::

    out = W_down(SiLU(W_gate x) ⊙ U_ℓ[t]),    U_ℓ ∈ R^{V × d_ff}

where ``t`` is the INPUT token id at that position (the id fed to the input embedding).
Attention, norms and residuals are those of ``LlamaForCausalLM``; with ``stem_layers=[]`` the
model is exactly a Llama (tested). ``import fmlab.stem`` registers ``StemConfig`` /
``StemForCausalLM`` with ``AutoConfig`` / ``AutoModelForCausalLM`` (``model_type="fmlab_stem"``),
so ``save_pretrained`` / ``from_pretrained`` round-trip in safetensors.

How the ids reach the layers: :class:`StemModel` hands ``input_ids`` to its STEM FFNs for the
duration of one forward call. During cached decoding ``generate`` passes only the new tokens'
ids, which are exactly the positions being computed, so the cache needs nothing extra.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from huggingface_hub.dataclasses import strict
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.models.llama.modeling_llama import LlamaForCausalLM, LlamaModel

__all__ = [
    "StemConfig",
    "StemError",
    "StemForCausalLM",
    "StemMLP",
    "StemModel",
    "StemTable",
    "build_stem",
    "stem_config",
    "stem_mlps",
]


class StemError(ValueError):
    """A STEM model was used in a way it cannot support; the message names the fix."""


@strict
class StemConfig(LlamaConfig):
    """A ``LlamaConfig`` plus ``stem_layers``: the decoder layers whose FFN up-projection is a
    token-indexed table. ``None`` (the default) means every layer but 0, the official default."""

    model_type = "fmlab_stem"
    stem_layers: list[int] | None = None

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        n = self.num_hidden_layers
        if self.stem_layers is None:
            self.stem_layers = list(range(1, n))
        layers = [int(i) for i in self.stem_layers]
        bad = [i for i in layers if not 0 <= i < n]
        if bad:
            raise StemError(
                f"stem_layers {bad} out of range: the model has {n} layers (0..{n - 1}); "
                f"choose layers in 0..{n - 1}, e.g. stem_layers={list(range(1, n))}"
            )
        if len(set(layers)) != len(layers):
            raise StemError(f"stem_layers {layers} repeats a layer; list each layer once")
        self.stem_layers = sorted(layers)


class StemTable(nn.Embedding):
    """One layer's ``(V, d_ff)`` table U_ℓ (an ``nn.Embedding``, so rows are looked up by id)."""


class StemMLP(nn.Module):
    """``W_down(SiLU(W_gate x) ⊙ U_ℓ[t])``; ``t`` comes from :class:`StemModel` (``_ids``).

    The rows come from ``table`` or, after :func:`fmlab.stem.offload`, from ``store`` (an
    object with ``lookup(ids) -> (B, T, d_ff)``), in which case ``table`` is ``None``.
    """

    def __init__(self, config: StemConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.hidden_size = config.hidden_size
        self.intermediate_size = config.intermediate_size
        self.gate_proj = nn.Linear(self.hidden_size, self.intermediate_size, bias=config.mlp_bias)
        self.down_proj = nn.Linear(self.intermediate_size, self.hidden_size, bias=config.mlp_bias)
        self.table: StemTable | None = StemTable(config.vocab_size, self.intermediate_size)
        self.act_fn = ACT2FN[config.hidden_act]
        self.store = None  # set by offload()
        self._ids: torch.Tensor | None = None

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        """U_ℓ[ids]: ``(B, T)`` ids -> ``(B, T, d_ff)`` rows."""
        if self.store is not None:
            return self.store.lookup(ids)
        return self.table(ids)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, T, d)
        ids = self._ids
        if ids is None:
            raise StemError(
                "a STEM FFN was called without token ids; call the model (StemForCausalLM or "
                "StemModel) with input_ids rather than calling its layers directly"
            )
        if ids.shape != x.shape[:-1]:
            raise StemError(f"token ids {tuple(ids.shape)} do not match hidden {tuple(x.shape)}")
        u = self.rows(ids).to(x.dtype)  # (B, T, d_ff)
        return self.down_proj(self.act_fn(self.gate_proj(x)) * u)


def stem_mlps(model: nn.Module) -> dict[int, StemMLP]:
    """``{layer index: StemMLP}`` of a STEM model (empty for a dense one)."""
    return {m.layer_idx: m for m in model.modules() if isinstance(m, StemMLP)}


@contextlib.contextmanager
def _token_ids(mlps: list[StemMLP], ids: torch.Tensor | None) -> Iterator[None]:
    for m in mlps:
        m._ids = ids
    try:
        yield
    finally:
        for m in mlps:
            m._ids = None


def _init_stem(module: nn.Module, std: float) -> bool:
    """The spec's init for the modules it covers (True when ``module`` was handled)."""
    if isinstance(module, StemTable):
        init.xavier_normal_(module.weight)
    elif isinstance(module, nn.Linear | nn.Embedding):
        init.trunc_normal_(module.weight, mean=0.0, std=std, a=-2 * std, b=2 * std)
        if isinstance(module, nn.Linear) and module.bias is not None:
            init.zeros_(module.bias)
    else:
        return False
    return True


class StemModel(LlamaModel):
    """``LlamaModel`` with STEM FFNs in ``config.stem_layers``; needs ``input_ids``."""

    config_class = StemConfig
    supports_gradient_checkpointing = False  # recomputation would run without the token ids

    def __init__(self, config: StemConfig):
        super().__init__(config)
        for i in config.stem_layers:
            self.layers[i].mlp = StemMLP(config, i)
        self.post_init()

    def forward(self, input_ids: torch.LongTensor | None = None, **kwargs):
        mlps = [self.layers[i].mlp for i in self.config.stem_layers]
        if mlps and input_ids is None:
            raise StemError(
                "STEM layers look up a table row by input token id, so this model needs "
                "input_ids; inputs_embeds alone cannot be used (pass input_ids, or build the model "
                "with stem_layers=[] for a plain Llama)"
            )
        with _token_ids(mlps, input_ids):
            return super().forward(input_ids=input_ids, **kwargs)

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        if not _init_stem(module, self.config.initializer_range):
            super()._init_weights(module)


class StemForCausalLM(LlamaForCausalLM):
    """Causal LM head over :class:`StemModel`. Backbone init: truncated normal (±2σ,
    σ = ``initializer_range``); each table: Xavier-normal over its full ``V × d_ff``."""

    config_class = StemConfig
    supports_gradient_checkpointing = False

    def __init__(self, config: StemConfig):
        super().__init__(config)
        self.model = StemModel(config)
        self.post_init()

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        if not _init_stem(module, self.config.initializer_range):
            super()._init_weights(module)


AutoConfig.register("fmlab_stem", StemConfig, exist_ok=True)
AutoModelForCausalLM.register(StemConfig, StemForCausalLM, exist_ok=True)


def stem_config(vocab_size: int, stem_layers: list[int] | None = None, **numbers) -> StemConfig:
    """A :class:`StemConfig` with the numbers of :func:`fmlab.core.models.llama_config`
    (``hidden_size``, ``num_layers``, ``num_heads``, ...) and ``stem_layers``."""
    from fmlab.core.models import llama_config

    d = llama_config(vocab_size, **numbers).to_dict()
    for k in ("model_type", "architectures", "transformers_version", "output_attentions"):
        d.pop(k, None)
    return StemConfig(**d, stem_layers=stem_layers)


def build_stem(
    vocab_size: int, stem_layers: list[int] | None = None, seed: int = 0, **numbers
) -> StemForCausalLM:
    """A randomly initialised :class:`StemForCausalLM` (fixed seed) from :func:`stem_config`."""
    cfg = stem_config(vocab_size, stem_layers, **numbers)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return StemForCausalLM(cfg)
