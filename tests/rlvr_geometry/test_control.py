"""The short-pretrain control: the base-selection rule on fabricated curves, the run-time check
that the pretraining text holds no held-out prompt, and the quick control end to end (record,
bf16 bases, resume)."""

import json
from dataclasses import replace

import pytest
import torch
from safetensors import safe_open
from typer.testing import CliRunner

from fmlab.cli import app
from fmlab.core.experiment import SplitError
from fmlab.core.results import load_record
from fmlab.rlvr_geometry.control import (
    EFFECTS,
    ControlConfig,
    ControlError,
    choose_bases,
    make_control_splits,
    plateau_index,
    pretraining_splits,
    run_control,
)
from fmlab.rlvr_geometry.study import StudyConfig, make_splits, run_study


def _curve(losses, accs, every=50):
    return [{"step": every * (i + 1), "val_loss": v, "dev_accuracy": a}
            for i, (v, a) in enumerate(zip(losses, accs, strict=True))]  # fmt: skip


def test_plateau_rule_on_a_fabricated_curve():
    losses = [5.0, 3.0, 2.0, 1.5, 1.49, 1.488, 1.487]
    # k = 2: at index 5 the best of (1.49, 1.488) is within 1% of the best before them (1.5);
    # at index 4 the best of (1.5, 1.49) is not (the best before them is 2.0)
    assert plateau_index(losses, 2, 0.01) == 5
    assert plateau_index(losses, 1, 0.01) == 4  # 1.49 > 0.99 * 1.5
    assert plateau_index(losses, 2, 0.0) is None  # any improvement counts: never flat
    assert plateau_index(losses[:4], 2, 0.01) is None
    with pytest.raises(ControlError, match="diverged"):
        plateau_index([3.0, float("nan"), 2.0], 1, 0.01)


def test_choose_bases_picks_what_the_rule_says():
    losses = [5.0, 3.0, 2.0, 1.5, 1.49, 1.488, 1.487]
    accs = [0.0, 0.02, 0.06, 0.2, 0.3, 0.31, 0.32]
    c = choose_bases(_curve(losses, accs), k=2, tol=0.01, floor=0.05)
    assert (c.short, c.long, c.plateau) == (150, 300, True)  # first DEV >= 5%; the plateau
    c = choose_bases(_curve(losses, accs), k=2, tol=0.0, floor=0.05)
    assert (c.short, c.long, c.plateau) == (150, 350, False)  # no plateau: the step budget
    # the floor is met only at the plateau itself: no earlier checkpoint, an error
    late = [0.0, 0.0, 0.0, 0.0, 0.0, 0.4, 0.5]
    with pytest.raises(ControlError, match="no checkpoint before the long base"):
        choose_bases(_curve(losses, late), k=2, tol=0.01, floor=0.05)
    # the floor is inclusive
    c = choose_bases(_curve(losses, [0.0, 0.05, *accs[2:]]), k=2, tol=0.01, floor=0.05)
    assert c.short == 100
    # the plateau is judged on the named loss (the control's default: the answers' loss)
    rows = [{**r, "val_loss_answer": a} for r, a in
            zip(_curve(losses, accs), [2.0, 1.9, 1.8, 1.8, 0.5, 0.3, 0.299], strict=True)]  # fmt: skip
    assert choose_bases(rows, k=1, tol=0.01, floor=0.05).long == 250  # on val_loss
    c = choose_bases(rows, k=1, tol=0.01, floor=0.05, loss="val_loss_answer")
    assert (c.long, c.plateau) == (200, True)  # 1.8 flat before the drop: k = 1 is fooled
    c = choose_bases(rows, k=3, tol=0.01, floor=0.05, loss="val_loss_answer")
    assert (c.long, c.plateau) == (350, False)  # a wider window sees the drop


