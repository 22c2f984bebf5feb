"""``FlashForCausalLM``: a Llama whose layers differ in FFN width, KV heads and attention mode.

transformers' ``LlamaConfig`` (like ExecuTorch's generic Llama export) has one FFN width and one
head count for all layers, so a non-uniformly pruned Llama cannot be saved as a Llama.
:class:`FlashConfig` is a ``LlamaConfig`` plus four per-layer lists (``flash_layers``,
``flash_ffn``, ``flash_kv_heads``, ``flash_attention``: a :class:`~fmlab.flash.arch.FlashArch`)
registered with ``AutoConfig`` / ``AutoModelForCausalLM`` as ``model_type="fmlab_flash"``, so
``save_pretrained`` / ``AutoModelForCausalLM.from_pretrained`` round-trip after
``import fmlab.flash``. The global ``num_attention_heads``, ``num_key_value_heads`` and
``intermediate_size`` stay the backbone's (they define head size and the query/KV ratio).

Parameter names are Llama's (``model.layers.i.self_attn.q_proj`` ...), and every computation
of a full-attention layer is Llama's own code path, so the uniform arch gives the backbone's
logits exactly (tested). A ``skip`` layer has no attention, no input norm and no KV-cache slot:
attention layers are numbered densely in the cache, so decoding keeps one cache entry per
attention layer. A ``window:W`` layer masks keys older than ``W`` positions and, when decoding,
attends only over the last ``W`` cached positions (its cache keeps every position: memory is
not reduced, compute is). With a static cache (transformers ``StaticLayer``: fixed-length
buffers, as in ``StaticCache`` and the ExecuTorch decode export) the window is applied by the
mask alone, over the whole buffer.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from huggingface_hub.dataclasses import strict
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig
from transformers.cache_utils import Cache, DynamicCache, StaticLayer
from transformers.generation import GenerationMixin
from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.llama.modeling_llama import (
    LlamaMLP,
    LlamaPreTrainedModel,
    LlamaRMSNorm,
    LlamaRotaryEmbedding,
    apply_rotary_pos_emb,
    eager_attention_forward,
)

from fmlab.flash.arch import BackboneShape, FlashArch, FlashArchError

__all__ = [
    "FlashAttention",
    "FlashConfig",
    "FlashDecoderLayer",
    "FlashForCausalLM",
    "FlashModel",
    "flash_config",
]


@strict
class FlashConfig(LlamaConfig):
    """A ``LlamaConfig`` plus a per-layer arch; ``None`` lists mean the uniform backbone.

    ``flash_layers`` records which backbone layers the kept ones came from (provenance);
    ``num_hidden_layers`` is the number of kept layers.
    """

    model_type = "fmlab_flash"
    flash_layers: list[int] | None = None
    flash_ffn: list[int] | None = None
    flash_kv_heads: list[int] | None = None
    flash_attention: list[str] | None = None

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        n = self.num_hidden_layers
        if self.flash_layers is None:
            self.flash_layers = list(range(n))
        if self.flash_ffn is None:
            self.flash_ffn = [self.intermediate_size] * n
        if self.flash_kv_heads is None:
            self.flash_kv_heads = [self.num_key_value_heads or self.num_attention_heads] * n
        if self.flash_attention is None:
            self.flash_attention = ["full"] * n
        if len(self.flash_layers) != n:
            raise FlashArchError(
                f"flash_layers has {len(self.flash_layers)} entries but num_hidden_layers is {n}"
            )
        # the backbone's layer count is not stored: check the arch against a backbone that has
        # at least every layer index it names
        shape = BackboneShape.of(self)
        shape = BackboneShape(**{**shape.__dict__, "num_layers": max(self.flash_layers) + 1})
        self.arch.validate(shape)

    @property
    def arch(self) -> FlashArch:
        return FlashArch(self.flash_layers, self.flash_ffn, self.flash_kv_heads,
                         self.flash_attention)  # fmt: skip


def flash_config(backbone_config: LlamaConfig, arch: FlashArch) -> FlashConfig:
    """The :class:`FlashConfig` of ``arch`` pruned from a backbone with ``backbone_config``.

    The arch is validated against the backbone first (:class:`FlashArchError` lists every
    problem)."""
    arch.validate(BackboneShape.of(backbone_config))
    d = backbone_config.to_dict()
    for k in ("model_type", "architectures", "transformers_version", "output_attentions",
              "flash_layers", "flash_ffn", "flash_kv_heads", "flash_attention",
              "sliding_window", "layer_types"):  # fmt: skip
        d.pop(k, None)
    d["num_hidden_layers"] = len(arch.layers)
    return FlashConfig(
        **d,
        flash_layers=list(arch.layers),
        flash_ffn=list(arch.ffn),
        flash_kv_heads=list(arch.kv_heads),
        flash_attention=list(arch.attention),
    )


class _WindowConfig:
    """The config seen by ``create_sliding_window_causal_mask`` for one window size."""

    def __init__(self, config: FlashConfig, window: int):
        self._config, self.sliding_window = config, window

    def __getattr__(self, name):
        return getattr(self._config, name)


class FlashAttention(nn.Module):
    """Llama attention with its own head counts (``kv`` KV heads, ``kv * q_per_kv`` queries).

    ``window``: keys older than ``window`` positions are masked (and, with a dynamic cache,
    sliced away when the cache is longer than the window plus the new tokens)."""

    def __init__(self, config: FlashConfig, kv_heads: int, cache_idx: int, window: int | None):
        super().__init__()
        shape = BackboneShape.of(config)
        self.config = config
        self.layer_idx = cache_idx  # index in the KV cache (attention layers only)
        self.head_dim = shape.head_dim
        self.num_heads = kv_heads * shape.q_per_kv
        self.num_key_value_heads = kv_heads
        self.num_key_value_groups = shape.q_per_kv
        self.scaling = self.head_dim**-0.5
        self.attention_dropout = config.attention_dropout
        self.is_causal = True
        self.window = window
        bias = config.attention_bias
        d, hd = config.hidden_size, self.head_dim
        self.q_proj = nn.Linear(d, self.num_heads * hd, bias=bias)
        self.k_proj = nn.Linear(d, kv_heads * hd, bias=bias)
        self.v_proj = nn.Linear(d, kv_heads * hd, bias=bias)
        self.o_proj = nn.Linear(self.num_heads * hd, d, bias=bias)

    def forward(self, hidden_states, position_embeddings, attention_mask, cache=None, **kwargs):
        input_shape = hidden_states.shape[:-1]  # (B, T)
        hidden_shape = (*input_shape, -1, self.head_dim)
        q = self.q_proj(hidden_states).view(hidden_shape).transpose(1, 2)  # (B, Hq, T, hd)
        k = self.k_proj(hidden_states).view(hidden_shape).transpose(1, 2)  # (B, Hkv, T, hd)
        v = self.v_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        cos, sin = position_embeddings
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        static = False
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx, kwargs=kwargs)
            # a static layer returns its whole fixed-length buffer (unwritten slots included):
            # its tail is not the newest keys, so the window is left to the mask alone
            static = isinstance(cache.layers[self.layer_idx], StaticLayer)
        if self.window is not None and not static:
            keep = input_shape[1] + self.window - 1  # the oldest key any new query can see
            if k.shape[2] > keep:
                k, v = k[:, :, -keep:], v[:, :, -keep:]
                if isinstance(attention_mask, torch.Tensor):
                    attention_mask = attention_mask[..., -keep:]
        attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        out, weights = attention_interface(
            self,
            q,
            k,
            v,
            attention_mask,
            dropout=0.0 if not self.training else self.attention_dropout,
            scaling=self.scaling,
            **kwargs,
        )
        out = out.reshape(*input_shape, -1).contiguous()
        return self.o_proj(out), weights


class _FlashMLP(LlamaMLP):
    """Llama's SwiGLU FFN at a given width."""

    def __init__(self, config: FlashConfig, width: int):
        super().__init__(config)
        d, bias = config.hidden_size, config.mlp_bias
        self.intermediate_size = width
        self.gate_proj = nn.Linear(d, width, bias=bias)
        self.up_proj = nn.Linear(d, width, bias=bias)
        self.down_proj = nn.Linear(width, d, bias=bias)


