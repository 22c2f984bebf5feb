"""GRPO and DAPO for Hugging Face causal LMs, on :func:`fmlab.core.train.train`.

Per optimizer step (and per micro-step) a :class:`RolloutSource` draws ``prompts_per_step``
prompts, samples ``num_generations`` completions of each from the current policy, scores them
with verifiable reward functions (TRL's signature, ``f(prompts, completions, **columns) ->
list[float | None]``), and turns the rewards into group-relative advantages

    A_i = (r_i - mean_group(r)) / (std_group(r) + 1e-4)        (scale_rewards="group")

The loss is the clipped surrogate with an optional KL penalty to a frozen reference (k3
estimator), as TRL defines it:

    ratio_t = exp(logp_t - logp_old_t)
    loss_t  = -min(ratio_t A, clip(ratio_t, 1 - epsilon, 1 + epsilon_high) A)
              + beta * (exp(ref_t - logp_t) - (ref_t - logp_t) - 1)

reduced per ``loss_type``: ``grpo`` (mean over each completion's tokens, then over
completions), ``dapo`` (token-level: sum over all tokens / number of tokens) or ``dr_grpo``
(sum / (completions x max_new_tokens)). DAPO's clip-higher is ``epsilon_high > epsilon``;
its dynamic sampling is approximated by ``drop_uniform_groups`` (groups whose rewards are all
equal carry no advantage and are masked out of the token normaliser instead of being
re-sampled: the step's batch shrinks rather than being refilled).

Why by hand, not TRL's ``GRPOTrainer``: the RL methods of fmlab need (1) the resume and
SIGTERM guarantees of :mod:`fmlab.core.train` that every other training loop here has (a kill
loses at most two minutes and a rerun ends with the same weights), (2) bf16 weight storage
with an fp32 optimizer (:class:`MasterAdamW`, the "three gates" study's Gate III) and fixed
gradient masks, both through ``train``'s optimizer hook, and (3) the same loop for SFT from the
same base. The definitions above follow TRL's so numbers are comparable.

Extra model inputs (vision-language models): ``model_inputs(rows) -> {name: (B, ...) tensor}``
gives each rollout row tensors (e.g. ``pixel_values`` or video frames) that are passed by name
to ``generate`` and to every forward of the loss (policy, old and reference log-probs), so a
model that reads visual inputs from keyword arguments, as HF VLMs do, trains unchanged; the
tensors travel in the batch under ``MODEL_INPUT + name``.

Exact resume: a rollout batch is a pure function of (seed, step, micro-step, rank) and the
current weights, which the checkpoint restores. With ``num_iterations`` > 1 a rollout is reused
for that many steps; a resume in the middle of such a cycle regenerates it from the resumed
weights (documented deviation: the run then differs from an uninterrupted one).
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from fmlab.core.io import atomic_write_json
from fmlab.core.train import CHECKPOINT, TrainConfig, TrainResult, train

__all__ = [
    "MODEL_INPUT",
    "GRPOConfig",
    "RolloutSource",
    "completion_mask",
    "group_advantages",
    "grpo_loss",
    "read_rollout_log",
    "sequence_logps",
    "train_grpo",
]

ROLLOUTS = "rollouts.jsonl"
MODEL_INPUT = "model_input."  # batch keys of the extra model inputs (see ``RolloutSource``)


@dataclass
class GRPOConfig:
    """What GRPO/DAPO adds to :class:`fmlab.core.train.TrainConfig` (whose ``batch_size`` is
    unused: a step's batch is ``prompts_per_step x num_generations`` completions)."""

    num_generations: int = 8  # G: completions per prompt
    prompts_per_step: int = 4  # prompts per micro-step
    max_new_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    epsilon: float = 0.2  # lower clip
    epsilon_high: float | None = None  # upper clip; None: = epsilon (GRPO); > epsilon: DAPO
    beta: float = 0.0  # KL to the frozen reference; 0: no reference model is kept
    loss_type: str = "grpo"  # grpo | dapo | dr_grpo
    scale_rewards: str = "group"  # group | batch | none
    reward_weights: list[float] | None = None
    num_iterations: int = 1  # optimizer steps per rollout batch (mu)
    drop_uniform_groups: bool = False  # DAPO-style: groups with equal rewards leave the loss
    chat: bool = True  # prompts are user turns rendered by the chat template

    def __post_init__(self):
        bad = {
            "num_generations": self.num_generations >= 2,
            "prompts_per_step": self.prompts_per_step >= 1,
            "max_new_tokens": self.max_new_tokens >= 1,
            "temperature": self.temperature > 0,
            "top_p": 0 < self.top_p <= 1,
            "epsilon": 0 <= self.epsilon < 1,
            "epsilon_high": self.epsilon_high is None or self.epsilon_high >= 0,
            "beta": self.beta >= 0,
            "loss_type": self.loss_type in ("grpo", "dapo", "dr_grpo"),
            "scale_rewards": self.scale_rewards in ("group", "batch", "none"),
            "num_iterations": self.num_iterations >= 1,
        }
        wrong = [k for k, ok in bad.items() if not ok]
        if wrong:
            raise ValueError(
                f"invalid GRPOConfig values for: {', '.join(wrong)} "
                "(num_generations >= 2; loss_type grpo|dapo|dr_grpo; scale_rewards "
                "group|batch|none; 0 < top_p <= 1; temperature > 0)"
            )

    @property
    def clip_high(self) -> float:
        return self.epsilon if self.epsilon_high is None else self.epsilon_high


def group_advantages(rewards: torch.Tensor, group: int, scale: str = "group") -> torch.Tensor:
    """Group-relative advantages of ``rewards`` (consecutive runs of ``group`` completions per
    prompt): reward minus its group's mean, divided by the group's std (``"group"``), the
    whole batch's std (``"batch"``) or nothing (``"none"``; Dr. GRPO)."""
    if rewards.numel() % group:
        raise ValueError(f"{rewards.numel()} rewards do not form groups of {group}")
    r = rewards.view(-1, group).float()
    centred = r - r.mean(dim=1, keepdim=True)
    if scale == "group":
        centred = centred / (r.std(dim=1, keepdim=True) + 1e-4)
    elif scale == "batch":
        centred = centred / (r.std() + 1e-4)
    elif scale != "none":
        raise ValueError(f"scale must be group, batch or none, got {scale!r}")
    return centred.reshape(-1)


def completion_mask(completion_ids: torch.Tensor, eos_id: int | None) -> torch.Tensor:
    """1 for each completion token up to and including the first EOS, 0 after it."""
    if eos_id is None:
        return torch.ones_like(completion_ids)
    is_eos = completion_ids == eos_id
    # tokens strictly after the first EOS: a cumulative count of EOS tokens before them > 0
    before = torch.cumsum(is_eos.long(), dim=1) - is_eos.long()
    return (before == 0).long()


def _positions(attention_mask: torch.Tensor) -> torch.Tensor:
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def sequence_logps(
    model, input_ids: torch.Tensor, attention_mask: torch.Tensor, n_completion: int,
    temperature: float = 1.0, **model_inputs,
) -> torch.Tensor:  # fmt: skip
    """Log-probabilities ``(B, n_completion)`` of the last ``n_completion`` tokens of each row
    under ``model`` (logits divided by ``temperature``, as sampling used), with position ids
    from the attention mask so left padding does not shift positions. ``model_inputs`` (e.g.
    a VLM's visual tensors) are passed to the forward by name."""
    out = model(input_ids=input_ids, attention_mask=attention_mask,
                position_ids=_positions(attention_mask), use_cache=False,
                **model_inputs)  # fmt: skip
    logits = out.logits[:, -n_completion - 1 : -1].float() / temperature
    targets = input_ids[:, -n_completion:]
    return torch.gather(F.log_softmax(logits, dim=-1), 2, targets.unsqueeze(-1)).squeeze(-1)


def _batch_model_inputs(batch: dict) -> dict:
    return {k[len(MODEL_INPUT) :]: v for k, v in batch.items() if k.startswith(MODEL_INPUT)}


def grpo_loss(model, batch: dict, cfg: GRPOConfig) -> torch.Tensor:
    """The clipped surrogate (+ beta KL) of one rollout batch, reduced per ``cfg.loss_type``."""
    mask = batch["completion_mask"].float()
    n = mask.size(1)
    logp = sequence_logps(model, batch["input_ids"], batch["attention_mask"], n, cfg.temperature,
                          **_batch_model_inputs(batch))  # fmt: skip
    old = batch["old_logps"] if "old_logps" in batch else logp.detach()
    ratio = torch.exp(logp - old)
    adv = batch["advantages"].unsqueeze(1)
    per_tok = -torch.min(ratio * adv, torch.clamp(ratio, 1 - cfg.epsilon, 1 + cfg.clip_high) * adv)
    if cfg.beta:
        d = batch["ref_logps"] - logp
        per_tok = per_tok + cfg.beta * (torch.exp(d) - d - 1)
    if cfg.loss_type == "grpo":
        per_seq = (per_tok * mask).sum(1) / mask.sum(1).clamp(min=1)
        keep = (mask.sum(1) > 0).float()
        return (per_seq * keep).sum() / keep.sum().clamp(min=1)
    if cfg.loss_type == "dapo":
        return (per_tok * mask).sum() / mask.sum().clamp(min=1)
    return (per_tok * mask).sum() / (mask.size(0) * cfg.max_new_tokens)


def _generator(seed: int, *parts: int) -> torch.Generator:
    key = ":".join(str(p) for p in (seed, *parts)).encode()
    return torch.Generator().manual_seed(
        int.from_bytes(hashlib.sha256(key).digest()[:8], "big") >> 1
    )


@dataclass
class RolloutSource:
    """The :class:`fmlab.core.train.BatchSource` of GRPO: each call samples a fresh rollout
    batch from ``model`` (the policy being trained) and returns the tensors ``grpo_loss``
    reads. ``rows`` are the dataset: dicts with a ``"prompt"`` and any columns the reward
    functions read (passed to them by name, TRL-style). ``model_inputs``, when given, maps a
    rollout's rows to extra tensors for the model's forward (``{name: (B, ...)}``, one entry per
    row in order; e.g. the frames of each row's video)."""

    model: Any
    tokenizer: Any
    rows: Sequence[dict]
    reward_funcs: Sequence[Callable[..., list]]
    cfg: GRPOConfig
    ref_model: Any = None
    log_path: Path | None = None
    seed: int = 0
    history: list[dict] = field(default_factory=list)
    _cache: dict = field(default_factory=dict)
    model_inputs: Callable[[list[dict]], dict[str, torch.Tensor]] | None = None

    def __post_init__(self):
        if not self.rows:
            raise ValueError("no prompts: the GRPO dataset is empty")
        missing = [i for i, r in enumerate(self.rows) if not str(r.get("prompt", "")).strip()]
        if missing:
            raise ValueError(f"rows {missing[:5]} have no 'prompt' (every row needs one)")
        if not self.reward_funcs:
            raise ValueError("GRPO needs at least one reward function")
        w = self.cfg.reward_weights
        if w is not None and len(w) != len(self.reward_funcs):
            raise ValueError(
                f"{len(w)} reward_weights for {len(self.reward_funcs)} reward functions"
            )
        tok = self.tokenizer
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id

    def _encode(self, prompt: str) -> list[int]:
        tok = self.tokenizer
        if self.cfg.chat:
            prompt = tok.apply_chat_template(
                [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
            )
        return tok(prompt, add_special_tokens=False)["input_ids"]

    def _extra_inputs(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        if self.model_inputs is None:
            return {}
        extra = self.model_inputs(rows)
        bad = [k for k, v in extra.items()
               if not isinstance(v, torch.Tensor) or v.ndim == 0 or len(v) != len(rows)]  # fmt: skip
        if not isinstance(extra, dict) or bad:
            raise ValueError(
                f"model_inputs must return {{name: tensor of first dimension {len(rows)}}} "
                f"(one entry per rollout row); bad entries: {bad}"
            )
        return extra

    def batch(self, step: int, micro: int, rank: int, world: int, batch_size: int) -> dict:
        cycle = step // self.cfg.num_iterations
        key = (cycle, micro, rank)
        if key not in self._cache:
            self._cache = {k: v for k, v in self._cache.items() if k[0] == cycle}
            self._cache[key] = self._rollout(cycle, micro, rank, step)
        return self._cache[key]

    @torch.no_grad()
    def _rollout(self, cycle: int, micro: int, rank: int, step: int) -> dict:
        cfg, model, tok = self.cfg, self.model, self.tokenizer
        g = _generator(self.seed, cycle, micro, rank)
        pick = torch.randint(len(self.rows), (cfg.prompts_per_step,), generator=g).tolist()
        rows = [self.rows[i] for i in pick for _ in range(cfg.num_generations)]
        enc = [self._encode(r["prompt"]) for r in rows]
        width = max(map(len, enc))
        dev = next(model.parameters()).device
        ids = torch.full((len(enc), width), self.pad_id, dtype=torch.long)
        pmask = torch.zeros((len(enc), width), dtype=torch.long)
        for i, e in enumerate(enc):
            ids[i, width - len(e) :] = torch.tensor(e)
            pmask[i, width - len(e) :] = 1
        extra = self._extra_inputs(rows)
        extra_dev = {k: v.to(dev) for k, v in extra.items()}
        was_training = model.training
        model.eval()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(torch.randint(2**62, (1,), generator=g)))
            gen = model.generate(
                input_ids=ids.to(dev), attention_mask=pmask.to(dev), do_sample=True,
                temperature=cfg.temperature, top_p=cfg.top_p, top_k=0,
                max_new_tokens=cfg.max_new_tokens, pad_token_id=self.pad_id,
                eos_token_id=tok.eos_token_id, **extra_dev,
            )  # fmt: skip
        comp = gen[:, width:].cpu()
        cmask = completion_mask(comp, tok.eos_token_id)
        texts = [
            tok.decode(c[m.bool()], skip_special_tokens=True)
            for c, m in zip(comp, cmask, strict=True)
        ]
        rewards = self._rewards(rows, texts)
        adv = group_advantages(rewards, cfg.num_generations, cfg.scale_rewards)
        grouped = rewards.view(-1, cfg.num_generations)
        uniform = (grouped.max(1).values == grouped.min(1).values).repeat_interleave(
            cfg.num_generations
        )
        if cfg.drop_uniform_groups:
            cmask = cmask * (~uniform).long().unsqueeze(1)
        full = torch.cat([ids, comp], 1)
        amask = torch.cat([pmask, cmask], 1)
        out = {"input_ids": full, "attention_mask": amask, "completion_mask": cmask,
               "advantages": adv}  # fmt: skip
        out.update({MODEL_INPUT + k: v for k, v in extra.items()})
        n = comp.size(1)
        if cfg.num_iterations > 1:
            out["old_logps"] = sequence_logps(model, full.to(dev), amask.to(dev), n,
                                              cfg.temperature, **extra_dev).cpu()  # fmt: skip
        if cfg.beta:
            out["ref_logps"] = sequence_logps(self.ref_model, full.to(dev), amask.to(dev), n,
                                              cfg.temperature, **extra_dev).cpu()  # fmt: skip
        if was_training:
            model.train()
        row = {"step": step, "micro": micro, "rank": rank,
               "reward_mean": float(rewards.mean()), "reward_std": float(rewards.std()),
               "completion_tokens": float(cmask.sum(1).float().mean()),
               "uniform_groups": float(uniform.float().mean()),
               "sample": texts[0][:200]}  # fmt: skip
        self.history.append(row)
        if self.log_path is not None and rank == 0:
            with open(self.log_path, "a") as f:
                f.write(json.dumps(row) + "\n")
        return out

    def _rewards(self, rows: list[dict], texts: list[str]) -> torch.Tensor:
        prompts = [r["prompt"] for r in rows]
        columns = {k: [r.get(k) for r in rows] for k in rows[0] if k != "prompt"}
        if self.cfg.chat:
            completions: list = [[{"role": "assistant", "content": t}] for t in texts]
        else:
            completions = texts
        weights = self.cfg.reward_weights or [1.0] * len(self.reward_funcs)
        total = torch.zeros(len(rows))
        for f, w in zip(self.reward_funcs, weights, strict=True):
            vals = f(prompts=prompts, completions=completions, **columns)
            if len(vals) != len(rows):
                name = getattr(f, "__name__", repr(f))
                raise ValueError(
                    f"reward function {name} returned {len(vals)} values for {len(rows)} completions"
                )
            r = torch.tensor([math.nan if v is None else float(v) for v in vals])
            total += w * torch.nan_to_num(r, nan=0.0)  # TRL: None = not applicable
        return total


def read_rollout_log(out_dir: str | os.PathLike) -> list[dict]:
    """The rollout statistics of a run (``rollouts.jsonl``), one row per (step, micro, rank);
    a resumed run's repeated rows are replaced by their latest, a torn last line dropped."""
    path = Path(out_dir) / ROLLOUTS
    rows: dict[tuple, dict] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                r = json.loads(line)
            except json.JSONDecodeError:
                continue
            rows[(r["step"], r["micro"], r["rank"])] = r
    return [rows[k] for k in sorted(rows)]


def train_grpo(
    model,
    tokenizer,
    rows: Sequence[dict],
    reward_funcs: Sequence[Callable[..., list]],
    cfg: GRPOConfig,
    train_cfg: TrainConfig,
    out_dir: str | os.PathLike | None = None,
    ref_model=None,
    optimizers=None,
    eval_fn=None,
    stop_at: int | None = None,
    model_inputs: Callable[[list[dict]], dict[str, torch.Tensor]] | None = None,
) -> TrainResult:
    """GRPO/DAPO on ``model`` (trained in place) through :func:`fmlab.core.train.train`:
    resumable from ``out_dir``, SIGTERM-safe; rollout statistics go to ``rollouts.jsonl``
    there (see :func:`read_rollout_log`). With ``cfg.beta > 0`` and no ``ref_model``, a frozen
    copy of the starting model is the reference. ``model_inputs``: see :class:`RolloutSource`
    (extra per-row tensors for the forward, e.g. a video model's frames)."""
    if cfg.beta and ref_model is None:
        ref_model = copy.deepcopy(model).eval().requires_grad_(False)
    out = Path(out_dir) if out_dir is not None else None
    log_path = None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        log_path = out / ROLLOUTS
        if not (out / CHECKPOINT).is_file():  # a fresh start: an old run's rows would repeat
            log_path.unlink(missing_ok=True)
        atomic_write_json(out / "grpo_config.json", asdict(cfg))
    src = RolloutSource(model, tokenizer, rows, reward_funcs, cfg, ref_model, log_path,
                        seed=train_cfg.seed, model_inputs=model_inputs)  # fmt: skip
    return train(model, src, train_cfg, out_dir=out, loss_fn=lambda m, b: grpo_loss(m, b, cfg),
                 eval_fn=eval_fn, optimizers=optimizers, stop_at=stop_at)  # fmt: skip
