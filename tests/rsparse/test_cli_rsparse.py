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


def test_a_model_folder_without_a_tokenizer_says_so(tmp_path):
    from fmlab.core.models import build_model

    build_model("llama-tiny", 64, seed=0).save_pretrained(tmp_path / "m")
    res = runner.invoke(
        app, ["rsparse", "eval", "--model", str(tmp_path / "m"), "--method", "teal-uniform"]
    )
    assert res.exit_code == 2 and "has no tokenizer" in res.output


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


@pytest.mark.slow
def test_search_save_and_eval_round_trip_on_a_local_model(tmp_path, bpe_tokenizer):
    from fmlab.core.models import build_model

    model_dir = tmp_path / "m"
    build_model("llama-tiny", len(bpe_tokenizer), seed=0).save_pretrained(model_dir)
    bpe_tokenizer.save_pretrained(model_dir)
    recipe, sparse = tmp_path / "r.json", tmp_path / "sp"
    res = runner.invoke(
        app,
        ["rsparse", "search", "--model", str(model_dir), "--sparsity", "0.5", "--out", str(recipe),
         "--save", str(sparse), "--generations", "1", "--population", "2"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    doc = json.loads(recipe.read_text())
    assert doc["target"] == 0.5 and len(doc["modules"]) == 14
    text = tmp_path / "t.txt"
    text.write_text("A short text to score, about the sea and the ships. " * 10)
    outs = {}
    for name, extra in {
        "saved": ["--sparse", str(sparse)],
        "recipe": ["--model", str(model_dir), "--recipe", str(recipe)],
    }.items():
        out = tmp_path / f"{name}.json"
        res = runner.invoke(
            app, ["rsparse", "eval", *extra, "--text", str(text), "--json", str(out)]
        )
        assert res.exit_code == 0, res.output
        outs[name] = json.loads(out.read_text())
    # the saved model and the recipe re-applied to the base model are the same sparse model
    assert outs["saved"]["ppl"] == pytest.approx(outs["recipe"]["ppl"], rel=1e-4)
    res = runner.invoke(app, ["rsparse", "eval", "--model", str(model_dir), "--text", str(text)])
    assert res.exit_code != 0 and "no shipped recipe" in res.output
    # every method of the record is reachable; a calibration text can be chosen, and one that
    # is too short for the calibration windows is named
    calib = tmp_path / "calib.txt"
    calib.write_text(" ".join(f"word{i} sea ship harbour" for i in range(2000)))
    for method in ("teal-uniform", "cats"):
        args = ["rsparse", "eval", "--model", str(model_dir), "--method", method,
                "--sparsity", "0.3", "--text", str(text), "--calib-text", str(calib)]  # fmt: skip
        res = runner.invoke(app, args)
        assert res.exit_code == 0, (method, res.output)
        assert json.loads(res.stdout.strip().splitlines()[-1])["ppl"] > 1
    short = tmp_path / "short.txt"
    short.write_text("too short")
    res = runner.invoke(app, ["rsparse", "eval", "--model", str(model_dir), "--method",
                              "teal-uniform", "--calib-text", str(short)])  # fmt: skip
    assert res.exit_code == 2 and str(short) in res.output and "fewer than" in res.output
