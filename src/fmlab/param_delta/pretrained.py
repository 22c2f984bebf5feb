"""ParamΔ on a pretrained model: the bundled SmolLM2-135M-Instruct in float32.

Per seed (every model a full-parameter fine-tune in float32 unless ``lora_rank`` is set, in
which case each fine-tune is a LoRA merged back into full weights, said so in the record):

- Θ_base: the bundled model as it is.
- Θ_post: Θ_base fine-tuned on a verifiable skill (3-digit addition with carries, answered
  as ``<answer>N</answer>`` in the chat template; checked by ``AdditionTask.check``).
- Θ'_base: Θ_base continued-pretrained on new-knowledge text (statements about invented
  entities from ``fmlab.core.data.facts``: facts no pretrained model can know).
- Oracle: the same skill fine-tune applied to Θ'_base.
- ParamΔ = Θ'_base + (Θ_post − Θ_base), by :func:`fmlab.param_delta.param_delta`.

Every arm is scored on the same held-out items: ``skill_acc`` (right sum in the exact format)
and ``knowledge_acc`` (plain completion of "X lives in" with the new fact's value); ``score``
is their mean and ``paramdelta_over_oracle`` its ratio. Arms x seeds through
``core.experiment.run_arms`` over a ``Memo``, so an interrupted run resumes.
"""

from __future__ import annotations

import random
import re
import statistics
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from fmlab.core.cliutil import log as log_stderr
from fmlab.core.data import AdditionTask, Document, encode_chat_sft, make_fact_world, pack_documents
from fmlab.core.evaluate import generate
from fmlab.core.experiment import Splits, compare, record_fields, run_arms, t_interval
from fmlab.core.io import Memo, json_digest
from fmlab.core.results import ResultRecord, Timer, mean_std, write_record
from fmlab.core.train import BlockSampler, TensorSampler, TrainConfig, train
from fmlab.param_delta.delta import param_delta

__all__ = [
    "ARMS",
    "PretrainedConfig",
    "build_splits",
    "delta_geometry",
    "make_splits",
    "run_pretrained",
]

ARMS = ("paramdelta", "oracle", "post", "new_base", "base")
CLAIM = (
    "On a pretrained model (SmolLM2-135M), ParamΔ gives the continued-pretrained base the "
    "skill fine-tuned into the old base, close to the oracle that redoes the fine-tune, while "
    "keeping the new knowledge."
)


@dataclass
class PretrainedConfig:
    model: str = "smollm2-135m-instruct"  # the bundled model, or any local HF dir
    seeds: tuple[int, ...] = (0, 1, 2)  # test seeds: run once, for the record
    # The settings below were chosen on dev seed 100 (one probe: Θ_post reached skill 0.77
    # from 0, Θ'_base learned the facts); no test seed was looked at before the record.
    dev_seeds: tuple[int, ...] = (100,)
    n_entities: int = 40
    docs_per_entity: int = 6
    n_skill_train: int = 400
    n_eval: int = 60
    sft_steps: int = 150
    cpt_steps: int = 100
    batch_size: int = 8
    seq_len: int = 64  # continued-pretraining block length (the statements are ~7 tokens)
    sft_lr: float = 5e-5
    cpt_lr: float = 5e-5
    lora_rank: int | None = None  # None: full fine-tunes; else LoRA fine-tunes merged back

    @classmethod
    def quick(cls, model: str = "smollm2-135m-instruct") -> PretrainedConfig:
        return cls(
            model=model, seeds=(0,), n_entities=6, docs_per_entity=2, n_skill_train=16,
            n_eval=4, sft_steps=2, cpt_steps=2, batch_size=2, seq_len=64,
        )  # fmt: skip


