"""Pre-training (masked diffusion SFT), the preference/RL trainers, and evaluation.

Every trainer runs on :func:`fmlab.core.train.train` (AdamW, warm-up + cosine, atomic
checkpoints, bit-exact resume, progress bar): each is only a ``loss_fn`` and a batch source.

DDP: a loss never closes over the policy's network. It holds a net-less shell
(:meth:`DLLM.with_net`) and runs the module ``train`` passes it, which under ``torchrun`` is the
DDP wrapper, so every gradient is synchronised; the reference is a separate frozen model. Only
online sampling (no gradient) runs the unwrapped module, so ranks need not agree on how many
sampler forwards they take. The forward counters live in the checkpoint (``_Counted``'s extra
state), so a resumed run reports the same counts as an uninterrupted one.

======== ========================================================================== =========
arm      objective                                                                  data
======== ========================================================================== =========
dtrpo    −log σ(β[L̂(y_w) − L̂(y_l)]), L̂ = dtrpo estimate of log π_θ/π_ref (1 fwd)   offline
dpo-exact same, exact trajectory log-ratio (T forwards)                              offline
dpo-d1   same, d1 one-pass estimate (1 forward): the equal-cost comparison           offline
dpo-elbo same, ELBO with n shared masks (VRPO-like, n forwards)                      offline
grpo     diffu-GRPO (d1): group-normalised advantages, d1 per-token log-probs,      online
         one gradient step per sampled batch (μ = 1, so the clip is inactive), k3 KL
wd1      wd1: softmax(±A)-weighted log-likelihood (d1 one-pass), no ratio           online
======== ========================================================================== =========
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from fmlab.core.train import TrainConfig, TrainResult, _batch_generator, train
from fmlab.dtrpo.data import Item, PairSet, reward
from fmlab.dtrpo.estimators import estimate
from fmlab.dtrpo.model import DLLM, diffusion_loss, packed_logprobs
from fmlab.dtrpo.sampler import SamplerConfig, Trajectories, sample

__all__ = [
    "ARMS",
    "PrefConfig",
    "evaluate",
    "kl_to_ref",
    "pretrain",
    "train_arm",
]

ARMS = {
    "dtrpo": "dtrpo",
    "dpo-exact": "exact",
    "dpo-d1": "d1",
    "dpo-elbo": "elbo",
    "grpo": None,
    "wd1": None,
}


class _SFTSource:
    def __init__(self, model: DLLM, items: list[Item], seed: int):
        self.prompt_ids, self.real = model.encode_prompts([it.prompt for it in items])
        self.answer = model.encode_answers([it.example.answer for it in items])
        self.seed = seed

    def batch(self, step, micro, rank, world, batch_size):
        g = _batch_generator(self.seed, step, micro, rank)
        idx = torch.randint(len(self.answer), (batch_size,), generator=g)
        return {
            "prompt_ids": self.prompt_ids[idx],
            "prompt_real": self.real[idx],
            "input_ids": self.answer[idx],
            "noise_seed": torch.randint(2**62, (1,), generator=g),
        }


def pretrain(
    model: DLLM,
    items: list[Item],
    cfg: TrainConfig,
    out_dir: str | os.PathLike | None = None,
    stop_at: int | None = None,
    eval_fn: Callable | None = None,
) -> TrainResult:
    """Masked-diffusion SFT on (prompt, reference answer) pairs, in place.

    A SIGTERM or Ctrl-C raises :class:`fmlab.core.train.TrainingInterrupted` once the
    checkpoint in ``out_dir`` is written (rerun to resume); ``stop_at`` returns normally."""

    shell = model.with_net(None)  # the loss runs only the module train() hands it

    def loss_fn(net, batch):
        g = torch.Generator().manual_seed(int(batch["noise_seed"]))
        return diffusion_loss(
            shell.with_net(net), batch["prompt_ids"], batch["prompt_real"], batch["input_ids"], g
        )

    source = _SFTSource(model, items, cfg.seed)
    res = train(model.net, source, cfg, out_dir, loss_fn, eval_fn=eval_fn, stop_at=stop_at)
    res.raise_if_signalled("dtrpo pretraining")  # callers would go on with a half-trained model
    return res


@dataclass(frozen=True)
class PrefConfig:
    arm: str = "dtrpo"
    beta: float = 2.0  # DPO temperature (the validated default); GRPO's KL weight is kl_coef
    nll_weight: float = 0.0  # RPO-style NLL on the chosen answer (per token), offline arms
    n_mc: int = 2  # ELBO masks (dpo-elbo)
    group: int = 8  # online arms: samples per prompt
    prompts_per_step: int = 4  # online arms
    kl_coef: float = 0.04  # grpo
    wd1_neg: float = 1.0  # wd1: weight of the negative (softmax(-A)) term
    sampler: SamplerConfig = field(default_factory=lambda: SamplerConfig(temperature=1.0))

    def __post_init__(self):
        if self.arm not in ARMS:
            raise ValueError(f"unknown arm {self.arm!r}; choose one of {', '.join(ARMS)}")
        if self.beta <= 0:
            raise ValueError("beta must be > 0")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class Counter:
    """Forward passes spent by a trainer (sequences; a packed forward counts as one)."""

    policy: int = 0  # with backward
    ref: int = 0  # reference, no grad
    sampling: int = 0  # online sampling
    tokens: int = 0

    @property
    def total(self) -> int:
        return self.policy + self.ref + self.sampling


class _Counted(torch.nn.Module):
    """The policy network plus its forward counters, which ride in the module's state dict
    (``get_extra_state``: saved in every checkpoint, not a buffer, so DDP never broadcasts it)."""

    def __init__(self, net: torch.nn.Module, count: Counter):
        super().__init__()
        self.net, self.count = net, count

    def forward(self, **kw):
        return self.net(**kw)

    def get_extra_state(self) -> dict:
        return dataclasses.asdict(self.count)

    def set_extra_state(self, state: dict) -> None:
        for k, v in state.items():
            setattr(self.count, k, int(v))


def _unwrap(net: torch.nn.Module) -> torch.nn.Module:
    return net.module if isinstance(net, torch.nn.parallel.DistributedDataParallel) else net


class _IndexSource:
    """Batches of item indices (pairs or prompts) plus a noise seed, pure in (seed, step)."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed = n, seed

    def batch(self, step, micro, rank, world, batch_size):
        g = _batch_generator(self.seed, step, micro, rank)
        idx = torch.randint(self.n, (batch_size,), generator=g)
        return {"input_ids": idx[:, None], "noise_seed": torch.randint(2**62, (1,), generator=g)}


