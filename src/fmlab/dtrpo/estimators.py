"""Estimators of log π(τ) for a recorded trajectory, whose differences estimate
log π_θ(τ)/π_ref(τ).

π(τ) is a product over sampling steps of μ(y_i | τ_t) over the tokens I_t unmasked at step t,
times a position-selection factor that cancels in the ratio (both policies are scored on the
same τ). So ``log π_θ(τ) − log π_ref(τ)`` is estimated by the difference of two calls with the
same random draws (``seed``), which also cancels most of their noise (VRPO's shared noise).

======== ==================================================== ==============================
name     what it scores                                       forwards per trajectory
======== ==================================================== ==============================
exact    every step's state; its newly unmasked tokens          T (one per sampling step)
dtrpo    one uniform step t_b per block, scaled by the block's  1 (packed block layout)
         step count S_b: unbiased for ``exact``
d1       every token with its whole block masked (d1's          1 (packed)
         one-pass mean-field estimate)
elbo     LLaDA's ELBO of the final answer, n random maskings    n (packed)
         with 1/t weights (VRPO-style, shared noise)
tracerl  groups of ``shrink`` consecutive steps; each group's   Σ_b ⌈S_b / shrink⌉
         tokens scored at the group's first state
======== ==================================================== ==============================
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fmlab.dtrpo.model import DLLM, layout, packed_logprobs, token_logprobs
from fmlab.dtrpo.sampler import Trajectories

__all__ = [
    "ESTIMATORS",
    "Estimate",
    "block_pass_logprobs",
    "dtrpo_states",
    "estimate",
    "exact_token_logprobs",
    "log_ratio",
    "single_pass_max_abs_diff",
]

ESTIMATORS = ("exact", "dtrpo", "d1", "elbo", "tracerl")


@dataclass
class Estimate:
    value: torch.Tensor  # (B,) estimate of log π(τ) (up to the cancelling selection factor)
    forwards: torch.Tensor  # (B,) forward passes spent on each trajectory
    tokens: torch.Tensor  # (B,) tokens those forwards processed


def block_pass_logprobs(model: DLLM, traj: Trajectories, b: int, noised_blk: torch.Tensor):
    """log μ(answer tokens of block b | [prompt | clean blocks < b | noised_blk]): (B, bl).

    This is exactly the input the sampler ran at a step of block ``b``.
    """
    bl = model.block_length
    clean = traj.answer[:, : b * bl] if b else None
    ids, pos, att = layout(traj.prompt_ids, traj.prompt_real, clean, noised_blk, bl, b)
    lp = token_logprobs(model.logits(ids, pos, att)[:, -bl:], model.banned)
    target = traj.answer[:, b * bl : (b + 1) * bl]
    return lp.gather(-1, target[..., None]).squeeze(-1)


def _repeat(traj: Trajectories, n: int) -> Trajectories:
    return Trajectories(
        **{k: v.repeat(n, *([1] * (v.dim() - 1))) for k, v in traj.state_dict().items()}
    )


def exact_token_logprobs(model: DLLM, traj: Trajectories) -> tuple[torch.Tensor, torch.Tensor]:
    """Each token's log μ at the state just before the step that unmasked it: (B, L), and the
    tokens processed per trajectory. One forward per sampling step (batched over steps)."""
    bl, B = model.block_length, len(traj)
    out = torch.zeros(B, model.gen_length)
    tokens = torch.zeros(B, dtype=torch.long)
    for b in range(model.n_blocks):
        sl = slice(b * bl, (b + 1) * bl)
        S = int(traj.block_steps[:, b].max())
        steps = torch.arange(S).repeat_interleave(B)  # (S*B,) step of each stacked row
        st = traj.bstep[:, sl].repeat(S, 1)
        ans = traj.answer[:, sl].repeat(S, 1)
        noised = torch.where(st < steps[:, None], ans, model.mask_id)
        lp = block_pass_logprobs(model, _repeat(traj, S), b, noised)
        hit = (st == steps[:, None]).float()
        out[:, sl] = (lp * hit).view(S, B, bl).sum(0)
        tokens += traj.block_steps[:, b] * (traj.prompt_ids.shape[1] + (b + 1) * bl)
    return out, tokens


def dtrpo_states(
    model: DLLM, traj: Trajectories, generator: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """One step t_b ~ U{0..S_b-1} per block: the answer re-masked to that block's state before
    step t_b (B, L), and the step drawn for each token's block (B, L)."""
    bl = model.block_length
    u = torch.rand(traj.block_steps.shape, generator=generator)
    t = (u * traj.block_steps).floor().long().clamp(max=traj.block_steps - 1)
    t_tok = t.repeat_interleave(bl, 1)
    noised = torch.where(traj.bstep < t_tok, traj.answer, model.mask_id)
    return noised, t_tok


def _packed_tokens(traj: Trajectories, model: DLLM) -> torch.Tensor:
    return torch.full((len(traj),), traj.prompt_ids.shape[1] + 2 * model.gen_length)


