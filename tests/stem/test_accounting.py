"""param_counts and flops_per_token, checked against numbers worked out by hand.

Tiny config: V=97, d=32, 3 layers, 4 query / 2 KV heads (head_dim 8, d_q=32, d_kv=16),
d_ff=96 (8/3·32 rounded up to 16), tied embeddings, STEM in layers 1 and 2.
"""

from fmlab.stem import flops_per_token, param_counts

from .conftest import tiny

ATTN = 32 * 32 + 32 * 16 + 32 * 16 + 32 * 32  # q, k, v, o = 3072
NORMS = 2 * 32
DENSE_FFN = 3 * 32 * 96  # 9216
STEM_FFN = 2 * 32 * 96  # 6144 (no W_up)
TABLE = 97 * 96  # 9312
EMBED = 97 * 32  # 3104


def test_param_counts_by_hand():
    c = param_counts(tiny())
    total = EMBED + 32 + (ATTN + NORMS + DENSE_FFN) + 2 * (ATTN + NORMS + STEM_FFN + TABLE)
    assert total == 52672
    assert c["total"] == total
    assert c["active_per_token"] == total - 2 * 96 * 96  # one row of each table is used
    assert c["tables"] == 2 * TABLE and c["stem_layers"] == 2


def test_param_counts_untied_and_dense():
    c = param_counts(tiny(stem_layers=[], tie_word_embeddings=False))
    total = 2 * EMBED + 32 + 3 * (ATTN + NORMS + DENSE_FFN)
    assert c["total"] == total
    assert c["active_per_token"] == total - 96 * 32  # unused input-embedding rows
    assert c["tables"] == 0


def test_flops_per_token_by_hand():
    T = 10
    attn = 2 * 32 * (32 + 2 * 16) + 2 * 32 * 32 + 4 * T * 32  # 7424 per layer
    ffn = 6 * 32 * 96 + 2 * (4 * 32 * 96)
    head = 2 * 32 * 97
    want = 3 * attn + ffn + head
    assert want == 71488
    model = tiny()
    assert flops_per_token(model, T) == want
    assert flops_per_token(model, T, training=True) == 3 * want
    dense = tiny(stem_layers=[])
    # each STEM layer saves 2·d·d_ff FLOPs per token (a third of the FFN's matmuls)
    assert flops_per_token(dense, T) - flops_per_token(model, T) == 2 * (2 * 32 * 96)