class FlashDecoderLayer(nn.Module):
    """``h + attn(norm(h))`` (absent for ``skip``), then ``h + ffn(norm(h))`` (absent at 0)."""

    def __init__(self, config: FlashConfig, i: int, cache_idx: int | None):
        super().__init__()
        mode, window = FlashArch.modes(config.arch)[i]
        self.mode = config.flash_attention[i]
        if mode == "skip":
            self.self_attn = self.input_layernorm = None
        else:
            kv = config.flash_kv_heads[i]
            self.input_layernorm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
            self.self_attn = FlashAttention(config, kv, cache_idx, window)
        width = config.flash_ffn[i]
        if width == 0:
            self.mlp = self.post_attention_layernorm = None
        else:
            self.post_attention_layernorm = LlamaRMSNorm(
                config.hidden_size, eps=config.rms_norm_eps
            )
            self.mlp = _FlashMLP(config, width)

    def forward(self, hidden_states, attention_mask, position_embeddings, cache=None, **kwargs):
        if self.self_attn is not None:
            residual = hidden_states
            h, _ = self.self_attn(
                self.input_layernorm(hidden_states),
                position_embeddings=position_embeddings,
                attention_mask=attention_mask,
                cache=cache,
                **kwargs,
            )
            hidden_states = residual + h
        if self.mlp is not None:
            residual = hidden_states
            hidden_states = residual + self.mlp(self.post_attention_layernorm(hidden_states))
        return hidden_states


