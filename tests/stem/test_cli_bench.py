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
    assert rec.metrics["active_params"]["mean"] < rec.baselines["dense"]["active_params"]["mean"]
