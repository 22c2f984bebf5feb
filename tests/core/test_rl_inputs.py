"""core.rl with per-row model inputs (the VLM extension): the inputs reach generate and every
loss forward, the stored log-probs match, and GRPO / SFT learn to use them."""

import pytest
import torch
from transformers import LlamaForCausalLM

from fmlab.core.models import llama_config
from fmlab.core.models.tokenizer import train_char_tokenizer
from fmlab.core.rl import (
    MODEL_INPUT,
    GRPOConfig,
    RolloutSource,
    grpo_loss,
    read_rollout_log,
    sequence_logps,
    train_grpo,
    train_sft,
)
from fmlab.core.train import TrainConfig


class CueLlama(LlamaForCausalLM):
    """A Llama that adds an embedding of a per-row ``cue`` (B,) to every input position: the
    model must read the cue (not in the text) to know which letter to write."""

    def __init__(self, config):
        super().__init__(config)
        self.cue_emb = torch.nn.Embedding(2, config.hidden_size)
        self.post_init()

    def forward(self, input_ids=None, inputs_embeds=None, cue=None, **kw):
        if cue is not None and input_ids is not None:
            inputs_embeds = self.get_input_embeddings()(input_ids) + self.cue_emb(cue)[:, None]
            input_ids = None
        return super().forward(input_ids=input_ids, inputs_embeds=inputs_embeds, **kw)


@pytest.fixture(scope="module")
def tok():
    return train_char_tokenizer(["abxy"])


def _model(tok):
    torch.manual_seed(0)
    return CueLlama(llama_config(len(tok), hidden_size=32, num_layers=1, num_heads=2))


ROWS = [{"prompt": "ab", "cue": 0, "answer": "x"}, {"prompt": "ab", "cue": 1, "answer": "y"}]


def _cue(rows):
    return {"cue": torch.tensor([r["cue"] for r in rows])}


def _reward(prompts, completions, answer=None, **_):
    return [float(c[:1] == a) for c, a in zip(completions, answer, strict=True)]


def _cfg(**kw):
    return GRPOConfig(**{"num_generations": 4, "prompts_per_step": 2, "max_new_tokens": 2,
                         "chat": False, **kw})  # fmt: skip


def test_rollout_carries_inputs_and_logps_use_them(tok):
    model = _model(tok)
    src = RolloutSource(model, tok, ROWS, [_reward], _cfg(num_iterations=2, beta=0.1),
                        ref_model=_model(tok), model_inputs=_cue)  # fmt: skip
    b = src.batch(0, 0, 0, 1, 1)
    cue = b[MODEL_INPUT + "cue"]
    assert cue.shape == (8,)
    n = b["completion_mask"].size(1)
    with torch.no_grad():
        with_cue = sequence_logps(model, b["input_ids"], b["attention_mask"], n, cue=cue)
        without = sequence_logps(model, b["input_ids"], b["attention_mask"], n)
    assert torch.allclose(b["old_logps"], with_cue, atol=1e-5)
    assert not torch.allclose(with_cue, without, atol=1e-3)  # the cue changes the forward
    # at the stored log-probs the ratio is 1, so the loss is -mean(A) (+ KL), finite
    assert torch.isfinite(grpo_loss(model, b, _cfg(num_iterations=2, beta=0.1)))
    bad = RolloutSource(model, tok, ROWS, [_reward], _cfg(),
                        model_inputs=lambda rows: {"cue": torch.tensor([0])})  # fmt: skip
    with pytest.raises(ValueError, match="one entry per rollout row"):
        bad.batch(0, 0, 0, 1, 1)


def _tc(steps, **kw):
    return TrainConfig(**{"steps": steps, "lr": 3e-2, "warmup_steps": 0, "weight_decay": 0.0,
                          "progress": False, "log_every": 1, "ckpt_every_s": 0, **kw})  # fmt: skip


def test_grpo_learns_to_read_the_inputs(tok, tmp_path):
    torch.set_num_threads(1)
    model = _model(tok)
    train_grpo(model, tok, ROWS * 2, [_reward], _cfg(), _tc(40, lr=1e-2), tmp_path / "g",
               model_inputs=_cue)  # fmt: skip
    log = read_rollout_log(tmp_path / "g")
    first = sum(r["reward_mean"] for r in log[:5]) / 5
    last = sum(r["reward_mean"] for r in log[-10:]) / 10
    # a policy blind to the cue gets at most 0.5 (one letter for both rows)
    assert last > first + 0.3 and last > 0.7, (first, last)


def test_sft_passes_aligned_inputs(tok, tmp_path):
    model = _model(tok)
    pairs = [("ab", "x"), ("ab", "y")] * 4
    cues = torch.tensor([0, 1] * 4)
    res = train_sft(model, tok, pairs, _tc(30, batch_size=8, lr=1e-2), tmp_path / "s",
                    chat=False, model_inputs={"cue": cues})  # fmt: skip
    losses = [r["loss"] for r in res.history if "loss" in r]
    assert losses[-1] < 0.2 < losses[0]  # the reply is only learnable from the cue
    with pytest.raises(ValueError, match="one row per pair"):
        train_sft(model, tok, pairs, _tc(1), chat=False, model_inputs={"cue": cues[:3]})
