"""The short-pretrain control of the RL-vs-SFT study: do the effects weaken when the base has
had little pretraining?

The theory says RLVR's updates avoid the principal directions of a *pretrained* weight, so on a
base whose spectrum has little structure yet (an early checkpoint) the effects should be
weaker. fmlab's design:

- **One pretraining run.** A small Llama (``core.models.build_model``; by default the
  ``llama-mini`` numbers cut to 4 layers: hidden 256, 8 query / 4 KV heads, FFN 688, about
  2.9M parameters plus a 1024 x 256 tied embedding) is pretrained here from one seed with
  ``core.train`` on text from a seeded generator: the study's addition prompts with their
  answers, each rendered as a chat exchange with the tokenizer's template (the format the RL
  and SFT arms prompt and score in), mixed with the bundled prose corpus (``core.data``,
  ``pydoc_data.topics``; ``prose_fraction`` of the training blocks) so there is language too.
  The tokenizer is a byte-level BPE trained here with every digit its own token (a digit per
  token keeps addition learnable; whole words keep the sequences short). AdamW at a constant lr
  after warm-up, so a plateau is the model's and not the schedule's. The size is chosen so the
  step budget (2500 steps of 16 x 128 tokens, about 0.3 s each on the shared 2-core machine's
  two threads, timed while designing this) fits in about 15 minutes.
- **Disjoint by content, checked at run time.** The study's train and test prompts come from
  the study's own builder (:func:`fmlab.rlvr_geometry.study.make_splits`); the pretraining
  pairs, a held-out pretraining set and a DEV set come from a separate seeded shuffle of every
  pair, with the study's pairs excluded. :func:`pretraining_splits` then checks all five sets
  pairwise disjoint by unordered operand pair (a + b and b + a are one item;
  :class:`fmlab.core.experiment.Splits`, test sealed) and that no held-out prompt occurs
  verbatim in the pretraining prose; either overlap raises.
- **Two bases from that run**, both saved in bf16 (the format whose sparsity the study
  measures), chosen without looking at the test prompts (:func:`choose_bases`, a pure function
  of the evaluation curve). Every ``eval_every`` steps the run records the loss on held-out
  pretraining text (the additions and the prose held out, weighted as in training), the loss
  of the held-out additions' answer tokens (:func:`answer_loss`) and the greedy accuracy of
  the bf16 model on the DEV additions. ``long``: the first evaluation at which the best
  answer loss (``plateau_loss``) of the last ``plateau_evals`` evaluations is not more than
  ``plateau_tol`` (1%) below the best before them, or the step budget if that never happens
  (the record says which). The answers' loss, not all the text's: measured while designing
  this on DEV, the held-out text's loss (random operand digits, prose, the template) flattened
  by step 500 and then rose as the model overfit the prose, while the DEV accuracy was still
  4% and rose to 80% only after step 1000, when the answers' loss fell. ``short``: the first
  evaluation before ``long`` whose DEV accuracy reaches ``dev_floor`` (5%), so that GRPO's
  groups have some reward variance; none is an error (:class:`ControlError`), not a fallback.
- **The recipe, tuned on DEV** (:func:`_tune`): RL's and SFT's lr on the long base, the same
  grid and widening for both (``core.experiment.tune``), DEV standing in for the test prompts,
  seed ``tune_seed``; per arm the smallest lr as good as the best (:func:`select_lr`).
- **The study's arms on each base.** RL (the study's ``rl`` arm: DAPO-style GRPO, beta 0,
  clip 0.2 / 0.28, mu 2, the tuned lr, bf16 storage with an fp32 optimizer; 3 seeds) and SFT
  (1 seed, its tuned lr), the same steps, run by the study's own machinery (``study._Study`` with ``model`` set to the
  base's directory), resumable through ``core.io.Memo`` and ``run_arms``.
- **Effects per base**, each per tensor with a paired bootstrap interval over tensors
  (:data:`EFFECTS`): (a) ``overlap_random − overlap_principal`` (RL avoids principal weights),
  (b) ``overlap_low − overlap_random`` (RL favours low-magnitude weights), (c) ``nss(SFT) −
  nss(RL)`` (RL drifts the spectrum less), (d) ``jaccard − jaccard_random`` over pairs of RL
  seeds. RL values are averaged over seeds first.
- **The control's predictions**, one per effect: effect(long) > effect(short), by a paired
  interval over tensors (both bases have the same tensor names, checked), judged like the
  study's: "holds" / "FAILS" only when the interval excludes 0, else "not shown".

``run_control`` writes the ResultRecord ``control.json`` (and plots) beside the study's.
"""

from __future__ import annotations

import copy
import json
import math
import random
import shutil
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from fmlab.core.cliutil import log as log_stderr
from fmlab.core.data import Document, pack_documents, prose_documents, split_documents
from fmlab.core.data.corpora import encode_chat_sft
from fmlab.core.data.tasks import AdditionTask
from fmlab.core.evaluate import lm_loss
from fmlab.core.experiment import (
    SplitError,
    Splits,
    Tuning,
    content_hash,
    interval_plot,
    paired,
    record_fields,
    run_arms,
    tune,
)
from fmlab.core.io import Memo, atomic_dir
from fmlab.core.models.tokenizer import train_bpe_tokenizer
from fmlab.core.results import (
    ResultRecord,
    Timer,
    figure,
    peak_rss_mb,
    save_figure,
    write_record,
)
from fmlab.core.train import BlockSampler, TrainConfig, train
from fmlab.rlvr_geometry.study import (
    MIN_SIGNAL,
    StudyConfig,
    _accuracy,
    _per_item,
    _preconditions,
    _prompt,
    _seed_pairs,
    _settings,
    _Study,
    _Verdicts,
    make_splits,
    pair_key,
    row_key,
)

