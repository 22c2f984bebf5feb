"""The RL-vs-SFT study of the three gates, on a really pretrained base.

From one base (the bundled SmolLM2-135M-Instruct stored in bf16, so the bf16 criterion of
Gate III is the one the checkpoints are saved in), RLVR (DAPO-style GRPO, beta = 0, clip-higher,
lr 1e-6, bf16 storage with an fp32 optimizer: the paper's recipe) and SFT on the correct answers
are trained on the same verifiable task for the same number of steps, and every checkpoint is
measured against its base with :func:`fmlab.rlvr_geometry.analyze`. Interventions, each one
change from the RL arm:

- Gate I: ``rl-beta`` (a KL penalty to the base) and ``rl-clip`` (a tighter clip);
- Gate II: ``rl-rotated``: a random function-preserving rotation of every attention value/output
  space before RL (:func:`rotate_value_output`, checked numerically), measured against the
  rotated base: the principal/low-magnitude structure of the weights in which RL's updates
  were localised is scrambled, so overlaps should move toward random;
- Gate III: ``rl-fp32`` (fp32 storage) and ``rl-lr`` (a larger lr), which should remove most of
  the apparent bf16 sparsity;
- PEFT arms (:mod:`.peft_arms`; selected through ``interventions``, not run by default):
  ``rl-lora``, ``rl-pissa`` and ``rl-milora`` train a rank-``lora_rank`` adapter on every block
  linear (default, principal and minor SVD inits) at ``lora_lr`` (LoRA needs a larger lr than
  full fine-tuning; 10x, the ratio "LoRA Without Regret" (Thinking Machines, 2025) found optimal
  for RL), with the frozen base in fp32; the adapter is merged and the merged model saved in
  bf16, measured against the same base as every arm. ``rl-mask-principal`` and
  ``rl-mask-offprincipal`` are fixed-mask sparse RL at the RL lr: only the block linears train,
  each inside analyze's M_princ (the top-``alpha`` entries of |rank-k0 reconstruction of W0|) or
  its complement; embeddings and norms are frozen. The record checks at run time that no entry
  outside a mask changed and that the PiSSA/MiLoRA inits leave the logits unchanged.

Task: two-digit additions with a carry, asked in words ("What is 38 + 35? Reply with only the
number."); reward 1 when the last integer of the completion is the sum. Train and test prompts
come from one seeded builder and are checked disjoint by content (:class:`Splits`); the test
prompts only score accuracy before and after training.

The short-pretrain control (:mod:`.control`: a small Llama pretrained here, RL and SFT from an
early and a plateau checkpoint of the same run) writes its own record, ``control.json``
(``fmlab rlvr-geometry bench --control``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from fmlab.core.checkpoint import TensorSource
from fmlab.core.cliutil import log as log_stderr
from fmlab.core.data.tasks import AdditionTask
from fmlab.core.evaluate import generate
from fmlab.core.experiment import Splits, paired, record_fields, run_arms
from fmlab.core.io import Memo, atomic_dir, atomic_write_json
from fmlab.core.results import ResultRecord, Timer, grouped_bar_plot, peak_rss_mb, write_record
from fmlab.core.rl import (
    GRPOConfig,
    RolloutSource,
    master_adamw,
    read_rollout_log,
    train_grpo,
    train_sft,
)
from fmlab.core.train import TrainConfig
from fmlab.rlvr_geometry.analyze import analyze
from fmlab.rlvr_geometry.metrics import NULL_KEYS, bf16_changed, magnitude_null
from fmlab.rlvr_geometry.peft_arms import fixed_masks, max_logit_change, merge_lora, wrap_lora

__all__ = [
    "ARM_SETTINGS",
    "CONTROL_BASE",
    "GATE_ARMS",
    "PEFT_ARMS",
    "StudyConfig",
    "StudyError",
    "last_int_reward",
    "make_splits",
    "pair_key",
    "parse_arms",
    "rotate_value_output",
    "row_key",
    "run_study",
    "signal_probe",
]

CLAIM = (
    "From the same pretrained base and for the same steps, RLVR's updates drift the spectrum "
    "and rotate the principal subspaces far less than SFT's, avoid principal weights (overlap "
    "below the mask density) and favour low-magnitude ones, are consistent across seeds "
    "(Jaccard above random), look sparse in bf16, and a larger lr removes most of the sparsity."
)
GEOMETRY = ("sparsity_bf16", "sparsity_exact", "nss", "overlap_principal", "overlap_low",
            "overlap_random", "rho_princ", "update_rank_ratio")  # fmt: skip


@dataclass(frozen=True)
class StudyConfig:
    model: str = "smollm2-135m-instruct"  # a bundled name or an HF directory; "tiny": smoke
    digits: int = 2
    n_train: int = 512
    n_test: int = 128
    steps: int = 60
    rl_seeds: tuple[int, ...] = (0, 1, 2)
    other_seeds: tuple[int, ...] = (0,)  # SFT and the interventions
    num_generations: int = 8
    # mu: optimizer steps per rollout batch. With 1 the policy ratio is exactly 1, so the clip
    # never binds and Gate I's clip arm trains the rl arm's weights bit for bit (measured in
    # the first full run); with 2 the second pass over each batch is clipped
    num_iterations: int = 2
    prompts_per_step: int = 4
    max_new_tokens: int = 8
    rl_lr: float = 1e-6
    sft_lr: float = 1e-5
    big_lr: float = 1e-5  # Gate III: RL at this lr
    beta: float = 0.05  # Gate I: the KL arm
    tight_clip: float = 0.05  # Gate I: the clip arm
    # beside rl and sft; the PEFT arms (PEFT_ARMS) run only when listed here
    interventions: tuple[str, ...] = ("rl-lr", "rl-fp32", "rl-rotated", "rl-beta", "rl-clip")
    lora_rank: int = 16  # the PEFT arms' adapter rank
    lora_alpha: float = 32.0  # peft's scaling lora_alpha / r = 2
    lora_lr: float = 1e-5  # 10x rl_lr (see the module docstring)
    ks: tuple[int, ...] = (1, 4, 16, 64)
    alpha: float = 0.5
    threads: int = 1
    # "fp32": bf16 storage emulated on fp32 parameters (MasterAdamW storage_dtype; the stored
    # values are exactly bf16's, the arithmetic fp32: bf16 matmuls are ~13x slower on a CPU
    # without bf16 instructions); "bf16": the parameters are bf16 tensors
    compute: str = "fp32"
    reward: str = "sum"  # sum: the verifiable reward; digits: a dense smoke-test reward
    progress: bool = True  # training progress bars on stderr

    @classmethod
    def quick(cls) -> StudyConfig:
        """A pipeline smoke test on a tiny random model (no geometry to speak of; claims
        nothing)."""
        return cls(model="tiny", n_train=16, n_test=8, steps=3, rl_seeds=(0, 1),
                   num_generations=4, prompts_per_step=2, max_new_tokens=4, rl_lr=1e-3,
                   sft_lr=1e-3, big_lr=1e-2, interventions=("rl-rotated",), ks=(1, 4),
                   lora_rank=4, lora_alpha=8.0, lora_lr=1e-2, reward="digits",
                   progress=False)  # fmt: skip

    def __post_init__(self):
        choices = [a for a in ARM_SETTINGS if a not in ("rl", "sft")]
        bad = [a for a in self.interventions if a not in choices]
        if bad:
            raise ValueError(f"unknown interventions {', '.join(map(repr, bad))}; choose from: "
                             f"{', '.join(choices)}")  # fmt: skip
        if not set(self.other_seeds) <= set(self.rl_seeds):
            raise ValueError(f"other_seeds {list(self.other_seeds)} must be RL seeds too (each "
                             "intervention is paired with rl at its own seed)")  # fmt: skip
        if len(set(self.interventions)) != len(self.interventions):
            raise ValueError(f"interventions repeat an arm: {list(self.interventions)}")
        if self.compute not in ("fp32", "bf16"):
            raise ValueError(f"compute must be fp32 or bf16, got {self.compute!r}")
        if self.lora_rank < 1 or self.lora_alpha <= 0 or self.lora_lr <= 0:
            raise ValueError("lora_rank must be >= 1 and lora_alpha, lora_lr > 0")
        k0 = min((k for k in self.ks if k > 1), default=None)
        if k0 is None:
            raise ValueError(f"ks {list(self.ks)} needs a k above 1 (k0, analyze's rank of the "
                             "principal-weight reconstruction)")  # fmt: skip

    @property
    def k0(self) -> int:
        """analyze's k0: the smallest k above 1 (the principal masks use the same)."""
        return min(k for k in self.ks if k > 1)


