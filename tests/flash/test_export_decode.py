"""ExecuTorch decode with a static KV cache: the decode .pte's logits over a token-by-token
sequence match eager on a non-uniform arch (full, skip and window layers, per-layer KV heads),
its decode timing, too-long contexts refused, and the static-cache hook in the eager model."""

import pytest
import torch
from transformers import StaticCache

from fmlab.flash import FlashArch
from fmlab.flash.export import executorch_available, export_decode, measure_pte
from fmlab.flash.prune import prune

# window:3 is shorter than the 8 decoded steps, so the window mask is exercised; KV heads 1, 2
ARCH = FlashArch([0, 1, 3], [64, 176, 32], [1, 2, 2], ["full", "skip", "window:3"])
needs_et = pytest.mark.skipif(executorch_available() is not None, reason="ExecuTorch not installed")


def test_eager_static_cache_equals_no_cache(backbone, scores, calib):
    """transformers' StaticCache (fixed-length buffers, the decode export's cache) gives the
    no-cache logits, with a window layer decoded past its window."""
    p = prune(backbone, ARCH, scores=scores)
    x = calib[:1, :16]
    with torch.no_grad():
        full = p(x, use_cache=False).logits
        cache = StaticCache(config=p.config, max_cache_len=24)
        steps = [p(x[:, :6], cache=cache, use_cache=True).logits]
        for t in range(6, 16):
            steps.append(p(x[:, t : t + 1], cache=cache, use_cache=True).logits)
    torch.testing.assert_close(torch.cat(steps, 1), full, rtol=1e-5, atol=1e-5)


def test_context_beyond_the_static_cache_is_refused_before_work(backbone, scores, tmp_path):
    p = prune(backbone, ARCH, scores=scores)
    with pytest.raises(ValueError, match=r"positions 16 \.\. 17, but the static KV cache holds 8"):
        measure_pte(p, (), (16,), max_len=8, decode_tokens=2)
    with pytest.raises(ValueError, match="steps 9: the parity check needs 1 <= steps <= max_len 8"):
        export_decode(p, tmp_path / "d.pte", max_len=8, steps=9)
    with pytest.raises(ValueError, match="at least 1 position"):
        export_decode(p, tmp_path / "d.pte", max_len=0, check=False)
    assert not (tmp_path / "d.pte").exists()


PARITY = """
import json, sys, torch
from transformers import AutoModelForCausalLM
import fmlab.flash
from fmlab.flash.export import export_decode, run_pte_decode
m = AutoModelForCausalLM.from_pretrained(sys.argv[1]).eval()
rep = export_decode(m, sys.argv[2], max_len=10, steps=8)
ids = torch.tensor([[int(x) for x in sys.argv[3].split(",")]])
try:
    run_pte_decode(sys.argv[2], ids[:, :4], start=8)
    err = None
except ValueError as e:
    err = str(e)
print(json.dumps({"report": rep, "logits": run_pte_decode(sys.argv[2], ids).tolist(),
                  "error": err}))
"""


@pytest.mark.slow
@needs_et
def test_decode_pte_matches_eager_token_by_token(backbone, scores, tmp_path, run_script):
    """A saved non-uniform pick, loaded with AutoModel, exports its decode step in its own
    process (torchao stays out of this one): export's own check (8 steps vs eager no-cache
    logits, 1e-3), then other ids decoded through the .pte against eager logits computed here,
    and decoding past the static cache refused."""
    p = prune(backbone, ARCH, scores=scores)
    p.save_pretrained(tmp_path / "m")
    pte = tmp_path / "d.pte"
    ids = torch.randint(0, 97, (1, 10), generator=torch.Generator().manual_seed(9))
    out = run_script(PARITY, tmp_path / "m", pte, ",".join(map(str, ids[0].tolist())))
    rep = out["report"]
    assert rep["parity"] and rep["max_abs_diff"] <= 1e-3 and rep["steps"] == 8
    assert rep["max_len"] == 10 and pte.stat().st_size == rep["bytes"] > 0
    with torch.no_grad():
        ref = p(ids, use_cache=False).logits[0]  # (10, V): every position of a full cache
    torch.testing.assert_close(torch.tensor(out["logits"]), ref, atol=1e-3, rtol=0)
    assert "positions 8 .. 11, but the static KV cache holds 10" in out["error"]


TIMING = """
import json, sys
from transformers import AutoModelForCausalLM
import fmlab.flash
from fmlab.flash.export import measure_pte_many
m = AutoModelForCausalLM.from_pretrained(sys.argv[1]).eval()
print(json.dumps(measure_pte_many({"m": m}, (), (5,), repeats=3, warmup=1, decode_tokens=2)))
"""


@pytest.mark.slow
@needs_et
def test_decode_pte_timing_is_per_token_median(backbone, scores, tmp_path, run_script):
    """ExecuTorch decode at a tiny context: seconds per token = median of the timed calls over
    the tokens per call, as the eager measurement reports (one layer: a short lowering)."""
    p = prune(backbone, FlashArch([0], [64], [1], ["full"]), scores=scores)
    p.save_pretrained(tmp_path / "m")
    out = run_script(TIMING, tmp_path / "m")
    assert set(out["latency"]["m"]) == {"decode@5"} and out["decode_tokens"] == 2
    secs = out["timing"]["decode@5"]["arms"]["m"]["seconds"]
    assert len(secs) == 3 and all(s > 0 for s in secs)
    assert out["latency"]["m"]["decode@5"] == pytest.approx(sorted(secs)[1] / 2)
    assert out["latency"]["m"]["decode@5"] < 1.0  # a 1-layer, 64-wide model: far under 1 s
