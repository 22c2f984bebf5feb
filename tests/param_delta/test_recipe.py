"""Several deltas in one pass from a recipe, against the in-memory formula."""

import json
import os

import pytest
import torch
import yaml
from safetensors.torch import load_file
from typer.testing import CliRunner

from fmlab.cli import app
from fmlab.core.models import build_model
from fmlab.param_delta import merge_state_dicts
from fmlab.param_delta.delta import MANIFEST
from fmlab.param_delta.recipe import RecipeError, load_recipe, run_recipe

V = 300


def _model(seed, eps=0.05):
    m = build_model("llama-tiny", V, seed=0)
    if seed:
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in m.parameters():
                p.add_(eps * torch.randn(p.shape, generator=g))
    return m


@pytest.fixture
def models(tmp_path):
    dirs = {}
    for name, seed in (("base", 0), ("base2", 4), ("post1", 1), ("post2", 2), ("new", 3)):
        dirs[name] = tmp_path / name
        _model(seed).save_pretrained(dirs[name])
    return dirs


def _sd(d):
    return load_file(str(d / "model.safetensors"))


def _recipe(tmp_path, models, fmt="yaml", **over):
    r = {
        "new_base": "new",  # relative to the recipe's folder
        "deltas": [
            {"post": "post1", "base": "base", "weight": 1.0},
            {"post": str(models["post2"]), "base": "base2", "weight": -0.5},
        ],
        **over,
    }
    p = tmp_path / f"recipe.{fmt}"
    p.write_text(yaml.safe_dump(r) if fmt == "yaml" else json.dumps(r))
    return p


@pytest.mark.parametrize("fmt", ["yaml", "json"])
def test_recipe_matches_in_memory_formula(tmp_path, models, fmt):
    m = run_recipe(_recipe(tmp_path, models, fmt), tmp_path / "out", chunk_bytes=700)
    out = _sd(tmp_path / "out")
    s = {k: _sd(d) for k, d in models.items()}
    expect = merge_state_dicts(
        [(s["post1"], s["base"], 1.0), (s["post2"], s["base2"], -0.5)], s["new"]
    )
    assert set(out) == set(expect) == set(s["new"])
    for k, t in out.items():
        formula = (
            s["new"][k]
            + 1.0 * (s["post1"][k] - s["base"][k])
            - 0.5 * (s["post2"][k] - s["base2"][k])
        )
        assert (t - formula).abs().max() <= 1e-6, k
        torch.testing.assert_close(t, expect[k], atol=1e-6, rtol=0)
    assert m["scale"] == [1.0, -0.5] and len(m["terms"]) == 2
    saved = json.loads((tmp_path / "out" / MANIFEST).read_text())
    assert saved["recipe"]["deltas"][1]["weight"] == -0.5


def test_recipe_cli_both_forms(tmp_path, models):
    p = _recipe(tmp_path, models, out="merged")
    r = CliRunner().invoke(app, ["param-delta", "merge-recipe", str(p)])
    assert r.exit_code == 0, r.output
    assert "2 deltas" in r.output and (tmp_path / "merged" / "model.safetensors").is_file()
    r = CliRunner().invoke(app, ["param-delta", "--recipe", str(p), "--out", str(tmp_path / "o")])
    assert r.exit_code == 0, r.output
    for k, t in _sd(tmp_path / "o").items():
        assert torch.equal(t, _sd(tmp_path / "merged")[k])


def test_recipe_errors_are_named_all_at_once(tmp_path, models):
    bad = {
        "new_bse": "new",
        "deltas": [{"post": "post1", "base": "base", "wieght": 1}, {"post": 3, "weight": "x"}],
    }
    p = tmp_path / "bad.json"
    p.write_text(json.dumps(bad))
    with pytest.raises(RecipeError) as ei:
        load_recipe(p)
    msg = str(ei.value)
    for words in (
        "unknown key 'new_bse'",
        "missing key 'new_base'",
        "deltas[0]: unknown key 'wieght'; valid keys: post, base, weight",
        "deltas[1]: 'post' must be",
        "deltas[1]: 'base' must be",
        "deltas[1]: 'weight' must be a finite number",
    ):
        assert words in msg, (words, msg)
    r = CliRunner().invoke(
        app, ["param-delta", "merge-recipe", str(p), "--out", str(tmp_path / "o")]
    )
    assert r.exit_code == 2 and "Traceback" not in r.output and "new_bse" in r.output
    (tmp_path / "bad.yaml").write_text("deltas: [unclosed")
    r = CliRunner().invoke(app, ["param-delta", "merge-recipe", str(tmp_path / "bad.yaml")])
    assert r.exit_code == 2 and "not valid YAML" in r.output
    assert not (tmp_path / "o").exists()


def test_recipe_checks_every_pair_against_the_new_base(tmp_path, models):
    build_model("llama-tiny", V, seed=0, intermediate_size=96).save_pretrained(tmp_path / "wide")
    p = tmp_path / "r.json"
    r = {
        "new_base": "new",
        "deltas": [{"post": "post1", "base": "base"}, {"post": "wide", "base": "base"}],
        "out": "o",
    }
    p.write_text(json.dumps(r))
    res = CliRunner().invoke(app, ["param-delta", "merge-recipe", str(p)])
    assert res.exit_code == 2 and "post[1]" in res.output and "intermediate_size" in res.output
    assert "o" not in os.listdir(tmp_path)
