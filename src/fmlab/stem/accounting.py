"""Parameter and FLOP accounting for STEM and dense Llama models.

Definitions (checked by hand in tests/stem/test_accounting.py):

- ``total``: every distinct parameter (a tied embedding/head counted once), including tables
  that :func:`fmlab.stem.offload` moved to a file.
- ``active_per_token``: the parameters one token's computation multiplies by: ``total`` minus,
  per STEM table, the ``V − 1`` rows the token does not look up, minus the ``V − 1`` unused
  input-embedding rows when the embedding is not tied to the LM head (a tied matrix is used in
  full by the head, so it stays). Per STEM layer this is ``d·d_ff`` fewer than a dense FFN
  (``W_up`` gone) plus one ``d_ff`` row.
- ``flops_per_token(model, seq_len)``: forward FLOPs per token, ``2 × multiply-accumulates``,
  matrix multiplies only (norms, activations, softmax and the table lookup are not counted):
  per layer ``2·d·(d_q + 2·d_kv) + 2·d_q·d`` (q, k, v, o projections), ``4·seq_len·d_q``
  (scores and weighted sum over the whole context, no causal discount, as in PaLM's 6N+12LHQT),
  FFN ``6·d·d_ff`` dense or ``4·d·d_ff`` STEM; plus the LM head ``2·d·V``. ``training=True``
  multiplies by 3 (backward ≈ 2× forward).
"""

from __future__ import annotations

from torch import nn

from fmlab.stem.model import stem_mlps

__all__ = ["flops_per_token", "param_counts"]


def _distinct_params(model: nn.Module) -> int:
    seen, n = set(), 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            n += p.numel()
    return n


def param_counts(model: nn.Module) -> dict[str, int]:
    """``{"total", "active_per_token", "tables", "stem_layers"}`` for a STEM or dense model
    (definitions in the module docstring)."""
    cfg = model.config
    V, d = cfg.vocab_size, cfg.hidden_size
    mlps = stem_mlps(model)
    offloaded = sum(m.store.numel for m in mlps.values() if m.table is None and m.store is not None)
    total = _distinct_params(model) + offloaded
    tables = sum(V * m.intermediate_size for m in mlps.values())
    inactive = sum((V - 1) * m.intermediate_size for m in mlps.values())
    if not cfg.tie_word_embeddings:
        inactive += (V - 1) * d
    return {
        "total": total,
        "active_per_token": total - inactive,
        "tables": tables,
        "stem_layers": len(mlps),
    }


def flops_per_token(model: nn.Module, seq_len: int, training: bool = False) -> float:
    """Forward (or, with ``training``, forward + backward) FLOPs per token at context
    ``seq_len``; formula in the module docstring. Works for ``LlamaForCausalLM`` too."""
    if seq_len < 1:
        raise ValueError(f"seq_len must be >= 1, got {seq_len}")
    cfg = model.config
    d, V, L = cfg.hidden_size, cfg.vocab_size, cfg.num_hidden_layers
    head_dim = getattr(cfg, "head_dim", None) or d // cfg.num_attention_heads
    d_q = cfg.num_attention_heads * head_dim
    d_kv = (cfg.num_key_value_heads or cfg.num_attention_heads) * head_dim
    stem = set(getattr(cfg, "stem_layers", None) or [])
    per_layer_attn = 2 * d * (d_q + 2 * d_kv) + 2 * d_q * d + 4 * seq_len * d_q
    ffn = sum((4 if i in stem else 6) * d * cfg.intermediate_size for i in range(L))
    fwd = L * per_layer_attn + ffn + 2 * d * V
    return float(3 * fwd if training else fwd)
