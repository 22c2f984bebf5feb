"""The CLI, the method registry and docs/ agree; the core commands work."""

import importlib
import pkgutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

import fmlab
from fmlab.cli import app
from fmlab.registry import METHODS, get_method

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


def test_help_lists_core_and_every_method():
    res = runner.invoke(app, ["--help"])
    assert res.exit_code == 0
    for cmd in ("info", "demo", "report", *(m.name for m in METHODS)):
        assert cmd in res.output


def test_registry_cli_and_docs_agree():
    packages = {
        name for _, name, ispkg in pkgutil.iter_modules(fmlab.__path__) if ispkg and name != "core"
    }
    assert packages == {m.package.rsplit(".", 1)[-1] for m in METHODS}
    docs = {p.name for p in (ROOT / "docs").glob("*.md")} - {"core.md"}
    assert docs == {Path(m.doc).name for m in METHODS}
    readme = (ROOT / "README.md").read_text()
    for m in METHODS:
        assert importlib.import_module(f"{m.package}.cli").app is not None
        assert (ROOT / m.doc).is_file()
        assert m.doc in readme, f"README results table has no row linking {m.doc}"
        res = runner.invoke(app, [m.name, "--help"])
        assert res.exit_code == 0, res.output
    assert len({m.name for m in METHODS}) == len(METHODS)


def test_unknown_method_lists_choices():
    with pytest.raises(ValueError, match="unknown method 'nope'"):
        get_method("nope")
    res = runner.invoke(app, ["nope"])
    assert res.exit_code != 0


def test_info_reports_cache_and_bundled_model(monkeypatch, tmp_path):
    monkeypatch.setenv("FMLAB_CACHE", str(tmp_path))
    res = runner.invoke(app, ["info"])
    assert res.exit_code == 0, res.output
    assert str(tmp_path) in res.output and "smollm2-135m-instruct" in res.output


def test_report_on_missing_dir_fails_cleanly(tmp_path):
    res = runner.invoke(
        app, ["report", "--results", str(tmp_path / "none"), "--out", str(tmp_path / "r.md")]
    )
    assert res.exit_code == 2
    assert not (tmp_path / "r.md").exists()


@pytest.mark.slow
def test_demo_answers_and_reports_speed(smollm2, tmp_path):
    res = runner.invoke(app, ["demo", "--no-benches", "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert "Paris" in res.output
    assert "tokens/s" in res.output
