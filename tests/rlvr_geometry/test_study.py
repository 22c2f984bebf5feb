"""The RL-vs-SFT study: the rotation intervention preserves the function, the reward and the
splits are right, and the quick study runs end to end with verdicts resting on intervals."""

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from fmlab.core.models import build_model
from fmlab.rlvr_geometry.control import ControlError
from fmlab.rlvr_geometry.study import (
    StudyConfig,
    StudyError,
    last_int_reward,
    make_splits,
    rotate_value_output,
    row_key,
    run_study,
)


@pytest.mark.parametrize("kv", [4, 2])  # MHA and GQA (two query heads per value head)
def test_rotation_preserves_the_function_and_changes_the_weights(kv):
    model = build_model("llama-tiny", 50, seed=0, num_kv_heads=kv)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ids = torch.randint(0, 50, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = model(input_ids=ids).logits
    err = rotate_value_output(model, seed=3)
    with torch.no_grad():
        got = model(input_ids=ids).logits
    assert err < 1e-4 and (got - ref).abs().max() < 1e-4
    after = model.state_dict()
    for name in before:
        moved = not torch.equal(before[name], after[name])
        assert moved == ("v_proj" in name or "o_proj" in name), name


def test_last_int_reward():
    meta = [{"a": 38, "b": 35}] * 4
    comps = ["73", "38 + 35 = 73", "38 + 35 = 70", "the sum is 7,3"]
    assert last_int_reward(None, comps, meta=meta) == [1.0, 1.0, 0.0, 1.0]
    chat = [[{"role": "assistant", "content": "73"}]]
    assert last_int_reward(None, chat, meta=meta[:1]) == [1.0]


def test_splits_are_disjoint_and_seeded():
    s = make_splits(0, 2, 100, 40)
    assert len(s["train"]) == 100 and len(s["test"]) == 40
    assert not {r["prompt"] for r in s["train"]} & {r["prompt"] for r in s["test"]}
    # a + b and b + a are one item: no commuted pair across (or within) the splits
    keys = [row_key(r) for r in s["train"] + s["test"]]
    assert len(keys) == len(set(keys))
    assert s == make_splits(0, 2, 100, 40)
    with pytest.raises(ValueError, match="distinct"):
        make_splits(0, 1, 100, 40)


@pytest.mark.slow
def test_quick_study_end_to_end(tmp_path):
    torch.set_num_threads(1)
    rec = run_study(tmp_path, StudyConfig.quick(), log=lambda *_: None)
    d = json.loads((tmp_path / "study.json").read_text())
    assert d["splits"]["names"] if "names" in d["splits"] else d["splits"]
    preds = d["metrics"]["predictions"]
    for name, v in preds.items():
        assert v["verdict"].split()[0] in ("holds", "FAILS", "not", "undefined"), name
        if "lo" in v:  # a verdict with an interval agrees with it
            if v["verdict"] == "holds" or v["verdict"] == "FAILS":
                assert v["lo"] > 0 or v["hi"] < 0
            else:
                assert v["lo"] <= 0 <= v["hi"]
    assert set(d["baselines"]) == {"sft", "rl-rotated"}
    pre = d["metrics"]["preconditions"]  # measured before the verdicts are read
    assert {"rl changed test accuracy", "sft changed test accuracy",
            "stored rotated base scores like the base"} <= set(pre)  # fmt: skip
    for name in ("rl changed test accuracy", "sft changed test accuracy"):
        v = pre[name]
        assert (v["verdict"] == "yes") == (not v["lo"] <= 0 <= v["hi"]), name
    assert any(iv["a"] == "rl" and iv["b"] == "sft" for iv in d["intervals"].values())
    # the rotated arm starts from the rotated base, which is the same function as the base
    rot = json.loads(next((tmp_path / ".work").glob("rotation-*.json")).read_text())
    assert rot["max_logit_change"] < 1e-4
    assert np.isfinite(rec.metrics["nss"]["mean"])
    # compute fp32 (the default) emulates bf16 storage: the measured checkpoint is bf16 and
    # every stored value of the fp32 training copy is bf16-representable
    from fmlab.core.checkpoint import TensorSource

    rl = tmp_path / ".work" / "rl" / "seed0"
    stored, trained = TensorSource.open(rl / "stored"), TensorSource.open(rl / "model")
    for k in stored:
        a, b = stored.get(k), trained.get(k)
        assert a.dtype == torch.bfloat16 and b.dtype == torch.float32, k
        assert torch.equal(a.float(), b), k


def test_compute_must_be_fp32_or_bf16():
    with pytest.raises(ValueError, match="compute"):
        StudyConfig(compute="fp16")


def test_a_base_that_gives_grpo_no_signal_is_refused_before_any_arm(tmp_path):
    # the tiny random model never writes the right sum: every group's rewards are equal, so RL
    # would learn nothing; the probe says so and names the fix, and no arm or record is written
    cfg = replace(StudyConfig.quick(), reward="sum")
    with pytest.raises(StudyError, match=r"0 have differing rewards.*--model control"):
        run_study(tmp_path, cfg, log=lambda *_: None)
    assert not (tmp_path / "study.json").exists()
    assert not list((tmp_path / ".work").glob("rl*"))


def test_the_control_base_needs_the_control_record(tmp_path):
    with pytest.raises(ControlError, match="bench --control --out"):
        run_study(tmp_path, replace(StudyConfig.quick(), model="control"), log=lambda *_: None)
