"""The recipes shipped in the package are the ones the committed quality record says to ship:
per sparsity, the R-Sparse arm with the best test perplexity (protocol all), and TEAL-greedy."""

import json
from pathlib import Path

import pytest

from fmlab.rsparse.recipe import RECIPES_DIR, Recipe

RECORD = Path(__file__).parents[2] / "docs/results/rsparse/quality.json"
FAMILY = ("rsparse", "rsparse-uniform", "rsparse-uniform-a1")


def _record():
    if not RECORD.is_file():
        pytest.skip("no committed quality record")
    return json.loads(RECORD.read_text())


@pytest.mark.parametrize("pct", [30, 40, 50, 60, 70])
def test_shipped_recipes_follow_the_quality_record(pct):
    rec = _record()
    k = f"{pct / 100:g}"
    ppl = rec["metrics"]["ppl"]
    family = {a: ppl[a]["all"][k] for a in FAMILY if k in ppl.get(a, {}).get("all", {})}
    best = min(family, key=family.get)
    rs = Recipe.load(RECIPES_DIR / "smollm2-135m-instruct" / f"rsparse-{pct}.json")
    assert rs.method == "rsparse" and rs.weighted and rs.target == pytest.approx(pct / 100)
    assert rs.meta["shipped_from_arm"] == best
    assert rs.meta["test_ppl_all"] == pytest.approx(family[best])
    assert "looked at test" in rs.meta["shipped_because"]
    teal = Recipe.load(RECIPES_DIR / "smollm2-135m-instruct" / f"teal-{pct}.json")
    assert teal.method == "teal" and not teal.weighted
    assert teal.meta["shipped_from_arm"] == "teal-greedy"
    assert teal.meta["test_ppl_all"] == pytest.approx(ppl["teal-greedy"]["all"][k])