__all__ = [
    "EFFECTS",
    "BaseChoice",
    "ControlConfig",
    "ControlError",
    "choose_bases",
    "effect_items",
    "make_control_splits",
    "plateau_index",
    "pretraining_splits",
    "run_control",
]

CLAIM = (
    "RLVR's geometric signature (updates that avoid principal weights and favour low-magnitude "
    "ones, less spectral drift than SFT, masks repeated across seeds) is stronger on a base "
    "pretrained to a plateau than on an early checkpoint of the same pretraining run."
)
EFFECTS = {
    "principal_avoidance": "overlap_random − overlap_principal of RL's changed entries",
    "low_magnitude_preference": "overlap_low − overlap_random of RL's changed entries",
    "drift_gap": "nss(SFT) − nss(RL)",
    "seed_consistency": "jaccard − jaccard_random of RL's changed masks over seed pairs",
}
BASES = ("long", "short")
_PLACEHOLDER = "the control's own bases"  # study.model: replaced by each base's directory


class ControlError(ValueError):
    """The pretraining run cannot give the two bases (no early checkpoint reached the DEV
    floor, or the loss diverged): the message says which setting to change."""


def _default_study() -> StudyConfig:
    # 100 steps (designed on DEV: at 60 the tuned RL arm had barely moved); both cores
    return StudyConfig(model=_PLACEHOLDER, interventions=(), steps=100, threads=2)


@dataclass(frozen=True)
class ControlConfig:
    """The pretraining run, the base-selection rule and (``study``) the RL/SFT recipe."""

    builder: str = "llama-mini"  # a core.models builder; the numbers below override its own
    num_layers: int = 4
    hidden_size: int = 256
    num_heads: int = 8
    num_kv_heads: int = 4
    vocab_size: int = 1024  # byte-level BPE trained here, digits split
    seq_len: int = 128
    pretrain_batch: int = 16  # blocks per step: 2048 tokens
    pretrain_lr: float = 2e-3  # constant after warm-up
    warmup_steps: int = 50
    weight_decay: float = 0.1
    max_pretrain_steps: int = 2500  # the step budget
    eval_every: int = 50
    # K: the plateau rule looks at the last K evaluations (250 steps: on DEV the answers' loss
    # sat flat for ~200 steps before the model learnt to carry, then fell fivefold)
    plateau_evals: int = 5
    plateau_tol: float = 0.01  # ... improving the best loss by less than this (relative)
    # the loss the rule watches: the held-out answers' (val_loss_answer) or all held-out
    # pretraining text's (val_loss: random operands and prose dominate it; it flattens, then
    # rises with overfitting, long before the model has learnt to add)
    plateau_loss: str = "val_loss_answer"
    dev_floor: float = 0.05  # short: the first DEV accuracy at or above this
    n_dev: int = 128
    n_pretrain_val: int = 256
    n_pretrain: int | None = None  # pretraining pairs; None: every pair left over
    prose_fraction: float = 0.25  # of the training (and held-out) blocks
    pretrain_seed: int = 0
    stream_seed: int = 1  # the shuffle the pretraining, held-out and DEV pairs come from
    # RL's and SFT's lr, tuned on the long base with DEV standing in for the test prompts, the
    # same grid (and widening) for both; see _select for the rule
    lr_grid: tuple[float, ...] = (1e-6, 1e-5, 1e-4, 1e-3)
    tune_seed: int = 100  # the tuning runs' seed: a dev seed, never one of the test seeds
    big_lr_factor: float = 10.0  # the study's rl-lr arm and LoRA arms: this x the tuned RL lr
    study: StudyConfig = field(default_factory=_default_study)

    @classmethod
    def quick(cls) -> ControlConfig:
        """A pipeline smoke test: a tiny model pretrained for a few steps, the study's quick
        recipe (a dense smoke reward) and a zero DEV floor. It claims nothing."""
        study = replace(StudyConfig.quick(), model=_PLACEHOLDER, interventions=(), steps=2)
        return cls(builder="llama-tiny", num_layers=2, hidden_size=64, num_heads=4,
                   num_kv_heads=2, vocab_size=320, seq_len=32, pretrain_batch=8,
                   pretrain_lr=3e-3, warmup_steps=0, max_pretrain_steps=6, eval_every=2,
                   plateau_evals=1, dev_floor=0.0, n_dev=8, n_pretrain_val=16, n_pretrain=256,
                   lr_grid=(1e-3,), study=study)  # fmt: skip

    def __post_init__(self):
        checks = {
            "max_pretrain_steps >= eval_every >= 1": self.max_pretrain_steps
            >= self.eval_every
            >= 1,
            "plateau_evals >= 1": self.plateau_evals >= 1,
            "plateau_loss in (val_loss_answer, val_loss)": self.plateau_loss
            in ("val_loss_answer", "val_loss"),
            "0 <= plateau_tol < 1": 0 <= self.plateau_tol < 1,
            "0 <= dev_floor <= 1": 0 <= self.dev_floor <= 1,
            "0 <= prose_fraction < 1": 0 <= self.prose_fraction < 1,
            "n_dev, n_pretrain_val >= 2": min(self.n_dev, self.n_pretrain_val) >= 2,
            "n_pretrain is None or >= 1": self.n_pretrain is None or self.n_pretrain >= 1,
            "lr_grid: positive lrs": bool(self.lr_grid) and min(self.lr_grid) > 0,
            "big_lr_factor > 0": self.big_lr_factor > 0,
            "tune_seed not a test seed": self.tune_seed
            not in (*self.study.rl_seeds, *self.study.other_seeds),
        }
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"invalid ControlConfig: need {'; '.join(bad)}")
        s = self.study
        if s.model != _PLACEHOLDER or s.interventions:
            raise ValueError(
                "ControlConfig.study sets the RL/SFT recipe only: its model is each of the "
                f"control's pretrained bases (leave model={_PLACEHOLDER!r}) and it runs rl and "
                "sft only (interventions=())"
            )
        if len(s.rl_seeds) < 2:
            raise ValueError("the control needs at least 2 RL seeds (the Jaccard effect)")

    def eval_steps(self) -> list[int]:
        """The steps at which the pretraining run is evaluated (the budget is the last)."""
        steps = list(range(self.eval_every, self.max_pretrain_steps + 1, self.eval_every))
        return steps if steps[-1] == self.max_pretrain_steps else [*steps, self.max_pretrain_steps]


