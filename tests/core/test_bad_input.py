"""Issue #8: bad input ends in one clear line naming the file (exit 1, no traceback), strategy
numbers are checked, duplicate dialogue ids are reported, and no credential is ever printed."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import pytest
from typer.testing import CliRunner

from csc.cli import app

SAMPLES = Path(str(resources.files("csc.data") / "samples"))
runner = CliRunner()
KEY = "sk-PLANTED-7f3a9c2e5b1d"


def _invoke(args: list[str], env: dict[str, str] | None = None):
    base = {"CSC_CONFIG": "", "CSC_LM": "", "CSC_TEMPERATURE": "", "CSC_MAX_TOKENS": ""}
    return runner.invoke(app, args, env={**base, **(env or {})})


def assert_one_line_error(result, *names: str) -> str:
    """Exit 1, no traceback, exactly one line on stderr naming each of ``names``."""
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(
        result.exception
    )
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    for name in names:
        assert name in lines[0], lines[0]
    return lines[0]


def _dianjin(path: Path, label: str) -> Path:
    records = [
        {
            "dialogue": [
                {"speaker": "客服", "strategy": "策略1 礼貌问候", "text": "Hello!"},
                {"speaker": "客户", "strategy": "", "text": "My card was charged twice."},
                {"speaker": "客服", "strategy": label, "text": "I am sorry to hear that."},
            ],
            "source": "x",
        }
    ]
    path.write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    return path


# ---------------------------------------------------------------- item 2: strategy numbers
@pytest.mark.parametrize("label", ["策略99 情感管理", "策略5 礼貌问候", "Strategy 5 Greeting"])
def test_validate_and_convert_refuse_a_wrong_strategy_number(tmp_path, label) -> None:
    data = _dianjin(tmp_path / "bad.json", label)
    line = assert_one_line_error(_invoke(["data", "validate", str(data)]), str(data), "record 1")
    assert "dialogue[2].strategy" in line and label in line
    out = tmp_path / "out.json"
    assert_one_line_error(_invoke(["data", "convert", str(data), str(out)]), str(data))
    assert not out.exists()


def test_agreeing_number_and_name_convert_back_unchanged(tmp_path) -> None:
    data = _dianjin(tmp_path / "good.json", "策略5 情感管理")
    out = tmp_path / "out.json"
    assert _invoke(["data", "convert", str(data), str(out)]).exit_code == 0
    assert json.loads(out.read_text("utf-8"))[0]["dialogue"][2]["strategy"] == "策略5 情感管理"


# ---------------------------------------------------------------- item 4: duplicate ids
def test_validate_reports_duplicate_dialogue_ids(tmp_path) -> None:
    lines = (SAMPLES.parent / "samples" / "sample_en.json").read_text("utf-8")
    records = json.loads(lines)[:4]
    for i, r in enumerate(records):
        r["id"] = "same" if i in (0, 2) else f"d{i}"
    data = tmp_path / "dups.json"
    data.write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    line = assert_one_line_error(_invoke(["data", "validate", str(data)]), str(data))
    assert "'same' (records 1, 3)" in line and "unique id" in line


# ---------------------------------------------------------------- item 7: one-line errors
def _cases(tmp: Path) -> list[tuple[list[str], dict[str, str], str]]:
    """(args, env, the file the error must name) for each traceback listed in issue #8."""
    (tmp / "empty.parquet").write_bytes(b"")
    (tmp / "junk.parquet").write_bytes(b"PAR1 not really a parquet file")
    (tmp / "latin.jsonl").write_bytes(
        b'{"id": "a", "turns": [{"speaker": "customer", "text": "caf\xe9"}]}\n'
    )
    (tmp / "weird.ini").write_text("[lm]\nmodel = local\n", encoding="utf-8")
    (tmp / "list.yaml").write_text("- lm\n- local\n", encoding="utf-8")
    (tmp / "folder").mkdir()
    (tmp / "a_file").write_text("x", encoding="utf-8")
    sample = str(SAMPLES / "sample_en.json")
    return [
        (["data", "validate", str(tmp / "empty.parquet")], {}, "empty.parquet"),
        (["data", "validate", str(tmp / "junk.parquet")], {}, "junk.parquet"),
        (["data", "validate", str(tmp / "latin.jsonl")], {}, "latin.jsonl: record 1 (line 1)"),
        (["data", "validate", str(tmp / "missing.json")], {}, "missing.json: no such file"),
        (["data", "validate", str(tmp / "missing")], {}, "missing: no such file"),
        (["stats", str(tmp / "missing")], {}, "missing"),
        (["lm", "show", "--config", str(tmp / "weird.ini")], {}, "weird.ini"),
        (["lm", "show", "--config", str(tmp / "list.yaml")], {}, "list.yaml"),
        (["lm", "show"], {"CSC_TEMPERATURE": "abc"}, "CSC_TEMPERATURE"),
        (["lm", "show"], {"CSC_MAX_TOKENS": "1.5"}, "CSC_MAX_TOKENS"),
        (["data", "convert", sample, str(tmp / "a_file" / "x.jsonl")], {}, "x.jsonl"),
        (
            ["data", "convert", sample, str(tmp / "folder"), "--to", "jsonl", "--overwrite"],
            {},
            "folder",
        ),
        (["finetune", "export", "--data", sample, "--out", str(tmp / "a_file")], {}, "a_file"),
    ]


