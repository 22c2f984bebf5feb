"""FlashArch validation and JSON; FlashForCausalLM parity, save/load, attention modes, cache."""

import pytest
import torch
from transformers import AutoModelForCausalLM

import fmlab.flash  # noqa: F401  (registers the Auto classes)
from fmlab.flash import BackboneShape, FlashArch, FlashArchError, FlashConfig, flash_config
from fmlab.flash.prune import prune

from .conftest import V

NONUNIFORM = FlashArch([0, 1, 3], [64, 176, 32], [1, 2, 1], ["full", "skip", "window:5"])


def shape():
    return BackboneShape(num_layers=4, hidden_size=64, intermediate_size=176, num_heads=4,
                         num_kv_heads=2, head_dim=16)  # fmt: skip


@pytest.mark.parametrize(
    "arch, words",
    [
        (FlashArch([], [], []), "keeps no layers"),
        (FlashArch([0, 1], [176, 400], 2), "exceed the backbone's 176"),
        (FlashArch([0, 1], 176, [2, 3]), "KV heads [3] out of range"),
        (FlashArch([0, 1], 176, 2, ["full", "window:x"]), "'window:x' is not one of"),
        (FlashArch([0, 1], 176, 2, "skip"), "keep attention in at least one layer"),
        (FlashArch([1, 0], 176, 2), "ascending"),
        (FlashArch([0, 9], 176, 2), "not backbone layers"),
    ],
)
def test_bad_arch_is_named_before_any_work(arch, words):
    with pytest.raises(FlashArchError, match=".*" + words.replace("[", r"\[").replace("]", r"\]")):
        arch.validate(shape())


def test_kv_groups_must_divide_heads():
    bad = BackboneShape(num_layers=2, hidden_size=48, intermediate_size=64, num_heads=3,
                        num_kv_heads=2, head_dim=16)  # fmt: skip
    with pytest.raises(FlashArchError, match="not divisible"):
        FlashArch([0], 64, 1).validate(bad)


def test_every_problem_at_once_and_prune_refuses_first(backbone):
    arch = FlashArch([0, 1], [999, 176], [5, 1], ["full", "bogus"])
    with pytest.raises(FlashArchError) as e:
        prune(backbone, arch)  # no calibration given: validation must fail before it is needed
    msg = str(e.value)
    assert "exceed" in msg and "out of range" in msg and "'bogus'" in msg


def test_json_round_trip_and_broadcast(tmp_path):
    a = FlashArch.from_dict({"layers": [0, 2], "ffn": 64, "kv_heads": [1, 2],
                             "attention": ["window:8", "skip"]})  # fmt: skip
    assert a.ffn == [64, 64]
    assert FlashArch.from_json(a.to_json()) == a
    a.save(tmp_path / "a.json")
    assert FlashArch.load(tmp_path / "a.json") == a
    (tmp_path / "bad.json").write_text('{"layers": [0], "ffn": 1, "kv": 1}')
    with pytest.raises(FlashArchError, match=r"bad\.json.*unknown keys \['kv'\].*missing"):
        FlashArch.load(tmp_path / "bad.json")


def test_uniform_arch_equals_backbone_exactly(backbone, scores, calib):
    u = prune(backbone, FlashArch.uniform(BackboneShape.of(backbone)), scores=scores)
    assert isinstance(u.config, FlashConfig)
    with torch.no_grad():
        assert torch.equal(u(calib).logits, backbone(calib).logits)


def test_nonuniform_saves_and_loads_with_auto(backbone, scores, calib, tmp_path):
    p = prune(backbone, NONUNIFORM, scores=scores)
    p.save_pretrained(tmp_path)
    q = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(q).__name__ == "FlashForCausalLM" and q.arch == NONUNIFORM
    assert q.model.layers[1].self_attn is None  # skip: no attention weights at all
    assert q.model.layers[0].mlp.down_proj.weight.shape == (64, 64)
    assert q.model.layers[2].self_attn.k_proj.weight.shape == (16, 64)
    with torch.no_grad():
        assert torch.equal(q(calib).logits, p(calib).logits)


