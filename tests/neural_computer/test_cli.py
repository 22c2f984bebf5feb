"""`fmlab nc` end to end on tiny sizes, and its errors (exit 2, naming the fix)."""

import json

from typer.testing import CliRunner

from fmlab.cli import app

runner = CliRunner()


def test_record_train_eval_gui(tmp_path):
    tr = tmp_path / "tr"
    res = runner.invoke(app, ["nc", "record", "--kind", "gui", "--out", str(tr), "--episodes", "1",
                              "--regimes", "goal,random-fast", "--frames", "30"])  # fmt: skip
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["nc", "train", "--traces", str(tr), "--out", str(tmp_path / "run"),
                              "--kind", "gui", "--dim", "32", "--layers", "1", "--heads", "2",
                              "--steps", "3", "--batch-size", "2", "--window", "2"])  # fmt: skip
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["nc", "eval", "--model", str(tmp_path / "run" / "model"),
                              "--traces", str(tr), "--json"])  # fmt: skip
    assert res.exit_code == 0, res.output
    r = json.loads(res.output[res.output.index("{") :])
    assert 0 <= r["cursor_acc"] <= 1 and "copy_cursor_acc" in r


def test_errors_exit_2(tmp_path):
    res = runner.invoke(app, ["nc", "record", "--out", str(tmp_path / "x"), "--families", "nope"])
    assert res.exit_code == 2 and "choose from" in res.output
    res = runner.invoke(
        app, ["nc", "eval", "--model", str(tmp_path / "m"), "--traces", str(tmp_path)]
    )
    assert res.exit_code == 2 and "fmlab nc train" in res.output
    (tmp_path / "empty").mkdir()
    res = runner.invoke(app, ["nc", "train", "--traces", str(tmp_path / "empty"),
                              "--out", str(tmp_path / "r")])  # fmt: skip
    assert res.exit_code == 2 and "fmlab nc record" in res.output
