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
  the apparent bf16 sparsity.

Task: two-digit additions with a carry, asked in words ("What is 38 + 35? Reply with only the
number."); reward 1 when the last integer of the completion is the sum. Train and test prompts
come from one seeded builder and are checked disjoint by content (:class:`Splits`); the test
prompts only score accuracy before and after training.

Not built yet (said in the record): the short-pretrain control and the PEFT arms (LoRA, PiSSA,
MiLoRA, fixed-mask sparse RL; :class:`fmlab.core.rl.MasterAdamW` takes the masks).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from fmlab.core.cliutil import log as log_stderr
from fmlab.core.data.tasks import AdditionTask
from fmlab.core.evaluate import generate
from fmlab.core.experiment import Splits, paired, record_fields, run_arms
from fmlab.core.io import Memo, atomic_dir, atomic_write_json
from fmlab.core.results import ResultRecord, Timer, grouped_bar_plot, peak_rss_mb, write_record
from fmlab.core.rl import GRPOConfig, master_adamw, train_grpo, train_sft
from fmlab.core.train import TrainConfig
from fmlab.rlvr_geometry.analyze import analyze

__all__ = [
    "StudyConfig",
    "last_int_reward",
    "make_splits",
    "rotate_value_output",
    "run_study",
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
    prompts_per_step: int = 4
    max_new_tokens: int = 8
    rl_lr: float = 1e-6
    sft_lr: float = 1e-5
    big_lr: float = 1e-5  # Gate III: RL at this lr
    beta: float = 0.05  # Gate I: the KL arm
    tight_clip: float = 0.05  # Gate I: the clip arm
    interventions: tuple[str, ...] = ("rl-lr", "rl-fp32", "rl-rotated", "rl-beta", "rl-clip")
    ks: tuple[int, ...] = (1, 4, 16, 64)
    alpha: float = 0.5
    threads: int = 1
    reward: str = "sum"  # sum: the verifiable reward; digits: a dense smoke-test reward
    progress: bool = True  # training progress bars on stderr

    @classmethod
    def quick(cls) -> StudyConfig:
        """A pipeline smoke test on a tiny random model (no geometry to speak of; claims
        nothing)."""
        return cls(model="tiny", n_train=16, n_test=8, steps=3, rl_seeds=(0, 1),
                   num_generations=4, prompts_per_step=2, max_new_tokens=4, rl_lr=1e-3,
                   sft_lr=1e-3, big_lr=1e-2, interventions=("rl-rotated",), ks=(1, 4),
                   reward="digits", progress=False)  # fmt: skip


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


def make_splits(seed: int, digits: int, n_train: int, n_test: int) -> dict:
    """Train and test additions from one seeded stream (no pair repeats across them)."""
    task = AdditionTask(digits=digits, min_carries=1)
    seen, train, test = set(), [], []
    for ex in task.generate(4 * (n_train + n_test) + 100, seed=seed):
        pair = (ex.meta["a"], ex.meta["b"])
        if pair in seen:
            continue
        seen.add(pair)
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


ARM_SETTINGS = {
    "rl": {"kind": "rl"},
    "sft": {"kind": "sft"},
    "rl-lr": {"kind": "rl", "lr": "big_lr"},
    "rl-fp32": {"kind": "rl", "fp32": True},
    "rl-rotated": {"kind": "rl", "rotate": True},
    "rl-beta": {"kind": "rl", "beta": "beta"},
    "rl-clip": {"kind": "rl", "epsilon": "tight_clip"},
}


def _settings(cfg: StudyConfig, arm: str) -> dict:
    s = dict(ARM_SETTINGS[arm])
    for k, v in list(s.items()):
        if isinstance(v, str) and k != "kind":
            s[k] = getattr(cfg, v)
    s.setdefault("lr", cfg.rl_lr if s["kind"] == "rl" else cfg.sft_lr)
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
        train_rows = list(self.splits["train"])
        with Timer() as t:
            if s["kind"] == "rl":
                gcfg = GRPOConfig(num_generations=cfg.num_generations,
                                  prompts_per_step=cfg.prompts_per_step,
                                  max_new_tokens=cfg.max_new_tokens, loss_type="dapo",
                                  epsilon=s.get("epsilon", 0.2),  # DAPO: 0.2 / 0.28
                                  epsilon_high=s.get("epsilon", 0.28),
                                  beta=s.get("beta", 0.0))  # fmt: skip
                res = train_grpo(model, tok, train_rows, [REWARDS[cfg.reward]], gcfg, tcfg, run_dir,
                                 optimizers=master_adamw())  # fmt: skip
            else:
                pairs = [(r["prompt"], r["answer"]) for r in train_rows]
                res = train_sft(model, tok, pairs, tcfg, run_dir, optimizers=master_adamw())
        res.raise_if_signalled()
        acc1 = _accuracy(model, tok, test, cfg.max_new_tokens)
        ckpt = run_dir / "model"
        rep = analyze(base, [ckpt], ks=cfg.ks, alpha=cfg.alpha, threads=cfg.threads)
        c = rep["checkpoints"][0]
        o = c["summary"]["overall"]
        k_top = str(cfg.ks[-1])
        row = {g: o[g] for g in GEOMETRY}
        row.update({
            "principal_angle_max_deg": o["principal_angle_max_deg"][k_top],
            "accuracy_before": float(np.mean(acc0)), "accuracy_after": float(np.mean(acc1)),
            "train_seconds": t.s,
            "per_tensor_nss": [e["nss"] for e in c["tensors"]],
            "per_tensor_sparsity_bf16": [1 - e["changed"] / e["numel"] for e in c["tensors"]],
            "per_tensor_angle": [e["principal_angle_max_deg"][k_top] for e in c["tensors"]],
            **{f"per_tensor_{k}": [e[k] for e in c["tensors"]]
               for k in ("overlap_principal", "overlap_low", "overlap_random")},
            "tensor_names": [e["name"] for e in c["tensors"]],
            "base": str(base), "checkpoint": str(ckpt),
        })  # fmt: skip
        return row


def _verdict(p, direction: int) -> str:
    """ "holds" when the per-tensor interval of a − b excludes 0 on the predicted side
    (``direction`` +1: a > b), "FAILS" when it excludes 0 on the other side, else "not shown"."""
    iv = p.per_item
    if iv.lo <= 0 <= iv.hi:
        return "not shown"
    return "holds" if (iv.lo > 0) == (direction > 0) else "FAILS"


def _tensor_values(runs, arm: str, key: str) -> np.ndarray:
    """(seeds, tensors) of a per-tensor metric; tensors without a value (nothing changed) nan."""
    rows = [runs.values[arm][s][key] for s in runs.seeds]
    return np.array([[np.nan if v is None else v for v in r] for r in rows], dtype=float)


def _predictions(cfg: StudyConfig, main, other, pairs) -> tuple[dict, list]:
    """Each prediction of the theory with the per-tensor paired interval it rests on (tensors
    are the items; RL values averaged over its seeds first)."""
    preds, ivs = {}, []

    def add(name, a, b, names, direction, headline=False, **shown):
        a, b = np.nanmean(np.atleast_2d(a), axis=0), np.nanmean(np.atleast_2d(b), axis=0)
        ok = ~(np.isnan(a) | np.isnan(b))
        if ok.sum() < 2:
            preds[name] = {**shown, "verdict": "undefined (fewer than 2 tensors changed)"}
            return
        p = paired(items_a=a[ok], items_b=b[ok], names=names, metric=name, headline=headline)
        ivs.append(p)
        preds[name] = {**shown, "delta": p.per_item.estimate, "lo": p.per_item.lo,
                       "hi": p.per_item.hi, "tensors": int(ok.sum()),
                       "verdict": _verdict(p, direction)}  # fmt: skip

    rl = lambda k: _tensor_values(main, "rl", k)  # noqa: E731
    if "sft" in other.values:
        sft = lambda k: _tensor_values(other, "sft", k)  # noqa: E731
        add("nss: RL below SFT", rl("per_tensor_nss"), sft("per_tensor_nss"), ("rl", "sft"), -1,
            headline=True)  # fmt: skip
        add("principal angle: RL below SFT", rl("per_tensor_angle"), sft("per_tensor_angle"),
            ("rl", "sft"), -1)  # fmt: skip
        add("bf16 sparsity: RL above SFT", rl("per_tensor_sparsity_bf16"),
            sft("per_tensor_sparsity_bf16"), ("rl", "sft"), +1)  # fmt: skip
    rand = rl("per_tensor_overlap_random")
    add("overlap with principal weights below random", rl("per_tensor_overlap_principal"), rand,
        ("rl M_princ", "random"), -1)  # fmt: skip
    add("overlap with low-magnitude weights above random", rl("per_tensor_overlap_low"), rand,
        ("rl M_low", "random"), +1)  # fmt: skip
    if pairs:
        j = np.array([[np.nan if t["jaccard"] is None else t["jaccard"] for t in p["tensors"]]
                      for p in pairs])  # fmt: skip
        jr = np.array([[np.nan if t["jaccard_random"] is None else t["jaccard_random"]
                        for t in p["tensors"]] for p in pairs])  # fmt: skip
        add("cross-seed Jaccard above random", j, jr, ("jaccard", "random"), +1)
    if "rl-lr" in other.values:
        add("a larger lr lowers bf16 sparsity", _tensor_values(other, "rl-lr", "per_tensor_sparsity_bf16"),
            rl("per_tensor_sparsity_bf16"), ("rl-lr", "rl"), -1)  # fmt: skip
    if "rl-rotated" in other.values:
        dist = lambda r, k: np.abs(r(k) - r("per_tensor_overlap_random"))  # noqa: E731
        rot = lambda k: _tensor_values(other, "rl-rotated", k)  # noqa: E731
        add("rotation moves the principal overlap toward random",
            dist(rot, "per_tensor_overlap_principal"), dist(rl, "per_tensor_overlap_principal"),
            ("rotated |Δ|", "rl |Δ|"), -1)  # fmt: skip
    preds["short-pretrain control weakens the effects"] = {"verdict": "not tested (not built yet)"}
    return preds, ivs


def run_study(out_dir: str | Path, cfg: StudyConfig | None = None, log=log_stderr) -> ResultRecord:
    cfg = cfg or StudyConfig()
    out = Path(out_dir)
    before = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        return _run(out, cfg, log)
    finally:
        torch.set_num_threads(before)


def _run(out: Path, cfg: StudyConfig, log) -> ResultRecord:
    splits = Splits.build(make_splits, seed=0, key=lambda r: r["prompt"], digits=cfg.digits,
                          n_train=cfg.n_train, n_test=cfg.n_test)  # fmt: skip
    # nothing is tuned (every arm is the paper's recipe or one change from it): the test
    # prompts only score accuracy before and after training
    splits.open_test("no tuning: the arms are fixed before any run")
    study = _Study(cfg, out, splits, log)
    memo = Memo(out / ".memo" / "study.json", key={"cfg": asdict(cfg)})
    with Timer() as t:
        main = run_arms({"rl": _settings(cfg, "rl")}, cfg.rl_seeds, study, memo, log=log)
        others = {a: _settings(cfg, a) for a in ("sft", *cfg.interventions)}
        other = run_arms(others, cfg.other_seeds, study, memo, log=log)
        pairs = []
        if len(cfg.rl_seeds) >= 2:
            rep = analyze(main.values["rl"][cfg.rl_seeds[0]]["base"],
                          [main.values["rl"][s]["checkpoint"] for s in cfg.rl_seeds],
                          ks=cfg.ks, alpha=cfg.alpha, threads=cfg.threads)  # fmt: skip
            keep = ("a", "b", "jaccard", "jaccard_random", "tensors")
            pairs = [{k: p[k] for k in keep} for p in rep["pairs"]]
    preds, ivs = _predictions(cfg, main, other, pairs)
    summary = {**main.summary(), **other.summary()}
    plots = []
    for m in ("sparsity_bf16", "nss", "principal_angle_max_deg"):
        vals = {m: {a: summary[a][m]["mean"] for a in summary}}
        errs = {m: {a: summary[a][m]["std"] for a in summary}}
        grouped_bar_plot(out / f"study_{m}.png", vals, m, f"{m} by arm", errs)
        plots.append(f"study_{m}.png")
    ov = {a: {k: summary[a][k]["mean"] for k in ("overlap_principal", "overlap_low", "overlap_random")}
          for a in summary}  # fmt: skip
    grouped_bar_plot(out / "study_overlaps.png", ov, "overlap with the mask", "overlaps by arm")
    plots.append("study_overlaps.png")
    rec = ResultRecord(
        method="rlvr_geometry",
        claim=CLAIM,
        setup={
            **asdict(cfg),
            "arms": {"rl": _settings(cfg, "rl"), **others},
            "command": "fmlab rlvr-geometry bench",
        },
        metrics={
            **{k: v for k, v in summary["rl"].items()},
            "predictions": preds,
            "jaccard_pairs": [{k: v for k, v in p.items() if k != "tensors"} for p in pairs],
            "by_arm": summary,
            "peak_rss_mb": peak_rss_mb(),
        },
        baselines={a: summary[a] for a in summary if a != "rl"},
        plots=plots,
        headline=["nss", "sparsity_bf16", "accuracy_after"],
        notes=[
            f"RL over seeds {list(cfg.rl_seeds)}; SFT and each intervention at seeds "
            f"{list(cfg.other_seeds)}; every arm {cfg.steps} optimizer steps from the same base.",
            "Verdicts rest on per-tensor paired bootstrap intervals (95%): "
            + "; ".join(f"{k}: {v['verdict']}" for k, v in preds.items()),
            "Not built yet: the short-pretrain control and the PEFT arms (LoRA, PiSSA, MiLoRA, "
            "fixed-mask sparse RL).",
        ],
        **record_fields(splits, None, ivs),
    )
    rec.wall_s = t.s
    write_record(rec, out / "study.json")
    return rec


def quick(out_dir: str | Path) -> ResultRecord:
    """The pipeline on a tiny random model in a few steps (claims nothing)."""
    return run_study(out_dir, StudyConfig.quick(), log=lambda *_: None)