# -- splits -------------------------------------------------------------------------------------


def _row(a: int, b: int) -> dict:
    return {"prompt": _prompt(a, b), "answer": str(a + b), "meta": {"a": a, "b": b}}


def make_control_splits(seed: int, digits: int, n_train: int, n_test: int, n_dev: int,
                        n_val: int, stream_seed: int, n_pretrain: int | None = None) -> dict:  # fmt: skip
    """The study's train and test prompts (``make_splits(seed, ...)``) plus, from a separate
    seeded shuffle of every ``digits``-digit pair with the study's pairs left out: ``dev``
    (``n_dev`` pairs with a carry, like the test), ``pretrain_val`` (``n_val`` pairs, held-out
    pretraining text) and ``pretrain`` (the rest, or the first ``n_pretrain``)."""
    study = make_splits(seed, digits, n_train, n_test)
    taken = {row_key(r) for r in study["train"] + study["test"]}
    lo, hi = 10 ** (digits - 1), 10**digits
    # a + b and b + a are one item: an operand pair is taken, held out or pretrained on in
    # both orders (the pretraining text holds both; dev and pretrain_val ask one)
    pairs = [(a, b) for a in range(lo, hi) for b in range(a, hi) if pair_key((a, b)) not in taken]
    random.Random(f"rlvr-control:{stream_seed}").shuffle(pairs)
    dev = [p for p in pairs if AdditionTask.carries(*p) >= 1][:n_dev]
    used = set(dev)
    rest = [p for p in pairs if p not in used]
    val = rest[:n_val]
    pre = [q for p in rest[n_val:] for q in ((p, p[::-1]) if p[0] != p[1] else (p,))]
    pre = pre if n_pretrain is None else pre[:n_pretrain]
    if len(dev) < n_dev or len(val) < n_val or not pre:
        raise ValueError(f"only {len(pairs)} {digits}-digit pairs are left after the study's; "
                         "lower n_dev / n_pretrain_val or use more digits")  # fmt: skip
    return {**study, "dev": [_row(*p) for p in dev], "pretrain_val": [_row(*p) for p in val],
            "pretrain": [_row(*p) for p in pre]}  # fmt: skip


def pretraining_splits(items: Mapping[str, Sequence[dict]], prose: Sequence[str], *,
                       seed: int | None = None, params: Mapping | None = None,
                       dev_seeds: Sequence[int] = (), test_seeds: Sequence[int] = ()) -> Splits:  # fmt: skip
    """The run-time checks on what the model is pretrained on: every split of ``items``
    (``pretrain`` and the held-out ones) pairwise disjoint by unordered operand pair, and no
    held-out prompt verbatim in the pretraining ``prose``. Raises :class:`SplitError` naming the overlap;
    returns the :class:`Splits` (``test`` sealed)."""
    held = [r["prompt"] for name, rows in items.items() if name != "pretrain" for r in rows]
    text = "\x00".join(prose)
    hits = [p for p in held if p in text]
    if hits:
        raise SplitError(
            f"{len(hits)} held-out prompts occur in the pretraining prose (e.g. {hits[0]!r}); "
            "remove those documents from the corpus"
        )
    return Splits(items, key=row_key, seed=seed, params=params, dev_seeds=dev_seeds,
                  test_seeds=test_seeds, builder=f"{__name__}.make_control_splits")  # fmt: skip


# -- choosing the two bases --------------------------------------------------------------------


def plateau_index(losses: Sequence[float], k: int, tol: float) -> int | None:
    """The first index ``i >= k`` at which the best of the last ``k`` losses is not more than
    ``tol`` (relative) below the best before them: ``min(l[i-k+1 : i+1]) > (1 - tol) *
    min(l[: i-k+1])``. None when that never happens. Non-finite losses raise."""
    bad = [i for i, v in enumerate(losses) if not math.isfinite(v)]
    if bad:
        raise ControlError(f"the held-out loss is not finite at evaluation {bad[0]}: the "
                           "pretraining diverged; lower pretrain_lr")  # fmt: skip
    for i in range(k, len(losses)):
        if min(losses[i - k + 1 : i + 1]) > (1 - tol) * min(losses[: i - k + 1]):
            return i
    return None


@dataclass(frozen=True)
class BaseChoice:
    """The two bases' steps, and whether ``long`` is a plateau (else the step budget)."""

    short: int
    long: int
    plateau: bool


def choose_bases(curve: Sequence[Mapping], k: int, tol: float, floor: float,
                 loss: str = "val_loss") -> BaseChoice:  # fmt: skip
    """The bases from an evaluation curve (rows with ``step``, the ``loss`` key,
    ``dev_accuracy`` in step order, ending at the step budget or at the plateau): ``long`` = the step of
    :func:`plateau_index` (else the last row), ``short`` = the first earlier row whose
    ``dev_accuracy >= floor``. No such row raises :class:`ControlError`."""
    if not curve:
        raise ControlError("no evaluations: the pretraining run has not started")
    i = plateau_index([r[loss] for r in curve], k, tol)
    plateau = i is not None
    i = i if plateau else len(curve) - 1
    j = next((n for n in range(i) if curve[n]["dev_accuracy"] >= floor), None)
    if j is None:
        raise ControlError(
            f"no checkpoint before the long base (step {curve[i]['step']}) reached a DEV "
            f"accuracy of {floor:.0%}, so GRPO would see no reward variance on the short base; "
            "evaluate more often (eval_every), lower dev_floor or pretrain longer"
        )
    return BaseChoice(short=int(curve[j]["step"]), long=int(curve[i]["step"]), plateau=plateau)


