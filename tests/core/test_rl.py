"""fmlab.core.rl: advantages, masks, log-probs, the clipped loss, GRPO end to end and resume,
MasterAdamW (bf16 storage with an fp32 optimizer, masks), SFT."""

import pytest
import torch

from fmlab.core.models import build_model
from fmlab.core.models.tokenizer import IM_START, train_char_tokenizer
from fmlab.core.rl import (
    GRPOConfig,
    MasterAdamW,
    completion_mask,
    group_advantages,
    grpo_loss,
    master_adamw,
    read_rollout_log,
    sequence_logps,
    train_grpo,
    train_sft,
)
from fmlab.core.train import TrainConfig, param_checksum


@pytest.fixture(scope="module")
def tok():
    return train_char_tokenizer(["abcxyz0123 =+\nuserassistant" + IM_START])


def _model(tok, seed=0):
    torch.manual_seed(seed)
    return build_model("llama-tiny", len(tok), seed=seed)


def test_group_advantages_known_values():
    r = torch.tensor([1.0, 0.0, 0.0, 2.0, 2.0, 2.0])
    a = group_advantages(r, 3, "none")
    assert torch.allclose(a, torch.tensor([2 / 3, -1 / 3, -1 / 3, 0, 0, 0]))
    g = group_advantages(r, 3, "group")
    assert torch.allclose(g[:3], a[:3] / (torch.tensor([1.0, 0, 0]).std() + 1e-4))
    assert torch.all(g[3:] == 0)  # a group with equal rewards has no advantage
    b = group_advantages(r, 3, "batch")
    assert torch.allclose(b, a / (r.std() + 1e-4))
    with pytest.raises(ValueError, match="groups of 4"):
        group_advantages(r, 4)


def test_completion_mask_stops_after_first_eos():
    ids = torch.tensor([[5, 9, 6, 9, 9], [5, 5, 5, 5, 5]])
    assert completion_mask(ids, 9).tolist() == [[1, 1, 0, 0, 0], [1, 1, 1, 1, 1]]


def test_sequence_logps_match_sampling_scores_with_left_padding(tok):
    """The log-probs the loss uses equal those generate() sampled from (positions from the
    attention mask, so left padding does not shift them)."""
    model = _model(tok).eval()
    prompts = [tok("ab", add_special_tokens=False)["input_ids"],
               tok("abcxy", add_special_tokens=False)["input_ids"]]  # fmt: skip
    w = max(map(len, prompts))
    ids = torch.full((2, w), tok.pad_token_id)
    mask = torch.zeros((2, w), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, w - len(p) :], mask[i, w - len(p) :] = torch.tensor(p), 1
    torch.manual_seed(0)
    out = model.generate(input_ids=ids, attention_mask=mask, do_sample=True, top_k=0,
                         max_new_tokens=6, temperature=0.7, return_dict_in_generate=True,
                         output_logits=True, pad_token_id=tok.pad_token_id, eos_token_id=None)  # fmt: skip
    comp = out.sequences[:, w:]
    want = torch.stack([torch.log_softmax(lg.float() / 0.7, -1) for lg in out.logits], 1)
    want = torch.gather(want, 2, comp.unsqueeze(-1)).squeeze(-1)
    full_mask = torch.cat([mask, torch.ones_like(comp)], 1)
    got = sequence_logps(model, out.sequences, full_mask, comp.size(1), 0.7)
    assert torch.allclose(got, want, atol=1e-4)


class _FixedLogits(torch.nn.Module):
    """A 'model' whose logits are one trainable table (B, T, V): the loss is checkable by hand."""

    def __init__(self, b, t, v):
        super().__init__()
        self.table = torch.nn.Parameter(torch.zeros(b, t, v))

    def forward(self, input_ids, attention_mask=None, position_ids=None, use_cache=False):
        return type("Out", (), {"logits": self.table})()


def _toy_batch(adv, old_shift=0.0):
    b, t, v = 2, 4, 3
    ids = torch.tensor([[0, 1, 2, 1], [0, 2, 2, 0]])
    cmask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    m = _FixedLogits(b, t, v)
    logp = torch.log(torch.full((b, 3), 1 / 3))
    return m, {"input_ids": ids, "attention_mask": torch.ones(b, t), "completion_mask": cmask,
               "advantages": torch.tensor(adv), "old_logps": logp + old_shift}  # fmt: skip


