"""Knowledge editing by rows: the multi-token rule, exact revert, errors."""

import pytest
import torch

from fmlab.core.models import train_bpe_tokenizer, train_char_tokenizer
from fmlab.stem import build_stem, stem_mlps
from fmlab.stem.edit import EditError, edit, edit_pairs, revert

from .conftest import tiny


def _model(tok):
    return build_stem(len(tok), hidden_size=32, num_layers=3, num_heads=4, num_kv_heads=2, seed=1)


TEXTS = ["Zorbak lives in Lima. Brailou lives in Oslo. Ki lives in Riga."] * 20


@pytest.fixture(scope="module")
def tok():
    return train_bpe_tokenizer(TEXTS, vocab_size=300)


def test_multi_token_rule_aligns_last_tokens(tok):
    s = tok.encode(" Zorbakxq", add_special_tokens=False)
    t = tok.encode(" Ki", add_special_tokens=False)
    pairs = dict(edit_pairs(tok, "Zorbakxq", "Ki"))
    assert len(s) > len(t)
    for k in range(1, len(t) + 1):  # source's last tokens take target's last tokens
        assert pairs[s[-k]] == t[-k]
    assert all(a not in pairs or pairs[a] in t for a in s[: len(s) - len(t)])


def test_edit_copies_rows_and_revert_is_bit_exact(tok):
    model = _model(tok)
    before = {i: m.table.weight.detach().clone() for i, m in stem_mlps(model).items()}
    e = edit(model, tok, "Zorbak", "Brailou")
    for i, m in stem_mlps(model).items():
        w = m.table.weight
        for a, b in e.pairs:
            assert torch.equal(w[a], before[i][b])
    revert(model, e)
    for i, m in stem_mlps(model).items():
        assert torch.equal(m.table.weight, before[i])
    with pytest.raises(EditError, match="already reverted"):
        revert(model, e)


def test_edit_only_chosen_layers(tok):
    model = _model(tok)
    before = {i: m.table.weight.detach().clone() for i, m in stem_mlps(model).items()}
    edit(model, tok, "Zorbak", "Brailou", layers=[2])
    assert torch.equal(stem_mlps(model)[1].table.weight, before[1])
    assert not torch.equal(stem_mlps(model)[2].table.weight, before[2])
    with pytest.raises(EditError, match=r"not STEM layers; choose from \[1, 2\]"):
        edit(model, tok, "Zorbak", "Brailou", layers=[0])


def test_tokenizer_beyond_the_tables_is_a_clear_error(tok):
    with pytest.raises(EditError, match="beyond the model"):
        edit(tiny(), tok, "Zorbak", "Brailou")


def test_entity_the_tokenizer_cannot_encode_is_a_clear_error():
    ctok = train_char_tokenizer(["abc def"])
    model = tiny()
    with pytest.raises(EditError, match="cannot encode entity 'Zé'"):
        edit(model, ctok, "Zé", "abc")
    with pytest.raises(EditError, match="empty"):
        edit(model, ctok, " ", "abc")