# -- the pretraining run -----------------------------------------------------------------------


def _chat_docs(tok, rows: Sequence[dict], name: str) -> list[Document]:
    """Each (prompt, answer) as the chat exchange the arms see: user turn, assistant reply."""
    return [Document(f"{name}/{i}", tok.apply_chat_template(
        [{"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": r["answer"]}],
        tokenize=False), "rlvr-control") for i, r in enumerate(rows)]  # fmt: skip


@torch.no_grad()
def answer_loss(model, tok, rows: Sequence[dict], batch_size: int = 64) -> float:
    """Mean cross-entropy (nats/token) of the answer tokens (and the end of turn) given the
    chat prompt, over ``rows``: the part of the held-out additions a model can learn (the
    operands are random digits, the template is learnt in a few steps)."""
    x, y = encode_chat_sft(tok, [(r["prompt"], r["answer"]) for r in rows])
    was = model.training
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(x), batch_size):
        logits = model(input_ids=x[i : i + batch_size]).logits.float()
        lab = y[i : i + batch_size]
        total += float(torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.size(-1)), lab.reshape(-1), ignore_index=-100,
            reduction="sum"))  # fmt: skip
        count += int((lab != -100).sum())
    model.train(was)
    return total / count


class _Pretrain:
    """The pretraining run: data, segments of ``eval_every`` steps through ``core.train``
    (exact resume from its checkpoint), an evaluation and a bf16 snapshot after each, kept
    only while it may still be a base."""

    def __init__(self, cfg: ControlConfig, root: Path, splits: Splits, prose: dict, memo, log):
        self.cfg, self.dir, self.splits, self.prose = cfg, root, splits, prose
        self.memo, self.log = memo, log
        self.counts: dict[str, int] = {}

    def data(self):
        """(tokenizer, train blocks, held-out addition blocks, held-out prose blocks)."""
        from transformers import AutoTokenizer

        cfg, tok_dir = self.cfg, self.dir / "tokenizer"
        pre = list(self.splits["pretrain"])
        if not (tok_dir / "tokenizer.json").is_file():  # saved: a resumed run needs the same ids
            texts = [d.text for d in self.prose["train"]] + [r["prompt"] for r in pre]
            tok = train_bpe_tokenizer(texts, cfg.vocab_size, split_digits=True)
            with atomic_dir(tok_dir, overwrite=True) as tmp:
                tok.save_pretrained(tmp)
        tok = AutoTokenizer.from_pretrained(tok_dir)
        add = pack_documents(tok, _chat_docs(tok, pre, "pretrain"), cfg.seq_len)
        val_add = pack_documents(tok, _chat_docs(tok, self.splits["pretrain_val"], "val"),
                                 cfg.seq_len)  # fmt: skip
        blocks, val_prose = add, None
        self.counts = {"addition_blocks": len(add), "prose_blocks": 0}
        if cfg.prose_fraction > 0:
            prose = pack_documents(tok, self.prose["train"], cfg.seq_len)
            n = round(len(add) * cfg.prose_fraction / (1 - cfg.prose_fraction))
            g = torch.Generator().manual_seed(cfg.pretrain_seed)
            pick = torch.randperm(len(prose), generator=g)[torch.arange(n) % len(prose)]
            blocks = torch.cat([add, prose[pick]])
            self.counts["prose_blocks"] = n
            val_prose = pack_documents(tok, self.prose["val"], cfg.seq_len)
        return tok, blocks, val_add, val_prose

    def _evaluate(self, model, tok, val_add, val_prose) -> dict:
        f = self.cfg.prose_fraction
        la = lm_loss(model, val_add, batch_size=32)
        lp = lm_loss(model, val_prose, batch_size=32) if val_prose is not None else None
        return {"val_loss": la if lp is None else (1 - f) * la + f * lp,
                "val_loss_addition": la, "val_loss_prose": lp,
                "val_loss_answer": answer_loss(model, tok, self.splits["pretrain_val"])}  # fmt: skip

    def _snapshot(self, model, tok, step: int) -> float:
        """Save the model in bf16 as an HF checkpoint; its greedy DEV accuracy."""
        snap = copy.deepcopy(model).to(torch.bfloat16).eval()
        acc = float(
            np.mean(_accuracy(snap, tok, self.splits["dev"], self.cfg.study.max_new_tokens))
        )
        with atomic_dir(self.snapshot_dir(step), overwrite=True) as tmp:
            snap.save_pretrained(tmp)
            tok.save_pretrained(tmp)
        return acc

    def snapshot_dir(self, step: int) -> Path:
        return self.dir / "snapshots" / f"step{step}"

    def _prune(self, keep: set[int], before: int) -> None:
        for p in (self.dir / "snapshots").glob("step*"):
            step = int(p.name[4:])
            if step < before and step not in keep:
                shutil.rmtree(p, ignore_errors=True)

    def run(self) -> tuple[list[dict], BaseChoice, dict]:
        """Pretrain until the plateau rule fires or the budget ends (evaluations resumed from
        the memo); returns the curve, the choice and facts about the run."""
        from fmlab.core.models import build_model

        cfg = self.cfg
        tok, blocks, val_add, val_prose = self.data()
        model = build_model(cfg.builder, len(tok), seed=cfg.pretrain_seed, num_layers=cfg.num_layers,
                            hidden_size=cfg.hidden_size, num_heads=cfg.num_heads,
                            num_kv_heads=cfg.num_kv_heads)  # fmt: skip
        tcfg = TrainConfig(steps=cfg.max_pretrain_steps, batch_size=cfg.pretrain_batch,
                           lr=cfg.pretrain_lr, min_lr_ratio=1.0, warmup_steps=cfg.warmup_steps,
                           weight_decay=cfg.weight_decay, seed=cfg.pretrain_seed,
                           log_every=cfg.eval_every, progress=False)  # fmt: skip
        data, curve, short = BlockSampler(blocks, seed=cfg.pretrain_seed), [], None
        for step in cfg.eval_steps():
            name = f"pretrain|step={step}"
            if name not in self.memo:
                with Timer() as t:
                    res = train(model, data, tcfg, self.dir / "run", stop_at=step)
                    res.raise_if_signalled("pretraining")
                    row = {"step": step, "train_loss": res.train_loss,
                           **self._evaluate(model, tok, val_add, val_prose),
                           "dev_accuracy": self._snapshot(model, tok, step)}  # fmt: skip
                self.memo.put(name, {**row, "seconds": t.s})
                self.log(f"pretrain step {step}: held-out loss {row['val_loss']:.4f} (answers "
                         f"{row['val_loss_answer']:.4f}), DEV "
                         f"accuracy {row['dev_accuracy']:.3f} ({t.s:.0f} s)")  # fmt: skip
            curve.append(self.memo.get(name))
            if short is None and curve[-1]["dev_accuracy"] >= cfg.dev_floor:
                short = step
            self._prune({short} if short is not None else set(), before=step)
            losses = [r[cfg.plateau_loss] for r in curve]
            if plateau_index(losses, cfg.plateau_evals, cfg.plateau_tol) is not None:
                break
        choice = choose_bases(curve, cfg.plateau_evals, cfg.plateau_tol, cfg.dev_floor,
                              cfg.plateau_loss)  # fmt: skip
        facts = {"params": sum(p.numel() for p in model.parameters()), "vocab": len(tok),
                 **self.counts, "tokens_per_step": cfg.pretrain_batch * cfg.seq_len,
                 "val_blocks": {"addition": len(val_add),
                                "prose": 0 if val_prose is None else len(val_prose)},
                 "seconds": sum(r["seconds"] for r in curve)}  # fmt: skip
        return curve, choice, facts


