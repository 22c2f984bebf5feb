"""Reproduction of ParamΔ's claim on tiny models trained here, baselines in the same run.

Per seed:
1. Θ_base: pretrain a tiny Llama on prose + knowledge A (statements about invented entities).
2. Θ'_base: continue pretraining on prose + A + new knowledge B; checkpoints at several
   update distances (continued-pretraining steps) along one run.
3. Θ_post: SFT Θ_base in a chat format ("Answer: <value>") on questions about part of A.
4. Oracle Θ'_post: the same SFT applied to Θ'_base (what the paper compares against).
5. ParamΔ = Θ'_base + α(Θ_post − Θ_base), written by :func:`fmlab.param_delta.param_delta`.

Held-out evaluation in the chat format: ``instruction_acc`` on questions about A entities never
seen in SFT (instruction skill on known knowledge), ``new_knowledge_acc`` on questions about B
(knowledge only the update has), ``format_acc`` (reply is exactly "Answer: <word>").
``paramdelta_over_oracle`` is the ratio of the mean of the two accuracies (the paper reports
~95% of the oracle on average).
"""

from __future__ import annotations

import json
import math
import random
import re
import statistics
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from fmlab.core.cliutil import log as log_stderr
from fmlab.core.data import (
    Document,
    encode_chat_sft,
    make_fact_world,
    pack_documents,
    prose_documents,
    split_documents,
)
from fmlab.core.data.facts import Fact
from fmlab.core.evaluate import generate
from fmlab.core.experiment import ArmRuns, Splits, compare, format_delta, record_fields
from fmlab.core.io import Memo
from fmlab.core.models import build_model, train_bpe_tokenizer
from fmlab.core.results import ResultRecord, Timer, line_plot, mean_std, peak_rss_mb, write_record
from fmlab.core.train import BlockSampler, TensorSampler, TrainConfig, train
from fmlab.param_delta.delta import param_delta
from fmlab.param_delta.diagnose import diagnose

__all__ = ["TransferConfig", "quick", "run_transfer"]

CLAIM = (
    "ParamΔ (Θ'_base + Θ_post − Θ_base) gives the updated base the post-trained model's "
    "instruction skill with no training, reaching most of the oracle that redoes post-training "
    "on the updated base (paper: ~95%), while Θ_post lacks the new knowledge and Θ'_base the "
    "instruction skill."
)


@dataclass
class TransferConfig:
    # test seeds: fresh. The settings below (prompt style, update lr, SFT data) were designed
    # while looking at seeds 0-2, the seeds of the earlier records: they are dev seeds now.
    seeds: tuple[int, ...] = (10, 11, 12)
    dev_seeds: tuple[int, ...] = (0, 1, 2)
    n_entities: int = 48
    vocab: int = 1024
    model: str = "llama-small"
    seq_len: int = 128
    batch_size: int = 16
    pretrain_steps: int = 1000
    update_steps: tuple[int, ...] = (0, 250, 1000)  # update distances, along one continued run
    sft_steps: int = 150
    docs_per_entity: int = 8
    pretrain_lr: float = 3e-3
    sft_lr: float = 1e-3
    # continued pretraining of the update runs at the pretraining's final learning rate
    update_lr: float = 3e-4
    update_b_repeat: int = 2  # the new knowledge's documents appear this many times
    alphas: tuple[float, ...] = (0.0, 0.5, 1.0, 1.5)
    sft_fraction_of_a: float = 0.6  # A entities used for SFT; the rest are held out
    sft_prose_examples: int = 300  # generic concise-style examples from prose
    prose_chars: int = 30_000  # general text mixed into (continued) pretraining
    qa_text: bool = (
        False  # plain "Q:/A:" text about the SFT entities in pretraining (mixed training)
    )
    # "concise": completion-style post-training, "X lives in" -> " Lima." and stop (the default;
    # docs/param_delta.md says why); "question": chat template, "Where does X live?" -> "Answer: Lima"
    prompt_style: str = "concise"

    @classmethod
    def quick(cls) -> TransferConfig:
        return cls(
            seeds=(0,),
            dev_seeds=(),  # a smoke run on a dev seed: it claims nothing
            n_entities=24,
            pretrain_steps=150,
            update_steps=(0, 100),
            sft_steps=60,
            docs_per_entity=4,
            alphas=(0.0, 1.0),
        )


