"""How faithful a LoRA-extracted delta is, by rank: a result record written by measurement.

For each rank r: the adapter from :func:`fmlab.param_delta.lora.extract_lora` is loaded with
``peft.PeftModel.from_pretrained`` onto the new base, and its logits on a fixed prompt set are
compared with the full ParamΔ model written by :func:`fmlab.param_delta.param_delta` from the
same inputs. Recorded per rank: relative Frobenius error of ΔW (from the SVD spectra), max
|logit difference|, and adapter size.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch

from fmlab.core.results import ResultRecord, Timer, write_record
from fmlab.param_delta.delta import param_delta
from fmlab.param_delta.lora import extract_lora

__all__ = ["FIXED_PROMPTS", "HELDOUT_PROMPTS", "lora_fidelity", "prompt_ids", "run_lora_record"]

FIXED_PROMPTS = (
    "The capital of France is",
    "def fibonacci(n):\n    ",
    "Question: What is 17 + 25?\nAnswer:",
    "Once upon a time, in a small village,",
    "<|im_start|>user\nName three colours.<|im_end|>\n<|im_start|>assistant\n",
)


def _load(path, dtype=torch.float32):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=dtype).eval()


@torch.no_grad()
def _logits(model, prompts: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    return [model(input_ids=p[None]).logits[0].float() for p in prompts]


# Prompts the record never states its fixed-prompt error on: the error it states must hold on
# text it did not see, so it is measured on these too.
HELDOUT_PROMPTS = (
    "The weather in the mountains changes quickly, so hikers",
    "import numpy as np\n\ndef mean(xs):\n    return",
    "Translate to French: good morning, my friend.",
    "<|im_start|>user\nWhat is 208 + 397?<|im_end|>\n<|im_start|>assistant\n<answer>",
    "A list of prime numbers: 2, 3, 5, 7, 11,",
    "In 1969, the first people to walk on the Moon",
    "Dear customer, thank you for your order. Unfortunately",
    "Q: Which is heavier, a kilogram of iron or a kilogram of feathers?\nA:",
)


def prompt_ids(
    model_dir: str | os.PathLike, vocab: int, n: int | None = None, length: int = 12,
    heldout: bool = False, seed: int = 0,
) -> list:  # fmt: skip
    """The fixed (or held-out) prompts through the model's tokenizer, or without one seeded
    random ids (held-out: another seed and varying lengths)."""
    texts = HELDOUT_PROMPTS if heldout else FIXED_PROMPTS
    n = len(texts) if n is None else n
    d = Path(model_dir)
    if (d / "tokenizer.json").is_file():
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(d)
        return [torch.tensor(tok(p)["input_ids"]) for p in texts[:n]]
    g = torch.Generator().manual_seed(seed + (1 if heldout else 0))
    lengths = torch.randint(4, 3 * length, (n,), generator=g).tolist() if heldout else [length] * n
    return [torch.randint(0, vocab, (k,), generator=g) for k in lengths]


def _diffs(a_logits, b_logits) -> tuple[float, float]:
    """(max, mean) |logit difference| over every position and vocabulary entry."""
    pairs = list(zip(a_logits, b_logits, strict=True))
    mx = max(float((a - b).abs().max()) for a, b in pairs)
    total = sum(float((a - b).abs().sum()) for a, b in pairs)
    return mx, total / sum(a.numel() for a, _ in pairs)


def lora_fidelity(
    post, base, new_base, ranks: Sequence[int], work: str | os.PathLike, scale: float = 1.0
) -> dict:
    """{rank: errors} for LoRA adapters of ``scale·(post − base)`` on ``new_base`` (dirs)."""
    from peft import PeftModel

    from fmlab.core.models import resolve_model_dir

    work = Path(work)
    new_dir = resolve_model_dir(str(new_base))
    full = work / "paramdelta_full"
    param_delta(
        post, base, new_base, full, scale=scale, hash_inputs=False, tokenizer_policy="allow"
    )
    ref = _load(full)
    prompts = prompt_ids(new_dir, ref.config.vocab_size)
    heldout = prompt_ids(new_dir, ref.config.vocab_size, heldout=True)
    ref_logits, ref_held = _logits(ref, prompts), _logits(ref, heldout)
    del ref
    nb = _load(new_dir)
    nb_max, nb_mean = _diffs(_logits(nb, prompts), ref_logits)
    nb_hmax, _ = _diffs(_logits(nb, heldout), ref_held)
    del nb
    rows: dict = {
        "prompts": len(prompts),
        "tokens": sum(len(p) for p in prompts),
        "heldout_prompts": len(heldout),
        "heldout_tokens": sum(len(p) for p in heldout),
        "ref_max_abs_logit": max(float(x.abs().max()) for x in ref_logits),
        "new_base_vs_full_max_abs_logit_diff": nb_max,
        "new_base_vs_full_mean_abs_logit_diff": nb_mean,
        "new_base_vs_full_heldout_max_abs_logit_diff": nb_hmax,
        "by_rank": {},
    }
    for r in ranks:
        ad = work / f"lora_r{r}"
        with Timer() as t:
            m = extract_lora(post, base, ad, r, new_base=new_base, scale=scale)
        pm = PeftModel.from_pretrained(_load(new_dir), ad).eval()
        diff, mean = _diffs(_logits(pm, prompts), ref_logits)
        hdiff, hmean = _diffs(_logits(pm, heldout), ref_held)
        rows["by_rank"][str(r)] = {
            **m["error_at_rank"],
            "max_abs_logit_diff": diff,
            "mean_abs_logit_diff": mean,
            "heldout_max_abs_logit_diff": hdiff,
            "heldout_mean_abs_logit_diff": hmean,
            "adapter_mb": m["adapter_bytes"] / 2**20,
            "extract_s": t.s,
            "left_out": m["left_out"],
        }
    return rows


def run_lora_record(
    out_dir: str | os.PathLike,
    post,
    base,
    new_base,
    ranks: Sequence[int] = (1, 4, 16, 64),
    delta_description: str = "",
    scale: float = 1.0,
    work: str | os.PathLike | None = None,
) -> ResultRecord:
    """Write ``lora.json``: reconstruction error by rank of the LoRA-extracted delta."""
    out = Path(out_dir)
    with Timer() as total, tempfile.TemporaryDirectory(prefix="fmlab-pd-lora-", dir=work) as tmp:
        rows = lora_fidelity(post, base, new_base, ranks, tmp, scale)
    top = str(max(ranks))
    rec = ResultRecord(
        method="param_delta",
        claim=(
            "A ParamΔ delta extracted as a rank-r PEFT LoRA adapter (per-tensor truncated SVD) "
            "loads with peft and reproduces the full ParamΔ model's logits within an error that "
            "falls with r."
        ),
        setup={
            "post": str(post),
            "base": str(base),
            "new_base": str(new_base),
            "scale": scale,
            "ranks": list(ranks),
            "delta": delta_description,
            "prompts": "fmlab.param_delta.lora_bench.FIXED_PROMPTS through the model's tokenizer "
            "(seeded random ids without one); heldout_*: HELDOUT_PROMPTS, measured the same way "
            "(the error on text the fixed prompts do not cover)",
            "compare": "peft.PeftModel.from_pretrained(new base, adapter) vs the full ParamΔ model "
            "(param_delta output), float32, max |logit difference| over every position",
        },
        metrics={
            "max_abs_logit_diff": rows["by_rank"][top]["max_abs_logit_diff"],
            "heldout_max_abs_logit_diff": rows["by_rank"][top]["heldout_max_abs_logit_diff"],
            "rel_frob_error_all": rows["by_rank"][top]["rel_frob_error_all"],
            **rows,
        },
        baselines={
            "new base alone (no delta)": {
                "max_abs_logit_diff": rows["new_base_vs_full_max_abs_logit_diff"]
            }
        },
        headline=["max_abs_logit_diff", "rel_frob_error_all"],
        notes=[
            f"Headline at the largest rank ({top}); by_rank has every rank.",
            "rel_frob_error_all counts the left-out tensors' whole delta as error; "
            "rel_frob_error_linear only the factorized matrices.",
        ],
    )
    rec.wall_s = total.s
    write_record(rec, out / "lora.json")
    return rec
