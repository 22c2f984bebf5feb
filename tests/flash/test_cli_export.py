"""`fmlab flash` CLI (bad input exits 2 before any model loads; prune, measure, export) and
the ExecuTorch export's parity on a non-uniform pick."""

import json

import pytest
import torch
from typer.testing import CliRunner

from fmlab.cli import app
from fmlab.flash import FlashArch
from fmlab.flash.export import executorch_available
from fmlab.flash.prune import prune

runner = CliRunner()


@pytest.mark.parametrize(
    "arch, words",
    [
        ({"layers": [], "ffn": [], "kv_heads": []}, "keeps no layers"),
        ({"layers": [0], "ffn": 99999, "kv_heads": 3}, "exceed the backbone's 1536"),
        ({"layers": [0], "ffn": 64, "kv_heads": 4}, "KV heads [4] out of range"),
        ({"layers": [0], "ffn": 64, "kv_heads": 3, "attention": "sliding"}, "'sliding'"),
        ({"layers": [0], "ffn": 64}, "missing keys ['kv_heads']"),
    ],
)
def test_bad_arch_exits_2_with_the_reason(tmp_path, arch, words):
    f = tmp_path / "arch.json"
    f.write_text(json.dumps(arch))
    res = runner.invoke(app, ["flash", "prune", "--arch", str(f), "--out", str(tmp_path / "o")])
    assert res.exit_code == 2, res.output
    assert words in res.output.replace("\n", " ")
    assert not (tmp_path / "o").exists()


def test_missing_arch_file_and_bad_lists_exit_2(tmp_path):
    res = runner.invoke(app, ["flash", "prune", "--arch", str(tmp_path / "no.json"),
                              "--out", str(tmp_path / "o")])  # fmt: skip
    assert res.exit_code == 2 and "does not exist" in res.output
    res = runner.invoke(app, ["flash", "measure", "--prefill", "12,x"])
    assert res.exit_code == 2 and "comma-separated" in res.output


def test_cli_measure_a_saved_pruned_model(backbone, scores, tmp_path):
    p = prune(backbone, FlashArch([0, 2], [64, 32], [1, 2], ["skip", "window:4"]), scores=scores)
    p.save_pretrained(tmp_path / "m")
    res = runner.invoke(app, ["flash", "measure", "--model", str(tmp_path / "m"), "--prefill",
                              "8", "--decode", "8", "--repeats", "1", "--json"])  # fmt: skip
    assert res.exit_code == 0, res.output
    lat = json.loads(res.output.strip().splitlines()[-1])
    assert set(lat) == {"prefill@8", "decode@8"} and all(v > 0 for v in lat.values())


@pytest.mark.slow
@pytest.mark.skipif(executorch_available() is not None, reason="ExecuTorch not installed")
def test_nonuniform_pick_exports_to_pte_with_parity(backbone, scores, tmp_path, run_script):
    """A saved non-uniform pick (full, skip and window layers), loaded with AutoModel, exports
    to .pte in its own process (ExecuTorch's torchao stays out of the test process): export
    checks |logits_pte - logits_eager| <= 1e-3 on its ids, and the .pte's logits on other ids
    match eager ones computed here."""
    p = prune(backbone, FlashArch([0, 1, 3], [64, 176, 32], [1, 2, 1],
                                  ["full", "skip", "window:5"]), scores=scores)  # fmt: skip
    p.save_pretrained(tmp_path / "m")
    pte = tmp_path / "p.pte"
    ids = torch.randint(0, 97, (1, 12), generator=torch.Generator().manual_seed(9))
    out = run_script(EXPORT, tmp_path / "m", pte, ",".join(map(str, ids[0].tolist())))
    assert out["report"]["parity"] and out["report"]["max_abs_diff"] <= 1e-3
    assert pte.stat().st_size == out["report"]["bytes"] > 0
    with torch.no_grad():
        ref = p(ids, use_cache=False).logits[0]
    torch.testing.assert_close(torch.tensor(out["logits"]), ref, atol=1e-3, rtol=0)


EXPORT = """
import json, sys, torch
from transformers import AutoModelForCausalLM
import fmlab.flash
from fmlab.flash.export import export, run_pte
m = AutoModelForCausalLM.from_pretrained(sys.argv[1]).eval()
rep = export(m, sys.argv[2], seq_len=12)
ids = torch.tensor([[int(x) for x in sys.argv[3].split(",")]])
print(json.dumps({"report": rep, "logits": run_pte(sys.argv[2], ids)[0].tolist()}))
"""


def test_cli_fit_reports_cv_and_names_bad_rows(tmp_path):
    from .test_latency_search import _synthetic

    archs, lat = _synthetic(16, 2)
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps({"arch": a.to_dict(), "latency": m}) + "\n"
                            for a, m in zip(archs, lat, strict=True)))  # fmt: skip
    res = runner.invoke(app, ["flash", "fit", "--measurements", str(rows), "--out",
                              str(tmp_path / "lm.json"), "--kind", "linear"])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "prefill@128: R²" in res.output and (tmp_path / "lm.json").is_file()
    rows.write_text(rows.read_text() + '{"arch": {"layers": [0]}}\n')
    res = runner.invoke(app, ["flash", "fit", "--measurements", str(rows), "--out",
                              str(tmp_path / "lm2.json")])  # fmt: skip
    assert res.exit_code == 2 and "rows.jsonl:17" in res.output
