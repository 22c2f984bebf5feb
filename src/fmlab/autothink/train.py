"""Training the video-QA model: a format warm start (SFT), then GRPO with a verifiable reward.

Four output styles, one per arm of the reproduction:

- ``auto`` (VideoAuto-R1): ``\\boxed{a1} <think> r </think> \\boxed{a2}``, rewarded with
  :func:`fmlab.autothink.reward` (0.9·R(a1) + 1.1·R(a2) + R_format + 0.3 fallback bonus; the
  weights and the bonus are recipe fields, for the ablations);
- ``direct`` (direct-only RL): ``\\boxed{a}``, rewarded R(a) + R_format;
- ``think`` (always-think RL): ``<think> r </think> \\boxed{a}``, rewarded R(a) + R_format;
- ``switch`` (a trained think / no-think switch, AdaptThink-style): ``<think> </think>
  \\boxed{a}`` (no thinking) or ``<think> r </think> \\boxed{a}``, rewarded R(a) + R_format +
  δ·[no thinking] (AdaptThink's δ = 0.05; its accuracy-minus-reference term is constant within
  a prompt's group and cancels in the group-relative advantage).

The warm start is ours (the paper starts from an instruction-tuned model; there is no such tiny
video model): SFT on replies in the arm's style whose think block is the item's reasoning trace
and whose boxes hold the right answer; in the ``auto`` style a random ``fallback_rate`` of the
replies, the same in every family, open with the fallback phrase instead of the first box, and
in the ``switch`` style half the replies do not think. GRPO follows (official settings where
they fit: temperature 1, clip 0.2, KL β 0.01, groups whose rewards are all equal dropped).
Both stages run through :mod:`fmlab.core.rl` on :mod:`fmlab.core.train`: resumable, and a
rerun of a finished stage loads its final checkpoint.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

from fmlab.autothink.format import _BOX_BODY, FALLBACK, THINK_CLOSE, THINK_OPEN, parse
from fmlab.autothink.reward import BONUS, WEIGHTS, completion_text, reward
from fmlab.autothink.videoqa import box, build_video_llama, frames_of, qa_tokenizer

__all__ = [
    "STYLES",
    "Recipe",
    "direct_reward",
    "load_video_model",
    "reward_for",
    "sft_reply",
    "switch_reward",
    "think_reward",
    "train_video_model",
]

STYLES = ("auto", "direct", "think", "switch")
_DIRECT = re.compile(r"\s*\\boxed\{" + _BOX_BODY + r"\}\s*", re.S)
_THINK = re.compile(r"\s*<think>(?P<think>(?:(?!</?think>).)*)</think>\s*\\boxed\{" + _BOX_BODY
                    + r"\}\s*", re.S)  # fmt: skip


@dataclass
class Recipe:
    """Everything that decides a trained model (serialisable; unknown keys are errors)."""

    style: str = "auto"
    seed: int = 0
    hidden: int = 64
    layers: int = 2
    heads: int = 4
    sft_steps: int = 300
    sft_lr: float = 3e-3
    sft_batch: int = 32
    fallback_rate: float = 0.1  # auto style: share of warm-start replies opening with FALLBACK
    grpo_steps: int = 60
    grpo_lr: float = 5e-4
    num_generations: int = 8
    prompts_per_step: int = 8
    max_new_tokens: int = 24
    beta: float = 0.01
    w1: float = WEIGHTS[0]
    w2: float = WEIGHTS[1]
    w_format: float = WEIGHTS[2]
    bonus: float = BONUS
    switch_delta: float = 0.05

    def __post_init__(self):
        if self.style not in STYLES:
            raise ValueError(f"unknown style {self.style!r}; choose one of: {', '.join(STYLES)}")
        if not 0 <= self.fallback_rate <= 1:
            raise ValueError(f"fallback_rate must be in [0, 1], got {self.fallback_rate}")
        if self.sft_steps < 1 or self.grpo_steps < 0:
            raise ValueError("sft_steps must be >= 1 and grpo_steps >= 0")

    @classmethod
    def from_dict(cls, d: dict) -> Recipe:
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(
                f"unknown recipe keys {unknown}; valid keys: {', '.join(sorted(names))}"
            )
        return cls(**d)


def sft_reply(item: dict, style: str, rng: np.random.Generator, fallback_rate: float = 0.1) -> str:
    """The warm-start reply to ``item`` in ``style`` (see the module docstring)."""
    a, r = box(item["answer"]), item["trace"]
    if style == "direct":
        return a
    if style == "think":
        return f"{THINK_OPEN} {r} {THINK_CLOSE} {a}"
    if style == "switch":
        return f"{THINK_OPEN} {THINK_CLOSE} {a}" if rng.random() < 0.5 else \
            f"{THINK_OPEN} {r} {THINK_CLOSE} {a}"  # fmt: skip
    if style == "auto":
        a1 = FALLBACK if rng.random() < fallback_rate else a
        return f"{a1} {THINK_OPEN} {r} {THINK_CLOSE} {a}"
    raise ValueError(f"unknown style {style!r}; choose one of: {', '.join(STYLES)}")


def _right(pred: str | None, gold) -> float:
    from fmlab.autothink.format import normalize

    return float(pred is not None and normalize(pred) == normalize(gold))


def direct_reward(prompts, completions, answer=None, **kwargs) -> list[float]:
    """Direct-only RL: R(first box) + R_format (the completion is exactly one box)."""
    out = []
    for c, a in zip(completions, answer, strict=True):
        t = completion_text(c)
        out.append(_right(parse(t).a1, a) + float(_DIRECT.fullmatch(t) is not None))
    return out


def think_reward(prompts, completions, answer=None, **kwargs) -> list[float]:
    """Always-think RL: R(box after the think block) + R_format (one non-empty think block,
    then one box, nothing after it)."""
    out = []
    for c, a in zip(completions, answer, strict=True):
        t = completion_text(c)
        m = _THINK.fullmatch(t)
        ok = m is not None and bool(m.group("think").strip())
        out.append(_right(parse(t).a2, a) + float(ok))
    return out


def switch_reward(prompts, completions, answer=None, delta: float = 0.05, **kwargs) -> list[float]:
    """AdaptThink-style switch: R(final box) + R_format (a think block, possibly empty, then a
    box) + ``delta`` when the think block is empty (no thinking)."""
    out = []
    for c, a in zip(completions, answer, strict=True):
        t = completion_text(c)
        m = _THINK.fullmatch(t)
        no_think = m is not None and not m.group("think").strip()
        out.append(_right(parse(t).a2, a) + float(m is not None) + delta * no_think)
    return out


def reward_for(recipe: Recipe) -> Callable[..., list[float]]:
    """The TRL-signature reward function of a recipe's style (weights bound)."""
    if recipe.style == "auto":

        def auto_reward(prompts, completions, answer=None, **kw):
            return reward(prompts, completions, answer, w1=recipe.w1, w2=recipe.w2,
                          w_format=recipe.w_format, bonus=recipe.bonus)  # fmt: skip

        return auto_reward
    if recipe.style == "switch":

        def switch(prompts, completions, answer=None, **kw):
            return switch_reward(prompts, completions, answer, delta=recipe.switch_delta)

        return switch
    return {"direct": direct_reward, "think": think_reward}[recipe.style]