def test_kv_cache_decode_equals_no_cache(backbone, scores, calib):
    p = prune(backbone, NONUNIFORM, scores=scores)
    x = calib[:2, :24]
    with torch.no_grad():
        full = p(x, use_cache=False).logits
        out = p(x[:, :10], use_cache=True)
        cache, steps = out.cache, [out.logits]
        for t in range(10, 24):
            o = p(x[:, t : t + 1], cache=cache, use_cache=True)
            steps.append(o.logits)
        torch.testing.assert_close(torch.cat(steps, 1), full, rtol=1e-5, atol=1e-5)
        assert len(cache.layers) == 2  # one cache slot per attention layer (the skip has none)
        g = p.generate(x[:1, :5], max_new_tokens=8, do_sample=False)
        ref = x[:1, :5]
        for _ in range(8):
            nxt = p(ref, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)
            ref = torch.cat([ref, nxt], 1)
        assert torch.equal(g, ref)


def test_skip_layer_keeps_its_ffn_and_drops_attention(backbone, scores, calib):
    """A skipped layer's output is h + FFN(norm(h)): checked against the backbone's own
    post-attention norm and FFN on the same input, and the whole model then ignores the order
    of earlier tokens only through the remaining attention layers."""
    arch = FlashArch([0, 1], [176, 176], [2, 2], ["full", "skip"])
    p = prune(backbone, arch, scores=scores)
    layer, src = p.model.layers[1], backbone.model.layers[1]
    h = torch.randn(2, 7, 64)
    with torch.no_grad():
        want = h + src.mlp(src.post_attention_layernorm(h))
        got = layer(h, attention_mask=None, position_embeddings=None)
    torch.testing.assert_close(got, want)
    # an all-but-one-skip model differs from the full one
    with torch.no_grad():
        full = prune(backbone, FlashArch([0, 1], 176, 2), scores=scores)(calib).logits
        assert not torch.allclose(p(calib).logits, full)


def test_window_mask_limits_context(backbone, scores):
    """window:W >= T equals full attention; window:1 makes the first layer's output at a
    position depend on that token alone."""
    x = torch.randint(0, V, (1, 12), generator=torch.Generator().manual_seed(3))
    full = prune(backbone, FlashArch([0], 176, 2), scores=scores)
    wide = prune(backbone, FlashArch([0], 176, 2, "window:12"), scores=scores)
    one = prune(backbone, FlashArch([0], 176, 2, "window:1"), scores=scores)
    y = x.clone()
    y[0, :6] = (y[0, :6] + 1) % V  # change the early tokens only
    with torch.no_grad():
        assert torch.equal(full(x).logits, wide(x).logits)
        torch.testing.assert_close(one(x).logits[0, 6:], one(y).logits[0, 6:])
        assert not torch.allclose(full(x).logits[0, 6:], full(y).logits[0, 6:])


def test_flash_config_rejects_bad_lists():
    with pytest.raises(FlashArchError, match="exceed"):
        FlashConfig(vocab_size=V, hidden_size=64, intermediate_size=176, num_hidden_layers=1,
                    num_attention_heads=4, num_key_value_heads=2, flash_ffn=[500])  # fmt: skip


def test_flash_config_from_backbone(backbone):
    cfg = flash_config(backbone.config, NONUNIFORM)
    assert cfg.num_hidden_layers == 3 and cfg.flash_layers == [0, 1, 3]
    assert cfg.intermediate_size == 176  # the backbone's (defines the width bound)


def test_prune_from_texts_and_refuses_a_pruned_model(backbone):
    from fmlab.core.models import train_char_tokenizer

    texts = ["the quick brown fox jumps over the lazy dog " * 20]
    tok = train_char_tokenizer(texts)
    p = prune(backbone, FlashArch([0, 2], 64, 1), texts, tokenizer=tok)
    with torch.no_grad():
        assert p(torch.zeros(1, 5, dtype=torch.long)).logits.shape == (1, 5, V)
    with pytest.raises(ValueError, match="need a tokenizer"):
        prune(backbone, FlashArch([0], 64, 1), texts)
    with pytest.raises(ValueError, match="already pruned"):
        prune(p, FlashArch([0], 64, 1), texts, tokenizer=tok)