def test_loss_reductions_by_hand():
    # ratio = 1 everywhere: per-token loss = -A; grpo averages per completion, dapo per token
    for kind, want in (("grpo", -(1.0 + -0.5) / 2), ("dapo", -(3 * 1.0 - 0.5) / 4),
                       ("dr_grpo", -(3 * 1.0 - 0.5) / (2 * 5))):  # fmt: skip
        m, batch = _toy_batch([1.0, -0.5])
        cfg = GRPOConfig(loss_type=kind, max_new_tokens=5, num_iterations=2)
        assert float(grpo_loss(m, batch, cfg).detach()) == pytest.approx(want, abs=1e-6)


def test_clip_high_stops_the_gradient_beyond_it():
    # old log-probs lower by 0.5: ratio = e^0.5 = 1.65 > 1 + epsilon for every token
    for eps_high, moves in ((0.2, False), (1.0, True)):
        m, batch = _toy_batch([1.0, 1.0], old_shift=-0.5)
        loss = grpo_loss(m, batch, GRPOConfig(epsilon=0.2, epsilon_high=eps_high, num_iterations=2))
        loss.backward()
        assert (m.table.grad.abs().sum() > 0) == moves


def test_config_validation_names_the_field():
    with pytest.raises(ValueError, match="num_generations"):
        GRPOConfig(num_generations=1)
    with pytest.raises(ValueError, match="loss_type"):
        GRPOConfig(loss_type="ppo")


def _x_reward(prompts, completions, **_):
    texts = [c[-1]["content"] for c in completions]
    return [t.count("x") / max(1, len(t)) for t in texts]


def _rows():
    return [{"prompt": p} for p in ("ab", "ca", "ba", "abc")]


def _grpo_cfg(**kw):
    return GRPOConfig(**{"num_generations": 4, "prompts_per_step": 2, "max_new_tokens": 6, **kw})


def _train_cfg(steps, **kw):
    return TrainConfig(**{"steps": steps, "lr": 3e-2, "warmup_steps": 0, "weight_decay": 0.0,
                          "progress": False, "log_every": 1, "ckpt_every_s": 0, **kw})  # fmt: skip


def test_grpo_raises_a_learnable_reward(tok, tmp_path):
    torch.set_num_threads(1)
    model = _model(tok)
    res = train_grpo(model, tok, _rows(), [_x_reward], _grpo_cfg(loss_type="dapo"),
                     _train_cfg(30), tmp_path / "run")  # fmt: skip
    assert res.steps == 30
    log = read_rollout_log(tmp_path / "run")
    assert len(log) == 30
    first = sum(r["reward_mean"] for r in log[:5]) / 5
    last = sum(r["reward_mean"] for r in log[-5:]) / 5
    assert last > first + 0.2, (first, last)


def test_grpo_resume_is_exact(tok, tmp_path):
    cfg = _grpo_cfg(beta=0.05)
    full = _model(tok)
    train_grpo(full, tok, _rows(), [_x_reward], cfg, _train_cfg(4), tmp_path / "a")
    part = _model(tok)
    r = train_grpo(part, tok, _rows(), [_x_reward], cfg, _train_cfg(4), tmp_path / "b", stop_at=2)
    assert r.interrupted and r.steps == 2
    part = _model(tok)  # a fresh process rebuilds the model; the checkpoint restores it
    train_grpo(part, tok, _rows(), [_x_reward], cfg, _train_cfg(4), tmp_path / "b")
    assert param_checksum(part) == param_checksum(full)
    assert len(read_rollout_log(tmp_path / "b")) == 4  # resumed rows replace, not repeat


def test_grpo_rejects_bad_rows_and_rewards(tok):
    model = _model(tok)
    with pytest.raises(ValueError, match="empty"):
        train_grpo(model, tok, [], [_x_reward], _grpo_cfg(), _train_cfg(1))
    with pytest.raises(ValueError, match="no 'prompt'"):
        train_grpo(model, tok, [{"q": "a"}], [_x_reward], _grpo_cfg(), _train_cfg(1))
    with pytest.raises(ValueError, match="returned 1 values"):
        train_grpo(model, tok, _rows(), [lambda **_: [1.0]], _grpo_cfg(), _train_cfg(1))


