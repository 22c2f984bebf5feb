"""Pruning with inherited weights: importance scores on calibration text, then slicing.

Our choices (MobileLLM-Flash publishes none):

- **Layers**: block importance (ShortGPT's BI), ``1 - cos(h_in, h_out)`` of each decoder
  layer averaged over calibration tokens: a layer that barely turns the residual stream is the
  first to drop. :func:`rank_layers` keeps the ``n`` most important, in backbone order.
- **Attention skipping**: the same score of the attention sub-block alone,
  ``1 - cos(h, h + attn(norm(h)))``; :func:`rank_attention` lists the layers whose attention
  moves the stream least (the first to skip).
- **FFN channels**: Minitron's activation importance, the mean ``|SiLU(W_g x) ⊙ W_u x|`` of
  each channel (the input of ``down_proj``); the top ``w`` channels are kept, in order.
- **KV groups**: the L2 norm of each query head's output (the input of ``o_proj``), averaged
  over tokens and summed over the query heads sharing a KV head; the top ``k`` groups keep
  their KV head and all of its query heads.

Scores come from one forward pass of the unpruned backbone (not recomputed as layers go).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fmlab.flash.arch import BackboneShape, FlashArch
from fmlab.flash.model import FlashForCausalLM, flash_config

__all__ = [
    "Importance",
    "calibration_ids",
    "importance",
    "prune",
    "rank_attention",
    "rank_layers",
]


@dataclass
class Importance:
    """Importance scores of one backbone (lists indexed by backbone layer)."""

    block: list[float]  # (L,) 1 - cos(in, out) of each decoder layer
    attention: list[float]  # (L,) 1 - cos(in, in + attn) of each attention sub-block
    ffn: list[list[float]]  # (L, d_ff) mean |activation| per FFN channel
    kv: list[list[float]]  # (L, n_kv) summed head-output norm per KV group
    tokens: int  # calibration tokens scored

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Importance:
        return cls(**d)


def calibration_ids(texts, tokenizer=None, seq_len: int = 256, max_rows: int = 8):
    """``(N, T)`` token ids from a ``(N, T)`` tensor or a list of texts (with ``tokenizer``):
    texts are concatenated and cut into ``seq_len`` rows, at most ``max_rows``."""
    if isinstance(texts, torch.Tensor):
        if texts.ndim != 2 or texts.numel() == 0:
            raise ValueError(f"calibration ids must be a non-empty (N, T) tensor, got "
                             f"{tuple(texts.shape)}")  # fmt: skip
        return texts.long()
    if isinstance(texts, str):
        texts = [texts]
    if tokenizer is None:
        raise ValueError("calibration texts need a tokenizer: pass tokenizer=... or token ids")
    ids: list[int] = []
    for t in texts:
        ids.extend(tokenizer(t, add_special_tokens=False)["input_ids"])
        if len(ids) >= seq_len * max_rows:
            break
    n = min(max_rows, len(ids) // seq_len)
    if n == 0:
        raise ValueError(f"calibration text has {len(ids)} tokens; need at least seq_len="
                         f"{seq_len} (pass more text or a smaller seq_len)")  # fmt: skip
    return torch.tensor(ids[: n * seq_len]).view(n, seq_len)


def _layers(model: nn.Module):
    inner = getattr(model, "model", model)
    if not hasattr(inner, "layers"):
        raise ValueError(f"{type(model).__name__} is not a Llama-style model (no .model.layers)")
    return inner.layers


def _one_minus_cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((1 - F.cosine_similarity(a.float(), b.float(), dim=-1)).mean())


@torch.no_grad()
def importance(model: nn.Module, calib_ids: torch.Tensor, batch_size: int = 4) -> Importance:
    """Score every layer, attention block, FFN channel and KV group of a Llama-style model on
    ``(N, T)`` calibration ids (one pass; see the module docstring for the scores)."""
    shape = BackboneShape.of(model.config)
    layers = _layers(model)
    L = len(layers)
    block = torch.zeros(L, dtype=torch.float64)
    attn = torch.zeros(L, dtype=torch.float64)
    ffn = [torch.zeros(shape.intermediate_size, dtype=torch.float64) for _ in range(L)]
    kv = [torch.zeros(shape.num_kv_heads, dtype=torch.float64) for _ in range(L)]
    hooks, batches = [], 0

    def on_layer(i):
        def hook(mod, args, kwargs, out):
            h_in = args[0] if args else kwargs["hidden_states"]
            h_out = out[0] if isinstance(out, tuple) else out
            block[i] += _one_minus_cos(h_in, h_out)

        return hook

    def on_attn(i):
        def hook(mod, args, kwargs, out):
            attn_out[i] = out[0] if isinstance(out, tuple) else out  # (B, T, d)

        return hook

    attn_out: dict[int, torch.Tensor] = {}

    def on_layer_pre(i):
        def hook(mod, args, kwargs):
            layer_in[i] = args[0] if args else kwargs["hidden_states"]

        return hook

    layer_in: dict[int, torch.Tensor] = {}

    def on_down(i):
        def hook(mod, args):
            ffn[i] += args[0].abs().float().mean(dim=(0, 1)).double()

        return hook

    def on_o(i):
        def hook(mod, args):
            x = args[0]  # (B, T, Hq * hd)
            heads = x.view(*x.shape[:-1], -1, shape.head_dim).float().norm(dim=-1)  # (B, T, Hq)
            per_head = heads.mean(dim=(0, 1))
            kv[i] += per_head.view(-1, shape.q_per_kv).sum(-1).double()

        return hook

    for i, layer in enumerate(layers):
        hooks.append(layer.register_forward_pre_hook(on_layer_pre(i), with_kwargs=True))
        hooks.append(layer.register_forward_hook(on_layer(i), with_kwargs=True))
        hooks.append(layer.self_attn.register_forward_hook(on_attn(i), with_kwargs=True))
        hooks.append(layer.mlp.down_proj.register_forward_pre_hook(on_down(i)))
        hooks.append(layer.self_attn.o_proj.register_forward_pre_hook(on_o(i)))
    was = model.training
    model.eval()
    try:
        for start in range(0, len(calib_ids), batch_size):
            x = calib_ids[start : start + batch_size]
            layer_in.clear()
            attn_out.clear()
            model(input_ids=x, use_cache=False)
            for i in range(L):
                attn[i] += _one_minus_cos(layer_in[i], layer_in[i] + attn_out[i])
            batches += 1
    finally:
        for h in hooks:
            h.remove()
        model.train(was)
    return Importance(
        block=(block / batches).tolist(),
        attention=(attn / batches).tolist(),
        ffn=[(f / batches).tolist() for f in ffn],
        kv=[(k / batches).tolist() for k in kv],
        tokens=int(calib_ids.numel()),
    )


def rank_layers(imp: Importance, n: int) -> list[int]:
    """The ``n`` layers with the highest block importance, in backbone order."""
    order = sorted(range(len(imp.block)), key=lambda i: -imp.block[i])
    return sorted(order[:n])


def rank_attention(imp: Importance, layers: list[int]) -> list[int]:
    """``layers`` sorted from the least to the most important attention block."""
    return sorted(layers, key=lambda i: imp.attention[i])


def _top(scores: list[float], k: int) -> torch.Tensor:
    """Indices of the ``k`` largest scores, ascending (order of the original channels)."""
    idx = torch.topk(torch.tensor(scores), k).indices
    return torch.sort(idx).values


@torch.no_grad()
def prune(
    model: nn.Module,
    arch: FlashArch,
    calib=None,
    *,
    tokenizer=None,
    scores: Importance | None = None,
) -> FlashForCausalLM:
    """A :class:`FlashForCausalLM` of shape ``arch`` whose weights are slices of ``model``'s.

    Args:
        model: a Llama-style backbone: a ``LlamaForCausalLM`` (or a ``FlashForCausalLM`` of
            the uniform arch); a non-uniform Flash model is pruned from its own backbone.
        arch: kept layers (backbone indices), widths, KV heads and attention modes; validated
            against ``model`` before anything is computed.
        calib: ``(N, T)`` token ids or calibration texts (with ``tokenizer``) for the
            importance scores; not needed when ``scores`` is given.
        scores: precomputed :func:`importance` (reused across many candidates by the search).
    """
    shape = BackboneShape.of(model.config)
    if isinstance(model, FlashForCausalLM) and not model.arch.is_uniform(shape):
        raise ValueError("prune takes a backbone with every layer whole; this FlashForCausalLM "
                         f"is already pruned ({model.arch.describe()}): prune its backbone")  # fmt: skip
    cfg = flash_config(model.config, arch)  # validates
    if scores is None:
        if calib is None:
            raise ValueError("prune needs calibration text (calib=...) or scores=importance(...)")
        scores = importance(model, calibration_ids(calib, tokenizer))
    layers = _layers(model)
    cfg._attn_implementation = model.config._attn_implementation
    with torch.device("meta"):
        student = FlashForCausalLM(cfg)
    src = model.state_dict()
    out: dict[str, torch.Tensor] = {}
    for k in ("model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"):
        if k in src:
            out[k] = src[k]
    hd = shape.head_dim
    for j, (i, width, kvh) in enumerate(zip(arch.layers, arch.ffn, arch.kv_heads, strict=True)):
        old, new = layers[i], f"model.layers.{j}."
        flayer = student.model.layers[j]
        if flayer.self_attn is not None:
            groups = _top(scores.kv[i], kvh)  # kept KV heads
            q_heads = (groups[:, None] * shape.q_per_kv + torch.arange(shape.q_per_kv)).reshape(-1)
            q_rows = (q_heads[:, None] * hd + torch.arange(hd)).reshape(-1)
            kv_rows = (groups[:, None] * hd + torch.arange(hd)).reshape(-1)
            a = old.self_attn
            out[new + "input_layernorm.weight"] = old.input_layernorm.weight
            for name, rows in (("q_proj", q_rows), ("k_proj", kv_rows), ("v_proj", kv_rows)):
                lin = getattr(a, name)
                out[new + f"self_attn.{name}.weight"] = lin.weight[rows]
                if lin.bias is not None:
                    out[new + f"self_attn.{name}.bias"] = lin.bias[rows]
            out[new + "self_attn.o_proj.weight"] = a.o_proj.weight[:, q_rows]
            if a.o_proj.bias is not None:
                out[new + "self_attn.o_proj.bias"] = a.o_proj.bias
        if flayer.mlp is not None:
            ch = _top(scores.ffn[i], width)
            m = old.mlp
            out[new + "post_attention_layernorm.weight"] = old.post_attention_layernorm.weight
            for name in ("gate_proj", "up_proj"):
                lin = getattr(m, name)
                out[new + f"mlp.{name}.weight"] = lin.weight[ch]
                if lin.bias is not None:
                    out[new + f"mlp.{name}.bias"] = lin.bias[ch]
            out[new + "mlp.down_proj.weight"] = m.down_proj.weight[:, ch]
            if m.down_proj.bias is not None:
                out[new + "mlp.down_proj.bias"] = m.down_proj.bias
    out = {k: v.detach().clone().contiguous() for k, v in out.items()}
    student.load_state_dict(out, strict=False, assign=True)
    if cfg.tie_word_embeddings:
        student.tie_weights()
    missing = [n for n, p in student.named_parameters() if p.is_meta]
    if missing:
        raise RuntimeError(f"prune left parameters unset (a bug): {missing[:5]}")
    # non-persistent buffers (rotary inverse frequencies) were created on meta: rebuild them
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    student.model.rotary_emb = LlamaRotaryEmbedding(config=cfg)
    meta = [n for n, b in student.named_buffers() if b.is_meta]
    if meta:
        raise RuntimeError(f"prune left buffers on the meta device (a bug): {meta[:5]}")
    p = next(model.parameters())
    return student.to(device=p.device, dtype=p.dtype).eval()