def make_splits(seed: int, n_entities: int, n_skill_train: int, n_eval: int) -> dict:
    """The one function that owns this bench's data: skill train/test, new-knowledge facts."""
    rng = random.Random(seed)
    task = AdditionTask(digits=3, min_carries=1)
    seen: dict[str, object] = {}
    while len(seen) < n_skill_train + n_eval:  # distinct prompts: train and test never share one
        e = task.sample(rng)
        seen.setdefault(e.prompt, e)
    skill = list(seen.values())
    facts = make_fact_world(n_entities, seed=seed).facts
    return {
        "train": [{"prompt": e.prompt, "answer": e.answer, "meta": e.meta} for e in skill[n_eval:]],
        "test": [{"prompt": e.prompt, "answer": e.answer, "meta": e.meta} for e in skill[:n_eval]],
        # The probe is the trained sentence's own prefix (the first phrasing, the only one
        # trained): it asks whether a model holds the fact as it was written.
        "knowledge": [
            {
                "prompt": f.prefix(),
                "answer": f.value,
                "statement": f.statement(0),
                "fact": _fact_id(f),
            }
            for f in facts[: max(n_eval, 1)]
        ],
        # The same facts in a phrasing never trained (a diagnostic, not a headline metric).
        "knowledge_para": [
            {"prompt": f.prefix(1), "answer": f.value, "fact": _fact_id(f)}
            for f in facts[: max(n_eval, 1)]
        ],
        # The continued-pretraining text: one phrasing of every fact (repeated docs_per_entity
        # times by the sampler).
        "knowledge_text": [
            {"prompt": f"{f.entity}/{f.relation}/0", "text": f.statement(0), "fact": _fact_id(f)}
            for f in facts
        ],
    }


def _fact_id(f) -> str:
    return f"{f.entity}/{f.relation}"


def _split_key(item: dict) -> str:
    """What identifies an item for the disjointness check: the fact for knowledge items (so a
    probe of a trained fact counts as overlap however it is worded), the prompt otherwise."""
    return item.get("fact") or item["prompt"]


# The knowledge probes are the trained facts by design (counted in the record, not raised).
KNOWLEDGE_OVERLAP = (
    ("knowledge", "knowledge_text"),
    ("knowledge_para", "knowledge_text"),
    ("knowledge", "knowledge_para"),
)


def _dev_vs_test(cfg: PretrainedConfig) -> dict[str, int]:
    """The dev seeds' data (everything the design looked at) against each test seed's scored
    items: skill sums by prompt, facts by entity and relation. Raises on any shared item."""
    dev: list[dict] = []
    for sd in cfg.dev_seeds:
        d = make_splits(sd, cfg.n_entities, cfg.n_skill_train, cfg.n_eval)
        dev += [*d["train"], *d["test"], *d["knowledge_text"]]
    out = {}
    for sd in cfg.seeds:
        d = make_splits(sd, cfg.n_entities, cfg.n_skill_train, cfg.n_eval)
        sp = Splits({"dev_seed_data": dev, "test_seed_scored": [*d["test"], *d["knowledge"]]},
                    key=_split_key, sealed=())  # fmt: skip
        out[str(sd)] = sp.overlaps["dev_seed_data/test_seed_scored"]
    return out


def build_splits(cfg: PretrainedConfig, seed: int) -> Splits:
    """One seed's splits, checked: skill test sums never in the skill fine-tune, and every
    knowledge/knowledge-text overlap counted by fact."""
    return Splits.build(
        make_splits, seed=seed, key=_split_key, dev_seeds=tuple(cfg.dev_seeds),
        test_seeds=tuple(cfg.seeds), allow_overlap=KNOWLEDGE_OVERLAP,
        n_entities=cfg.n_entities, n_skill_train=cfg.n_skill_train, n_eval=cfg.n_eval,
    )  # fmt: skip


