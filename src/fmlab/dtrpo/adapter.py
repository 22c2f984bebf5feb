"""Bring your own model: the block-diffusion interface dTRPO needs, and an adapter that turns
an HF causal LM checkpoint (Llama, Qwen2, Mistral, ... style) into one.

The interface (what the sampler, the estimators and the trainers use; :class:`DLLM` holds it):

- ``mask_id``, ``pad_id``, ``eos_id``: a [MASK] token the policy never emits, a padding token
  (never emitted either) and an end-of-answer token that fills the answer after its end;
- ``gen_length`` and ``block_length``: the answer's length in tokens and its block size
  (``gen_length`` a multiple of ``block_length``);
- the block-layout forward ``logits(ids, pos, mask) -> (B, S, V)``: the network run on
  ``ids`` with explicit ``position_ids`` and a boolean ``(B, S, S)`` attention mask (query q may
  attend key k), from :func:`fmlab.dtrpo.model.layout`; bidirectional inside a block;
- ``encode_prompts``, ``encode_answers``, ``decode``: text in and out.

Any model with these works: wrap it in a :class:`DLLM` (``DLLM(net, tokenizer, gen_length,
block_length)``) if its network takes ``input_ids``, ``position_ids`` and a 4-D
``attention_mask`` and returns ``.logits``, as every HF decoder in the Llama family does.
:func:`convert_causal_lm` does this for a checkpoint directory: it adds the tokens that are
missing, checks that the architecture honours the 4-D mask (a network that silently applied
its own causal mask would make every estimate wrong), and saves the result with the block
geometry in its config, so :func:`fmlab.dtrpo.model.load_dllm` and every ``fmlab dtrpo``
command take it. The converted model still predicts like a causal LM: pre-train it with
``fmlab dtrpo pretrain``-style masked diffusion (``fmlab.dtrpo.train.pretrain``) before
expecting it to denoise well.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from fmlab.core.io import CheckpointError
from fmlab.dtrpo.model import DLLM, MASK, save_dllm

__all__ = ["check_block_forward", "convert_causal_lm"]

PAD, EOS = "<|pad|>", "<|im_end|>"


def check_block_forward(model: DLLM, atol: float = 1e-4) -> float:
    """Check that ``model.logits`` honours the block layout's 4-D mask: with a causal mask it
    equals the network's own causal forward, and a bidirectional mask changes the first
    position's logits. Returns the causal max |Δ|; raises ``ValueError`` naming the problem."""
    n = 6
    ids = torch.randint(0, min(len(model.tokenizer), model.net.config.vocab_size), (1, n),
                        generator=torch.Generator().manual_seed(0))  # fmt: skip
    pos = torch.arange(n)[None]
    causal = torch.tril(torch.ones(n, n, dtype=torch.bool))[None]
    was = model.net.training
    model.net.eval()
    with torch.no_grad():
        own = model.net(input_ids=ids).logits.float()
        ours = model.logits(ids, pos, causal).float()
        full = model.logits(ids, pos, torch.ones_like(causal)).float()
    model.net.train(was)
    diff = float((own - ours).abs().max())
    if diff > atol:
        raise ValueError(
            f"{type(model.net).__name__}: a causal 4-D attention mask gives logits {diff:.2e} "
            "away from its own causal forward; this architecture does not take an explicit "
            "(B, 1, S, S) mask, so it cannot run the block layout"
        )
    if torch.allclose(full[:, 0], ours[:, 0], atol=1e-6):
        raise ValueError(
            f"{type(model.net).__name__} ignores a bidirectional 4-D attention mask (it applies "
            "its own causal mask); load it with attn_implementation='sdpa' or 'eager', or use "
            "a Llama/Qwen2-style architecture"
        )
    return diff


def convert_causal_lm(
    src: str | os.PathLike,
    out: str | os.PathLike,
    gen_length: int = 24,
    block_length: int = 8,
    overwrite: bool = False,
) -> Path:
    """Turn the HF causal LM checkpoint in ``src`` into a block-diffusion LM saved in ``out``.

    Adds a ``<|mask|>`` mask token, a ``<|pad|>`` padding token (also when padding is the
    end token, as in Qwen2) and an ``<|im_end|>`` end-of-answer token where the tokenizer
    lacks them (growing the embeddings), records
    ``mask_token_id``, ``dllm_gen_length`` and ``dllm_block_length`` in the config, checks the
    block-layout forward (:func:`check_block_forward`) and saves atomically.

    Raises:
        CheckpointError: ``src`` is not an HF causal LM checkpoint.
        ValueError: bad geometry, too few positions, or an architecture without 4-D masks.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = Path(src)
    if not (src / "config.json").is_file():
        raise CheckpointError(
            f"{src}: no config.json; give an HF causal LM checkpoint directory (one written by "
            "save_pretrained, with its tokenizer)"
        )
    if block_length < 1 or gen_length % block_length:
        raise ValueError(
            f"gen_length {gen_length} must be a positive multiple of block_length {block_length}"
        )
    try:
        tok = AutoTokenizer.from_pretrained(src)
        net = AutoModelForCausalLM.from_pretrained(src, attn_implementation="sdpa")
    except (OSError, ValueError, KeyError) as e:
        raise CheckpointError(
            f"{src}: cannot load it as an HF causal LM with a tokenizer ({e})"
        ) from e
    added = {}
    if tok.mask_token is None:
        added["mask_token"] = MASK
    if tok.pad_token is None or tok.pad_token == tok.eos_token:  # padding is never emitted,
        added["pad_token"] = PAD  # the end token is: they must differ (Qwen2 shares them)
    if tok.eos_token is None:
        added["eos_token"] = EOS
    if added:
        tok.add_special_tokens(added)
    if len(tok) > net.get_input_embeddings().weight.shape[0]:
        net.resize_token_embeddings(len(tok))
    need = 64 + 2 * gen_length  # a prompt plus the packed [clean | noised] answer
    have = getattr(net.config, "max_position_embeddings", need)
    if have < need:
        raise ValueError(
            f"{src}: max_position_embeddings {have} is too small for gen_length {gen_length} "
            f"(the packed layout needs a prompt plus 2 x {gen_length} positions); choose a "
            "smaller --gen-length"
        )
    model = DLLM(net, tok, gen_length, block_length)
    check_block_forward(model)
    return save_dllm(model, out, overwrite=overwrite)
