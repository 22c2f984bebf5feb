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

__all__ = ["FIXED_PROMPTS", "lora_fidelity", "run_lora_record"]

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


def prompt_ids(model_dir: str | os.PathLike, vocab: int, n: int = 5, length: int = 12) -> list:
    """The fixed prompts through the model's tokenizer, or seeded random ids without one."""
    d = Path(model_dir)
    if (d / "tokenizer.json").is_file():
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(d)
        return [torch.tensor(tok(p)["input_ids"]) for p in FIXED_PROMPTS[:n]]
    g = torch.Generator().manual_seed(0)
    return [torch.randint(0, vocab, (length,), generator=g) for _ in range(n)]


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
    ref_logits = _logits(ref, prompts)
    del ref
    nb_logits = _logits(_load(new_dir), prompts)
    rows: dict = {
        "prompts": len(prompts),
        "tokens": sum(len(p) for p in prompts),
        "ref_max_abs_logit": max(float(x.abs().max()) for x in ref_logits),
        "new_base_vs_full_max_abs_logit_diff": max(
            float((a - b).abs().max()) for a, b in zip(nb_logits, ref_logits, strict=True)
        ),
        "by_rank": {},
    }
    for r in ranks:
        ad = work / f"lora_r{r}"
        with Timer() as t:
            m = extract_lora(post, base, ad, r, new_base=new_base, scale=scale)
        pm = PeftModel.from_pretrained(_load(new_dir), ad).eval()
        diff = max(
            float((a - b).abs().max())
            for a, b in zip(_logits(pm, prompts), ref_logits, strict=True)
        )
        rows["by_rank"][str(r)] = {
            **m["error_at_rank"],
            "max_abs_logit_diff": diff,
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
            "(seeded random ids without one)",
            "compare": "peft.PeftModel.from_pretrained(new base, adapter) vs the full ParamΔ model "
            "(param_delta output), float32, max |logit difference| over every position",
        },
        metrics={
            "max_abs_logit_diff": rows["by_rank"][top]["max_abs_logit_diff"],
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