# -- the recipe, tuned on DEV ------------------------------------------------------------------

SELECTION_RULE = (
    "per arm, the smallest evaluated lr whose DEV accuracy is not below the best one's by a "
    "paired bootstrap interval (95%) over the DEV prompts (the best: the highest DEV accuracy)"
)


def select_lr(points: Sequence[Mapping], correct: Mapping[float, Sequence[float]]) -> tuple[float, dict]:  # fmt: skip
    """:data:`SELECTION_RULE` over one arm's tuning ``points`` (``{"params": {"lr"}, "score"}``)
    with each lr's per-prompt DEV scores: (the lr, each lr's interval against the best). The
    smallest as good as the best, because a larger lr than needed is what removes RL's bf16
    sparsity (Gate III): the choice should not decide that prediction by going higher than
    the accuracy asks for."""
    lrs = sorted({float(p["params"]["lr"]) for p in points})
    score = {float(p["params"]["lr"]): float(p["score"]) for p in points}
    best = max(lrs, key=lambda lr: (score[lr], -lr))  # ties: the smaller lr
    ivs = {}
    for lr in lrs:
        iv = paired(items_a=correct[lr], items_b=correct[best], names=(f"{lr:g}", f"{best:g}"),
                    metric="dev_accuracy", headline=False).per_item  # fmt: skip
        ivs[f"{lr:g}"] = iv.to_dict()
    chosen = next(lr for lr in lrs if ivs[f"{lr:g}"]["hi"] >= 0)
    return chosen, {"best": best, "vs_best": ivs}


def _tune(cfg: ControlConfig, base: Path, splits: Splits, root: Path, memo: Memo,
          log) -> tuple[Tuning, dict]:  # fmt: skip
    """RL's and SFT's lr on ``base`` (:func:`fmlab.core.experiment.tune`: the same grid and
    widening for both; DEV stands in for the test prompts; seed ``tune_seed``), then
    :func:`select_lr`. Returns the tuning and the recipe the arms run with."""
    rows = {"train": list(splits["train"]), "test": list(splits["dev"])}
    correct: dict[str, dict[float, list]] = {"rl": {}, "sft": {}}

    def evaluate(arm: str, params: dict, _val) -> float:
        lr = float(params["lr"])

        def run() -> dict:
            sc = replace(cfg.study, model=str(base), rl_lr=lr, sft_lr=lr)
            r = _Study(sc, root / f"{arm}-lr{lr:g}", rows, log)(arm, _settings(sc, arm),
                                                                 cfg.tune_seed)  # fmt: skip
            log(f"tuning {arm} at lr {lr:g}: DEV accuracy {r['accuracy_before']:.3f} -> "
                f"{r['accuracy_after']:.3f}, bf16 sparsity {r['sparsity_bf16']:.3f}")  # fmt: skip
            return {"accuracy": r["accuracy_after"], "correct": r["correct_after"],
                    **{k: r.get(k) for k in ("accuracy_before", "sparsity_bf16", "nss")}}  # fmt: skip

        got = memo.get_or_compute(f"tune|{arm}|lr={lr!r}", run)
        correct[arm][lr] = got["correct"]
        return got["accuracy"]

    t = tune(["rl", "sft"], {"lr": list(cfg.lr_grid)}, evaluate, val=splits["dev"],
             scale={"lr": "log"}, context="control lr")  # fmt: skip
    chosen, why = {}, {}
    for arm in ("rl", "sft"):
        chosen[arm], why[arm] = select_lr(t.arms[arm].points, correct[arm])
        t.arms[arm].chosen = {"lr": chosen[arm]}  # the record's choice is the rule's, not argmax
    rl = chosen["rl"]
    recipe = {"rl_lr": rl, "sft_lr": chosen["sft"], "big_lr": rl * cfg.big_lr_factor,
              "lora_lr": rl * cfg.big_lr_factor, "steps": cfg.study.steps,
              "num_iterations": cfg.study.num_iterations}  # fmt: skip
    runs = {f"{arm}@{lr:g}": {k: v for k, v in memo.get(f"tune|{arm}|lr={lr!r}").items()
                              if k != "correct"}
            for arm in ("rl", "sft") for lr in sorted(correct[arm])}  # fmt: skip
    return t, {"recipe": recipe, "rule": SELECTION_RULE, "selection": why, "runs": runs,
               "dev_seed": cfg.tune_seed}  # fmt: skip