@dataclass
class _World:
    a_sft: list[Fact]
    a_held: list[Fact]
    b: list[Fact]
    prose_train: list[Document]
    docs_a: list[Document] = field(default_factory=list)
    docs_b: list[Document] = field(default_factory=list)


def _entity_docs(
    facts: list[Fact], per_entity: int, rng: random.Random, tag: str
) -> list[Document]:
    """Each entity's facts in random order and random paraphrases, ``per_entity`` times."""
    by_entity: dict[str, list[Fact]] = {}
    for f in facts:
        by_entity.setdefault(f.entity, []).append(f)
    docs = []
    for e, fs in sorted(by_entity.items()):
        for k in range(per_entity):
            order = rng.sample(fs, len(fs))
            text = " ".join(f.statement(rng.randrange(8)) for f in order)
            docs.append(Document(f"{tag}/{e}/{k}", text, "facts"))
    return docs


def _take_chars(docs: list[Document], n_chars: int) -> list[Document]:
    out, total = [], 0
    for d in docs:
        if total >= n_chars:
            break
        out.append(d)
        total += len(d.text)
    return out


def _world(cfg: TransferConfig, seed: int, with_docs: bool = True) -> _World:
    world = make_fact_world(cfg.n_entities, seed=seed)
    a, b = world.split((0.5, 0.5), seed=seed)
    a_ents = sorted({f.entity for f in a})
    rng = random.Random(seed)
    rng.shuffle(a_ents)
    n_sft = round(cfg.sft_fraction_of_a * len(a_ents))
    sft_ents = set(a_ents[:n_sft])
    w = _World(
        a_sft=[f for f in a if f.entity in sft_ents],
        a_held=[f for f in a if f.entity not in sft_ents],
        b=b,
        prose_train=_take_chars(
            split_documents(prose_documents(), seed=seed)["train"], cfg.prose_chars
        )
        if with_docs
        else [],
    )
    if not with_docs:
        return w
    w.docs_a = _entity_docs(a, cfg.docs_per_entity, rng, "A")
    w.docs_b = _entity_docs(b, cfg.docs_per_entity, rng, "B")
    if cfg.qa_text:
        # Question/answer text about the SFT entities only, as web text has: it teaches the model
        # that questions retrieve stored facts (Allen-Zhu & Li's mixed training), while the held-out
        # A entities and all of B are known only from statements.
        w.docs_a += [
            Document(f"QA/{f.entity}/{f.relation}/{k}", f"Q: {f.question()} A: {f.value}.", "qa")
            for f in w.a_sft
            for k in range(cfg.docs_per_entity // 2)
        ]
    return w


def make_splits(seed: int, seeds, n_entities: int, sft_fraction_of_a: float, prompt_style: str):
    """The one function owning the bench's questions: ``sft`` (the post-training questions,
    about 60% of the A entities) and ``test`` (held-out A questions and all B questions), per
    seed; items are ``(seed, prompt)`` so the disjointness check compares the questions."""
    del seed
    cfg = TransferConfig(n_entities=n_entities, sft_fraction_of_a=sft_fraction_of_a,
                         prompt_style=prompt_style)  # fmt: skip
    sft, test = [], []
    for s in seeds:
        w = _world(cfg, s, with_docs=False)
        sft += [(s, _prompt(f, prompt_style)) for f in w.a_sft]
        test += [(s, _prompt(f, prompt_style)) for f in w.a_held + w.b]
    return {"sft": sft, "test": test}


def _blocks(tok, docs: list[Document], seq_len: int, seed: int) -> torch.Tensor:
    docs = list(docs)
    random.Random(seed).shuffle(docs)
    return pack_documents(tok, docs, seq_len)


def _train_cfg(steps: int, lr: float, cfg: TransferConfig, seed: int) -> TrainConfig:
    return TrainConfig(
        steps=steps,
        batch_size=cfg.batch_size,
        lr=lr,
        warmup_steps=max(1, steps // 10),
        log_every=max(1, steps // 4),
        seed=seed,
        progress=False,
    )


STYLES = ("concise", "question")


def _prompt(f: Fact, style: str) -> str:
    if style == "concise":
        return f.prefix()
    if style == "question":
        return f.question()
    raise ValueError(f"unknown prompt_style {style!r}; choose one of: {', '.join(STYLES)}")


def _reply(f: Fact, style: str) -> str:
    """The reply post-training teaches: " value." then stop (concise) or "Answer: value" (question).

    In the concise style the value is generated in the same context as in pretraining, and the
    taught behaviour is to answer with exactly that word and end the turn, where a base model
    rambles on.
    """
    return f" {f.value}." if style == "concise" else f"Answer: {f.value}"


def _parse(style: str, out: str) -> str | None:
    """The value if ``out`` has exactly the taught format, else None."""
    pattern = r"([A-Za-z]+)\." if style == "concise" else r"Answer:\s*([A-Za-z]+)\.?"
    m = re.fullmatch(pattern, out.strip())
    return m.group(1) if m else None


def _prose_instructions(docs: list[Document], n: int, rng: random.Random) -> list[tuple[str, str]]:
    """Generic post-training data for the concise style: a prose fragment -> " next." + stop.

    Post-training data is broad, not about the facts: this teaches the behaviour on thousands
    of fragments, so it does not hinge on the few entities in the fact examples.
    """
    words = [w for d in docs for w in d.text.split()]
    pairs: list[tuple[str, str]] = []
    while len(pairs) < n:
        i = rng.randrange(len(words) - 16)
        k = rng.randint(3, 12)
        nxt = words[i + k]
        if nxt.isalpha():
            pairs.append((" ".join(words[i : i + k]), f" {nxt}."))
    return pairs


def _evaluate(model, tok, facts: list[Fact], style: str) -> dict[str, float]:
    """Greedy replies to each fact's prompt: format compliance and correct answers."""
    prompts = [_prompt(f, style) for f in facts]
    outs = generate(model, tok, prompts, max_new_tokens=10, chat=style == "question", batch_size=64)
    values = [_parse(style, o) for o in outs]
    right = [float(v == f.value) for f, v in zip(facts, values, strict=True)]
    return {
        "format": sum(v is not None for v in values) / len(facts),
        "correct": sum(right) / len(facts),
        "items": right,
    }


def _raw_knowledge(model, tok, facts: list[Fact]) -> float:
    """Plain-text completion of "X lives in" (no chat format): does the model hold the fact?"""
    outs = generate(
        model, tok, [f.prefix() for f in facts], max_new_tokens=4, chat=False, batch_size=64
    )
    return sum(
        re.findall(r"[A-Za-z]+", o)[:1] == [f.value] for f, o in zip(facts, outs, strict=True)
    ) / len(facts)


def _score(model, tok, w: _World, style: str) -> dict[str, float]:
    held = _evaluate(model, tok, w.a_held, style)
    new = _evaluate(model, tok, w.b, style)
    return {
        "instruction_acc": held["correct"],
        "new_knowledge_acc": new["correct"],
        "format_acc": (held["format"] * len(w.a_held) + new["format"] * len(w.b))
        / (len(w.a_held) + len(w.b)),
        "score": (held["correct"] + new["correct"]) / 2,
        "raw_new_knowledge_acc": _raw_knowledge(model, tok, w.b),
        # per held-out question, aligned across arms (the unit of the paired bootstrap)
        "per_item_instruction": held["items"],
        "per_item_new_knowledge": new["items"],
    }


def _load(path: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path).eval()


def _sft(src: Path, dst: Path, sft_data, cfg: TransferConfig, seed: int) -> Path:
    model = _load(src)
    res = train(
        model, TensorSampler(*sft_data, seed=seed), _train_cfg(cfg.sft_steps, cfg.sft_lr, cfg, seed)
    )
    res.raise_if_signalled("param-delta bench SFT")  # never save a half-trained model
    model.save_pretrained(dst)
    return dst


def _one_seed(cfg: TransferConfig, seed: int, work: Path, log) -> dict:
    w = _world(cfg, seed)
    tok = train_bpe_tokenizer(
        [d.text for d in w.prose_train + w.docs_a + w.docs_b], vocab_size=cfg.vocab
    )
    pre = _blocks(tok, w.prose_train + w.docs_a, cfg.seq_len, seed)
    upd = _blocks(
        tok, w.prose_train + w.docs_a + w.docs_b * cfg.update_b_repeat, cfg.seq_len, seed + 1
    )
    sft_pairs = [(_prompt(f, cfg.prompt_style), _reply(f, cfg.prompt_style)) for f in w.a_sft]
    if cfg.prompt_style == "concise":
        sft_pairs += _prose_instructions(w.prose_train, cfg.sft_prose_examples, random.Random(seed))
    sft_data = encode_chat_sft(tok, sft_pairs, chat=cfg.prompt_style == "question")
    times: dict[str, float] = {}

    with Timer() as t:
        model = build_model(cfg.model, len(tok), seed=seed)
        train(
            model,
            BlockSampler(pre, seed=seed),
            _train_cfg(cfg.pretrain_steps, cfg.pretrain_lr, cfg, seed),
        ).raise_if_signalled("param-delta bench pretraining")
        model.save_pretrained(work / "base")
        tok.save_pretrained(work / "base")
    times["pretrain_s"] = t.s
    log(f"seed {seed}: base pretrained ({t.s:.0f} s)")

    with Timer() as t:
        upd_cfg = _train_cfg(max(cfg.update_steps), cfg.update_lr, cfg, seed)
        for d in sorted(cfg.update_steps):  # one continued run, checkpointed at each distance
            train(
                model, BlockSampler(upd, seed=seed + 1), upd_cfg, work / "update_run", stop_at=d
            ).raise_if_signalled("param-delta bench update run")
            model.save_pretrained(work / f"new_base_{d}")
            tok.save_pretrained(work / f"new_base_{d}")
    times["update_s"] = t.s
    with Timer() as t:
        _sft(work / "base", work / "post", sft_data, cfg, seed)
        tok.save_pretrained(work / "post")
    times["sft_post_s"] = t.s
    log(f"seed {seed}: update and SFT done")

    post = _load(work / "post")
    out: dict = {"post": _score(post, tok, w, cfg.prompt_style), "distances": {}, "times": times}
    for d in cfg.update_steps:
        nb = work / f"new_base_{d}"
        row: dict = {"new_base": _score(_load(nb), tok, w, cfg.prompt_style)}
        with Timer() as t:
            _sft(nb, work / f"oracle_{d}", sft_data, cfg, seed)
        times[f"sft_oracle_{d}_s"] = t.s
        row["oracle"] = _score(_load(work / f"oracle_{d}"), tok, w, cfg.prompt_style)
        row["alpha"] = {}
        for a in cfg.alphas:
            dst = work / f"paramdelta_{d}_a{a}"
            with Timer() as t:
                param_delta(work / "post", work / "base", nb, dst, scale=a)
            times[f"merge_{d}_a{a}_s"] = t.s
            row["alpha"][str(a)] = _score(_load(dst), tok, w, cfg.prompt_style)
        diag = diagnose(work / "post", work / "base", nb)
        cos = [r["cosine"] for r in diag if r["cosine"] == r["cosine"]]  # NaN where Δ_update = 0
        ratio = [r["post_over_update"] for r in diag if math.isfinite(r["post_over_update"])]
        row["delta_cosine_median"] = statistics.median(cos) if cos else None
        row["delta_norm_ratio_median"] = statistics.median(ratio) if ratio else None
        out["distances"][str(d)] = row
        log(
            f"seed {seed} distance {d}: paramdelta {row['alpha'].get('1.0')} oracle {row['oracle']}"
        )
    return out


def _agg(per_seed: list[dict]) -> dict:
    """{metric: mean_std over seeds} for per-seed metric dicts (per-item lists left out)."""
    return {
        k: mean_std([s[k] for s in per_seed]) for k in per_seed[0] if not k.startswith("per_item")
    }


def _mean_std_defined(values) -> dict | None:
    """mean_std over the values that exist (None where undefined, e.g. Δ_update = 0)."""
    vals = [v for v in values if v is not None]
    return mean_std(vals) if vals else None


def _ratio(seed_result: dict, distance: str) -> float:
    """ParamΔ (α=1) score over the oracle's at one update distance."""
    row = seed_result["distances"][distance]
    return row["alpha"]["1.0"]["score"] / max(row["oracle"]["score"], 1e-9)


# arm -> where its scores are in a seed's result, at the reported (largest) update distance
ARMS = {
    "paramdelta": lambda r, far: r["distances"][far]["alpha"]["1.0"],
    "oracle": lambda r, far: r["distances"][far]["oracle"],
    "post": lambda r, far: r["post"],
    "new_base": lambda r, far: r["distances"][far]["new_base"],
}
# (a, b, metric, per-item list, headline): the claim's three parts, each with its interval
COMPARISONS = (
    ("paramdelta", "post", "new_knowledge_acc", "per_item_new_knowledge", True),
    ("paramdelta", "new_base", "instruction_acc", "per_item_instruction", True),
    ("paramdelta", "oracle", "instruction_acc", "per_item_instruction", False),
    ("paramdelta", "oracle", "new_knowledge_acc", "per_item_new_knowledge", False),
)


def run_transfer(
    out_dir: str | Path,
    cfg: TransferConfig | None = None,
    log=log_stderr,
    resume_dir: str | Path | None = None,
) -> ResultRecord:
    """Run every seed, write ``transfer.json`` and plots under ``out_dir``; return the record.

    With ``resume_dir``, each finished seed's results are kept there in a memo keyed by the
    config, so an interrupted run continues with the seeds it has not done. Built on
    :mod:`fmlab.core.experiment`: the post-training questions and the held-out questions are
    checked disjoint by content, paired per-seed and per-question intervals back every claimed
    difference, and the dev seeds (where the settings were designed) are in the record.
    """
    cfg = cfg or TransferConfig()
    out = Path(out_dir)
    splits = Splits.build(make_splits, seed=0, key=lambda it: it, seeds=cfg.seeds,
                          n_entities=cfg.n_entities, sft_fraction_of_a=cfg.sft_fraction_of_a,
                          prompt_style=cfg.prompt_style, dev_seeds=cfg.dev_seeds,
                          test_seeds=cfg.seeds)  # fmt: skip
    # nothing is tuned on these seeds (α = 1 is the paper's; the sweep is reported, not chosen)
    splits.open_test("no tuning: every arm is fixed before the run")
    memo = None
    if resume_dir is not None:
        key = {k: v for k, v in asdict(cfg).items() if k not in ("seeds", "dev_seeds")}
        memo = Memo(Path(resume_dir) / "transfer.json", key=json.loads(json.dumps(key)))
    results = []
    with Timer() as total:
        for seed in cfg.seeds:
            if memo is not None and f"seed{seed}" in memo:
                log(f"seed {seed}: reusing {memo.path}")
                results.append(memo.get(f"seed{seed}"))
                continue
            with tempfile.TemporaryDirectory(prefix="fmlab-paramdelta-") as tmp:
                results.append(_one_seed(cfg, seed, Path(tmp), log))
            if memo is not None:
                memo.put(f"seed{seed}", results[-1])
    far = str(max(cfg.update_steps))
    runs = ArmRuns({a: {} for a in ARMS}, list(cfg.seeds),
                   {a: {s: get(r, far) for s, r in zip(cfg.seeds, results, strict=True)}
                    for a, get in ARMS.items()})  # fmt: skip
    intervals = [compare(runs, a, b, m, items=items, headline=h)
                 for a, b, m, items, h in COMPARISONS]  # fmt: skip

    def arm(get) -> dict:
        return _agg([get(r) for r in results])

    ours = arm(lambda r: ARMS["paramdelta"](r, far))
    oracle = arm(lambda r: ARMS["oracle"](r, far))
    metrics = {
        **ours,
        "paramdelta_over_oracle": mean_std([_ratio(r, far) for r in results]),
        "delta_cosine_median": _mean_std_defined(
            r["distances"][far]["delta_cosine_median"] for r in results
        ),
        "delta_norm_ratio_median": _mean_std_defined(
            r["distances"][far]["delta_norm_ratio_median"] for r in results
        ),
        "by_distance": {
            d: {
                "paramdelta": arm(lambda r, d=d: r["distances"][d]["alpha"]["1.0"]),
                "oracle": arm(lambda r, d=d: r["distances"][d]["oracle"]),
                "paramdelta_over_oracle": mean_std([_ratio(r, d) for r in results]),
                "delta_cosine_median": _mean_std_defined(
                    r["distances"][d]["delta_cosine_median"] for r in results
                ),
                "delta_norm_ratio_median": _mean_std_defined(
                    r["distances"][d]["delta_norm_ratio_median"] for r in results
                ),
            }
            for d in map(str, cfg.update_steps)
        },
        "alpha_sweep": {
            a: arm(lambda r, a=a: r["distances"][far]["alpha"][a]) for a in map(str, cfg.alphas)
        },
        "per_seed": {
            a: {
                str(s): {k: v for k, v in runs.values[a][s].items() if not k.startswith("per_item")}
                for s in cfg.seeds
            }
            for a in ARMS
        },
        "times_s": {k: mean_std([r["times"][k] for r in results]) for k in results[0]["times"]},
        "peak_rss_mb": peak_rss_mb(),
    }
    baselines = {
        "oracle (SFT redone on Θ'_base)": oracle,
        "Θ_post (old instruct model)": arm(lambda r: r["post"]),
        "Θ'_base (updated base, no SFT)": arm(lambda r: r["distances"][far]["new_base"]),
    }
    plots = _plots(out, cfg, metrics, baselines)
    rec = ResultRecord(
        method="param_delta",
        claim=CLAIM,
        setup={
            **{k: list(v) if isinstance(v, tuple) else v for k, v in asdict(cfg).items()},
            "reported_distance": far,
            "data": "prose corpus (pydoc_data.topics) + invented entity facts (fmlab.core.data.facts), "
            "4 paraphrases per relation; SFT on 60% of A entities; evaluation on held-out A entities and on B",
            "command": " ".join(["fmlab", "param-delta", *sys.argv[2:]])
            if len(sys.argv) > 1
            else "run_transfer()",
        },
        metrics=metrics,
        baselines=baselines,
        plots=plots,
        headline=["instruction_acc", "new_knowledge_acc", "paramdelta_over_oracle"],
        notes=[
            "Ours = ParamΔ with α=1 at the largest update distance; every arm is measured in the same run on the same held-out questions.",
            "The base update is a checkpoint of one continued-pretraining run (stop/resume), so shorter distances are not annealed.",
            *[f"{p.a} − {p.b} ({p.metric}): {format_delta(p)}" for p in intervals],
        ],
        **record_fields(splits, None, intervals),
    )
    rec.wall_s = total.s
    write_record(rec, out / "transfer.json")
    return rec


def _plots(out: Path, cfg: TransferConfig, metrics: dict, baselines: dict) -> list[str]:
    names = []
    arms = {"ParamΔ (α=1)": metrics, **baselines}
    for key in ("instruction_acc", "new_knowledge_acc"):
        from fmlab.core.results import bar_plot

        bar_plot(
            out / f"arms_{key}.png",
            {k: v[key]["mean"] for k, v in arms.items()},
            key,
            f"{key} at update distance {max(cfg.update_steps)} (mean ± std, {len(cfg.seeds)} seeds)",
            errors={k: v[key]["std"] for k, v in arms.items()},
        )
        names.append(f"arms_{key}.png")
    sweep = metrics["alpha_sweep"]
    alphas = [float(a) for a in sweep]
    line_plot(
        out / "alpha_sweep.png",
        alphas,
        {
            k: [sweep[a][k]["mean"] for a in sweep]
            for k in ("instruction_acc", "new_knowledge_acc", "format_acc")
        },
        "α (scale of Θ_post − Θ_base)",
        "accuracy",
        "ParamΔ α sweep (largest update distance)",
        errors={
            k: [sweep[a][k]["std"] for a in sweep]
            for k in ("instruction_acc", "new_knowledge_acc", "format_acc")
        },
    )
    names.append("alpha_sweep.png")
    if len(cfg.update_steps) > 1:
        bd = metrics["by_distance"]
        ds = sorted(int(d) for d in bd)
        line_plot(
            out / "ratio_vs_distance.png",
            ds,
            {"ParamΔ / oracle": [bd[str(d)]["paramdelta_over_oracle"]["mean"] for d in ds]},
            "update distance (continued-pretraining steps)",
            "score ratio",
            "ParamΔ relative to the oracle vs update distance",
            errors={"ParamΔ / oracle": [bd[str(d)]["paramdelta_over_oracle"]["std"] for d in ds]},
        )
        names.append("ratio_vs_distance.png")
    return names


def quick(out_dir: str | Path) -> ResultRecord:
    """The ~1-minute version used by `fmlab demo` (one seed, tiny budgets: runs, claims nothing)."""
    return run_transfer(out_dir, TransferConfig.quick(), log=lambda *_: None)