_INT = re.compile(r"-?\d+")


def _prompt(a: int, b: int) -> str:
    return f"What is {a} + {b}? Reply with only the number."


def last_int_reward(prompts, completions, meta=None, **_) -> list[float]:
    """1.0 when the last integer in the completion is ``a + b`` (TRL reward signature)."""
    if meta is None:
        raise ValueError("last_int_reward needs the dataset column 'meta'")
    out = []
    for c, m in zip(completions, meta, strict=True):
        text = c if isinstance(c, str) else c[-1]["content"]
        nums = _INT.findall(text.replace(",", ""))
        out.append(float(bool(nums) and int(nums[-1]) == m["a"] + m["b"]))
    return out


def digit_fraction_reward(prompts, completions, **_) -> list[float]:
    """The fraction of digit characters: a dense reward a random tiny model can climb (for
    the smoke test only; it verifies nothing)."""
    texts = [c if isinstance(c, str) else c[-1]["content"] for c in completions]
    return [sum(ch.isdigit() for ch in t) / max(1, len(t)) for t in texts]


REWARDS = {"sum": last_int_reward, "digits": digit_fraction_reward}


def pair_key(pair) -> str:
    """The content key of an addition: its unordered operands (``a + b`` and ``b + a`` ask the
    same thing), for the splits' disjointness checks."""
    a, b = sorted(pair)
    return f"{a}+{b}"


def row_key(row: dict) -> str:
    """:func:`pair_key` of a task row."""
    return pair_key((row["meta"]["a"], row["meta"]["b"]))


def make_splits(seed: int, digits: int, n_train: int, n_test: int) -> dict:
    """Train and test additions from one seeded stream (no pair repeats across them)."""
    task = AdditionTask(digits=digits, min_carries=1)
    seen, train, test = set(), [], []
    for ex in task.generate(4 * (n_train + n_test) + 100, seed=seed):
        pair = (ex.meta["a"], ex.meta["b"])
        if pair_key(pair) in seen:  # a + b and b + a are one item (same sum): never in two splits
            continue
        seen.add(pair_key(pair))
        row = {"prompt": _prompt(*pair), "answer": ex.answer, "meta": ex.meta}
        (train if len(train) < n_train else test).append(row)
        if len(test) >= n_test:
            break
    if len(test) < n_test:
        raise ValueError(
            f"only {len(seen)} distinct {digits}-digit additions; lower n_train/n_test"
        )
    return {"train": train, "test": test}


def rotate_value_output(model, seed: int) -> float:
    """Rotate each KV head's value space by a random orthogonal R (in place, fp32):
    ``W_v[h] <- R_h W_v[h]`` and, for every query head reading KV head h,
    ``W_o[:, q] <- W_o[:, q] R_h^T``. Attention mixes value vectors linearly, so the output is
    unchanged; returns the largest logit change on a probe input (float32 round-off)."""
    cfg = model.config
    hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    n_q, n_kv = cfg.num_attention_heads, cfg.num_key_value_heads
    group = n_q // n_kv
    probe = torch.randint(0, cfg.vocab_size, (1, 24), generator=torch.Generator().manual_seed(seed))
    was = model.training
    model.eval()
    with torch.no_grad():
        before = model(input_ids=probe).logits.float()
        g = torch.Generator().manual_seed(seed)
        for layer in model.model.layers:
            attn = layer.self_attn
            wv, wo = attn.v_proj.weight, attn.o_proj.weight  # (n_kv*hd, d), (d, n_q*hd)
            for h in range(n_kv):
                q, _ = torch.linalg.qr(torch.randn(hd, hd, generator=g, dtype=torch.float64))
                r = q.to(wv.dtype)
                rows = slice(h * hd, (h + 1) * hd)
                wv[rows] = r @ wv[rows]
                if attn.v_proj.bias is not None:
                    attn.v_proj.bias[rows] = r @ attn.v_proj.bias[rows]
                for qh in range(h * group, (h + 1) * group):
                    cols = slice(qh * hd, (qh + 1) * hd)
                    wo[:, cols] = wo[:, cols] @ r.T
        after = model(input_ids=probe).logits.float()
    model.train(was)
    return float((after - before).abs().max())


def _load_base(cfg: StudyConfig):
    """(model, tokenizer) of the base, in fp32."""
    if cfg.model == "tiny":
        from fmlab.core.models import build_model
        from fmlab.core.models.tokenizer import train_char_tokenizer

        tok = train_char_tokenizer(["0123456789 +?.Whatisylnumbrpoe\n" + "abcdfghjkmqvwxz"])
        model = build_model("llama-tiny", len(tok), seed=0)
    else:
        from fmlab.core.models.pretrained import load_pretrained

        model, tok = load_pretrained(cfg.model, dtype="float32", device="cpu")
    return model, tok


