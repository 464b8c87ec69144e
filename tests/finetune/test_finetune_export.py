"""SFT export: messages format, dialogue-level splits, prompts identical to inference."""

from __future__ import annotations

import json
from pathlib import Path

import dspy
import pytest
from datasets import load_from_disk

from csc.data.io import read_dialogues
from csc.eval.examples import split_dialogues as eval_split
from csc.eval.examples import supporter_examples
from csc.finetune.export import ExportError, export_sft
from csc.programs.supporter import Supporter

SAMPLE = Path(__file__).resolve().parents[2] / "data" / "samples" / "sample_en.json"


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("sft")
    result = export_sft(SAMPLE, out, task="joint", seed=0, progress=False)
    return out, result.metadata


@pytest.fixture(scope="module")
def exported_full(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("sft-full")
    result = export_sft(SAMPLE, out, task="joint", seed=0, progress=False, prompt="full")
    return out, result.metadata


def test_export_writes_messages_datasetdict_with_counts(exported: tuple[Path, dict]) -> None:
    out, _meta = exported
    dsd = load_from_disk(str(out))
    assert set(dsd) == {"train", "validation", "test"}
    saved = json.loads((out / "export.json").read_text())
    assert saved["framework"] == "csc" and saved["task"] == "joint"
    assert len(saved["data_sha256"]) == 64
    for split, ds in dsd.items():
        assert saved["counts"][split]["rows"] == len(ds)
        assert saved["counts"][split]["strategy_rows"] == saved["counts"][split]["response_rows"]
        for row in ds:
            roles = [m["role"] for m in row["messages"]]
            assert roles[0] == "system" and roles[-1] == "assistant"
            assert row["task"] in ("strategy", "response")
    # Every labelled supporter turn of the sample gives one row per task.
    dialogues = list(read_dialogues(SAMPLE))
    n_turns = sum(len(d.supporter_turns) for d in dialogues)
    assert sum(c["rows"] for c in saved["counts"].values()) == 2 * n_turns


def test_no_dialogue_leaks_between_splits(exported: tuple[Path, dict]) -> None:
    out, _meta = exported
    dsd = load_from_disk(str(out))
    ids = {split: set(ds["dialogue_id"]) for split, ds in dsd.items()}
    assert ids["train"].isdisjoint(ids["validation"])
    assert ids["train"].isdisjoint(ids["test"])
    assert ids["validation"].isdisjoint(ids["test"])
    # The held-out test split is the one `csc evaluate --split test --seed 0` scores.
    dialogues = list(read_dialogues(SAMPLE))
    assert ids["test"] == {d.id for d in eval_split(dialogues, seed=0).test}


def test_split_is_seeded_and_changes_with_seed(tmp_path: Path) -> None:
    dialogues = list(read_dialogues(SAMPLE))
    a = eval_split(dialogues, (0.5, 0.25, 0.25), seed=1)
    b = eval_split(dialogues, (0.5, 0.25, 0.25), seed=1)
    assert [d.id for d in a.test] == [d.id for d in b.test]
    seeds = {tuple(d.id for d in eval_split(dialogues, seed=s).test) for s in range(6)}
    assert len(seeds) > 1
    with pytest.raises(ExportError, match="leaves nothing"):
        export_sft(SAMPLE, tmp_path / "o", val_fraction=0.5, test_fraction=0.5)


@pytest.mark.parametrize("variant", ["compact", "full"])
def test_prompts_are_what_the_supporter_sends_at_inference(
    variant: str, exported: tuple[Path, dict], exported_full: tuple[Path, dict]
) -> None:
    """Run the real Supporter of each prompt variant on a recording LM and compare its messages
    with the export of that variant, byte for byte."""
    out, meta = exported if variant == "compact" else exported_full
    assert meta["prompt"] == variant
    dsd = load_from_disk(str(out))
    dialogues = {d.id: d for d in read_dialogues(SAMPLE)}
    rows = [r for r in dsd["train"] if r["turn"] > 2][:2]  # one strategy and one response row
    assert {r["task"] for r in rows} == {"strategy", "response"}
    row = rows[0]
    dialogue = dialogues[row["dialogue_id"]]
    example = next(
        e for e in supporter_examples([dialogue], language="en") if e.turn_index == row["turn"]
    )
    lm = dspy.utils.DummyLM(
        [{"strategy": row["strategy"]}, {"response": "Sure, let me check that."}]
    )
    with dspy.context(lm=lm, adapter=dspy.ChatAdapter()):
        Supporter("csc", "en", prompt=variant)(history=example.history)
    sent = [entry["messages"] for entry in lm.history]
    by_task = {r["task"]: r["messages"] for r in rows}
    assert by_task["strategy"][:-1] == [
        {"role": m["role"], "content": m["content"]} for m in sent[0]
    ]
    assert by_task["response"][:-1] == [
        {"role": m["role"], "content": m["content"]} for m in sent[1]
    ]
    # Only the full prompt carries the framework: definitions, stage rules, definition field.
    strategy_text = "".join(m["content"] for m in by_task["strategy"])
    response_text = "".join(m["content"] for m in by_task["response"])
    assert ("Acknowledge and soothe" in strategy_text) == (variant == "full")
    assert ("stage order" in strategy_text) == (variant == "full")
    assert ("strategy_definition" in response_text) == (variant == "full")


def test_targets_parse_back_to_the_gold_outputs(exported: tuple[Path, dict]) -> None:
    out, _ = exported
    ds = load_from_disk(str(out))["train"]
    program = Supporter("csc", "en", prompt="compact")
    adapter = dspy.ChatAdapter()
    dialogues = {d.id: d for d in read_dialogues(SAMPLE)}
    for row in ds.select(range(6)):
        target = row["messages"][-1]["content"]
        if row["task"] == "strategy":
            parsed = adapter.parse(program.strategist.signature, target)
            assert parsed == {"strategy": row["strategy"]}
            assert target.startswith(f"[[ ## strategy ## ]]\n{row['strategy']}\n")
        else:
            parsed = adapter.parse(program.responder.signature, target)
            gold = dialogues[row["dialogue_id"]].turns[row["turn"]].text
            assert parsed == {"response": gold}


def test_single_task_exports_only_that_task(tmp_path: Path) -> None:
    result = export_sft(SAMPLE, tmp_path / "s", task="strategy", progress=False)
    ds = load_from_disk(str(tmp_path / "s"))
    assert set(ds["train"]["task"]) == {"strategy"}
    assert result.counts["train"].response_rows == 0


def test_export_errors_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="task"):
        export_sft(SAMPLE, tmp_path / "x", task="both", progress=False)  # type: ignore[arg-type]
    with pytest.raises(ExportError, match=r"too few|nothing"):
        export_sft(SAMPLE, tmp_path / "y", limit=2, val_fraction=0.5, test_fraction=0.45)


