"""angular_spread: STEM table rows and dense up-projection outputs, by token."""

import math

import pytest
import torch

from fmlab.stem import angular_spread, stem_mlps
from fmlab.stem.analysis import first_positions

from .conftest import V, tiny


def test_first_positions_finds_each_token_once():
    blocks = torch.tensor([[5, 6, 5, 7], [7, 8, 6, 9]])
    ids, where = first_positions(blocks, max_tokens=10)
    assert ids.tolist() == [5, 6, 7, 8, 9]
    assert where.tolist() == [[0, 0], [0, 1], [0, 3], [1, 1], [1, 3]]
    assert first_positions(blocks, max_tokens=2)[0].tolist() == [5, 6]
    with pytest.raises(ValueError, match="max_tokens"):
        first_positions(blocks, max_tokens=1)


def test_stem_rows_orthogonal_or_equal():
    m = tiny(stem_layers=[1, 2])
    blocks = torch.arange(12).view(2, 6)
    with torch.no_grad():
        for mlp in stem_mlps(m).values():
            w = torch.zeros_like(mlp.table.weight)
            w[torch.arange(V), torch.arange(V) % w.shape[1]] = 1.0  # one-hot rows
            mlp.table.weight.copy_(w)
    s = angular_spread(m, blocks, layers=[1, 2])
    assert s["layer1"] == pytest.approx(90.0) and s["mean"] == pytest.approx(90.0)
    with torch.no_grad():
        stem_mlps(m)[2].table.weight.fill_(1.0)  # every row the same vector
    assert angular_spread(m, blocks, layers=[2])["layer2"] == pytest.approx(0.0, abs=1e-3)


def test_dense_layer_uses_up_projection_at_first_positions():
    m = tiny(stem_layers=[2])
    blocks = torch.randint(0, V, (3, 8), generator=torch.Generator().manual_seed(1))
    got = angular_spread(m, blocks, layers=[1])["layer1"]
    ids, where = first_positions(blocks, 512)
    outs = {}
    h = m.model.layers[1].mlp.up_proj.register_forward_hook(lambda _m, _i, o: outs.update(o=o))
    with torch.no_grad():
        m(input_ids=blocks)
    h.remove()
    v = torch.nn.functional.normalize(outs["o"][where[:, 0], where[:, 1]].double(), dim=1)
    cos = (v @ v.T).clamp(-1, 1)
    off = cos[~torch.eye(len(ids), dtype=torch.bool)]
    assert got == pytest.approx(math.degrees(torch.acos(off).mean().item()), rel=1e-6)
    with pytest.raises(ValueError, match="out of range"):
        angular_spread(m, blocks, layers=[3])
