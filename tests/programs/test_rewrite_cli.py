"""``csc rewrite`` command-line errors: bad input gets the same precise errors as ``csc data``."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from csc.cli import app

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "rewrite"
runner = CliRunner()


def rewrite(*args: str):
    return runner.invoke(app, ["rewrite", *args])


def test_malformed_record_names_file_record_and_field(tmp_path):
    bad = json.loads((FIXTURES / "raw_en.json").read_text())
    bad[1]["log"][2] = {"from": "agent"}  # no body
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(bad))
    result = rewrite(
        "--data",
        str(path),
        "--mapping",
        str(FIXTURES / "raw_en.mapping.yaml"),
        "--out",
        str(tmp_path / "out"),
        "--lm",
        "local",
    )
    assert result.exit_code == 1
    assert "bad.json: record 2, field 'log[2].body': missing field" in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "out").exists()  # nothing ran


def test_unknown_speaker_and_missing_mapping(tmp_path):
    result = rewrite("--data", str(FIXTURES / "raw_en.json"), "--out", str(tmp_path / "o"))
    assert result.exit_code == 1 and "raw_en.json" in result.output
    result = rewrite(
        "--data",
        str(FIXTURES / "raw_en.json"),
        "--mapping",
        str(FIXTURES / "raw_zh.mapping.yaml"),
        "--out",
        str(tmp_path / "o"),
    )
    assert result.exit_code == 1 and "record 1, field 'messages'" in result.output


def test_bad_options_fail_cleanly(tmp_path):
    common = [
        "--data",
        str(FIXTURES / "raw_en.json"),
        "--mapping",
        str(FIXTURES / "raw_en.mapping.yaml"),
        "--out",
        str(tmp_path / "o"),
    ]
    # A choice flag: Click's usage error lists the allowed values.
    result = rewrite(*common, "--to", "csv")
    assert result.exit_code == 2 and "Invalid value for '--" in result.output
    result = rewrite(*common, "--format", "csv")  # the hidden alias the issue names
    assert result.exit_code == 2 and "Invalid value for '--" in result.output
    result = rewrite(*common, "--min-long-customer-share", "1.5")
    assert result.exit_code == 1 and "--min-long-customer-share" in result.output
    recipe = tmp_path / "r.yaml"
    recipe.write_text("rules:\n  max_turns: zero\n")
    result = rewrite(*common, "--recipe", str(recipe))
    assert result.exit_code == 1 and "--max-turns" in result.output
    result = rewrite(*common, "--labeler", str(tmp_path / "missing.json"))
    assert result.exit_code == 1 and "missing.json" in result.output


def test_help_lists_the_vocabulary():
    out = runner.invoke(app, ["rewrite", "--help"], env={"COLUMNS": "200"}).output
    for flag in (
        "--data",
        "--from",
        "--to",
        "--lang",
        "--concurrency",
        "--limit",
        "--lm",
        "--lm-rewriter",
        "--mapping",
        "--labeler",
        "--recipe",
    ):
        assert flag in out
    assert "--format" not in out
