"""The core CLI commands: --version, framework show, lm show."""

from __future__ import annotations

from typer.testing import CliRunner

from csc import __version__
from csc.cli import app

runner = CliRunner()


def test_version() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert __version__ in result.output


def test_framework_show_csc_lists_12_strategies_in_5_stages() -> None:
    result = runner.invoke(app, ["framework", "show", "csc"])
    assert result.exit_code == 0, result.output
    assert "12 strategies in 5 stages" in result.output
    for code in ("GT", "IV", "RP", "PR", "EM", "PS", "ID", "RI", "FR", "RC", "AC", "OT"):
        assert f" {code} " in result.output
    assert result.output.count("Stage ") == 5


def test_framework_show_esc_in_chinese() -> None:
    result = runner.invoke(app, ["framework", "show", "esc", "--lang", "zh"])
    assert result.exit_code == 0, result.output
    assert "8 strategies in 3 stages" in result.output
    assert "情感反映" in result.output


def test_framework_show_unknown_is_an_error() -> None:
    result = runner.invoke(app, ["framework", "show", "nope.yaml"])
    assert result.exit_code == 1
    assert "not found" in result.output


def test_lm_show_uses_flags_over_environment(monkeypatch, tmp_path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CSC_LM", "openai/from-env")
    monkeypatch.setenv("CSC_LM_JUDGE", "openai/judge")
    result = runner.invoke(app, ["lm", "show", "--lm", "openai/from-flag"])
    assert result.exit_code == 0, result.output
    assert "supporter            openai/from-flag" in result.output
    assert "judge                openai/judge" in result.output