def _save(model, tok, path: Path) -> Path:
    if not (path / "config.json").is_file():
        with atomic_dir(path, overwrite=True) as tmp:
            model.save_pretrained(tmp)
            tok.save_pretrained(tmp)
    return path


def _accuracy(model, tok, rows, max_new_tokens: int) -> list[float]:
    outs = generate(model, tok, [r["prompt"] for r in rows], max_new_tokens=max_new_tokens)
    return last_int_reward(None, outs, meta=[r["meta"] for r in rows])


# Every intervention is one change from "rl" (the LoRA arms' adapter comes with its own lr,
# lora_lr); a string under lr/beta/epsilon names the StudyConfig field that holds the value.
ARM_SETTINGS = {
    "rl": {"kind": "rl"},
    "sft": {"kind": "sft"},
    "rl-lr": {"kind": "rl", "lr": "big_lr"},
    "rl-fp32": {"kind": "rl", "fp32": True},
    "rl-rotated": {"kind": "rl", "rotate": True},
    "rl-beta": {"kind": "rl", "beta": "beta"},
    "rl-clip": {"kind": "rl", "epsilon": "tight_clip"},
    "rl-lora": {"kind": "rl", "adapter": "lora", "lr": "lora_lr"},
    "rl-pissa": {"kind": "rl", "adapter": "pissa", "lr": "lora_lr"},
    "rl-milora": {"kind": "rl", "adapter": "milora", "lr": "lora_lr"},
    "rl-mask-principal": {"kind": "rl", "mask": "principal"},
    "rl-mask-offprincipal": {"kind": "rl", "mask": "offprincipal"},
}
GATE_ARMS = ("rl-lr", "rl-fp32", "rl-rotated", "rl-beta", "rl-clip")
PEFT_ARMS = ("rl-lora", "rl-pissa", "rl-milora", "rl-mask-principal", "rl-mask-offprincipal")
_FROM_CFG = ("lr", "beta", "epsilon")


def parse_arms(text: str) -> tuple[str, ...]:
    """Interventions from a comma-separated list of arm names and the groups ``gates``
    (:data:`GATE_ARMS`) and ``peft`` (:data:`PEFT_ARMS`), in order, without repeats."""
    groups = {"gates": GATE_ARMS, "peft": PEFT_ARMS}
    choices = [a for a in ARM_SETTINGS if a not in ("rl", "sft")]
    out: list[str] = []
    for part in (p.strip() for p in text.split(",")):
        names = groups.get(part, (part,) if part else ())
        bad = [n for n in names if n not in choices]
        if bad:
            raise ValueError(f"unknown arm {bad[0]!r}; choose from: gates, peft, "
                             f"{', '.join(choices)}")  # fmt: skip
        out += [n for n in names if n not in out]
    if not out:
        raise ValueError("no arms given; e.g. --arms peft or --arms rl-lora,rl-pissa")
    return tuple(out)


def _settings(cfg: StudyConfig, arm: str) -> dict:
    s = dict(ARM_SETTINGS[arm])
    for k in _FROM_CFG:
        if isinstance(s.get(k), str):
            s[k] = getattr(cfg, s[k])
    s.setdefault("lr", cfg.rl_lr if s["kind"] == "rl" else cfg.sft_lr)
    if "adapter" in s:
        s.update(lora_rank=cfg.lora_rank, lora_alpha=cfg.lora_alpha)
    if "mask" in s:
        s.update(mask_alpha=cfg.alpha, mask_k0=cfg.k0)
    return s


class _Study:
    def __init__(self, cfg: StudyConfig, out: Path, splits: Splits, log):
        self.cfg, self.out, self.splits, self.log = cfg, out, splits, log
        self.work = out / ".work"

    def base_dir(self, fp32: bool, rotate_seed: int | None) -> Path:
        """The saved start of an arm: the base in its storage dtype, rotated or not."""
        name = ("fp32" if fp32 else "bf16") + ("" if rotate_seed is None else f"-rot{rotate_seed}")
        path = self.work / f"base-{name}"
        if not (path / "config.json").is_file():
            model, tok = _load_base(self.cfg)
            if rotate_seed is not None:
                err = rotate_value_output(model, rotate_seed)
                self.log(f"rotated value/output spaces (seed {rotate_seed}): max logit change "
                         f"{err:.2e}")  # fmt: skip
                atomic_write_json(self.work / f"rotation-{rotate_seed}.json",
                                  {"max_logit_change": err})  # fmt: skip
            if not fp32:
                model = model.to(torch.bfloat16)
            _save(model, tok, path)
        return path

    def __call__(self, arm: str, s: dict, seed: int) -> dict:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        cfg = self.cfg
        rot = seed + 1000 if s.get("rotate") else None
        base = self.base_dir(bool(s.get("fp32")), rot)
        model = AutoModelForCausalLM.from_pretrained(base, dtype="auto")
        tok = AutoTokenizer.from_pretrained(base)
        test = self.splits["test"]
        acc0 = _accuracy(model, tok, test, cfg.max_new_tokens)
        run_dir = self.work / arm / f"seed{seed}"
        tcfg = TrainConfig(steps=cfg.steps, lr=s["lr"], warmup_steps=0, weight_decay=0.0,
                           grad_clip=1.0, seed=seed, log_every=5, progress=cfg.progress,
                           batch_size=cfg.num_generations * cfg.prompts_per_step)  # fmt: skip
        store = next(model.parameters()).dtype
        emulate = store if store != torch.float32 and cfg.compute == "fp32" else None
        if emulate is not None:
            model.float()  # exact: the stored values; MasterAdamW keeps them bf16-representable
        model, optimizers, extra = _prepare(model, s, seed, emulate)
        train_rows = list(self.splits["train"])
        with Timer() as t:
            if s["kind"] == "rl":
                res = train_grpo(model, tok, train_rows, [REWARDS[cfg.reward]], _grpo(cfg, s),
                                 tcfg, run_dir, optimizers=optimizers)  # fmt: skip
            else:
                pairs = [(r["prompt"], r["answer"]) for r in train_rows]
                res = train_sft(model, tok, pairs, tcfg, run_dir, optimizers=optimizers)
        res.raise_if_signalled()
        ckpt = run_dir / "model"
        if "adapter" in s:  # train() saved the adapter in model/; the merged model is measured
            model = merge_lora(model, store)
            ckpt = run_dir / "merged"
        elif emulate is not None:  # model/ holds fp32 copies of bf16 values: store them as bf16
            model = model.to(store)
            ckpt = run_dir / "stored"
        if ckpt != run_dir / "model":
            with atomic_dir(ckpt, overwrite=True) as tmp:
                model.save_pretrained(tmp)
                tok.save_pretrained(tmp)
        if "masks" in extra:
            extra["changed_outside_mask"] = _changed_outside(base, ckpt, extra.pop("masks"))
        acc1 = _accuracy(model, tok, test, cfg.max_new_tokens)
        row = self._measure(base, ckpt)
        row.update({
            "accuracy_before": float(np.mean(acc0)), "accuracy_after": float(np.mean(acc1)),
            "correct_before": acc0, "correct_after": acc1, "train_seconds": t.s, **extra,
        })  # fmt: skip
        if s["kind"] == "rl":
            row.update(_rollout_stats(run_dir))
        return row

    def _measure(self, base: Path, ckpt: Path) -> dict:
        """The geometry of ``ckpt`` against ``base``: overall values and per-tensor lists."""
        cfg = self.cfg
        rep = analyze(base, [ckpt], ks=cfg.ks, alpha=cfg.alpha, threads=cfg.threads)
        c = rep["checkpoints"][0]
        o = c["summary"]["overall"]
        k_top = str(cfg.ks[-1])
        row = {g: o.get(g) for g in GEOMETRY}  # overlaps are undefined where nothing changed
        row.update({
            "principal_angle_max_deg": o["principal_angle_max_deg"][k_top],
            "per_tensor_nss": [e["nss"] for e in c["tensors"]],
            "per_tensor_sparsity_bf16": [1 - e["changed"] / e["numel"] for e in c["tensors"]],
            "per_tensor_angle": [e["principal_angle_max_deg"][k_top] for e in c["tensors"]],
            **{f"per_tensor_{k}": [e[k] for e in c["tensors"]]
               for k in ("overlap_principal", "overlap_low", "overlap_random")},
            "tensor_names": [e["name"] for e in c["tensors"]],
            "base": str(base), "checkpoint": str(ckpt),
        })  # fmt: skip
        b, k = TensorSource.open(base), TensorSource.open(ckpt)
        nulls = [magnitude_null(b.get(n), k.get(n), cfg.k0, cfg.alpha, seed=i)
                 for i, n in enumerate(row["tensor_names"])]  # fmt: skip
        for key in NULL_KEYS:
            row[f"per_tensor_{key}"] = [x[key] for x in nulls]
        # the nulls are means over tensors (as the predictions' intervals are); analyze's
        # overall values (GEOMETRY) pool entries, so the tensor means of those are recorded
        # too, as tensor_mean_<metric>, for a like-for-like comparison with the nulls
        for key in (*NULL_KEYS, "sparsity_bf16", "overlap_low", "overlap_principal"):
            vals = [v for v in row[f"per_tensor_{key}"] if v is not None]
            row[key if key in NULL_KEYS else f"tensor_mean_{key}"] = (
                float(np.mean(vals)) if vals else None
            )
        return row


