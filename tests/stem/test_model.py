"""STEM model: Llama parity with no STEM layers, the formula, generate + cache, HF round trip."""

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close
from transformers import AutoConfig, AutoModelForCausalLM, LlamaForCausalLM

from fmlab.stem import StemConfig, StemError, StemForCausalLM, stem_config, stem_mlps

from .conftest import V, tiny


def test_no_stem_layers_equals_llama_on_same_weights(ids):
    stem = tiny(stem_layers=[])
    llama = LlamaForCausalLM(_as_llama(stem.config)).eval()
    llama.load_state_dict(stem.state_dict())
    assert_close(stem(input_ids=ids).logits, llama(input_ids=ids).logits, rtol=0, atol=0)


def _as_llama(cfg):
    from transformers import LlamaConfig

    d = cfg.to_dict()
    for k in ("model_type", "stem_layers", "architectures", "transformers_version"):
        d.pop(k, None)
    return LlamaConfig(**d)


def test_default_layers_and_formula(ids):
    model = tiny()
    assert model.config.stem_layers == [1, 2]
    mlps = stem_mlps(model)
    assert sorted(mlps) == [1, 2]
    assert not hasattr(mlps[1], "up_proj")
    layer = model.model.layers[1]
    x = torch.randn(2, 9, 32)
    layer.mlp._ids = ids
    try:
        got = layer.mlp(x)
    finally:
        layer.mlp._ids = None
    m = layer.mlp
    want = m.down_proj(F.silu(m.gate_proj(x)) * m.table.weight[ids])
    assert_close(got, want)


def test_tables_init_xavier_and_backbone_truncated():
    model = tiny(hidden_size=64, intermediate_size=256)
    t = stem_mlps(model)[1].table.weight.detach()
    assert abs(float(t.std()) - (2 / (V + 256)) ** 0.5) < 0.01
    std = model.config.initializer_range
    assert float(model.model.layers[0].mlp.up_proj.weight.detach().abs().max()) <= 2 * std + 1e-6


def test_inputs_embeds_only_is_a_clear_error(ids):
    model = tiny()
    with pytest.raises(StemError, match="needs input_ids"):
        model(inputs_embeds=model.model.embed_tokens(ids))
    dense = tiny(stem_layers=[])  # a plain Llama may take embeddings
    dense(inputs_embeds=dense.model.embed_tokens(ids))


def test_generate_with_cache_equals_without(ids):
    model = tiny(seed=3)
    kw = dict(max_new_tokens=8, do_sample=False, pad_token_id=0)
    att = torch.ones_like(ids)
    a = model.generate(ids, attention_mask=att, use_cache=True, **kw)
    b = model.generate(ids, attention_mask=att, use_cache=False, **kw)
    assert torch.equal(a, b)
    # the tokens the cached run produced also give the same logits in one full forward
    with torch.no_grad():
        full = model(input_ids=a).logits[:, ids.size(1) - 1 : -1].argmax(-1)
    assert torch.equal(full, a[:, ids.size(1) :])


def test_save_and_load_with_auto_classes(tmp_path, ids):
    model = tiny(seed=1)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    assert AutoConfig.from_pretrained(tmp_path).model_type == "fmlab_stem"
    back = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert isinstance(back, StemForCausalLM)
    assert back.config.stem_layers == [1, 2]
    with torch.no_grad():
        assert_close(back(input_ids=ids).logits, model(input_ids=ids).logits, rtol=0, atol=0)


@pytest.mark.parametrize("layers", [[3], [-1], [0, 0]])
def test_stem_layers_out_of_range_is_a_clear_error(layers):
    with pytest.raises(StemError, match="stem_layers"):
        stem_config(V, stem_layers=layers, hidden_size=32, num_layers=3, num_heads=4)


def test_config_round_trip_keeps_layers():
    cfg = stem_config(V, stem_layers=[0, 2], hidden_size=32, num_layers=3, num_heads=4)
    again = StemConfig.from_dict(cfg.to_dict())
    assert again.stem_layers == [0, 2]
