"""Training STEM through core.train: optimizer split, exact resume, row-sparse updates."""

import torch

from fmlab.core.train import BlockSampler, TrainConfig, param_checksum, train
from fmlab.stem import stem_mlps
from fmlab.stem.train import RowSparseAdamW, split_params, stem_optimizers, train_stem

from .conftest import V, tiny

CFG = dict(batch_size=2, lr=1e-2, warmup_steps=1, log_every=1, progress=False, ckpt_every_s=0)


def _blocks(seed=0, n=16, t=9, vocab=V):
    return torch.randint(0, vocab, (n, t), generator=torch.Generator().manual_seed(seed))


def test_optimizer_split_has_tables_apart():
    model = tiny()
    opts = stem_optimizers()(model, TrainConfig(**CFG, steps=2))
    backbone, tables = split_params(model)
    assert len(opts) == 2 and len(tables) == 2
    assert {id(p) for g in opts[1].param_groups for p in g["params"]} == {id(p) for p in tables}
    n_model = len({id(p) for p in model.parameters()})
    assert len(backbone) + len(tables) == n_model
    assert opts[1].defaults["lr"] == opts[0].defaults["lr"]


def test_resume_is_exact_with_both_optimizers(tmp_path):
    data = BlockSampler(_blocks(), seed=0)
    cfg = TrainConfig(**CFG, steps=4)
    a = tiny(seed=2)
    train_stem(a, data, cfg, tmp_path / "a")
    b = tiny(seed=2)
    r = train_stem(b, data, cfg, tmp_path / "b", stop_at=2)
    assert r.stop_reason == "stop_at"
    state = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)
    assert len(state["optimizer"]["optimizers"]) == 2
    b = tiny(seed=99)  # fresh weights: everything must come from the checkpoint
    train_stem(b, data, cfg, tmp_path / "b")
    assert param_checksum(a) == param_checksum(b)


def test_row_sparse_leaves_absent_rows_bit_unchanged(tmp_path):
    present = torch.tensor([3, 5, 7, 11])
    blocks = present[torch.randint(0, 4, (8, 9), generator=torch.Generator().manual_seed(1))]
    data = BlockSampler(blocks, seed=0)
    cfg = TrainConfig(**CFG, steps=2, weight_decay=0.1)
    for row_sparse in (True, False):
        model = tiny(seed=4)
        before = {i: m.table.weight.detach().clone() for i, m in stem_mlps(model).items()}
        train_stem(model, data, cfg, row_sparse=row_sparse)
        absent = torch.ones(V, dtype=torch.bool)
        absent[present] = False
        for i, m in stem_mlps(model).items():
            w = m.table.weight.detach()
            # the input rows of the batch (ids[:, :-1]) change in both modes
            assert not torch.equal(w[present], before[i][present])
            if row_sparse:
                assert torch.equal(w[absent], before[i][absent])
            else:  # the official dense AdamW decays every row
                assert not torch.equal(w[absent], before[i][absent])


def test_row_sparse_adamw_matches_adamw_on_rows_present_every_step():
    torch.manual_seed(0)
    w0 = torch.randn(6, 4)
    a, b = torch.nn.Parameter(w0.clone()), torch.nn.Parameter(w0.clone())
    kw = dict(lr=1e-2, betas=(0.9, 0.95), weight_decay=0.1)
    oa, ob = torch.optim.AdamW([a], **kw), RowSparseAdamW([b], **kw)
    for _ in range(3):
        g = torch.randn(6, 4)
        a.grad, b.grad = g.clone(), g.clone()
        oa.step()
        ob.step()
    torch.testing.assert_close(a, b)


def test_default_train_unchanged_by_the_hook():
    """core.train without optimizers= is one AdamW with the old checkpoint format."""
    model = tiny(stem_layers=[])
    r = train(model, BlockSampler(_blocks(), seed=0), TrainConfig(**CFG, steps=1))
    assert r.steps == 1
