from hypothesis import given, settings
from hypothesis import strategies as st

from fmlab.core.models import SPECIAL_TOKENS, train_char_tokenizer


@settings(max_examples=50, deadline=None)
@given(st.text(max_size=80))
def test_bpe_roundtrips_any_text(bpe_tokenizer, text):
    ids = bpe_tokenizer(text, add_special_tokens=False)["input_ids"]
    assert bpe_tokenizer.decode(ids) == text


def test_special_tokens_and_chat_template(bpe_tokenizer):
    for t in SPECIAL_TOKENS:
        ids = bpe_tokenizer(t, add_special_tokens=False)["input_ids"]
        assert len(ids) == 1, t
    text = bpe_tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hi?"}], tokenize=False, add_generation_prompt=True
    )
    assert text == "<|im_start|>user\nHi?<|im_end|>\n<|im_start|>assistant\n"
    assert bpe_tokenizer.eos_token == "<|im_end|>"
    assert bpe_tokenizer.pad_token_id != bpe_tokenizer.eos_token_id


def test_char_tokenizer_one_token_per_char(tmp_path):
    tok = train_char_tokenizer(["0123456789+=\n "])
    ids = tok("12+34=46\n", add_special_tokens=False)["input_ids"]
    assert len(ids) == 9
    assert tok.decode(ids) == "12+34=46\n"
    tok.save_pretrained(tmp_path)
    from transformers import AutoTokenizer

    assert (
        AutoTokenizer.from_pretrained(tmp_path)("7+7", add_special_tokens=False)["input_ids"]
        == tok("7+7", add_special_tokens=False)["input_ids"]
    )