def test_every_listed_traceback_is_one_clear_line(tmp_path) -> None:
    for args, env, name in _cases(tmp_path):
        result = _invoke(args, env)
        line = assert_one_line_error(result, name)
        assert "unexpected" not in line, (args, line)  # handled, not the last-resort net
        assert "not UTF-8" in line or "latin" not in name


def test_an_unexpected_exception_is_still_one_line(monkeypatch) -> None:
    import csc.cli.framework as framework_cli

    def boom(name):
        raise KeyError("surprise")

    monkeypatch.setattr(framework_cli.Framework, "load", boom)
    line = assert_one_line_error(_invoke(["framework", "show"]))
    assert "unexpected KeyError" in line and "CSC_DEBUG=1" in line


# ---------------------------------------------------------------- item 6: no secrets
@pytest.mark.parametrize(
    "config",
    [
        '[lm]\nmodel = "openai/x"\noptions = { api_key = "%s" }\n',
        '[lm]\nmodel = "openai/x"\n[lm.roles.judge]\nmodel = "openai/y"\napi_key = "%s"\n',
        '[lm]\nmodel = "openai/x"\n[lm.roles]\njudge = { api_key = "%s" }\n',
        'openai_api_key = "%s"\n[lm]\nmodel = "openai/x"\n',
        '[lm]\nopenai_api_key = "%s"\nmodel = "openai/x"\n',
        '[lm]\nmodel = "openai/x"\ntemperature = "%s"\n',
        '[lm]\nmodel = "openai/x"\nmax_tokens = { token = "%s" }\n',
        'lm:\n  model: openai/x\n  api_key: "%s"\n',
        'lm:\n  model: openai/x\n  options: {auth_token: "%s"}\n',
        'lm:\n  model: "openai/x\n  api_key: %s\n',  # broken YAML next to a key
    ],
)
def test_config_errors_never_echo_a_key(tmp_path, config) -> None:
    path = tmp_path / ("csc.yaml" if config.startswith("lm:") else "csc.toml")
    path.write_text(config % KEY, encoding="utf-8")
    result = _invoke(["lm", "show", "--config", str(path)])
    line = assert_one_line_error(result, str(path))
    assert KEY not in result.output and KEY[3:15] not in result.output, line


def test_lm_show_hides_url_passwords_and_key_query_values() -> None:
    url = f"http://user:{KEY}@127.0.0.1:9/v1?api_key={KEY}"
    result = _invoke(["lm", "show", "--lm", "openai/x", "--api-base", url])
    assert result.exit_code == 0, result.output
    assert KEY not in result.output
    assert "http://user:***@127.0.0.1:9/v1?api_key=***" in result.output


def test_misspelt_sections_keys_and_roles_get_a_did_you_mean(tmp_path) -> None:
    cases = {
        "a.toml": ('[llm]\nmodel = "local"\n', "unknown section [llm]; did you mean 'lm'?"),
        "b.toml": (
            "[lm]\ntemprature = 0.2\n",
            "unknown key 'temprature'; did you mean 'temperature'?",
        ),
        "c.yaml": ("lm:\n  roles:\n    judg: local\n", "did you mean 'judge'?"),
        "d.toml": ('[lm.roles.judge]\nmodle = "local"\n', "did you mean 'model'?"),
    }
    for name, (text, wanted) in cases.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
        line = assert_one_line_error(_invoke(["lm", "show", "--config", str(tmp_path / name)]))
        assert wanted in line, line
        assert "pydantic" not in line and "errors.pydantic.dev" not in line