def test_answer_loss_scores_only_the_answer_tokens():
    from fmlab.core.models import build_model
    from fmlab.core.models.tokenizer import train_bpe_tokenizer
    from fmlab.rlvr_geometry.control import answer_loss

    rows = _items()["dev"][:4]
    tok = train_bpe_tokenizer([r["prompt"] for r in rows], 300, split_digits=True)
    model = build_model("llama-tiny", len(tok), seed=0).eval()
    got = answer_loss(model, tok, rows, batch_size=3)
    total, count = 0.0, 0
    for r in rows:  # one row at a time, no padding: the reply tokens after the chat prompt
        p = tok(tok.apply_chat_template([{"role": "user", "content": r["prompt"]}],
                                        add_generation_prompt=True, tokenize=False),
                add_special_tokens=False)["input_ids"]  # fmt: skip
        a = tok(r["answer"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=torch.tensor([p + a])).logits[0].float(), -1)
        total -= sum(float(logp[len(p) - 1 + i, t]) for i, t in enumerate(a))
        count += len(a)
    assert got == pytest.approx(total / count, rel=1e-5)


def test_select_lr_takes_the_smallest_lr_as_good_as_the_best():
    from fmlab.rlvr_geometry.control import select_lr

    n = 128
    hits = {1e-6: 90, 1e-5: 113, 1e-4: 115, 1e-3: 0}  # correct DEV prompts (nested sets)
    correct = {lr: [1.0] * k + [0.0] * (n - k) for lr, k in hits.items()}
    points = [{"params": {"lr": lr}, "score": k / n} for lr, k in hits.items()]
    lr, why = select_lr(points, correct)
    assert why["best"] == 1e-4 and lr == 1e-5  # 2 prompts fewer: inside the interval
    assert why["vs_best"]["1e-06"]["hi"] < 0  # 25 fewer: worse, so not chosen
    # nothing as good below the best: the best itself; a tie goes to the smaller lr
    correct[1e-5] = correct[1e-6]
    points[1]["score"] = 90 / n
    assert select_lr(points, correct)[0] == 1e-4
    correct[1e-3] = correct[1e-4]
    points[3]["score"] = 115 / n
    assert select_lr(points[2:], correct)[1]["best"] == 1e-4


def _items():
    return make_control_splits(seed=0, digits=2, n_train=40, n_test=20, n_dev=10, n_val=10,
                               stream_seed=1, n_pretrain=300)  # fmt: skip


def test_control_splits_take_the_study_splits_and_a_separate_stream():
    items = _items()
    study = make_splits(0, 2, 40, 20)
    assert items["train"] == study["train"] and items["test"] == study["test"]
    assert all(r["meta"]["a"] + r["meta"]["b"] == int(r["answer"]) for r in items["pretrain"])
    assert len(items["pretrain"]) == 300 and len(items["dev"]) == 10
    # a + b and b + a are one item: a held-out pair is pretrained on in neither order
    from fmlab.rlvr_geometry.study import row_key

    held = {row_key(r) for n in ("train", "test", "dev", "pretrain_val") for r in items[n]}
    assert not held & {row_key(r) for r in items["pretrain"]}
    assert len(held) == sum(len(items[n]) for n in ("train", "test", "dev", "pretrain_val"))
    from fmlab.core.data.tasks import AdditionTask

    assert all(AdditionTask.carries(r["meta"]["a"], r["meta"]["b"]) >= 1 for r in items["dev"])
    other = make_control_splits(seed=0, digits=2, n_train=40, n_test=20, n_dev=10, n_val=10,
                                stream_seed=2, n_pretrain=300)  # fmt: skip
    assert other["pretrain"] != items["pretrain"]  # the stream seed moves the pretraining pairs


def test_pretraining_text_is_checked_disjoint_from_the_test_prompts():
    prose = ["A paragraph of prose.", "Another one, with 38 + 35 in it."]
    s = pretraining_splits(_items(), prose, seed=0)
    assert s.summary()["disjoint"] and s.sealed == ("test",)
    with pytest.raises(SplitError, match="sealed"):
        s["test"]  # sealed until open_test
    planted = _items()
    planted["pretrain"] = [*planted["pretrain"], planted["test"][3]]
    with pytest.raises(SplitError, match="'test' and 'pretrain' share 1 items"):
        pretraining_splits(planted, prose, seed=0)
    leak = f"In the reference: {_items()['test'][0]['prompt']} The answer follows."
    with pytest.raises(SplitError, match="occur in the pretraining prose"):
        pretraining_splits(_items(), [*prose, leak], seed=0)