def _train_cfg(steps: int, lr: float, seed: int, batch: int = 1, warmup: int = 0):
    from fmlab.core.train import TrainConfig

    return TrainConfig(steps=steps, batch_size=batch, lr=lr, warmup_steps=warmup,
                       weight_decay=0.0, seed=seed, progress=False, log_every=max(1, steps // 5),
                       ckpt_every_s=60.0)  # fmt: skip


def train_video_model(recipe: Recipe, items: list[dict], out_dir: str | Path, log=None):
    """Warm start then GRPO on ``items`` (from :func:`fmlab.autothink.videoqa.qa_items`);
    returns ``(model, tokenizer)`` and saves both to ``out_dir/model`` (HF format).

    Resumable: each stage checkpoints under ``out_dir`` and a rerun continues (or, when the
    stage is done, loads its final weights)."""

    from fmlab.core.io import atomic_dir, atomic_write_json
    from fmlab.core.rl import GRPOConfig, train_grpo, train_sft

    if not items:
        raise ValueError("no training items")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "recipe.json", asdict(recipe))
    say = log or (lambda s: None)
    tok = qa_tokenizer()
    model = build_video_llama(tok, recipe.hidden, recipe.layers, recipe.heads, seed=recipe.seed)
    rng = np.random.default_rng([recipe.seed, 11])
    pairs = [(it["prompt"], sft_reply(it, recipe.style, rng, recipe.fallback_rate))
             for it in items]  # fmt: skip
    say(f"warm start ({recipe.style}): {recipe.sft_steps} SFT steps on {len(items)} items")
    train_sft(model, tok, pairs, _train_cfg(recipe.sft_steps, recipe.sft_lr, recipe.seed,
              recipe.sft_batch, warmup=min(20, recipe.sft_steps // 10)), out / "sft",
              chat=False, model_inputs={"frames": frames_of(items)})  # fmt: skip
    if recipe.grpo_steps:
        cfg = GRPOConfig(num_generations=recipe.num_generations,
                         prompts_per_step=recipe.prompts_per_step,
                         max_new_tokens=recipe.max_new_tokens, temperature=1.0, epsilon=0.2,
                         beta=recipe.beta, drop_uniform_groups=True, chat=False)  # fmt: skip
        say(f"GRPO ({recipe.style}): {recipe.grpo_steps} steps, {recipe.prompts_per_step} "
            f"prompts x {recipe.num_generations} rollouts")  # fmt: skip
        train_grpo(model, tok, items, [reward_for(recipe)], cfg,
                   _train_cfg(recipe.grpo_steps, recipe.grpo_lr, recipe.seed), out / "grpo",
                   model_inputs=lambda rows: {"frames": frames_of(rows)})  # fmt: skip
    model.eval()
    with atomic_dir(out / "model", overwrite=True) as tmp:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        (tmp / "fmlab_autothink.json").write_text(json.dumps({"style": recipe.style}))
    return model, tok


def load_video_model(path: str | Path, device: str = "cpu"):
    """``(model, tokenizer, style)`` from a directory written by :func:`train_video_model`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import fmlab.autothink.videoqa  # noqa: F401  (registers the model class)
    from fmlab.core.io import CheckpointError

    p = Path(path)
    if not (p / "config.json").is_file():
        raise FileNotFoundError(
            f"{p}: not a trained autothink video model (no config.json); train one with "
            "`fmlab autothink train --out DIR` and pass DIR/model"
        )
    try:
        model = AutoModelForCausalLM.from_pretrained(p).to(device).eval()
    except (OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{p}: could not load the model ({e})") from e
    tok = AutoTokenizer.from_pretrained(p)
    meta = p / "fmlab_autothink.json"
    style = json.loads(meta.read_text()).get("style", "auto") if meta.is_file() else "auto"
    return model, tok, style
