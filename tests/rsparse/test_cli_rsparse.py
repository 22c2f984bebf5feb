import json

import pytest
from typer.testing import CliRunner

from fmlab.cli import app

runner = CliRunner()


@pytest.mark.parametrize(
    "args,msg",
    [
        (["--method", "magic"], "unknown method"),
        (["--sparsity", "1.5"], "--sparsity must be in"),
        (["--protocol", "half"], "--protocol must be all or tail"),
        (["--text", "/nonexistent/t.txt"], "no such text file"),
        (["--recipe", "/nonexistent/r.json"], "no such recipe file"),
        (["--sparsity", "0.55"], "no shipped rsparse recipe"),
    ],
)
def test_eval_rejects_bad_input(args, msg):
    res = runner.invoke(app, ["rsparse", "eval", *args])
    assert res.exit_code != 0
    assert msg in res.output


def test_search_refuses_to_overwrite(tmp_path):
    out = tmp_path / "r.json"
    out.write_text("{}")
    res = runner.invoke(app, ["rsparse", "search", "--out", str(out)])
    assert res.exit_code != 0 and "already exists" in res.output
    assert out.read_text() == "{}"


@pytest.mark.slow
def test_eval_dense_on_a_text_file(smollm2, tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("The quick brown fox jumps over the lazy dog. " * 20)
    out = tmp_path / "r.json"
    res = runner.invoke(
        app,
        ["rsparse", "eval", "--method", "dense", "--text", str(text), "--max-tokens", "64",
         "--json", str(out)],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    rec = json.loads(out.read_text())
    assert rec["tokens"] == 63 and rec["protocol"] == "n/a" and rec["ppl"] < 50