# -- effects and predictions -------------------------------------------------------------------


def _nanmean0(x: np.ndarray) -> np.ndarray:
    with warnings.catch_warnings():  # a tensor that changed in no seed stays nan
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(np.atleast_2d(x), axis=0)


def effect_items(main, other, pairs: Sequence[dict]) -> dict[str, np.ndarray]:
    """The four :data:`EFFECTS` of one base, per tensor (analyze's order): RL's per-seed values
    (``main``, arm ``rl``), SFT's (``other``, arm ``sft``) and the RL seed pairs' Jaccards
    (``pairs``), each difference taken per seed or pair, then averaged (nan where undefined)."""
    rl = lambda k: _per_item(main, "rl", k)  # noqa: E731
    rand = rl("per_tensor_overlap_random")
    nan = lambda v: np.nan if v is None else v  # noqa: E731
    jac = np.array([[nan(t["jaccard"]) - nan(t["jaccard_random"]) for t in p["tensors"]]
                    for p in pairs], dtype=float)  # fmt: skip
    return {
        "principal_avoidance": _nanmean0(rand - rl("per_tensor_overlap_principal")),
        "low_magnitude_preference": _nanmean0(rl("per_tensor_overlap_low") - rand),
        "drift_gap": _nanmean0(_per_item(other, "sft", "per_tensor_nss"))
        - _nanmean0(rl("per_tensor_nss")),
        "seed_consistency": _nanmean0(jac),
    }


def _names(main) -> list[str]:
    names = {tuple(main.values["rl"][s]["tensor_names"]) for s in main.seeds}
    if len(names) != 1:
        raise ValueError("the RL seeds' checkpoints hold different tensors")
    return list(names.pop())


def _judge(effects: dict[str, dict[str, np.ndarray]], names: dict[str, list[str]]):
    """(per-base effects with intervals and verdicts, the control's predictions, intervals)."""
    if names["long"] != names["short"]:
        raise ValueError("the two bases' checkpoints hold different tensors; the control "
                         "pairs them tensor by tensor")  # fmt: skip
    per_base, control = _Verdicts(), _Verdicts()
    for b in BASES:
        for e, items in effects[b].items():
            zero = np.where(np.isnan(items), np.nan, 0.0)
            per_base.add(f"{e} on the {b} base", items, zero, ("effect", "0"), +1,
                         definition=EFFECTS[e])  # fmt: skip
    for e in EFFECTS:
        control.add(f"{e}: weaker after short pretraining", effects["long"][e],
                    effects["short"][e], ("long", "short"), +1, headline=True,
                    definition=EFFECTS[e])  # fmt: skip
    by_base = {b: {e: per_base.preds[f"{e} on the {b} base"] for e in EFFECTS} for b in BASES}
    return by_base, control.preds, per_base.ivs + control.ivs


def _base_preconditions(main, other) -> dict:
    """The study's preconditions of one base's runs, plus whether RL had a learning signal
    there: the mean fraction of its training prompt groups with differing rewards, against the
    floor the study's signal probe asks of a base (``MIN_SIGNAL``). A base at 0% accuracy can
    pass "changed test accuracy" with a gain of a few prompts while GRPO saw almost no signal
    (this happened: +0.013 from 0, 10% of groups)."""
    out = _preconditions(main, other)
    sig = [v["train_signal_groups"] for v in main.values["rl"].values()]
    frac = float(np.mean(sig))
    out["rl had a learning signal"] = {
        "train_signal_groups": frac, "per_seed": sig, "min_fraction": MIN_SIGNAL,
        "verdict": "yes" if frac >= MIN_SIGNAL else f"no: {frac:.0%} of RL's prompt groups had "
        f"differing rewards (the study asks {MIN_SIGNAL:.0%} of a base)",
    }  # fmt: skip
    return out


GATES = ("rl changed test accuracy", "rl had a learning signal")


def _gate(preds: dict, pre: Mapping[str, Mapping]) -> dict:
    """The control's verdicts, read with its preconditions: where RL did not measurably change
    test accuracy on a base, or had almost no reward signal there, its geometry is of an update
    that taught (next to) nothing, and "weaker after short pretraining" would compare
    pretraining *and* how much RL learnt. The verdict then says so (the interval stays in the
    record)."""
    failed = {b: [g for g in GATES if pre[b].get(g, {}).get("verdict", "yes") != "yes"]
              for b in BASES}  # fmt: skip
    failed = {b: g for b, g in failed.items() if g}
    if not failed:
        return preds
    what = "; ".join(
        f"the {b} base fails {' and '.join(repr(x) for x in g)}" for b, g in failed.items()
    )
    why = (f"not tested: {what} (metrics.preconditions), so a difference would not be one of "
           "pretraining alone")  # fmt: skip
    return {k: {**v, "verdict": why, "verdict_of_the_interval": v["verdict"]} for k, v in preds.items()}  # fmt: skip


# -- the run -----------------------------------------------------------------------------------