def _grpo(cfg: StudyConfig, s: dict) -> GRPOConfig:
    """The GRPO settings of an RL arm (DAPO-style loss, clip 0.2 / 0.28 unless the arm sets one)."""
    return GRPOConfig(num_generations=cfg.num_generations, prompts_per_step=cfg.prompts_per_step,
                      max_new_tokens=cfg.max_new_tokens, loss_type="dapo",
                      epsilon=s.get("epsilon", 0.2), epsilon_high=s.get("epsilon", 0.28),
                      beta=s.get("beta", 0.0), num_iterations=cfg.num_iterations)  # fmt: skip


def _rollout_stats(run_dir: Path) -> dict:
    """What the RL arm's rollouts gave it to learn from: the mean training reward, the fraction
    of groups whose rewards differed (only those carry a GRPO gradient) and the rollout batches
    in which no group did (``train_steps_without_signal``: a rollout batch serves
    ``num_iterations`` optimizer steps, so it counts batches, not steps)."""
    rows = read_rollout_log(run_dir)
    if not rows:
        return {}
    mixed = [1.0 - r["uniform_groups"] for r in rows]
    return {"train_reward_mean": float(np.mean([r["reward_mean"] for r in rows])),
            "train_signal_groups": float(np.mean(mixed)),
            "train_steps_without_signal": int(sum(m == 0 for m in mixed))}  # fmt: skip


class StudyError(ValueError):
    """The study cannot test the theory on this base (its precondition failed); the message
    names the measurement and the fix."""


MIN_SIGNAL = 0.25  # the probe's least fraction of prompt groups with differing rewards
PROBE_BATCHES = 4  # rollout batches of the probe (prompts_per_step groups each)


