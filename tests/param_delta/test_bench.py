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
    # on the harness: the SFT questions and the held-out ones checked disjoint, an interval
    # (per question; one seed has no per-seed interval) behind each part of the claim
    assert d["splits"]["disjoint"] and set(d["splits"]["splits"]) == {"sft", "test"}
    assert len(d["intervals"]) == 4
    assert all(iv["per_item"]["n"] > 0 for iv in d["intervals"].values())
    assert "per_item_instruction" not in d["metrics"]
    for p in rec.plots:
        assert (tmp_path / p).read_bytes()[:4] == b"\x89PNG"

    # a rerun reuses the finished seed instead of training again
    said = []
    again = run_transfer(tmp_path / "again", cfg, log=said.append, resume_dir=tmp_path / "resume")
    assert any("reusing" in s for s in said)
    assert again.metrics["instruction_acc"] == rec.metrics["instruction_acc"]


def test_splits_hold_the_sft_questions_apart_from_the_test_ones():
    from fmlab.param_delta.bench import make_splits

    s = make_splits(0, (10, 11), 24, 0.6, "concise")
    assert s["sft"] and s["test"] and not set(s["sft"]) & set(s["test"])


def test_a_dev_seed_cannot_be_a_test_seed(tmp_path):
    from fmlab.core.experiment import SplitError

    with pytest.raises(SplitError, match="both dev and test"):
        run_transfer(tmp_path, TransferConfig(seeds=(0,), dev_seeds=(0, 1, 2)))