def test_control_config_rejects_what_it_cannot_run():
    with pytest.raises(ValueError, match="interventions"):
        ControlConfig(study=StudyConfig(model="the control's own bases"))
    with pytest.raises(ValueError, match="2 RL seeds"):
        ControlConfig(study=StudyConfig(model="the control's own bases", interventions=(),
                                        rl_seeds=(0,)))  # fmt: skip
    res = CliRunner().invoke(app, ["rlvr-geometry", "bench", "--control", "--arms", "peft"])
    assert res.exit_code == 2 and "--control" in res.output
    res = CliRunner().invoke(app, ["rlvr-geometry", "bench", "--model", "control", "--steps", "5"])
    assert res.exit_code == 2 and "tuned on DEV" in res.output
    with pytest.raises(ValueError, match="tune_seed not a test seed"):
        ControlConfig(tune_seed=0)


def _bf16_tensors(path) -> set:
    with safe_open(str(path / "model.safetensors"), "pt") as f:
        return {f.get_slice(k).get_dtype() for k in f.keys()}  # noqa: SIM118


@pytest.mark.slow
def test_quick_control_end_to_end_and_resumes(tmp_path):
    torch.set_num_threads(1)
    run_control(tmp_path, ControlConfig.quick(), log=lambda *_: None)
    d = load_record(tmp_path / "control.json")  # a valid record
    assert d["setup"]["command"] == "fmlab rlvr-geometry bench --control"
    preds = d["metrics"]["predictions"]
    assert {k.split(":")[0] for k in preds} == set(EFFECTS)
    for name, v in preds.items():
        assert v["tensors"] >= 2, name
        if v["verdict"].startswith("not tested"):  # a failed precondition, named
            assert "base fails 'rl " in v["verdict"] and "metrics.preconditions" in v["verdict"]
            v = {**v, "verdict": v["verdict_of_the_interval"]}
        if v["verdict"] in ("holds", "FAILS"):  # a verdict agrees with its interval
            assert v["lo"] > 0 or v["hi"] < 0, name
            assert (v["lo"] > 0) == (v["verdict"] == "holds"), name
        else:
            assert v["verdict"] == "not shown" and v["lo"] <= 0 <= v["hi"], name
        assert any(iv["a"] == "long" and iv["b"] == "short" and iv["metric"] == name
                   for iv in d["intervals"].values())  # fmt: skip
    assert set(d["metrics"]["effects"]) == {"long", "short"}
    bases = d["metrics"]["bases"]
    assert bases["short"]["step"] < bases["long"]["step"]
    curve = d["metrics"]["pretraining"]["curve"]
    assert [r["step"] for r in curve][-1] == bases["long"]["step"]
    assert {r["step"]: r["dev_accuracy"] for r in curve}[bases["short"]["step"]] == (
        bases["short"]["dev_accuracy"]
    )
    sp = d["splits"]
    assert sp["disjoint"] and sp["test_opened"] and sp["test_opened_after"] == sp["design_steps"]
    assert set(sp["splits"]) == {"train", "test", "dev", "pretrain_val", "pretrain"}
    assert set(d["baselines"]) == {"long/sft", "short/rl", "short/sft"}
    # the lrs were tuned on DEV (the tuning seed a dev seed), the same way for RL and SFT
    assert set(d["tuning"]["arms"]) == {"rl", "sft"} and d["seeds_seen_in_design"] == [100]
    recipe = d["setup"]["recipe"]
    assert recipe["rl_lr"] == d["setup"]["study"]["rl_lr"] == 1e-3  # the quick one-point grid
    assert set(d["metrics"]["lr_selection"]["runs"]) == {"rl@0.001", "sft@0.001"}
    for p in d["plots"]:
        assert (tmp_path / p).stat().st_size > 0
    (snaps,) = (tmp_path / ".control").glob("*/pretrain/snapshots")
    kept = sorted(p.name for p in snaps.iterdir())  # only the two bases are kept
    assert kept == sorted(f"step{bases[b]['step']}" for b in ("short", "long"))
    for name in kept:
        assert _bf16_tensors(snaps / name) == {"BF16"}
    # the study on the control's plateau base: its splits include what the base was
    # pretrained on (checked disjoint), and its record names the base and the signal probe
    study = run_study(tmp_path, replace(StudyConfig.quick(), model="control",
                                        interventions=()), log=lambda *_: None)  # fmt: skip
    s = study.setup
    assert s["control_base"]["path"] == str(snaps / f"step{bases['long']['step']}")
    assert {k: s[k] for k in recipe} == recipe  # the control's tuned recipe, not the default
    assert study.to_dict()["seeds_seen_in_design"] == [100]  # ... and the seed it was tuned at
    assert (
        s["model"] == s["control_base"]["path"]
        and s["control_base"]["step"] == bases["long"]["step"]
    )
    assert s["signal_probe"]["fraction"] >= s["signal_probe"]["min_fraction"]
    assert s["command"].startswith("fmlab rlvr-geometry bench --model control (rl and sft only")
    ssp = json.loads((tmp_path / "study.json").read_text())["splits"]
    assert ssp["disjoint"] and set(ssp["splits"]) == set(sp["splits"])
    assert ssp["splits"]["test"]["digest"] == sp["splits"]["test"]["digest"]
    # a rerun resumes every pretraining evaluation and every arm from the memos
    logs = []
    run_control(tmp_path, ControlConfig.quick(), log=logs.append)
    assert not any(m.startswith("pretrain step") for m in logs)
    assert sum("resumed" in m for m in logs) == 4  # rl and sft, on each base
    again = json.loads((tmp_path / "control.json").read_text())
    assert again["metrics"]["predictions"] == preds