class _FlashPreTrained(LlamaPreTrainedModel):
    config_class = FlashConfig
    config: FlashConfig
    _no_split_modules = ["FlashDecoderLayer"]  # noqa: RUF012
    _can_record_outputs = {}  # noqa: RUF012  (hidden-state capture is not supported)
    supports_gradient_checkpointing = False


class FlashModel(_FlashPreTrained):
    """The decoder stack of :class:`FlashForCausalLM` (embeddings, layers, final norm)."""

    def __init__(self, config: FlashConfig):
        super().__init__(config)
        self.padding_idx = config.pad_token_id
        self.vocab_size = config.vocab_size
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, self.padding_idx)
        layers, c = [], 0
        for i, mode in enumerate(config.flash_attention):
            layers.append(FlashDecoderLayer(config, i, None if mode == "skip" else c))
            c += mode != "skip"
        self.layers = nn.ModuleList(layers)
        self.norm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = LlamaRotaryEmbedding(config=config)
        self.post_init()

    def _masks(self, inputs_embeds, attention_mask, cache, position_ids) -> dict:
        """One mask per distinct attention mode of the layers ("full", "window:W")."""
        out = {}
        for mode in sorted(set(self.config.flash_attention) - {"skip"}):
            kw = dict(inputs_embeds=inputs_embeds, attention_mask=attention_mask, cache=cache,
                      position_ids=position_ids)  # fmt: skip
            if mode == "full":
                out[mode] = create_causal_mask(config=self.config, **kw)
            else:
                w = int(mode.split(":")[1])
                out[mode] = create_sliding_window_causal_mask(
                    config=_WindowConfig(self.config, w), layer_idx=0, **kw
                )
        return out

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        past_key_values: Cache | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPast:
        cache = cache if cache is not None else past_key_values
        if (input_ids is None) ^ (inputs_embeds is not None):
            raise ValueError("You must specify exactly one of input_ids or inputs_embeds")
        if use_cache is None:
            use_cache = self.config.use_cache and not self.training
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)  # (B, T, d)
        if use_cache and cache is None:
            cache = DynamicCache()  # one DynamicLayer per attention layer, created on update
        if position_ids is None:
            past = cache.get_seq_length() if cache is not None else 0
            position_ids = torch.arange(inputs_embeds.shape[1], device=inputs_embeds.device) + past
            position_ids = position_ids.unsqueeze(0)
        masks = self._masks(inputs_embeds, attention_mask, cache, position_ids)
        h = inputs_embeds
        position_embeddings = self.rotary_emb(h, position_ids=position_ids)
        for layer in self.layers:
            h = layer(
                h,
                attention_mask=masks.get(layer.mode),
                position_embeddings=position_embeddings,
                position_ids=position_ids,
                cache=cache,
                use_cache=use_cache,
                **kwargs,
            )
        return BaseModelOutputWithPast(last_hidden_state=self.norm(h), cache=cache)


class FlashForCausalLM(_FlashPreTrained, GenerationMixin):
    """Causal LM over :class:`FlashModel`; embeddings tied like the backbone's config says."""

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}  # noqa: RUF012

    def __init__(self, config: FlashConfig):
        super().__init__(config)
        self.model = FlashModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    @property
    def arch(self) -> FlashArch:
        return self.config.arch

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        past_key_values: Cache | None = None,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache if cache is not None else past_key_values,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            **kwargs,
        )
        h = out.last_hidden_state
        sl = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.lm_head(h[:, sl, :])
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels,
                                      vocab_size=self.config.vocab_size, **kwargs)  # fmt: skip
        return CausalLMOutputWithPast(loss=loss, logits=logits, cache=out.cache)


AutoConfig.register("fmlab_flash", FlashConfig, exist_ok=True)
AutoModelForCausalLM.register(FlashConfig, FlashForCausalLM, exist_ok=True)
