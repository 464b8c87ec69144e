"""Issue #8 item 11: one flag vocabulary, an example at the end of every --help, help text not
eaten by rich markup, deprecated flag names still working, and errors that only suggest flags
the running command has."""

from __future__ import annotations

import json
import shlex
from importlib import resources
from pathlib import Path

import pytest
from typer.main import get_command
from typer.testing import CliRunner

from csc.cli import DEPRECATED_FLAGS, app, rewrite_deprecated_flags

runner = CliRunner()
SAMPLE = Path(str(resources.files("csc.data") / "samples" / "sample_en.json"))
RETIRED = {"--format", "--language", "--num-threads", "--n"}


def _leaves(command, path=()):
    subs = getattr(command, "commands", None)
    if not subs or (path and command.params):  # a group whose callback takes options too
        yield path, command
    if not subs:
        return
    for name, sub in subs.items():
        yield from _leaves(sub, (*path, name))


LEAVES = list(_leaves(get_command(app)))


def _flags(command) -> set[str]:
    return {
        opt
        for p in command.params
        if getattr(p, "param_type_name", "") == "option" and not getattr(p, "hidden", False)
        for opt in (*p.opts, *p.secondary_opts)
    }


def test_every_command_is_covered() -> None:
    names = {" ".join(path) for path, _ in LEAVES}
    assert {"evaluate", "data validate", "synthesize", "profiles generate", "stats"} <= names


@pytest.mark.parametrize(
    ("path", "command"), LEAVES, ids=lambda x: " ".join(x) if isinstance(x, tuple) else ""
)
def test_one_vocabulary_and_a_working_example(path, command) -> None:
    flags = _flags(command)
    assert not flags & RETIRED, f"{' '.join(path)} still shows {flags & RETIRED}"
    if any(f in flags for f in ("--concurrency",)):
        assert "-c" in flags
    # The help ends with one example, and the example parses as this command's arguments.
    result = runner.invoke(app, [*path, "--help"], terminal_width=200)
    assert result.exit_code == 0
    assert result.output.count("Example:") == 1
    tail = " ".join(result.output.rsplit("Example:", 1)[1].split())  # wrapped lines joined
    assert tail == command.epilog.removeprefix("Example: "), tail  # nothing after it
    words = shlex.split(command.epilog.removeprefix("Example: "))
    assert words[: 1 + len(path)] == ["csc", *path]
    command.make_context(" ".join(path), words[1 + len(path) :])  # raises on a bad flag


def test_rich_markup_keeps_bracketed_help_text() -> None:
    shown = 0
    for path, command in LEAVES:
        if "--config" in _flags(command):
            out = runner.invoke(app, [*path, "--help"], terminal_width=200).output
            assert "[lm] section" in out, " ".join(path)
            shown += 1
    assert shown >= 7


def test_deprecated_names_still_work_with_a_note(tmp_path) -> None:
    result = runner.invoke(app, ["stats", str(SAMPLE), "--format", "dianjin", "--json"])
    assert result.exit_code == 0, result.output
    assert "--format is deprecated; use --from" in result.stderr
    assert json.loads(result.stdout)["dialogues"] == 8
    result = runner.invoke(app, ["profiles", "show", "--language", "zh", "--limit", "1"])
    assert result.exit_code == 0, result.output
    assert "--language is deprecated; use --lang" in result.stderr
    args, notes = rewrite_deprecated_flags(
        ["profiles", "generate", "--n=3", "--language", "zh", "--", "--n"]
    )
    assert args == ["profiles", "generate", "--profiles=3", "--lang", "zh", "--", "--n"]
    assert notes == [
        "note: --n is deprecated; use --profiles",
        "note: --language is deprecated; use --lang",
    ]
    # Every deprecated name maps to a flag its command really has.
    for path, renames in DEPRECATED_FLAGS.items():
        command = dict(LEAVES)[path]
        for old, new in renames.items():
            assert new in _flags(command) and old not in _flags(command), (path, old)


def _unlabelled(tmp_path: Path) -> Path:
    records = json.loads(SAMPLE.read_text("utf-8"))
    records[0]["dialogue"][0]["strategy"] = ""
    path = tmp_path / "unlabelled.json"
    path.write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    return path


def test_errors_suggest_only_flags_the_command_has(tmp_path) -> None:
    data = str(_unlabelled(tmp_path))
    validate = runner.invoke(app, ["data", "validate", data])
    assert validate.exit_code == 1 and "(--allow-unlabelled)" in validate.stderr
    assert "allow_unlabelled=True" not in validate.stderr  # the Python form is for the API
    export = runner.invoke(
        app, ["finetune", "export", "--data", data, "--out", str(tmp_path / "o")]
    )
    assert export.exit_code == 1 and "supporter turn without a strategy label" in export.stderr
    assert "--allow-unlabelled" not in export.stderr

    generic = ["--from", "generic"]
    export = runner.invoke(
        app, ["finetune", "export", "--data", str(SAMPLE), *generic, "--out", str(tmp_path / "o")]
    )
    assert export.exit_code == 1 and "--mapping FILE" in export.stderr
    assert "csc data convert" in export.stderr  # export has no --mapping: convert first
    validate = runner.invoke(app, ["data", "validate", str(SAMPLE), *generic])
    assert "(--mapping FILE)" in validate.stderr and "csc data convert" not in validate.stderr

    odd = tmp_path / "x.csv"
    odd.write_text("a,b\n", encoding="utf-8")
    for args in (["data", "validate", str(odd)], ["stats", str(odd)]):
        result = runner.invoke(app, args)
        assert result.exit_code == 1 and "(--from)" in result.stderr, result.stderr


def test_library_errors_keep_both_forms(tmp_path) -> None:
    from csc.data.errors import DataFormatError
    from csc.data.io import read_dialogues

    with pytest.raises(DataFormatError) as err:
        list(read_dialogues(_unlabelled(tmp_path)))
    assert "(allow_unlabelled=True / --allow-unlabelled)" in str(err.value)


def test_choice_flags_list_their_values_and_fail_alike() -> None:
    """Issue #11 item 4: choice flags are Typer choices, not hand-written checks."""
    shown = runner.invoke(app, ["finetune", "run", "--help"], terminal_width=200).output
    assert "auto|cpu|cuda" in shown
    for args, value in (
        (["finetune", "run", "--data", "d", "--out", "o", "--device", "tpu"], "tpu"),
        (["synthesize", "--out", "o", "--lang", "fr"], "fr"),
        (["data", "convert", "a.jsonl", "b.json", "--labels", "short"], "short"),
        (["evaluate", "--data", "d", "--split", "dev"], "dev"),
    ):
        result = runner.invoke(app, args, terminal_width=200)
        assert result.exit_code == 2, (args, result.output)
        assert f"{value!r} is not one of" in result.output, result.output