def run_control(out_dir: str | Path, cfg: ControlConfig | None = None,
                log=log_stderr) -> ResultRecord:  # fmt: skip
    """Pretrain, choose the two bases, run the study's RL and SFT arms on each and write
    ``control.json`` (and its plots) in ``out_dir``; resumable (memos under ``.memo/``, runs
    under ``.control/<hash of the settings>/``)."""
    cfg = cfg or ControlConfig()
    before = torch.get_num_threads()
    torch.set_num_threads(cfg.study.threads)
    try:
        return _run(Path(out_dir), cfg, log)
    finally:
        torch.set_num_threads(before)


def control_base(out: str | Path, which: str = "long") -> tuple[Path, dict, Splits]:
    """A base the control chose (``long``: its plateau base), from ``<out>/control.json``: its
    directory, its entry in the record (with ``recipe``: the lrs the control tuned on DEV and
    its steps), and the control's checked splits rebuilt from the
    record's split parameters (the study's train/test, the pretraining sets and DEV), so a study
    on the base checks its prompts against what the base was pretrained on. Raises
    :class:`ControlError` naming what is missing and the command that makes it."""
    out = Path(out)
    rec = out / "control.json"
    make = f"fmlab rlvr-geometry bench --control --out {out}"
    if not rec.is_file():
        raise ControlError(f"no control record {rec}: run `{make}` first (it pretrains the base)")
    try:
        d = json.loads(rec.read_text())
        base = {**d["metrics"]["bases"][which], "recipe": dict(d["setup"]["recipe"]),
                "seeds_seen_in_design": list(d.get("seeds_seen_in_design", []))}  # fmt: skip
        step = int(base["step"])
        params, prose_seed = dict(d["splits"]["params"]), int(d["setup"]["pretrain_seed"])
    except (ValueError, KeyError, TypeError) as e:
        raise ControlError(
            f"{rec} has no {which} base or split parameters ({e}); rerun `{make}`"
        ) from None
    found = sorted(out.glob(f".control/*/pretrain/snapshots/step{step}"))
    found = [d for d in found if (d / "config.json").is_file()]
    if len(found) != 1:
        what = "none was found" if not found else f"{len(found)} were: {', '.join(map(str, found))}"
        raise ControlError(f"{rec} names the {which} base at step {step}, but {what} under "
                           f"{out}/.control; rerun `{make}`, or pass the base's directory as "
                           "--model")  # fmt: skip
    splits = _build_splits(params, prose_seed)[0]
    got = {n: v["digest"] for n, v in splits.summary()["splits"].items()}
    want = {n: v.get("digest") for n, v in d["splits"]["splits"].items()}
    if got != want:
        raise ControlError(f"the splits rebuilt from {rec} differ from the ones it records "
                           f"({', '.join(n for n in want if got.get(n) != want[n])}): the code "
                           f"that builds them changed since; rerun `{make}`")  # fmt: skip
    return found[0], base, splits


def _splits(cfg: ControlConfig) -> tuple[Splits, dict]:
    s = cfg.study
    params = {"digits": s.digits, "n_train": s.n_train, "n_test": s.n_test, "n_dev": cfg.n_dev,
              "n_val": cfg.n_pretrain_val, "stream_seed": cfg.stream_seed,
              "n_pretrain": cfg.n_pretrain}  # fmt: skip
    seeds = {"dev_seeds": (cfg.tune_seed,), "test_seeds": sorted({*s.rl_seeds, *s.other_seeds})}
    return _build_splits(params, cfg.pretrain_seed, **seeds)


def _build_splits(params: dict, prose_seed: int, **seeds) -> tuple[Splits, dict]:
    items = make_control_splits(seed=0, **params)
    prose = split_documents(prose_documents(), (0.9, 0.1), ("train", "val"), seed=prose_seed)
    texts = [d.text for docs in prose.values() for d in docs]
    return pretraining_splits(items, texts, seed=0, params=params, **seeds), prose


def _run(out: Path, cfg: ControlConfig, log) -> ResultRecord:
    splits, prose = _splits(cfg)
    key = {"cfg": asdict(cfg)}
    # every file of a run lives under a folder named by its settings, so a rerun with other
    # settings never resumes from (or reuses a base copied from) another run's files
    root = out / ".control" / content_hash(key)[:12]
    with Timer() as t:
        with splits.design("pretraining and the choice of the two bases (held-out pretraining "
                           "loss, DEV accuracy)"):  # fmt: skip
            pre = _Pretrain(cfg, root / "pretrain", splits, prose,
                            Memo(out / ".memo" / "control-pretrain.json", key=key), log)  # fmt: skip
            curve, choice, facts = pre.run()
            tuning, tuned = _tune(cfg, pre.snapshot_dir(choice.long), splits, root / "tune",
                                  Memo(out / ".memo" / "control-tune.json",
                                       key={**key, "base_step": choice.long}), log)  # fmt: skip
        recipe = replace(cfg.study, **tuned["recipe"])
        # nothing is tuned on the test prompts: they only score accuracy before and after
        splits.open_test("the bases are fixed (from the pretraining curve) before any arm runs")
        runs, effects, names = {}, {}, {}
        for b in BASES:
            step = getattr(choice, b)
            scfg = replace(recipe, model=str(pre.snapshot_dir(step)))
            study = _Study(scfg, root / b, splits, log)
            memo = Memo(out / ".memo" / f"control-{b}.json", key={**key, "base_step": step})
            main = run_arms({"rl": _settings(scfg, "rl")}, scfg.rl_seeds, study, memo, log=log)
            other = run_arms({"sft": _settings(scfg, "sft")}, scfg.other_seeds, study, memo,
                             log=log)  # fmt: skip
            pairs = _seed_pairs(scfg, main)
            runs[b] = (main, other, pairs)
            effects[b], names[b] = effect_items(main, other, pairs), _names(main)
    by_base, preds, ivs = _judge(effects, names)
    pre = {b: _base_preconditions(runs[b][0], runs[b][1]) for b in BASES}
    preds = _gate(preds, pre)
    rec = _record(out, replace(cfg, study=recipe), splits, curve, choice, facts, runs, by_base,
                  preds, ivs, tuning, tuned, pre)  # fmt: skip
    rec.wall_s = t.s
    write_record(rec, out / "control.json")
    return rec


