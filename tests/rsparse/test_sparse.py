import math

import pytest
import torch
from torch import nn

from fmlab.core.models import build_model
from fmlab.rsparse import RSparseLinear, budget, calibrate, rsparse_modules, set_protocol, sparsify


def test_budget_formula():
    assert budget(576, 1536, 0.0, 1.0) == (576, 0)
    k, r = budget(576, 1536, 0.5, 0.5)
    assert k == 144 and r == math.floor((576 * 1536 * 0.5 - 144 * 1536) / (576 + 1536))
    assert budget(100, 100, 0.5, 0.0) == (0, 25)
    with pytest.raises(ValueError):
        budget(10, 10, 1.5, 0.5)


def test_equals_linear_when_nothing_is_sparse():
    torch.manual_seed(0)
    lin = nn.Linear(32, 48)
    rs = RSparseLinear(lin, sparsity=0.0, alpha=1.0)
    x = torch.randn(3, 7, 32)
    assert torch.equal(rs(x), lin(x))


@pytest.mark.parametrize("alpha", [0.0, 0.4, 1.0])
def test_equals_the_formula(alpha):
    torch.manual_seed(1)
    lin = nn.Linear(40, 24)
    rs = RSparseLinear(lin, sparsity=0.5, alpha=alpha)
    rs.set_threshold(0.3)
    x = torch.randn(5, 40)
    w, b = lin.weight.detach().double(), lin.bias.detach().double()
    m = (x.abs() * w.norm(dim=0).float() > 0.3).double()
    u, s, vh = torch.linalg.svd(w, full_matrices=False)
    r = rs.rank
    wr = u[:, :r] @ torch.diag(s[:r]) @ vh[:r]
    xd = x.double()
    ref = (m * xd) @ w.T + b + ((1 - m) * xd) @ wr.T
    torch.testing.assert_close(rs(x).double(), ref, atol=1e-5, rtol=1e-5)
    assert rs.k == round(40 * 0.5 * alpha)


def test_sparsify_calibrate_and_protocols():
    torch.manual_seed(0)
    model = build_model("llama-tiny", vocab_size=64).eval()
    ids = torch.randint(0, 64, (2, 40))
    dense = model(input_ids=ids).logits
    mods = sparsify(model, sparsity=0.5, alpha=1.0)
    assert len(mods) == 7 * model.config.num_hidden_layers
    calibrate(model, [torch.randint(0, 64, (4, 64))])
    # on fresh tokens about half the channels pass each threshold (the kernel's counters)
    from fmlab.rsparse import kernel

    kernel.reset_counters()
    with torch.no_grad():
        model(input_ids=ids)
    c = kernel.counters()
    assert c["rows"] == 2 * 40 * len(mods)
    assert 0.35 < c["channels_kept"] / c["channels_seen"] < 0.65
    sparse = model(input_ids=ids).logits
    assert not torch.allclose(sparse, dense)
    set_protocol(model, "tail")
    tail = model(input_ids=ids).logits
    cut = 40 - math.ceil(0.1 * 40)
    torch.testing.assert_close(tail[:, :cut], dense[:, :cut], atol=1e-5, rtol=1e-5)  # dense prefix
    assert not torch.allclose(tail[:, cut:], dense[:, cut:])
    with pytest.raises(ValueError, match="protocol"):
        set_protocol(model, "half")
    assert set(rsparse_modules(model)) == set(mods)