def signal_probe(cfg: StudyConfig, base: Path, rows: list[dict], seed: int = 12345) -> dict:
    """Precondition: sample the RL recipe's rollouts from the base (``PROBE_BATCHES`` batches of
    ``prompts_per_step`` groups of ``num_generations``, train prompts, the arms' sampler) and
    count the groups whose rewards differ. GRPO learns only from those; a base that almost
    never (or always) solves the task gives RL nothing to learn, and the geometry of its
    "updates" would test nothing."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(base, dtype="auto").float()
    tok = AutoTokenizer.from_pretrained(base)
    g = replace(_grpo(cfg, ARM_SETTINGS["rl"]), num_iterations=1)  # a fresh batch every step
    src = RolloutSource(model, tok, rows, [REWARDS[cfg.reward]], g, seed=seed)
    bs = cfg.num_generations * cfg.prompts_per_step
    for step in range(PROBE_BATCHES):
        src.batch(step, 0, 0, 1, bs)
    groups = PROBE_BATCHES * cfg.prompts_per_step
    mixed = round(sum((1.0 - r["uniform_groups"]) * cfg.prompts_per_step for r in src.history))
    return {"groups": groups, "mixed_groups": mixed, "fraction": mixed / groups,
            "reward_mean": float(np.mean([r["reward_mean"] for r in src.history])),
            "min_fraction": MIN_SIGNAL, "seed": seed}  # fmt: skip


def _prepare(model, s: dict, seed: int, storage_dtype: torch.dtype | None = None):
    """(model to train, optimizer hook, run-time checks) of an arm: the plain model with
    MasterAdamW, a LoRA-wrapped one (adapter only trains; the init's largest logit change on a
    probe is recorded) or the block linears under fixed masks (``masks``: name -> mask, for
    the check after training)."""
    if "adapter" in s:
        model.float()  # exact: the bf16 base's values (see peft_arms on why fp32)
        probe = torch.randint(0, model.config.vocab_size, (1, 24),
                              generator=torch.Generator().manual_seed(seed))  # fmt: skip
        model.eval()
        with torch.no_grad():
            before = model(input_ids=probe).logits.float()
        with torch.random.fork_rng():  # peft draws lora_A from the global RNG: seed it
            torch.manual_seed(seed)
            model = wrap_lora(model, s["adapter"], s["lora_rank"], s["lora_alpha"])
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        extra = {"init_max_logit_change": max_logit_change(model, before, probe),
                 "trainable_params": trainable}  # fmt: skip
        return model, master_adamw(), extra
    if "mask" in s:
        masks = fixed_masks(model, s["mask"], s["mask_k0"], s["mask_alpha"])
        names = {id(p): n for n, p in model.named_parameters()}
        on = sum(int(m.sum()) for m in masks.values())
        extra = {"masks": {names[id(p)]: m for p, m in masks.items()},
                 "mask_density": on / sum(m.numel() for m in masks.values()),
                 "trainable_params": on}  # fmt: skip
        return model, master_adamw(masks, storage_dtype), extra
    return model, master_adamw(storage_dtype=storage_dtype), {}


def _changed_outside(base: Path, ckpt: Path, masks: dict[str, torch.Tensor]) -> int:
    """Entries of ``ckpt`` that differ from ``base`` (bf16 criterion) outside the trainable
    masks; every tensor without a mask counts whole. 0 when the masks held."""
    b, c = TensorSource.open(base), TensorSource.open(ckpt)
    if set(b.keys()) != set(c.keys()):
        raise ValueError(f"{ckpt} and {base} hold different tensors")
    n = 0
    for key in b:
        changed = bf16_changed(b.get(key), c.get(key))
        if key in masks:
            changed &= ~masks[key]
        n += int(changed.sum())
    return n


def _verdict(p, direction: int) -> str:
    """ "holds" when the per-item interval of a − b excludes 0 on the predicted side
    (``direction`` +1: a > b), "FAILS" when it excludes 0 on the other side, else "not shown"."""
    iv = p.per_item
    if iv.lo <= 0 <= iv.hi:
        return "not shown"
    return "holds" if (iv.lo > 0) == (direction > 0) else "FAILS"


def _no_gain_verdict(p, direction: int) -> str:
    """For "a is no better than b" (``direction`` -1) or "no worse" (+1): "FAILS" when the
    interval excludes 0 on the wrong side, "holds" when it excludes 0 on the predicted side,
    else "not contradicted" (an interval containing 0 is consistent with the claim, not proof)."""
    iv = p.per_item
    if iv.lo <= 0 <= iv.hi:
        return "not contradicted (the interval contains 0)"
    return "holds" if (iv.lo > 0) == (direction > 0) else "FAILS"


def _per_item(runs, arm: str, key: str, seeds: Sequence[int] | None = None) -> np.ndarray:
    """(seeds, items) of a per-item metric (tensors or test prompts), at ``seeds`` (default:
    all of the run's); None (e.g. a tensor in which nothing changed) becomes nan."""
    rows = [runs.values[arm][s][key] for s in (runs.seeds if seeds is None else seeds)]
    return np.array([[np.nan if v is None else v for v in r] for r in rows], dtype=float)


def _command(cfg: StudyConfig, control: bool) -> str:
    """The command that reruns this study (its base and its arms)."""
    cmd = "fmlab rlvr-geometry bench" + (f" --model {CONTROL_BASE}" if control else "")
    if cfg.interventions == StudyConfig().interventions:
        return cmd
    if cfg.interventions:
        return f"{cmd} --arms {','.join(cfg.interventions)}"
    return f"{cmd} (rl and sft only: run_study with interventions=())"


def _train_seconds(*runs) -> float:
    """The arms' training time, whether they ran in this process or were resumed."""
    return float(sum(v.get("train_seconds", 0.0) for r in runs for seeds in r.values.values()
                     for v in seeds.values()))  # fmt: skip


def _safe_div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a / b, nan where b is 0 or nan (a tensor the update left unchanged)."""
    out = np.full(np.broadcast(a, b).shape, np.nan)
    np.divide(a, b, out=out, where=np.nan_to_num(b) > 0)
    return out


def _matched_seeds(main, other) -> list[int]:
    """The seeds of the one-change arms (``other``), which ``rl`` must have run too."""
    missing = [s for s in other.seeds if s not in main.seeds]
    if missing:
        raise ValueError(f"other_seeds {missing} are not RL seeds: an intervention is paired "
                         "with rl at its own seed")  # fmt: skip
    return list(other.seeds)


class _Verdicts:
    """The predictions (with verdicts), the recorded comparisons (the spec predicts nothing:
    intervals only) and every interval behind them."""

    def __init__(self):
        self.preds: dict = {}
        self.comparisons: dict = {}
        self.ivs: list = []

    def add(self, name, a, b, names, direction, headline=False, unit="tensors",
            rule=_verdict, **shown):  # fmt: skip
        """a − b over items (each side averaged over its seeds first); ``direction`` ±1 is the
        predicted sign, 0 records the interval without a verdict."""
        a, b = np.nanmean(np.atleast_2d(a), axis=0), np.nanmean(np.atleast_2d(b), axis=0)
        ok = ~(np.isnan(a) | np.isnan(b))
        into = self.comparisons if direction == 0 else self.preds
        if ok.sum() < 2:
            into[name] = {**shown, "verdict": f"undefined (fewer than 2 {unit} with values)"}
            return
        p = paired(items_a=a[ok], items_b=b[ok], names=names, metric=name, headline=headline)
        self.ivs.append(p)
        into[name] = {**shown, "delta": p.per_item.estimate, "lo": p.per_item.lo,
                      "hi": p.per_item.hi, unit: int(ok.sum())}  # fmt: skip
        if direction:
            into[name]["verdict"] = rule(p, direction)


def _predictions(cfg: StudyConfig, main, other, pairs) -> tuple[dict, dict, list]:
    """Each prediction of the theory with the paired interval it rests on (tensors are the
    items of the geometry, test prompts those of accuracy; RL values averaged over its seeds
    first), the PEFT arms' recorded comparisons, and the intervals."""
    v = _Verdicts()
    add = v.add
    rl = lambda k: _per_item(main, "rl", k)  # noqa: E731
    # an intervention is one change from rl *at the same seed*: it is paired with rl's runs at
    # its own seeds (against the mean of all RL seeds, seed-to-seed variation would count as
    # the intervention's effect: RL seeds 0 and 1 differ by 6% test accuracy)
    rl_at = lambda k: _per_item(main, "rl", k, _matched_seeds(main, other))  # noqa: E731
    ratio = lambda get: _safe_div(get("per_tensor_nss"), get("per_tensor_update_norm_rel"))  # noqa: E731
    if "sft" in other.values:
        sft = lambda k: _per_item(other, "sft", k)  # noqa: E731
        add("nss: RL below SFT", rl("per_tensor_nss"), sft("per_tensor_nss"), ("rl", "sft"), -1,
            headline=True)  # fmt: skip
        add("principal angle: RL below SFT", rl("per_tensor_angle"), sft("per_tensor_angle"),
            ("rl", "sft"), -1)  # fmt: skip
        add("bf16 sparsity: RL above SFT", rl("per_tensor_sparsity_bf16"),
            sft("per_tensor_sparsity_bf16"), ("rl", "sft"), +1)  # fmt: skip
        # at one lr the two arms' updates differ in size, and NSS, angles and sparsity all
        # follow size: the same predictions per unit of update / beyond a random update's
        add("nss per unit of update size (nss / ||ΔW||/||W0||): RL below SFT",
            ratio(rl), ratio(sft), ("rl", "sft"), -1)  # fmt: skip

        def beyond(get):
            return get("per_tensor_sparsity_bf16") - get("per_tensor_random_update_sparsity_bf16")

        add("bf16 sparsity beyond a random update of the same size: RL above SFT",
            beyond(rl), beyond(sft), ("rl", "sft"), +1)  # fmt: skip
    rand = rl("per_tensor_overlap_random")
    add("overlap with principal weights below random", rl("per_tensor_overlap_principal"), rand,
        ("rl M_princ", "random"), -1)  # fmt: skip
    add("overlap with low-magnitude weights above random", rl("per_tensor_overlap_low"), rand,
        ("rl M_low", "random"), +1)  # fmt: skip
    # the stricter null: the mask bf16 rounding alone gives (the smallest |W0| entries)
    add("overlap with principal weights below the magnitude-threshold null",
        rl("per_tensor_overlap_principal"), rl("per_tensor_null_overlap_principal"),
        ("rl M_princ", "threshold null"), -1)  # fmt: skip
    # ... and the mask of a random (Gaussian) update of each tensor's RMS, rounded the same way
    add("overlap with principal weights below a random update's of the same size",
        rl("per_tensor_overlap_principal"), rl("per_tensor_random_update_overlap_principal"),
        ("rl M_princ", "random update"), -1)  # fmt: skip
    add("overlap with low-magnitude weights above a random update's of the same size",
        rl("per_tensor_overlap_low"), rl("per_tensor_random_update_overlap_low"),
        ("rl M_low", "random update"), +1)  # fmt: skip
    if pairs:
        j = np.array([[np.nan if t["jaccard"] is None else t["jaccard"] for t in p["tensors"]]
                      for p in pairs])  # fmt: skip
        jr = np.array([[np.nan if t["jaccard_random"] is None else t["jaccard_random"]
                        for t in p["tensors"]] for p in pairs])  # fmt: skip
        add("cross-seed Jaccard above random", j, jr, ("jaccard", "random"), +1)
        add("cross-seed Jaccard above each mask's Jaccard with the magnitude-threshold mask", j,
            rl("per_tensor_jaccard_threshold"), ("jaccard", "threshold"), +1)  # fmt: skip
    if "rl-lr" in other.values:
        lr_sp = _per_item(other, "rl-lr", "per_tensor_sparsity_bf16")
        add("a larger lr lowers bf16 sparsity", lr_sp, rl_at("per_tensor_sparsity_bf16"),
            ("rl-lr", "rl"), -1)  # fmt: skip
        add("a larger lr removes most of the bf16 sparsity (below half of RL's)", lr_sp,
            0.5 * np.nanmean(rl_at("per_tensor_sparsity_bf16"), axis=0), ("rl-lr", "rl / 2"), -1)  # fmt: skip
        # RL vs SFT at the same lr, when the recipe's RL and SFT lrs differ (SmolLM2's: 10x)
        if "sft" in other.values and cfg.big_lr == cfg.sft_lr != cfg.rl_lr:
            for key in ("per_tensor_nss", "per_tensor_angle", "per_tensor_sparsity_bf16"):
                add(f"{key[11:]}: rl-lr − sft (same lr)", _per_item(other, "rl-lr", key),
                    _per_item(other, "sft", key), ("rl-lr", "sft"), 0)  # fmt: skip
    if "rl-rotated" in other.values:
        # only the value/output projections are rotated: the prediction is about those tensors
        names = main.values["rl"][main.seeds[0]]["tensor_names"]
        vo = np.array([("v_proj" in n or "o_proj" in n) for n in names])
        dist = lambda r, k: np.abs(r(k) - r("per_tensor_overlap_random"))[..., vo]  # noqa: E731
        rot = lambda k: _per_item(other, "rl-rotated", k)  # noqa: E731
        add("rotation moves the principal overlap toward random (rotated v/o tensors)",
            dist(rot, "per_tensor_overlap_principal"), dist(rl_at, "per_tensor_overlap_principal"),
            ("rotated |Δ|", "rl |Δ|"), -1)  # fmt: skip
    _peft_predictions(v, main, other)
    v.preds["short-pretrain control weakens the effects"] = {
        "verdict": "not tested here: see control.json (fmlab rlvr-geometry bench --control)"
    }
    return v.preds, v.comparisons, v.ivs


def _preconditions(main, other) -> dict:
    """What the record must say before its verdicts are read, each measured: whether RL and SFT
    changed test accuracy at all (paired over prompts: after − before), whether each Gate I
    arm trained a different model from ``rl`` at the same seed (with one gradient step per
    rollout batch the PPO ratio is exactly 1, so a clip cannot bind, and a KL penalty to a
    policy that has barely moved is near 0), and whether the stored (bf16) rotated base scores
    like the base (the rotation preserves the function in fp32; storing it in bf16 rounds it)."""
    out: dict = {}
    runs = {"rl": main, **{a: other for a in other.values}}
    for arm in ("rl", "sft", "rl-lr"):
        if arm in runs:
            r = runs[arm]
            after = np.nanmean(_per_item(r, arm, "correct_after"), axis=0)
            before = np.nanmean(_per_item(r, arm, "correct_before"), axis=0)
            p = paired(items_a=after, items_b=before, names=(f"{arm} after", "before"),
                       metric=f"{arm} test accuracy change")  # fmt: skip
            iv = p.per_item
            out[f"{arm} changed test accuracy"] = {
                "delta": iv.estimate, "lo": iv.lo, "hi": iv.hi, "prompts": len(after),
                "verdict": "yes" if not iv.lo <= 0 <= iv.hi else "not shown: the geometry "
                "below is of updates that did not measurably change what the model answers",
            }  # fmt: skip
    seed0 = main.seeds[0]
    ref = main.values["rl"][seed0]
    for arm in ("rl-clip", "rl-beta"):
        if arm in other.values and seed0 in other.values[arm]:
            same = _same_weights(ref["checkpoint"], other.values[arm][seed0]["checkpoint"])
            out[f"{arm} differs from rl"] = {
                "seed": seed0, "identical_tensors": same[0], "tensors": same[1],
                "verdict": "yes" if same[0] < same[1] else "no: bit for bit the same model as "
                "rl at this seed (its Gate I verdicts test nothing at this setting)",
            }  # fmt: skip
    low = _per_item(main, "rl", "per_tensor_overlap_low")
    if np.isfinite(low).any():
        ones = bool(np.nanmin(low) == 1.0)
        out["RL's changed entries all lie in M_low"] = {
            "min_overlap_low": float(np.nanmin(low)),
            "verdict": "yes: overlap_low is 1 in every tensor and seed, as bf16 rounding of a "
            "uniformly small update gives by construction; judge localisation against the "
            "magnitude-threshold null instead" if ones else "no",
        }  # fmt: skip
    if "rl-rotated" in other.values:
        s0 = other.seeds[0]
        rot = np.array(other.values["rl-rotated"][s0]["correct_before"], dtype=float)
        base = np.array(ref["correct_before"], dtype=float)
        out["stored rotated base scores like the base"] = {
            "accuracy_base": float(base.mean()), "accuracy_rotated_base": float(rot.mean()),
            "prompts_answered_differently": int((rot != base).sum()),
            "verdict": "yes" if (rot == base).all() else "no: rounding the rotated weights to "
            "bf16 changed some answers, so rl-rotated starts from a slightly different function",
        }  # fmt: skip
    return out


def _same_weights(a: str, b: str) -> tuple[int, int]:
    """(tensors bitwise equal, tensors) of two checkpoints with the same tensor names."""
    x, y = TensorSource.open(a), TensorSource.open(b)
    names = list(x.keys())
    return sum(torch.equal(x.get(n), y.get(n)) for n in names), len(names)


def _peft_predictions(v: _Verdicts, main, other) -> None:
    """The spec's PEFT case studies (accuracy on the test prompts): principal-only sparse RL
    below dense (53.8 vs 57.4 in the paper) and below the off-principal mask, which nearly
    matches dense (no margin given: recorded); PiSSA no gain over LoRA. PiSSA vs MiLoRA and the
    adapters' geometry: the spec states no prediction, so they are recorded without a verdict."""
    arms = set(other.values)
    seeds = _matched_seeds(main, other)  # dense RL at the arms' own seeds

    def acc(arm):
        if arm == "rl":
            return _per_item(main, arm, "correct_after", seeds)
        return _per_item(other, arm, "correct_after")

    nss = lambda arm: _per_item(other, arm, "per_tensor_nss")  # noqa: E731
    kw = {"unit": "prompts"}
    if "rl-mask-principal" in arms:
        v.add("accuracy: principal-mask RL below dense RL", acc("rl-mask-principal"), acc("rl"),
              ("rl-mask-principal", "rl"), -1, **kw)  # fmt: skip
    if {"rl-mask-principal", "rl-mask-offprincipal"} <= arms:
        v.add("accuracy: principal-mask RL below off-principal-mask RL",
              acc("rl-mask-principal"), acc("rl-mask-offprincipal"),
              ("rl-mask-principal", "rl-mask-offprincipal"), -1, **kw)  # fmt: skip
    if "rl-mask-offprincipal" in arms:
        v.add("accuracy: off-principal-mask RL − dense RL", acc("rl-mask-offprincipal"),
              acc("rl"), ("rl-mask-offprincipal", "rl"), 0, **kw)  # fmt: skip
    if {"rl-pissa", "rl-lora"} <= arms:
        v.add("accuracy: PiSSA no gain over LoRA", acc("rl-pissa"), acc("rl-lora"),
              ("rl-pissa", "rl-lora"), -1, rule=_no_gain_verdict, **kw)  # fmt: skip
    if "rl-pissa" in arms:
        v.preds["PiSSA collapses at a higher lr"] = {
            "verdict": "not tested (no higher-lr PiSSA arm)"
        }
    if {"rl-pissa", "rl-milora"} <= arms:
        v.add("accuracy: PiSSA − MiLoRA", acc("rl-pissa"), acc("rl-milora"),
              ("rl-pissa", "rl-milora"), 0, **kw)  # fmt: skip
        v.add("nss: PiSSA − MiLoRA", nss("rl-pissa"), nss("rl-milora"),
              ("rl-pissa", "rl-milora"), 0)  # fmt: skip
    for arm in ("rl-lora", "rl-pissa", "rl-milora"):
        if arm in arms:
            v.add(f"accuracy: {arm} − dense RL", acc(arm), acc("rl"), (arm, "rl"), 0, **kw)


def _peft_notes(cfg: StudyConfig, other) -> list[str]:
    """What the PEFT arms were and their run-time checks (masks held, inits preserved the
    function), for the record's notes; empty when none ran."""
    notes = []
    lora = [a for a in ("rl-lora", "rl-pissa", "rl-milora") if a in other.values]
    masks = [a for a in ("rl-mask-principal", "rl-mask-offprincipal") if a in other.values]
    if lora:
        change = {a: max(other.values[a][s]["init_max_logit_change"] for s in other.seeds)
                  for a in lora}  # fmt: skip
        notes.append(
            f"LoRA arms {lora}: rank {cfg.lora_rank}, alpha {cfg.lora_alpha:g}, lr "
            f"{cfg.lora_lr:g} on q/k/v/o/gate/up/down, adapter in fp32 over an fp32 copy of the "
            "bf16 base; merged (peft merge_and_unload) and saved in bf16, measured against the "
            "base. Largest logit change at init on a probe: "
            + ", ".join(f"{a} {c:.2e}" for a, c in change.items())
        )
    if masks:
        outside = {a: sum(other.values[a][s]["changed_outside_mask"] for s in other.seeds)
                   for a in masks}  # fmt: skip
        notes.append(
            f"Mask arms {masks}: M_princ of each block linear (top alpha = {cfg.alpha:g} of "
            f"|rank-{cfg.k0} reconstruction of W0|, analyze's definition) or its complement, "
            f"lr {cfg.rl_lr:g}; embeddings and norms frozen. Entries changed outside the masks: "
            + ", ".join(f"{a} {n}" for a, n in outside.items())
        )
    return notes


def _seed_pairs(cfg: StudyConfig, main) -> list[dict]:
    """Jaccard of the changed masks for every pair of RL seeds (analyze's ``pairs``, each with
    its per-tensor values); empty with fewer than two seeds."""
    if len(cfg.rl_seeds) < 2:
        return []
    rep = analyze(main.values["rl"][cfg.rl_seeds[0]]["base"],
                  [main.values["rl"][s]["checkpoint"] for s in cfg.rl_seeds],
                  ks=cfg.ks, alpha=cfg.alpha, threads=cfg.threads)  # fmt: skip
    keep = ("a", "b", "jaccard", "jaccard_random", "tensors")
    return [{k: p[k] for k in keep} for p in rep["pairs"]]


def run_study(out_dir: str | Path, cfg: StudyConfig | None = None, log=log_stderr) -> ResultRecord:
    cfg = cfg or StudyConfig()
    out = Path(out_dir)
    before = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        return _run(out, cfg, log)
    finally:
        torch.set_num_threads(before)


CONTROL_BASE = "control"  # StudyConfig.model: the control's plateau base (control.json in out)


def _base_and_splits(out: Path, cfg: StudyConfig) -> tuple[StudyConfig, Splits, dict | None]:
    """The study's base (``model="control"`` resolved to the control's plateau base in
    ``out``, with the recipe the control tuned for it) and its checked splits; on the control's
    base they include the pretraining sets, so the run-time check covers what the base was
    pretrained on."""
    if cfg.model != CONTROL_BASE:
        splits = Splits.build(make_splits, seed=0, key=row_key, digits=cfg.digits,
                              n_train=cfg.n_train, n_test=cfg.n_test)  # fmt: skip
        return cfg, splits, None
    from fmlab.rlvr_geometry.control import control_base

    path, base, splits = control_base(out, "long")
    params = splits.summary()["params"]
    other = [k for k in ("digits", "n_train", "n_test") if params[k] != getattr(cfg, k)]
    if other:
        raise StudyError(f"the control in {out} built its splits with other {', '.join(other)} "
                         f"({', '.join(f'{k}={params[k]}' for k in other)}); the study on its base "
                         "must use the same")  # fmt: skip
    # the recipe the control tuned on DEV for this base (its lrs, steps and mu), not SmolLM2's;
    # the seeds that tuning ran are the study's seen seeds too
    splits.declare_seen(*base["seeds_seen_in_design"])
    return replace(cfg, model=str(path), **base["recipe"]), splits, {"path": str(path), **base}


def _run(out: Path, cfg: StudyConfig, log) -> ResultRecord:
    cfg, splits, control = _base_and_splits(out, cfg)
    # nothing is tuned (every arm is the paper's recipe or one change from it): the test
    # prompts only score accuracy before and after training
    splits.open_test("no tuning: the arms are fixed before any run")
    study = _Study(cfg, out, splits, log)
    memo = Memo(out / ".memo" / "study.json", key={"cfg": asdict(cfg)})
    probe = memo.get_or_compute(
        "signal_probe",
        lambda: signal_probe(cfg, study.base_dir(False, None), list(splits["train"])),
    )
    log(f"signal probe: {probe['mixed_groups']} of {probe['groups']} prompt groups of the base "
        f"have differing rewards (mean reward {probe['reward_mean']:.3f})")  # fmt: skip
    if probe["fraction"] < MIN_SIGNAL:
        raise StudyError(
            f"the base {cfg.model} gives GRPO almost nothing to learn from: in "
            f"{probe['groups']} sampled prompt groups of {cfg.num_generations}, "
            f"{probe['mixed_groups']} have differing rewards (mean reward "
            f"{probe['reward_mean']:.3f}; the study needs at least {MIN_SIGNAL:.0%}). RL's "
            "'updates' would then test nothing. Use a base that solves part of the task: "
            f"`fmlab rlvr-geometry bench --control --out {out}` pretrains one, and "
            f"`--model {CONTROL_BASE}` runs the study on it"
        )
    with Timer() as t:
        main = run_arms({"rl": _settings(cfg, "rl")}, cfg.rl_seeds, study, memo, log=log)
        others = {a: _settings(cfg, a) for a in ("sft", *cfg.interventions)}
        other = run_arms(others, cfg.other_seeds, study, memo, log=log)
        pairs = _seed_pairs(cfg, main)
    preds, comparisons, ivs = _predictions(cfg, main, other, pairs)
    pre = _preconditions(main, other)
    summary = {**main.summary(), **other.summary()}
    plots = []
    # a metric no seed of an arm has (e.g. the overlaps where nothing changed) plots as nan
    stat = lambda a, m, k="mean": summary[a].get(m, {}).get(k, float("nan"))  # noqa: E731
    for m in ("sparsity_bf16", "nss", "principal_angle_max_deg"):
        vals = {m: {a: stat(a, m) for a in summary}}
        errs = {m: {a: stat(a, m, "std") for a in summary}}
        grouped_bar_plot(out / f"study_{m}.png", vals, m, f"{m} by arm", errs)
        plots.append(f"study_{m}.png")
    ov = {a: {k: stat(a, k) for k in ("overlap_principal", "overlap_low", "overlap_random")}
          for a in summary}  # fmt: skip
    grouped_bar_plot(out / "study_overlaps.png", ov, "overlap with the mask", "overlaps by arm")
    plots.append("study_overlaps.png")
    rec = ResultRecord(
        method="rlvr_geometry",
        claim=CLAIM,
        setup={
            **asdict(cfg),
            "arms": {"rl": _settings(cfg, "rl"), **others},
            "signal_probe": probe,
            "control_base": control,
            "command": _command(cfg, control is not None),
        },
        metrics={
            **{k: v for k, v in summary["rl"].items()},
            "preconditions": pre,
            "predictions": preds,
            "comparisons": comparisons,
            "jaccard_pairs": [{k: v for k, v in p.items() if k != "tensors"} for p in pairs],
            "by_arm": summary,
            "peak_rss_mb": peak_rss_mb(),
            # wall_s is this process's; a resumed run's arms ran earlier (their own seconds)
            "runs_resumed": main.resumed + other.resumed,
            "train_seconds_total": _train_seconds(main, other),
        },
        baselines={a: summary[a] for a in summary if a != "rl"},
        plots=plots,
        headline=["nss", "sparsity_bf16", "accuracy_after"],
        notes=[
            f"RL over seeds {list(cfg.rl_seeds)}; SFT and each intervention at seeds "
            f"{list(cfg.other_seeds)}; every arm {cfg.steps} optimizer steps from the same base.",
            "Verdicts rest on paired bootstrap intervals (95%) over tensors (geometry) or test "
            "prompts (accuracy): " + "; ".join(f"{k}: {v['verdict']}" for k, v in preds.items()),
            "Read the verdicts with the preconditions (measured): "
            + "; ".join(f"{k}: {v['verdict']}" for k, v in pre.items()),
            "The short-pretrain control is its own record: control.json (fmlab rlvr-geometry "
            "bench --control).",
            *_peft_notes(cfg, other),
        ],
        **record_fields(splits, None, ivs),
    )
    rec.wall_s = t.s
    write_record(rec, out / "study.json")
    return rec


def quick(out_dir: str | Path) -> ResultRecord:
    """The pipeline on a tiny random model in a few steps (claims nothing)."""
    return run_study(out_dir, StudyConfig.quick(), log=lambda *_: None)