def _curve_plot(path: Path, curve: list[dict], choice: BaseChoice) -> Path:
    plt = figure()
    fig, ax = plt.subplots(figsize=(7, 4))
    steps = [r["step"] for r in curve]
    for k, label in (("val_loss", "held-out pretraining text"),
                     ("val_loss_addition", "held-out additions"), ("val_loss_prose", "held-out prose"),
                     ("val_loss_answer", "held-out additions' answers")):  # fmt: skip
        if all(r.get(k) is not None for r in curve):
            ax.plot(steps, [r[k] for r in curve], marker="o", ms=3, label=label)
    ax.set_xlabel("pretraining step")
    ax.set_ylabel("loss (nats/token)")
    ax2 = ax.twinx()
    ax2.plot(
        steps, [r["dev_accuracy"] for r in curve], "k:s", ms=3, label="DEV accuracy (bf16, greedy)"
    )
    ax2.set_ylabel("DEV accuracy")
    ax2.set_ylim(0, 1)
    for step, name in ((choice.short, "short"), (choice.long, "long")):
        ax.axvline(step, color="grey", ls="--", lw=1)
        ax.annotate(f"{name} base ", (step, 0.98), xycoords=("data", "axes fraction"),
                    rotation=90, va="top", ha="right", fontsize=8)  # fmt: skip
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, fontsize=7, loc="center right")
    ax.set_title("the control's pretraining run")
    ax.grid(alpha=0.3)
    return save_figure(fig, plt, path)


def _record(out, cfg, splits, curve, choice, facts, runs, by_base, preds, ivs, tuning,
            tuned, pre) -> ResultRecord:  # fmt: skip
    summary = {b: {**runs[b][0].summary(), **runs[b][1].summary()} for b in BASES}
    row = {r["step"]: r for r in curve}
    bases = {b: {"step": getattr(choice, b), "dev_accuracy": row[getattr(choice, b)]["dev_accuracy"],
                 "val_loss": row[getattr(choice, b)]["val_loss"],
                 "accuracy_before": summary[b]["rl"]["accuracy_before"]["mean"]}
             for b in BASES}  # fmt: skip
    _curve_plot(out / "control_pretraining.png", curve, choice)
    plots = ["control_pretraining.png"]
    control_ivs = [p for p in ivs if p.headline]
    if control_ivs:
        interval_plot(out / "control_effects.png", control_ivs, "effect: long base − short base")
        plots.append("control_effects.png")
    s = cfg.study
    long_rule = (f"plateau at step {choice.long}" if choice.plateau
                 else f"no plateau by the step budget {choice.long}")  # fmt: skip
    return ResultRecord(
        method="rlvr_geometry",
        claim=CLAIM,
        setup={
            **asdict(cfg),
            "model_params": facts["params"],
            "arms": {"rl": _settings(s, "rl"), "sft": _settings(s, "sft")},
            "recipe": tuned["recipe"],
            "command": "fmlab rlvr-geometry bench --control",
        },
        metrics={
            **summary["long"]["rl"],
            "preconditions": pre,
            "predictions": preds,
            "effects": by_base,
            "bases": {
                **bases,
                "plateau_reached": choice.plateau,
                "rule": {
                    "long": f"first evaluation whose best {cfg.plateau_loss} over the last "
                    f"{cfg.plateau_evals} evaluations is within {cfg.plateau_tol:.0%} of the "
                    f"best before them, else the step budget {cfg.max_pretrain_steps}",
                    "short": f"first earlier evaluation with DEV accuracy >= {cfg.dev_floor:.0%}",
                },
            },
            "pretraining": {"curve": curve, **facts},
            "lr_selection": {k: v for k, v in tuned.items() if k != "recipe"},
            "by_base": summary,
            "jaccard_pairs": {
                b: [{k: v for k, v in p.items() if k != "tensors"} for p in runs[b][2]]
                for b in BASES
            },
            "peak_rss_mb": peak_rss_mb(),
        },
        baselines={
            f"{b}/{a}": summary[b][a] for b in BASES for a in summary[b] if (b, a) != ("long", "rl")
        },
        plots=plots,
        headline=["accuracy_after", "nss", "sparsity_bf16"],
        notes=[
            f"Bases from one pretraining run of a {facts['params'] / 1e6:.1f}M-parameter Llama "
            f"(not the study's SmolLM2): short = step {choice.short} (DEV accuracy "
            f"{bases['short']['dev_accuracy']:.3f}), long = step {choice.long} (DEV accuracy "
            f"{bases['long']['dev_accuracy']:.3f}; {long_rule}); both saved in bf16.",
            f"On each base: RL over seeds {list(s.rl_seeds)}, SFT at seeds {list(s.other_seeds)}, "
            f"{s.steps} optimizer steps each, the study's recipe; metrics are the long base's RL "
            "arm, baselines the other three.",
            "Predictions: per tensor, the effect on the long base minus that on the short one, "
            "paired bootstrap (95%) over tensors: "
            + "; ".join(f"{k}: {v['verdict']}" for k, v in preds.items()),
        ],
        **record_fields(splits, tuning, ivs),
    )


def quick(out_dir: str | Path) -> ResultRecord:
    """The control's pipeline on a tiny model in a few steps (claims nothing)."""
    return run_control(out_dir, ControlConfig.quick(), log=lambda *_: None)