# ---------------------------------------------------------------------------- --out safety (#8 item 8)
def _export_cli(*args: str):
    from typer.testing import CliRunner

    from csc.cli import app

    return CliRunner().invoke(app, ["finetune", "export", "--task", "strategy", *args])


def _one_line_error(res, *needles: str) -> None:
    assert res.exit_code == 1, res.output
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in res.output, res.output
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_export_out_refuses_files_foreign_folders_and_its_own_input(tmp_path, monkeypatch):
    from csc.eval.splits import data_sha256

    data = tmp_path / "data.json"
    data.write_bytes(SAMPLE.read_bytes())
    before = data_sha256(data)
    # An existing file.
    (tmp_path / "file").write_text("keep me")
    _one_line_error(_export_cli("--data", str(data), "--out", str(tmp_path / "file")), "is a file")
    # A non-empty folder that is not an export: refused, even with --overwrite.
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "todo.txt").write_text("keep me")
    _one_line_error(_export_cli("--data", str(data), "--out", str(notes)), "--overwrite")
    _one_line_error(
        _export_cli("--data", str(data), "--out", str(notes), "--overwrite"),
        "not a folder written by `csc finetune export`",
    )
    assert (notes / "todo.txt").read_text() == "keep me"
    # `.` (or any folder) that holds the input data.
    monkeypatch.chdir(tmp_path)
    _one_line_error(
        _export_cli("--data", "data.json", "--out", ".", "--overwrite"), "holds the input"
    )
    # The input itself, and a folder inside an input dataset folder.
    _one_line_error(_export_cli("--data", str(data), "--out", str(data)), "is the input data")
    res = _export_cli("--data", str(data), "--out", str(tmp_path / "sft"))
    assert res.exit_code == 0, res.output
    _one_line_error(
        _export_cli("--data", str(tmp_path / "sft"), "--out", str(tmp_path / "sft")),
        "is the input data",
    )
    _one_line_error(
        _export_cli("--data", str(tmp_path / "sft" / "train"), "--out", str(tmp_path / "sft")),
        "holds the input",
    )
    # --test-out onto the input data.
    _one_line_error(
        _export_cli("--data", str(data), "--out", str(tmp_path / "sft2"), "--test-out", str(data)),
        "would overwrite the input data",
    )
    assert data_sha256(data) == before
    assert json.loads((tmp_path / "sft" / "export.json").read_text())["data_sha256"] == before


def test_export_overwrite_replaces_an_earlier_export_only_when_asked(tmp_path):
    out = tmp_path / "sft"
    assert _export_cli("--data", str(SAMPLE), "--out", str(out), "--limit", "5").exit_code == 0
    _one_line_error(_export_cli("--data", str(SAMPLE), "--out", str(out)), "already exists")
    res = _export_cli("--data", str(SAMPLE), "--out", str(out), "--overwrite")
    assert res.exit_code == 0, res.output
    meta = json.loads((out / "export.json").read_text())
    assert meta["limit"] is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sft"]  # no staging folders left
    assert load_from_disk(str(out))["train"].num_rows == meta["counts"]["train"]["rows"]


def test_export_with_given_splits_reproduces_them(tmp_path):
    first = export_sft(SAMPLE, tmp_path / "a", seed=3, progress=False)
    again = export_sft(SAMPLE, tmp_path / "b", seed=0, splits=tmp_path / "a", progress=False)
    assert again.metadata["split_dialogue_ids"] == first.metadata["split_dialogue_ids"]
    assert (tmp_path / "b" / "splits.json").read_text() == (
        tmp_path / "a" / "splits.json"
    ).read_text()