def _load(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def _fit(src, dst: Path, sampler, steps: int, lr: float, cfg: PretrainedConfig, seed: int):
    from fmlab.core.models import resolve_model_dir

    src_dir = resolve_model_dir(str(src))
    model = _load(src_dir).train()
    if cfg.lora_rank:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(
            model,
            LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_rank, target_modules="all-linear"),
        )
    tc = TrainConfig(
        steps=steps, batch_size=cfg.batch_size, lr=lr, warmup_steps=max(1, steps // 10),
        log_every=max(1, steps // 4), seed=seed, progress=False,
    )  # fmt: skip
    train(model, sampler, tc).raise_if_signalled("param-delta pretrained bench")
    if cfg.lora_rank:
        model = model.merge_and_unload()
    model.save_pretrained(dst)
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(src_dir).save_pretrained(dst)
    return dst


def _skill_hits(model, tok, items) -> list[float]:
    outs = generate(model, tok, [x["prompt"] for x in items], max_new_tokens=12, chat=True)
    task = AdditionTask(digits=3, min_carries=1)
    ok = [
        bool(m) and task.check(x["meta"], m.group(1))
        for x, m in (
            (x, re.fullmatch(r"\s*<answer>(-?\d+)</answer>\s*", o))
            for x, o in zip(items, outs, strict=True)
        )
    ]
    return [float(x) for x in ok]


def _knowledge_hits(model, tok, items) -> list[float]:
    outs = generate(model, tok, [x["prompt"] for x in items], max_new_tokens=4, chat=False)
    return [
        float(re.findall(r"[A-Za-z]+", o)[:1] == [x["answer"]])
        for x, o in zip(items, outs, strict=True)
    ]


def _ckpt_dir(cfg: PretrainedConfig, work: Path, seed: int, arm: str) -> Path:
    """Checkpoints live under a hash of everything that shapes them: a changed config trains
    anew instead of reusing stale models."""
    shaping = {k: v for k, v in asdict(cfg).items() if k not in ("seeds", "dev_seeds")}
    return work / f"models-{json_digest(shaping)}" / f"seed{seed}_{arm}"


@torch.no_grad()
def delta_geometry(base, post, new_base, oracle) -> dict[str, float]:
    """Whole-model geometry of the deltas (float64, tensor by tensor; names shared by all four).

    Δ_post = Θ_post − Θ_base (the skill), Δ_update = Θ'_base − Θ_base (the new knowledge),
    Δ_oracle = oracle − Θ'_base (the skill learned on the new base). Norms are Frobenius norms
    over every shared tensor; a cosine is Σ⟨a, b⟩ / (‖a‖‖b‖) over the whole model."""
    from fmlab.core.checkpoint import TensorSource

    srcs = [TensorSource.open(x) for x in (base, post, new_base, oracle)]
    names = [k for k in srcs[0] if all(k in s for s in srcs[1:])]
    acc = dict.fromkeys(("bb", "pp", "uu", "oo", "pu", "po"), 0.0)
    ratio_t, cos_t = [], []  # per tensor, as the tiny-model record's medians are
    for name in names:
        b, p, n, o = (s.get(name).to(torch.float64).reshape(-1) for s in srcs)
        dp, du, do = p - b, n - b, o - n
        tp, tu = float(dp.norm()), float(du.norm())
        if tp > 0 and tu > 0:
            ratio_t.append(tp / tu)
            cos_t.append(float(dp @ du) / (tp * tu))
        acc["bb"] += float(b @ b)
        acc["pp"] += float(dp @ dp)
        acc["uu"] += float(du @ du)
        acc["oo"] += float(do @ do)
        acc["pu"] += float(dp @ du)
        acc["po"] += float(dp @ do)
    nb, np_, nu, no = (acc[k] ** 0.5 for k in ("bb", "pp", "uu", "oo"))
    return {
        "tensors": len(names),
        "post_delta_over_base": np_ / nb,
        "update_delta_over_base": nu / nb,
        "cosine_post_update": acc["pu"] / (np_ * nu),
        "cosine_post_oracle": acc["po"] / (np_ * no),
        "oracle_delta_over_post_delta": no / np_,
        "post_over_update": np_ / nu,
        "post_over_update_median": statistics.median(ratio_t),
        "cosine_post_update_median": statistics.median(cos_t),
    }


def _models_for_seed(cfg: PretrainedConfig, seed: int, work: Path, log, d: dict) -> dict[str, Path]:
    """Train and merge one seed's models from its checked splits ``d``."""
    from transformers import AutoTokenizer

    from fmlab.core.models import resolve_model_dir

    base = resolve_model_dir(cfg.model)
    tok = AutoTokenizer.from_pretrained(base)
    pairs = [(x["prompt"], f"<answer>{x['answer']}</answer>") for x in d["train"]]
    sft = TensorSampler(*encode_chat_sft(tok, pairs, chat=True), seed=seed)
    docs = [Document(x["prompt"], x["text"], "facts") for x in d["knowledge_text"]]
    cpt = BlockSampler(pack_documents(tok, docs * cfg.docs_per_entity, cfg.seq_len), seed=seed)
    out = {"base": base}
    paths = {k: _ckpt_dir(cfg, work, seed, k) for k in ("post", "new_base", "oracle", "paramdelta")}
    if not paths["post"].is_dir():
        _fit(base, paths["post"], sft, cfg.sft_steps, cfg.sft_lr, cfg, seed)
    if not paths["new_base"].is_dir():
        _fit(base, paths["new_base"], cpt, cfg.cpt_steps, cfg.cpt_lr, cfg, seed)
    if not paths["oracle"].is_dir():
        _fit(paths["new_base"], paths["oracle"], sft, cfg.sft_steps, cfg.sft_lr, cfg, seed)
    if not paths["paramdelta"].is_dir():
        param_delta(paths["post"], base, paths["new_base"], paths["paramdelta"], hash_inputs=False)
    log(f"seed {seed}: models ready in {work}")
    return {**out, **paths}


def run_pretrained(
    out_dir: str | Path,
    cfg: PretrainedConfig | None = None,
    work: str | Path | None = None,
    log=log_stderr,
) -> ResultRecord:
    """Train, merge and score every arm at every seed; write ``pretrained_transfer.json``.

    ``work`` keeps the fine-tuned checkpoints and the memo, so a rerun resumes (default: a
    temporary directory, removed at the end)."""
    cfg = cfg or PretrainedConfig()
    out = Path(out_dir)
    tmp = None
    if work is None:
        tmp = tempfile.TemporaryDirectory(prefix="fmlab-pd-pretrained-")
        work = tmp.name
    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    memo = Memo(work / "memo.json", key={**asdict(cfg), "eval": 3}, log=log)  # 3: + paraphrase
    cache: dict[int, dict] = {}
    # Every seed's splits are built and checked before anything trains; the record keeps
    # each seed's digests and overlap counts.
    by_seed = {sd: build_splits(cfg, sd) for sd in (*cfg.dev_seeds, *cfg.seeds)}
    checked: dict[int, dict] = {}
    for sd in cfg.seeds:
        by_seed[sd].open_test()
        checked[sd] = {n: list(by_seed[sd][n]) for n in by_seed[sd].names}
    splits = by_seed[cfg.seeds[0]]
    dev_vs_test = _dev_vs_test(cfg)

    def evaluate(arm, _settings, seed):
        from transformers import AutoTokenizer

        if seed not in cache:
            with Timer() as built:
                cache[seed] = _models_for_seed(cfg, seed, work, log, checked[seed])
            if f"models_s/{seed}" not in memo:  # the training time, kept across resumes
                memo.put(f"models_s/{seed}", built.s)
        path = cache[seed][arm]
        d = checked[seed]
        model, tok = _load(path), AutoTokenizer.from_pretrained(path)
        sh, kh = _skill_hits(model, tok, d["test"]), _knowledge_hits(model, tok, d["knowledge"])
        ph = _knowledge_hits(model, tok, d["knowledge_para"])
        s, k = sum(sh) / len(sh), sum(kh) / len(kh)
        return {"skill_acc": s, "knowledge_acc": k, "score": (s + k) / 2, "skill_items": sh,
                "knowledge_items": kh, "knowledge_para_acc": sum(ph) / len(ph),
                "knowledge_para_items": ph}  # fmt: skip

    with Timer() as total:
        runs = run_arms(list(ARMS), cfg.seeds, evaluate, memo, log=log)
    summary = runs.summary()

    def over_oracle(metric: str) -> dict:
        """ParamΔ / oracle per seed, with a per-seed t interval of the ratio itself."""
        values = [
            p / max(o, 1e-9)
            for p, o in zip(
                runs.per_seed("paramdelta", metric), runs.per_seed("oracle", metric), strict=True
            )
        ]
        out = {**mean_std(values), "per_seed": values}
        if len(values) > 1:
            iv = t_interval(values)
            out["interval"] = {"lo": iv.lo, "hi": iv.hi, "level": iv.level, "method": iv.method}
        return out

    ratio, skill_ratio = over_oracle("score"), over_oracle("skill_acc")
    geometry = {}
    for sd in cfg.seeds:
        m = cache.get(sd) or _models_for_seed(cfg, sd, work, log, checked[sd])
        geometry[str(sd)] = delta_geometry(m["base"], m["post"], m["new_base"], m["oracle"])
    models_s = {str(sd): memo.get(f"models_s/{sd}") for sd in cfg.seeds}
    # Paired intervals: per seed (t) and per scored item (bootstrap; each seed has its own
    # sums and facts, so items are resampled on their own).
    pairs = [
        ("paramdelta", "oracle", "score", None, True),
        ("paramdelta", "oracle", "skill_acc", "skill_items", True),
        ("paramdelta", "oracle", "knowledge_acc", "knowledge_items", True),
        ("paramdelta", "post", "skill_acc", "skill_items", False),
        ("paramdelta", "new_base", "knowledge_acc", "knowledge_items", False),
        ("paramdelta", "new_base", "knowledge_para_acc", "knowledge_para_items", False),
        # "neither parent has both": each parent against ParamΔ on what it lacks
        ("paramdelta", "post", "knowledge_acc", "knowledge_items", False),
        ("paramdelta", "new_base", "skill_acc", "skill_items", False),
    ]
    intervals = (
        [
            compare(runs, a, b, m, items=it, headline=h, items_across_seeds="distinct")
            for a, b, m, it, h in pairs
        ]
        if len(cfg.seeds) > 1
        else []
    )
    rec = ResultRecord(
        method="param_delta",
        claim=CLAIM,
        setup={
            **{k: list(v) if isinstance(v, tuple) else v for k, v in asdict(cfg).items()},
            "fine_tunes": f"LoRA (rank {cfg.lora_rank}, all linear layers) merged into full weights"
            if cfg.lora_rank
            else "full-parameter, float32",
            "skill": "3-digit addition with a carry, chat template, reply <answer>N</answer>",
            "new_knowledge": "statements about invented entities (fmlab.core.data.facts)",
            "command": "fmlab param-delta pretrained-bench",
            "train_and_merge_s_per_seed": models_s,  # None: built by an earlier run's memo
            "delta_geometry_per_seed": geometry,
            "dev_seed_data_vs_test_items_shared": dev_vs_test,  # checked: 0, or it raised
            "split_checks_per_seed": {
                str(sd): {
                    "digests": {n: v["digest"][:16] for n, v in sm["splits"].items()},
                    "overlaps": sm["overlaps"],
                }
                for sd, sm in ((sd, by_seed[sd].summary()) for sd in by_seed)
            },
        },
        metrics={
            **summary["paramdelta"],
            "paramdelta_over_oracle": ratio,
            "skill_over_oracle": skill_ratio,
        },
        baselines={
            "oracle (skill SFT on Θ'_base)": summary["oracle"],
            "Θ_post (skill SFT on Θ_base)": summary["post"],
            "Θ'_base (continued pretraining)": summary["new_base"],
            "Θ_base (bundled model)": summary["base"],
        },
        headline=["skill_acc", "knowledge_acc", "paramdelta_over_oracle"],
        notes=[
            "Every arm is scored on the same held-out sums and the same new facts per seed.",
            "skill test sums are disjoint from the skill fine-tune's, checked at run time for "
            "every seed (dev and test; split_checks_per_seed). The knowledge items are the "
            "continued-pretraining facts themselves by design, keyed by fact so the overlap is "
            "counted (knowledge/knowledge_text = every probed fact): the probe is the trained "
            "sentence's own prefix, so knowledge_acc asks whether a model holds the new facts "
            "as written, not whether it generalizes. knowledge_para_acc asks the same facts in "
            "a phrasing never trained (a diagnostic).",
            "The continued-pretraining text is one phrasing per fact, repeated docs_per_entity "
            "times.",
            "wall_s is this invocation's time; train_and_merge_s_per_seed is the time to build "
            "each seed's four models (kept in the memo across resumes).",
            f"Settings chosen on dev seeds {list(cfg.dev_seeds)}; test seeds {list(cfg.seeds)} "
            "were run once, for this record.",
        ],
        **record_fields(splits, None, intervals),
    )
    rec.wall_s = total.s
    write_record(rec, out / "pretrained_transfer.json")
    if tmp is not None:
        tmp.cleanup()
    return rec