def _dpo_loss(shell: DLLM, ref: DLLM, pairs: PairSet, cfg: PrefConfig, count: Counter):
    est = ARMS[cfg.arm]

    def loss_fn(net, batch):
        policy = shell.with_net(net)  # the DDP wrapper under torchrun
        idx = batch["input_ids"][:, 0]
        seed = int(batch["noise_seed"])
        traj = Trajectories.cat([pairs.chosen.select(idx), pairs.rejected.select(idx)])
        p = estimate(policy, traj, est, seed, n_mc=cfg.n_mc)  # (2B,): chosen, then rejected
        with torch.no_grad():
            r = estimate(ref, traj, est, seed, n_mc=cfg.n_mc)
        count.policy += int(p.forwards.sum())
        count.ref += int(r.forwards.sum())
        count.tokens += int(p.tokens.sum() + r.tokens.sum())
        margin = (p.value - r.value).view(2, -1)
        loss = -F.logsigmoid(cfg.beta * (margin[0] - margin[1])).mean()
        if cfg.nll_weight:  # the chosen answer's estimated log-likelihood, per token
            loss = loss - cfg.nll_weight * p.value.view(2, -1)[0].mean() / shell.gen_length
        return loss

    return loss_fn


def _online_loss(shell: DLLM, ref: DLLM, items: list[Item], cfg: PrefConfig, count: Counter):
    def loss_fn(net, batch):
        policy = shell.with_net(net)  # the DDP wrapper under torchrun
        idx = batch["input_ids"][:, 0].tolist()
        seed = int(batch["noise_seed"])
        group = [items[i] for i in idx for _ in range(cfg.group)]
        traj = sample(  # no gradient: the unwrapped module, no collective per sampler step
            shell.with_net(_unwrap(net)), [it.prompt for it in group], cfg.sampler,
            torch.Generator().manual_seed(seed),
        )  # fmt: skip
        count.sampling += int(traj.forwards.sum())
        count.tokens += int(traj.tokens.sum())
        r = torch.tensor(
            [reward(it, t) for it, t in zip(group, policy.decode(traj.answer), strict=True)]
        )
        r = r.view(len(idx), cfg.group)
        adv = ((r - r.mean(1, keepdim=True)) / (r.std(1, keepdim=True) + 1e-4)).flatten()
        masked = torch.full_like(traj.answer, policy.mask_id)
        lp = packed_logprobs(policy, traj.prompt_ids, traj.prompt_real, traj.answer, masked)
        count.policy += len(traj)
        count.tokens += len(traj) * (traj.prompt_ids.shape[1] + 2 * policy.gen_length)
        if cfg.arm == "grpo":
            with torch.no_grad():
                lr_ = packed_logprobs(ref, traj.prompt_ids, traj.prompt_real, traj.answer, masked)
            count.ref += len(traj)
            ratio = torch.exp(lp - lp.detach())  # μ = 1: old policy = current policy
            pg = -(ratio * adv[:, None]).mean()
            d = lr_ - lp
            kl = (torch.exp(d) - d - 1).mean()  # k3 estimator of KL(π_θ || π_ref), per token
            return pg + cfg.kl_coef * kl
        # wd1: ratio-free weighted likelihood over each group
        seq = lp.mean(1).view(len(idx), cfg.group)
        a = adv.view(len(idx), cfg.group)
        w_pos, w_neg = torch.softmax(a, 1), torch.softmax(-a, 1)
        return (-(w_pos * seq).sum(1) + cfg.wd1_neg * (w_neg * seq).sum(1)).mean()

    return loss_fn


