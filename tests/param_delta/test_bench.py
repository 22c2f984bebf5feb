import json

import pytest

from fmlab.param_delta.bench import TransferConfig, run_transfer


@pytest.mark.slow
def test_quick_transfer_bench_writes_a_complete_record(tmp_path):
    cfg = TransferConfig.quick()
    cfg.pretrain_steps, cfg.update_steps, cfg.sft_steps = 30, (0, 20), 10  # plumbing only
    rec = run_transfer(tmp_path, cfg, log=lambda *_: None, resume_dir=tmp_path / "resume")
    d = json.loads((tmp_path / "transfer.json").read_text())
    for key in ("instruction_acc", "new_knowledge_acc", "format_acc", "paramdelta_over_oracle"):
        assert key in d["metrics"] and 0.0 <= d["metrics"][key]["mean"] <= 10
    assert set(d["baselines"]) == {
        "oracle (SFT redone on Θ'_base)",
        "Θ_post (old instruct model)",
        "Θ'_base (updated base, no SFT)",
    }
    assert set(d["metrics"]["alpha_sweep"]) == {"0.0", "1.0"}
    for p in rec.plots:
        assert (tmp_path / p).read_bytes()[:4] == b"\x89PNG"

    # a rerun reuses the finished seed instead of training again
    said = []
    again = run_transfer(tmp_path / "again", cfg, log=said.append, resume_dir=tmp_path / "resume")
    assert any("reusing" in s for s in said)
    assert again.metrics["instruction_acc"] == rec.metrics["instruction_acc"]