def test_control_verdicts_wait_for_rl_to_have_learnt():
    from fmlab.rlvr_geometry.control import _gate

    preds = {"x: weaker after short pretraining": {"verdict": "FAILS", "lo": -2.0, "hi": -1.0}}
    ok = {"rl changed test accuracy": {"verdict": "yes"}}
    no = {"rl changed test accuracy": {"verdict": "not shown: ..."}}
    assert _gate(preds, {"long": ok, "short": ok}) == preds
    got = _gate(preds, {"long": ok, "short": no})["x: weaker after short pretraining"]
    assert got["verdict"].startswith("not tested") and "short base" in got["verdict"]
    assert got["verdict_of_the_interval"] == "FAILS" and got["lo"] == -2.0
    # a base where RL's accuracy moved by a few prompts but GRPO saw almost no reward signal
    weak = {**ok, "rl had a learning signal": {"verdict": "no: 10% of RL's prompt groups ..."}}
    got = _gate(preds, {"long": ok, "short": weak})["x: weaker after short pretraining"]
    assert got["verdict"].startswith("not tested") and "learning signal" in got["verdict"]


def test_learning_signal_precondition_reads_the_rl_runs(monkeypatch):
    from types import SimpleNamespace

    from fmlab.rlvr_geometry import control
    from fmlab.rlvr_geometry.study import MIN_SIGNAL

    def runs(*fracs):
        seeds = {i: {"train_signal_groups": f} for i, f in enumerate(fracs)}
        return SimpleNamespace(values={"rl": seeds})

    monkeypatch.setattr(control, "_preconditions", lambda main, other: {})
    key = "rl had a learning signal"
    low = control._base_preconditions(runs(0.14, 0.12, 0.03), None)[key]
    high = control._base_preconditions(runs(0.56, 0.5, 0.6), None)[key]
    assert low["verdict"].startswith("no") and low["min_fraction"] == MIN_SIGNAL
    assert low["train_signal_groups"] == pytest.approx(0.29 / 3)
    assert high["verdict"] == "yes"