def test_master_adamw_bf16_storage_follows_fp32_adamw():
    torch.manual_seed(0)
    w16 = torch.nn.Parameter(torch.randn(8, 8).to(torch.bfloat16))
    w32 = torch.nn.Parameter(w16.detach().float())
    ref = torch.optim.AdamW([w32], lr=1e-4, weight_decay=0.1)
    opt = MasterAdamW([w16], lr=1e-4, weight_decay=0.1)
    start = w16.detach().clone()
    for i in range(5):
        g = torch.randn(8, 8, generator=torch.Generator().manual_seed(i)).to(torch.bfloat16)
        w32.grad, w16.grad = g.float(), g
        ref.step()
        opt.step()
    master = opt.state[w16]["master"]
    # the master follows fp32 AdamW from the same start with the same gradients
    assert (master - w32.detach()).abs().max() < 1e-6
    assert torch.equal(w16.detach(), master.to(torch.bfloat16))
    # small fp32 updates round away in storage: most bf16 entries did not change
    assert (w16.detach() == start).float().mean() > 0.5
    sd = opt.state_dict()
    again = MasterAdamW([torch.nn.Parameter(w16.detach().clone())], lr=1e-4, weight_decay=0.1)
    again.load_state_dict(sd)
    got = next(iter(again.state.values()))["master"]
    assert got.dtype == torch.float32 and torch.equal(got, master)


def test_master_adamw_emulated_bf16_storage_equals_bf16_storage():
    """fp32 parameters with storage_dtype=bf16 hold, step for step, exactly the values of a
    bf16-stored parameter given the same gradients; the state round-trips with its master."""
    torch.manual_seed(0)
    w16 = torch.nn.Parameter(torch.randn(8, 8).to(torch.bfloat16))
    wem = torch.nn.Parameter(w16.detach().float())
    real = MasterAdamW([w16], lr=1e-3, weight_decay=0.1)
    emu = MasterAdamW([wem], lr=1e-3, weight_decay=0.1, storage_dtype=torch.bfloat16)
    for i in range(6):
        g = torch.randn(8, 8, generator=torch.Generator().manual_seed(i)).to(torch.bfloat16)
        w16.grad, wem.grad = g, g.float()
        real.step()
        emu.step()
        assert wem.dtype == torch.float32
        assert torch.equal(wem.detach(), w16.detach().float()), i
    master = emu.state[wem]["master"]
    assert master.data_ptr() != wem.data_ptr() and not torch.equal(master, wem.detach())
    again = MasterAdamW([torch.nn.Parameter(wem.detach().clone())], lr=1e-3,
                        storage_dtype=torch.bfloat16)  # fmt: skip
    again.load_state_dict(emu.state_dict())
    assert torch.equal(next(iter(again.state.values()))["master"], master)


def test_master_adamw_masks_every_update_weight_decay_included():
    w = torch.nn.Parameter(torch.ones(4, 4))
    mask = torch.zeros(4, 4, dtype=torch.bool)
    mask[0] = True
    opt = MasterAdamW([w], lr=0.1, weight_decay=0.5, masks={w: mask})
    w.grad = torch.ones(4, 4)
    opt.step()
    assert torch.all(w.detach()[1:] == 1) and torch.all(w.detach()[0] < 1)
    with pytest.raises(ValueError, match="shape"):
        MasterAdamW([w], masks={w: torch.ones(2, 2)})


def test_sft_and_bf16_hook_train_through_core_train(tok, tmp_path):
    model = _model(tok).to(torch.bfloat16)
    pairs = [("ab", "xx"), ("ca", "xy"), ("ba", "yx")] * 4
    res = train_sft(model, tok, pairs, _train_cfg(25, batch_size=6, lr=1e-2), tmp_path / "sft",
                    optimizers=master_adamw())  # fmt: skip
    losses = [r["loss"] for r in res.history if "loss" in r]
    assert losses[-1] < losses[0] * 0.7
    assert next(model.parameters()).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="no SFT pairs"):
        train_sft(model, tok, [], _train_cfg(1))