def train_arm(
    policy: DLLM,
    ref: DLLM,
    cfg: PrefConfig,
    train_cfg: TrainConfig,
    pairs: PairSet | None = None,
    items: list[Item] | None = None,
    out_dir: str | os.PathLike | None = None,
    stop_at: int | None = None,
) -> tuple[TrainResult, Counter]:
    """Train ``policy`` in place with one arm; returns the run and its forward-pass counts
    since step 0 (also after a resume: they are kept in the checkpoint). Under ``torchrun``
    the counts are this process's; :func:`fmlab.dtrpo.cli` sums them over processes.

    Offline arms read ``pairs``; online arms sample from the current policy on ``items``
    (``train_cfg.batch_size`` is pairs per step offline, and the online arms use
    ``cfg.prompts_per_step`` prompts × ``cfg.group`` samples). A SIGTERM or Ctrl-C raises
    :class:`fmlab.core.train.TrainingInterrupted` once the checkpoint is written.
    """
    if policy.net is ref.net:
        raise ValueError("policy and reference must be separate models (use ref.copy())")
    for p in ref.net.parameters():
        p.requires_grad_(False)
    for p in policy.net.parameters():
        p.requires_grad_(True)
    ref.net.eval()
    count = Counter()  # restored from the checkpoint on resume (cumulative since step 0)
    shell = policy.with_net(None)
    if ARMS[cfg.arm] is not None:
        if pairs is None or len(pairs) == 0:
            raise ValueError(f"arm {cfg.arm} needs a non-empty pair set (fmlab dtrpo pairs)")
        loss_fn: Callable = _dpo_loss(shell, ref, pairs, cfg, count)
        source = _IndexSource(len(pairs), train_cfg.seed)
    else:
        if not items:
            raise ValueError(f"arm {cfg.arm} needs training prompts")
        loss_fn = _online_loss(shell, ref, items, cfg, count)
        source = _IndexSource(len(items), train_cfg.seed)
        train_cfg = dataclasses.replace(train_cfg, batch_size=cfg.prompts_per_step)
    res = train(_Counted(policy.net, count), source, train_cfg, out_dir, loss_fn, stop_at=stop_at)
    res.raise_if_signalled(f"dtrpo {cfg.arm} training")  # the bench's stop_at loops go on
    return res, count


@torch.no_grad()
def evaluate(
    model: DLLM,
    items: list[Item],
    cfg: SamplerConfig = SamplerConfig(temperature=0.0),
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> dict:
    """Accuracy (reward == 1) per task and overall, mean reward, forwards (and tokens) per
    item and per solved item, and ``solved`` per item (for paired comparisons)."""
    prompts = [it.prompt for it in items]
    traj = sample(model, prompts, cfg, torch.Generator().manual_seed(seed), progress=progress)
    rewards = [reward(it, t) for it, t in zip(items, model.decode(traj.answer), strict=True)]
    out: dict = {"per_task": {}}
    for task in dict.fromkeys(it.task for it in items):
        rs = [r for it, r in zip(items, rewards, strict=True) if it.task == task]
        out["per_task"][task] = sum(r == 1.0 for r in rs) / len(rs)
    solved = sum(r == 1.0 for r in rewards)
    out["accuracy"] = solved / len(items)
    out["mean_reward"] = sum(rewards) / len(items)
    out["forwards"] = int(traj.forwards.sum())
    out["forwards_per_item"] = out["forwards"] / len(items)
    out["forwards_per_solved"] = out["forwards"] / solved if solved else None
    out["tokens"] = int(traj.tokens.sum())
    out["solved"] = [r == 1.0 for r in rewards]  # per item, for paired comparisons
    return out


@torch.no_grad()
def kl_to_ref(policy: DLLM, ref: DLLM, items: list[Item], seed: int = 0) -> float:
    """KL(π_θ || π_ref) over trajectories: the mean exact log-ratio of the policy's own
    samples (temperature 1), an unbiased Monte Carlo estimate."""
    traj: Trajectories = sample(
        policy, [it.prompt for it in items], SamplerConfig(temperature=1.0),
        torch.Generator().manual_seed(seed),
    )  # fmt: skip
    a = estimate(policy, traj, "exact").value
    r = estimate(ref, traj, "exact").value
    return float((a - r).mean())


def save_counter(count: Counter) -> dict:
    return {**dataclasses.asdict(count), "total": count.total}