def estimate(
    model: DLLM,
    traj: Trajectories,
    estimator: str,
    seed: int = 0,
    n_mc: int = 2,
    shrink: int = 2,
    single_pass: bool = True,
) -> Estimate:
    """Estimate log π(τ) of every trajectory under ``model`` (differentiable).

    ``seed`` fixes the random draws: two models scored with the same seed see the same steps
    or masks. ``single_pass=False`` runs dtrpo's blocks as N_B separate passes instead of the
    one packed pass (same numbers; used to check the block-attention layout).
    """
    bl, B, L = model.block_length, len(traj), model.gen_length
    g = torch.Generator().manual_seed(seed)
    ones = torch.ones(B, dtype=torch.long)
    if estimator == "exact":
        lp, tokens = exact_token_logprobs(model, traj)
        return Estimate(lp.sum(1), traj.forwards.clone(), tokens)
    if estimator == "dtrpo":
        noised, t_tok = dtrpo_states(model, traj, g)
        if single_pass:
            lp = packed_logprobs(model, traj.prompt_ids, traj.prompt_real, traj.answer, noised)
            fwd, tokens = ones, _packed_tokens(traj, model)
        else:
            lp = torch.cat(
                [
                    block_pass_logprobs(model, traj, b, noised[:, b * bl : (b + 1) * bl])
                    for b in range(model.n_blocks)
                ],
                1,
            )
            fwd = ones * model.n_blocks
            tokens = sum(traj.prompt_ids.shape[1] + (b + 1) * bl for b in range(model.n_blocks))
            tokens = ones * tokens
        scale = traj.block_steps.repeat_interleave(bl, 1).float()
        value = (lp * (traj.bstep == t_tok) * scale).sum(1)
        return Estimate(value, fwd, tokens)
    if estimator == "d1":
        noised = torch.full_like(traj.answer, model.mask_id)
        lp = packed_logprobs(model, traj.prompt_ids, traj.prompt_real, traj.answer, noised)
        return Estimate(lp.sum(1), ones, _packed_tokens(traj, model))
    if estimator == "elbo":
        if n_mc < 1:
            raise ValueError("n_mc must be >= 1")
        total = torch.zeros(B)
        for _ in range(n_mc):
            t = 1e-3 + (1 - 1e-3) * torch.rand(B, model.n_blocks, generator=g)
            t_tok = t.repeat_interleave(bl, 1)
            hide = torch.rand(B, L, generator=g) < t_tok
            noised = torch.where(hide, model.mask_id, traj.answer)
            lp = packed_logprobs(model, traj.prompt_ids, traj.prompt_real, traj.answer, noised)
            total = total + (lp * hide / t_tok).sum(1)
        return Estimate(total / n_mc, ones * n_mc, _packed_tokens(traj, model) * n_mc)
    if estimator == "tracerl":
        if shrink < 1:
            raise ValueError("shrink must be >= 1")
        group = traj.bstep // shrink  # (B, L) group of each token's step
        out = torch.zeros(B, L)
        fwd = torch.zeros(B, dtype=torch.long)
        tokens = torch.zeros(B, dtype=torch.long)
        for b in range(model.n_blocks):
            sl = slice(b * bl, (b + 1) * bl)
            n_groups = (traj.block_steps[:, b] + shrink - 1) // shrink
            G = int(n_groups.max())
            gi = torch.arange(G).repeat_interleave(B)
            grp = group[:, sl].repeat(G, 1)
            noised = torch.where(grp < gi[:, None], traj.answer[:, sl].repeat(G, 1), model.mask_id)
            lp = block_pass_logprobs(model, _repeat(traj, G), b, noised)
            out[:, sl] = (lp * (grp == gi[:, None])).view(G, B, bl).sum(0)
            fwd += n_groups
            tokens += n_groups * (traj.prompt_ids.shape[1] + (b + 1) * bl)
        return Estimate(out.sum(1), fwd, tokens)
    raise ValueError(f"unknown estimator {estimator!r}; choose one of {', '.join(ESTIMATORS)}")


def log_ratio(
    policy: DLLM, ref: DLLM, traj: Trajectories, estimator: str, seed: int = 0, **kw
) -> Estimate:
    """Estimate log π_θ(τ)/π_ref(τ) with shared draws; forwards count both models."""
    with torch.no_grad():
        a = estimate(policy, traj, estimator, seed, **kw)
        r = estimate(ref, traj, estimator, seed, **kw)
    return Estimate(a.value - r.value, a.forwards + r.forwards, a.tokens + r.tokens)


def exact_expectation_dtrpo(model: DLLM, traj: Trajectories) -> torch.Tensor:
    """E over t_b of the dtrpo estimate, by enumerating every step of every block: (B,).

    Equal to the exact value by construction (Σ_b S_b · mean_t f_b(t) = Σ_b Σ_t f_b(t)); kept
    to make that identity testable on real model outputs.
    """
    bl = model.block_length
    total = torch.zeros(len(traj))
    S = int(traj.block_steps.max())
    for s in range(S):
        t = torch.minimum(torch.full_like(traj.block_steps, s), traj.block_steps - 1)
        t_tok = t.repeat_interleave(bl, 1)
        valid = (s < traj.block_steps).repeat_interleave(bl, 1)
        noised = torch.where(traj.bstep < t_tok, traj.answer, model.mask_id)
        lp = packed_logprobs(model, traj.prompt_ids, traj.prompt_real, traj.answer, noised)
        total = total + (lp * (traj.bstep == t_tok) * valid).sum(1)
    return total


@torch.no_grad()
def single_pass_max_abs_diff(model: DLLM, traj: Trajectories, seeds: range = range(4)) -> float:
    """max |Δ| between per-token log-probs of the one-forward block-attention pass and the
    N_B separate sampler-layout passes, over the dtrpo states drawn with ``seeds``."""
    bl, worst = model.block_length, 0.0
    for seed in seeds:
        noised, _ = dtrpo_states(model, traj, torch.Generator().manual_seed(seed))
        one = packed_logprobs(model, traj.prompt_ids, traj.prompt_real, traj.answer, noised)
        sep = torch.cat(
            [
                block_pass_logprobs(model, traj, b, noised[:, b * bl : (b + 1) * bl])
                for b in range(model.n_blocks)
            ],
            1,
        )
        worst = max(worst, float((one - sep).abs().max()))
    return worst
