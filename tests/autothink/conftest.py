"""Tiny Llamas for the early-exit tests, built in-process in milliseconds.

``script_llama`` is a real 1-layer ``LlamaForCausalLM`` whose weights are set by hand so that
greedy decoding follows fixed token chains (a bigram table: attention and MLP write nothing,
the embedding is one-hot and the head maps each token to its successor). The logit margin of
each step is chosen, so the a1 confidence is known exactly: p = e^s / (e^s + V - 1).
"""

import math

import pytest
import torch

from fmlab.autothink import FALLBACK

SURE, UNSURE = 20.0, 6.0  # logit margins: p ~ 1 and p = e^6 / (e^6 + V - 1)

# prompt token -> [(token string, margin of the step that emits it), ...]; then end of sequence.
CHAINS = {
    "Q1": [  # a confident a1: exits at tau 0.97 after "\boxed{C}"
        ("\\boxed{C", SURE),
        ("}", SURE),
        (" <think> it is big </think>", SURE),
        (" \\boxed{D", SURE),
        ("};", SURE),
    ],
    "Q2": [  # the fallback phrase: always thinks
        (FALLBACK, SURE),
        (" <think> 2 and 3 make 5 </think>", SURE),
        (" \\boxed{5", SURE),
        ("} ", SURE),
    ],
    "Q3": [  # an unsure a1 (p ~ 0.87): thinks at tau 0.97, exits at tau 0.5
        ("\\boxed{B", UNSURE),
        ("}  ", SURE),
        (" <think> the ball is red </think>", SURE),
        (" \\boxed{A", SURE),
        ("}\n", SURE),
    ],
}


def prob(margin: float, vocab: int) -> float:
    return math.exp(margin) / (math.exp(margin) + vocab - 1)


@pytest.fixture(scope="session")
def script_tokenizer():
    from tokenizers import Tokenizer, decoders, models

    from fmlab.core.models.tokenizer import SPECIAL_TOKENS, wrap_tokenizer

    tok = Tokenizer(
        models.WordLevel(vocab={s: i for i, s in enumerate(SPECIAL_TOKENS)}, unk_token="<pad>")
    )
    tok.decoder = decoders.Fuse()
    fast = wrap_tokenizer(tok)
    pieces = [p for prompt, chain in CHAINS.items() for p in [prompt, *(t for t, _ in chain)]]
    fast.add_tokens(sorted(set(pieces)))
    return fast


def _script_llama(tok, max_positions: int = 64):
    from fmlab.core.models import llama, llama_config

    V = len(tok)
    cfg = llama_config(
        V,
        hidden_size=V + (-V) % 4,
        num_layers=1,
        num_heads=4,
        max_position_embeddings=max_positions,
        tie_word_embeddings=False,
    )
    model = llama(cfg, seed=0)
    H = cfg.hidden_size
    with torch.no_grad():
        for layer in model.model.layers:  # the block writes nothing into the residual
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.model.embed_tokens.weight.copy_(torch.eye(V, H))
        model.model.norm.weight.fill_(1.0)
        head = torch.zeros(V, H)
        for prompt, chain in CHAINS.items():
            prev = tok.convert_tokens_to_ids(prompt)
            for piece, margin in [*chain, (tok.eos_token, SURE)]:
                nxt = tok.convert_tokens_to_ids(piece)
                head[nxt, prev] = margin / math.sqrt(H)  # RMSNorm makes one-hot e_t sqrt(H)·e_t
                prev = nxt
        model.lm_head.weight.copy_(head)
    return model.eval()


@pytest.fixture(scope="session")
def script_llama(script_tokenizer):
    return _script_llama(script_tokenizer)


@pytest.fixture(scope="session")
def short_script_llama(script_tokenizer):
    return _script_llama(script_tokenizer, max_positions=8)


@pytest.fixture(scope="session")
def unsure_prob(script_tokenizer):
    """The exact a1 confidence of chain Q3 (one token at margin UNSURE)."""
    return prob(UNSURE, len(script_tokenizer))
