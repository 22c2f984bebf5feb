"""Semi-autoregressive block sampling that records the trajectory.

Blocks are generated left to right. Block ``b`` starts all-[MASK]; each step runs the model on
``[prompt | clean blocks < b | block b]`` and unmasks some masked positions with tokens drawn
from μ_θ. Which positions: the most confident ones (``low_confidence`` remasking, LLaDA's
default), random ones, or, with ``threshold`` set, every position whose confidence exceeds it
(at least one per step: Fast-dLLM's parallel decoding, fewer forwards).

With ``force`` (answers given as token ids) the sampler runs the same loop but places the given
tokens: at each step it unmasks the still-masked positions whose given token the model is most
confident about (the probability of that token at the current state, the schedule's count per
step). That is :func:`recover_trajectories`, the rule by which a preference pair that was not
sampled here (no recorded trajectory) gets a decode order: the order in which low-confidence
greedy decoding of the reference would have unmasked those tokens had it produced them. For an
answer the reference itself decoded greedily, it gives back the recorded order exactly.

The sampler records, for every answer token, the step of its block at which it was unmasked
(``bstep``) and how many steps each block took (``block_steps``): together with the tokens
that is the whole trajectory τ, which the estimators in :mod:`fmlab.dtrpo.estimators` score.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields

import torch

from fmlab.dtrpo.model import DLLM, layout, token_logprobs

__all__ = ["SamplerConfig", "Trajectories", "recover_trajectories", "sample", "transfer_schedule"]

REMASKING = ("low_confidence", "random")


@dataclass(frozen=True)
class SamplerConfig:
    steps_per_block: int = 4
    temperature: float = 1.0  # 0 = greedy; 1 = samples from μ_θ itself (what the ratio assumes)
    remasking: str = "low_confidence"
    threshold: float | None = None  # unmask every position with confidence above this

    def __post_init__(self):
        if self.steps_per_block < 1:
            raise ValueError("steps_per_block must be >= 1")
        if self.temperature < 0:
            raise ValueError("temperature must be >= 0")
        if self.remasking not in REMASKING:
            raise ValueError(f"remasking must be one of {REMASKING}, not {self.remasking!r}")
        if self.threshold is not None and not 0 < self.threshold < 1:
            raise ValueError("threshold must lie in (0, 1)")


@dataclass
class Trajectories:
    """A batch of sampled answers with their unmasking record."""

    prompt_ids: torch.Tensor  # (B, P) left-padded
    prompt_real: torch.Tensor  # (B, P) bool
    answer: torch.Tensor  # (B, L)
    bstep: torch.Tensor  # (B, L) step within its block at which each token was unmasked
    block_steps: torch.Tensor  # (B, NB) steps each block took
    tokens: torch.Tensor  # (B,) tokens processed by the sampler's forwards

    @property
    def forwards(self) -> torch.Tensor:
        """Forward passes the sampler spent on each sequence."""
        return self.block_steps.sum(1)

    def __len__(self) -> int:
        return self.answer.shape[0]

    def select(self, idx) -> Trajectories:
        return Trajectories(**{f.name: getattr(self, f.name)[idx] for f in fields(self)})

    @staticmethod
    def cat(parts: list[Trajectories]) -> Trajectories:
        """Concatenate batches (prompts re-padded on the left to the widest)."""
        width = max(p.prompt_ids.shape[1] for p in parts)

        def pad(x: torch.Tensor, value) -> torch.Tensor:
            extra = width - x.shape[1]
            return torch.nn.functional.pad(x, (extra, 0), value=value) if extra else x

        out = {}
        for f in fields(Trajectories):
            xs = [getattr(p, f.name) for p in parts]
            if f.name == "prompt_ids":
                xs = [pad(x, 0) for x in xs]  # padding is never attended
            elif f.name == "prompt_real":
                xs = [pad(x, False) for x in xs]
            out[f.name] = torch.cat(xs, 0)
        return Trajectories(**out)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def transfer_schedule(block_length: int, steps: int) -> list[int]:
    """Tokens unmasked at each step of a block: as even as possible, the remainder first."""
    base, rem = divmod(block_length, steps)
    if base == 0:
        raise ValueError(f"steps_per_block {steps} exceeds block_length {block_length}")
    return [base + (i < rem) for i in range(steps)]


@torch.no_grad()
def sample(
    model: DLLM,
    prompts: list[str],
    cfg: SamplerConfig = SamplerConfig(),
    generator: torch.Generator | None = None,
    batch_size: int = 256,
    force: torch.Tensor | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Trajectories:
    """Sample one answer per prompt and record its trajectory.

    ``force`` (B, gen_length): place these tokens instead of sampling, in the model's
    confidence order (see the module docstring). ``progress(done, total)`` is called after
    every block of every batch of ``batch_size`` prompts."""
    if force is not None and force.shape != (len(prompts), model.gen_length):
        raise ValueError(
            f"force must be (prompts, gen_length) = ({len(prompts)}, {model.gen_length}), got "
            f"{tuple(force.shape)}"
        )
    transfer_schedule(model.block_length, cfg.steps_per_block)  # a clear error before any work
    if len(prompts) > batch_size:
        starts = range(0, len(prompts), batch_size)
        total = len(starts) * model.n_blocks

        def part(k: int, i: int) -> Trajectories:
            done = k * model.n_blocks
            sub = None if progress is None else (lambda d, _t: progress(done + d, total))
            f = None if force is None else force[i : i + batch_size]
            return sample(model, prompts[i : i + batch_size], cfg, generator, batch_size, f, sub)

        return Trajectories.cat([part(k, i) for k, i in enumerate(starts)])
    was_training = model.net.training
    model.net.eval()
    pids, real = model.encode_prompts(prompts)
    B, bl, nb = len(prompts), model.block_length, model.n_blocks
    answer = torch.full((B, model.gen_length), model.mask_id, dtype=torch.long)
    bstep = torch.full((B, model.gen_length), -1, dtype=torch.long)
    block_steps = torch.zeros(B, nb, dtype=torch.long)
    tokens = torch.zeros(B, dtype=torch.long)
    schedule = transfer_schedule(bl, cfg.steps_per_block)
    rows = torch.arange(B)
    for b in range(nb):
        blk = answer[:, b * bl : (b + 1) * bl]  # a view: edits land in `answer`
        st = bstep[:, b * bl : (b + 1) * bl]
        clean = answer[:, : b * bl] if b else None
        s = 0
        while True:
            masked = blk == model.mask_id
            active = masked.any(1)
            if not active.any():
                break
            ids, pos, att = layout(pids, real, clean, blk, bl, noised_first_block=b)
            lp = token_logprobs(model.logits(ids, pos, att)[:, -bl:], model.banned)
            if force is not None:
                tok = force[:, b * bl : (b + 1) * bl]
            elif cfg.temperature == 0:
                tok = lp.argmax(-1)
            else:
                probs = torch.softmax(lp / cfg.temperature, -1).reshape(B * bl, -1)
                tok = torch.multinomial(probs, 1, generator=generator).view(B, bl)
            conf = lp.gather(-1, tok[..., None]).squeeze(-1).exp()
            if cfg.remasking == "random" and cfg.threshold is None and force is None:
                conf = torch.rand(B, bl, generator=generator)
            conf = conf.masked_fill(~masked, -1.0)
            if cfg.threshold is not None:
                choose = masked & (conf > cfg.threshold)
                top = conf.argmax(1)
                choose[rows, top] |= masked[rows, top]
            else:
                k = schedule[s] if s < len(schedule) else bl
                order = conf.argsort(1, descending=True)
                choose = torch.zeros_like(masked)
                choose.scatter_(1, order[:, :k], True)
                choose &= masked
            choose &= active[:, None]
            blk[choose] = tok[choose]
            st[choose] = s
            block_steps[active, b] += 1
            tokens[active] += int(real.shape[1] + (b + 1) * bl)
            s += 1
        if progress is not None:
            progress(b + 1, nb)
    model.net.train(was_training)
    return Trajectories(pids, real, answer, bstep, block_steps, tokens)


def recover_trajectories(
    model: DLLM,
    prompts: list[str],
    answers: torch.Tensor,
    steps_per_block: int = 4,
    progress: Callable[[int, int], None] | None = None,
) -> Trajectories:
    """A decode order for answers that were not sampled here (no recorded trajectory).

    The rule (teacher-forced confidence order under ``model``, normally the frozen reference):
    block by block, left to right, start from the all-[MASK] block; at step s run ``model`` on
    ``[prompt | clean blocks before | current block]`` and unmask the
    ``transfer_schedule(block_length, steps_per_block)[s]`` still-masked positions whose given
    token has the highest probability at that state. It is the order low-confidence greedy
    decoding would have followed had it produced these tokens (for an answer ``model`` did
    decode greedily, exactly its recorded order). Costs ``steps_per_block`` forwards per block.

    Args:
        answers: (B, gen_length) token ids, e.g. ``model.encode_answers(texts)``.
    """
    cfg = SamplerConfig(steps_per_block=steps_per_block, temperature=0.0)
    return sample(model, prompts, cfg, force=answers, progress=progress)
