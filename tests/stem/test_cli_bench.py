"""`fmlab stem` CLI errors and the quick bench."""

import pytest
from typer.testing import CliRunner

from fmlab.cli import app

runner = CliRunner()


def test_edit_on_missing_model_exits_2(tmp_path):
    res = runner.invoke(
        app, ["stem", "edit", "--model", str(tmp_path / "nope"), "--source", "a", "--target", "b",
              "--out", str(tmp_path / "o")],
    )  # fmt: skip
    assert res.exit_code == 2
    assert not (tmp_path / "o").exists()


def test_bad_stem_layers_exits_2(tmp_path):
    res = runner.invoke(app, ["stem", "train", "--out", str(tmp_path), "--stem-layers", "x,y"])
    assert res.exit_code == 2


@pytest.mark.slow
def test_quick_bench_writes_record(tmp_path):
    from fmlab.stem.bench import quick

    rec = quick(tmp_path)
    assert (tmp_path / "stem.json").is_file()
    assert set(rec.baselines) == {"dense", "stem_half", "dense_wide"}
    assert any("identical logits: True" in n for n in rec.notes)
    assert rec.setup["held_out_check"]["statements_in_train"] == 0
    assert rec.setup["train_flops_per_token_over_dense"]["dense"] == 1.0
    assert rec.setup["train_flops_per_token_over_dense"]["stem_all"] < 1.0
    m = rec.metrics
    assert 0.0 <= m["edit_success_before"]["mean"] <= 1.0 and "edit_success_own" in m
    assert rec.metrics["active_params"]["mean"] < rec.baselines["dense"]["active_params"]["mean"]
    # every arm tuned with the same budget on val (dev seed), then run at its own choice
    t = rec.tuning
    assert set(t["chosen"]) == {"dense", "stem_half", "stem_all", "dense_wide"}
    for a in t["arms"].values():
        assert sum(p["phase"] == "grid" for p in a["points"]) == t["budget"]
        assert a["evaluated"] == t["budget"] + len(a["widened"])
    assert t["split"]["name"] == "val"
    for arm, chosen in t["chosen"].items():
        lr = chosen["lr"]
        got = rec.metrics["lr"] if arm == "stem_all" else rec.baselines[arm]["lr"]
        assert got["mean"] == lr
    assert rec.seeds_seen_in_design == [100]
    assert "test_prose" in str(rec.splits)


def test_test_splits_are_sealed_during_tuning():
    from fmlab.core.experiment import SealedSplitError, Splits
    from fmlab.stem.bench import make_splits

    splits = Splits.build(make_splits, seed=0, sealed=("test", "test_prose"), dev_seeds=(100,),
                          test_seeds=(0,), n_entities=4, docs_per_entity=1, prose_chars=2000)  # fmt: skip
    with splits.design("tuning"):
        for name in ("test_prose", "test"):
            with pytest.raises(SealedSplitError):
                splits[name]
    train, held = set(splits["train"]), set(splits.open_test()["test_prose"])
    assert held and not train & held


def test_held_out_check_refuses_a_trained_held_out_statement():
    from fmlab.stem.bench import held_out_check

    test = [{"entity": "Ana", "relation": "city", "value": "Oslo", "prompt": "Ana has a house in"}]
    ok = held_out_check(["Ana lives in Oslo.", "Bob has a house in Rome."], test)
    assert ok == {"test_items": 1, "statements_in_train": 0, "prompts_in_train": 0}
    with pytest.raises(ValueError, match="held-out test statements occur in the training text"):
        held_out_check(["Long ago Ana has a house in Oslo."], test)
