import json

import pytest

from fmlab.core.results import (
    ResultRecord,
    bar_plot,
    grouped_bar_plot,
    line_plot,
    load_record,
    mean_std,
    render_report,
    write_record,
)


def _record(**kw):
    base = dict(
        method="demo_method",
        claim="Ours beats the baseline.",
        setup={"seeds": [0, 1, 2], "command": "fmlab x bench"},
        metrics={"acc": mean_std([0.8, 0.9, 0.85]), "tokens": 12},
        baselines={"baseline": {"acc": mean_std([0.5, 0.6, 0.55]), "tokens": 12}},
        wall_s=1.5,
    )
    return ResultRecord(**{**base, **kw})


def test_mean_std():
    s = mean_std([1.0, 2.0, 3.0])
    assert s["mean"] == 2.0 and s["std"] == pytest.approx(1.0) and s["n"] == 3
    assert mean_std([4.0])["std"] == 0.0
    with pytest.raises(ValueError):
        mean_std([])


def test_record_roundtrip_has_required_fields(tmp_path):
    p = write_record(_record(), tmp_path / "r.json")
    d = load_record(p)
    for k in ("method", "claim", "setup", "metrics", "baselines", "env", "wall_s"):
        assert k in d
    assert d["env"]["torch"] and d["env"]["cpu_count"] >= 1
    with pytest.raises(ValueError, match="claim"):
        write_record(_record(claim=""), tmp_path / "bad.json")
    assert not (tmp_path / "bad.json").exists()
    (tmp_path / "other.json").write_text(json.dumps({"x": 1}))
    with pytest.raises(ValueError, match="not a result record"):
        load_record(tmp_path / "other.json")


def test_plots_and_report(tmp_path):
    res = tmp_path / "results" / "demo_method"
    line_plot(
        res / "curve.png",
        [1, 2, 3],
        {"ours": [1, 2, 3], "base": [1, 1, 1]},
        "x",
        "y",
        errors={"ours": [0.1, 0.1, 0.1]},
    )
    bar_plot(res / "bars.png", {"ours": 2.0, "base": 1.0}, "tok/s", errors={"ours": 0.1})
    grouped_bar_plot(res / "groups.png", {"std": {"a": 1.0, "b": 0.5}, "ood": {"a": 0.7}},
                     "miou", errors={"std": {"a": 0.1}})  # fmt: skip
    assert (res / "curve.png").read_bytes()[:4] == b"\x89PNG"
    assert (res / "groups.png").read_bytes()[:4] == b"\x89PNG"
    write_record(_record(plots=["curve.png", "bars.png"], notes=["a caveat"]), res / "r.json")
    out = tmp_path / "report.md"
    text = render_report(tmp_path / "results", out)
    assert out.read_text() == text
    assert "| fmlab (ours) | 0.85 ± 0.05 | 12 |" in text
    assert "| baseline | 0.55 ± 0.05 | 12 |" in text
    assert "![curve.png](results/demo_method/curve.png)" in text
    assert "- a caveat" in text and "`fmlab x bench`" in text
    with pytest.raises(FileNotFoundError, match="no results directory; pass --results"):
        render_report(tmp_path / "missing")


def test_readme_results_table_is_generated_from_the_records():
    from pathlib import Path

    from fmlab.core.results import README_END, README_START, render_results_table

    root = Path(__file__).resolve().parents[2]
    text = (root / "README.md").read_text()
    current = text.split(README_START, 1)[1].split(README_END, 1)[0].strip()
    assert current == render_results_table(root / "docs" / "results", root).strip(), (
        "README results table is stale: run `fmlab report --readme README.md`"
    )


def test_doc_record_blocks_are_generated_from_the_records():
    from pathlib import Path

    from fmlab.core.results import update_doc_records

    root = Path(__file__).resolve().parents[2]
    for doc in sorted((root / "docs").glob("*.md")):
        assert update_doc_records(doc, write=False) == doc.read_text(), (
            f"{doc.name} has a stale record block: run `fmlab report --readme README.md`"
        )


def test_update_doc_records(tmp_path):
    from fmlab.core.results import update_doc_records

    write_record(_record(), tmp_path / "results" / "r.json")
    doc = tmp_path / "m.md"
    doc.write_text("intro\n<!-- record: results/r.json -->\nold\n<!-- /record -->\nend\n")
    text = update_doc_records(doc)
    assert (
        "old" not in text
        and "| fmlab (ours) | 0.85 ± 0.05 | 12 |" in text
        and text.endswith("end\n")
    )
    assert update_doc_records(doc) == text  # idempotent
