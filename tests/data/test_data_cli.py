"""``csc data convert`` and ``csc data validate`` through typer's CliRunner."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

from typer.testing import CliRunner

from csc.cli import app

SAMPLES = Path(str(resources.files("csc.data") / "samples"))
FIXTURES = Path(__file__).parents[1] / "fixtures" / "data"
runner = CliRunner()


def _run(*args: str):
    return runner.invoke(app, ["data", *args])


def test_validate_prints_summary():
    result = _run("validate", str(SAMPLES / "sample_zh.json"))
    assert result.exit_code == 0, result.output
    out = result.output
    assert "valid (csc framework)" in out
    assert "dialogues                   8" in out
    assert "Emotion Management" in out and "情感管理" in out
    assert "账户和交易管理" in out
    assert "turns per dialogue          min 11" in out


def test_validate_json_counts_match_the_file():
    result = _run("validate", str(SAMPLES / "sample_en.json"), "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    records = json.loads((SAMPLES / "sample_en.json").read_text(encoding="utf-8"))
    turns = [t for r in records for t in r["dialogue"]]
    assert report["dialogues"] == len(records)
    assert report["turns"] == len(turns)
    assert report["supporter_turns"] == sum(t["speaker"] == "客服" for t in turns) >= 45
    assert report["customer_turns"] == sum(t["speaker"] == "客户" for t in turns)
    counts = {s["code"]: s["count"] for s in report["strategies"]}
    assert len(counts) == 12 and all(counts.values())  # the sample uses every strategy
    assert counts["GT"] == len(records)  # every dialogue opens with a greeting
    assert sum(counts.values()) == report["supporter_turns"]
    assert set(report["topics"]) >= {"Product consultation", "Marketing and promotions"}
    per = report["turns_per_dialogue"]
    assert 8 <= per["min"] <= per["mean"] <= per["max"] <= 16


def test_validate_reports_malformed_input(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(
        json.dumps([{"dialogue": [{"speaker": "客服", "strategy": "策略42", "text": "hi"}]}]),
        encoding="utf-8",
    )
    result = _run("validate", str(bad))
    assert result.exit_code == 1
    assert f"{bad}: record 1, field 'dialogue[0].strategy'" in result.output
    assert "unknown strategy label" in result.output


def test_validate_generic_with_mapping():
    result = _run(
        "validate",
        str(FIXTURES / "esconv_tiny.json"),
        "--mapping",
        "esconv",
        "--framework",
        "esc",
        "--json",
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["framework"] == "esc" and report["dialogues"] == 2
    assert report["non_alternating_dialogues"] == 1  # ESConv allows consecutive supporter turns
    assert {s["code"]: s["count"] for s in report["strategies"]}["PS"] == 1


def test_convert_chain_and_back(tmp_path):
    source = SAMPLES / "sample_zh.json"
    steps = [
        (source, tmp_path / "a.jsonl"),
        (tmp_path / "a.jsonl", tmp_path / "b.parquet"),
        (tmp_path / "b.parquet", tmp_path / "c_hf"),
        (tmp_path / "c_hf", tmp_path / "d.json"),
    ]
    for src, dst in steps:
        result = _run("convert", str(src), str(dst))
        assert result.exit_code == 0, result.output
        assert f"wrote 8 dialogues to {dst}" in result.output
    assert json.loads((tmp_path / "d.json").read_text(encoding="utf-8")) == json.loads(
        source.read_text(encoding="utf-8")
    )


def test_convert_flags(tmp_path):
    out = tmp_path / "codes.dat"
    result = _run(
        "convert",
        str(SAMPLES / "sample_en.json"),
        str(out),
        "--to",
        "dianjin",
        "--labels",
        "code",
        "--with-ids",
    )
    assert result.exit_code == 0, result.output
    first = json.loads(out.read_text(encoding="utf-8"))[0]
    assert first["dialogue"][0]["strategy"] == "GT" and first["id"] == "sample_en-0"

    again = _run("convert", str(SAMPLES / "sample_en.json"), str(out), "--to", "dianjin")
    assert again.exit_code == 1 and "--overwrite" in again.output
    forced = _run(
        "convert", str(SAMPLES / "sample_en.json"), str(out), "--to", "dianjin", "--overwrite"
    )
    assert forced.exit_code == 0
    assert json.loads(out.read_text(encoding="utf-8"))[0]["dialogue"][0]["strategy"] == (
        "策略1 礼貌问候"
    )


def test_convert_generic_to_jsonl(tmp_path):
    out = tmp_path / "esconv.jsonl"
    result = _run(
        "convert",
        str(FIXTURES / "esconv_tiny.json"),
        str(out),
        "--mapping",
        "esconv",
        "--framework",
        "esc",
    )
    assert result.exit_code == 0, result.output
    lines = out.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 2 and json.loads(lines[1])["turns"][1]["strategy"] == "AR"


def test_convert_errors(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "turns": [{"speaker": "robot", "text": "hi"}]}\n')
    result = _run("convert", str(bad), str(tmp_path / "out.json"))
    assert result.exit_code == 1
    assert "record 1 (line 1), field 'turns[0].speaker'" in result.output
    assert not (tmp_path / "out.json").exists()

    result = _run("convert", str(bad), str(bad), "--overwrite")
    assert result.exit_code == 1 and "same path" in result.output
    result = _run("convert", str(bad), str(tmp_path / "x.txt"))
    assert result.exit_code == 1 and "cannot tell the dialogue format" in result.output
    result = _run("convert", str(bad), str(tmp_path / "o.json"), "--labels", "fancy")
    assert result.exit_code == 2 and "--labels" in result.output  # a Click choice
    result = _run("convert", str(bad), str(tmp_path / "o.json"), "--framework", "nope")
    assert result.exit_code == 1 and "framework 'nope' not found" in result.output
