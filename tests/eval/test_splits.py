"""One split for every command: splits.json from `finetune export`, read with --splits (#8 item 1),
refusal to score a supporter on what it was trained on, duplicate ids before any LM (#8 item 4)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from csc.cli import app
from csc.cli.common import load_evaluation_dialogues
from csc.data.io import read_dialogues, write_dialogues
from csc.dialogue import Dialogue, Speaker, Turn
from csc.eval.splits import DatasetSplits, SplitsError, data_sha256

SAMPLE = Path(__file__).resolve().parents[2] / "data" / "samples" / "sample_en.json"


def _dialogues(n: int, prefix: str = "d") -> list[Dialogue]:
    s, c = Speaker.SUPPORTER, Speaker.CUSTOMER
    return [
        Dialogue(
            id=f"{prefix}{i}",
            turns=[
                Turn(speaker=s, text="Hello, how can I help you today?", strategy="GT"),
                Turn(speaker=c, text=f"My card number {i} was blocked."),
                Turn(speaker=s, text="Please try unlocking it in the app.", strategy="PS"),
            ],
        )
        for i in range(n)
    ]


def _never_build(*args, **kwargs):
    raise AssertionError("an LM was built before the input was checked")


def _export(data: Path, out: Path, *extra: str) -> dict:
    res = CliRunner().invoke(
        app,
        [
            "finetune",
            "export",
            "--data",
            str(data),
            "--out",
            str(out),
            "--task",
            "strategy",
            *extra,
        ],
    )
    assert res.exit_code == 0, res.output
    return json.loads((out / "splits.json").read_text())


def test_evaluate_with_splits_scores_exactly_the_exports_test_dialogues(tmp_path: Path) -> None:
    data = tmp_path / "d200.jsonl"
    write_dialogues(_dialogues(200), data)
    splits = _export(data, tmp_path / "sft", "--limit", "100")
    train, test = set(splits["parts"]["train"]), set(splits["parts"]["test"])
    assert splits["limit"] == 100 and splits["data_sha256"] == data_sha256(data)
    assert len(test) == 10 and train.isdisjoint(test)
    # Without the splits file, the seeded split of all 200 dialogues puts some of the export's
    # train dialogues into "test": the leak of issue #8.
    _, seeded, *_ = load_evaluation_dialogues(data, None, "csc", "test", 0, None)
    assert train & {d.id for d in seeded}
    # With it, evaluate (and compare, which shares the loader) score exactly the export's test.
    _, chosen, _, sha, split = load_evaluation_dialogues(
        data, None, "csc", None, 0, None, splits=tmp_path / "sft" / "splits.json"
    )
    assert split == "test" and {d.id for d in chosen} == test and sha == splits["data_sha256"]
    # The folder works too, and an unrelated --seed changes nothing.
    again = load_evaluation_dialogues(data, None, "csc", "test", 7, None, splits=tmp_path / "sft")
    assert [d.id for d in again.dialogues] == [d.id for d in chosen]


def test_sample_limit_5_no_longer_scores_a_training_dialogue(tmp_path: Path) -> None:
    splits = _export(SAMPLE, tmp_path / "sft", "--limit", "5")
    data = load_evaluation_dialogues(SAMPLE, None, "csc", "test", 0, None, splits=tmp_path / "sft")
    assert {d.id for d in data.dialogues} == set(splits["parts"]["test"])
    assert not {d.id for d in data.dialogues} & set(splits["parts"]["train"])


def test_splits_of_other_data_are_refused(tmp_path: Path) -> None:
    data = tmp_path / "a.jsonl"
    write_dialogues(_dialogues(20), data)
    _export(data, tmp_path / "sft")
    other = tmp_path / "b.jsonl"
    write_dialogues(_dialogues(21), other)
    res = CliRunner().invoke(
        app,
        [
            "evaluate",
            "--data",
            str(other),
            "--splits",
            str(tmp_path / "sft" / "splits.json"),
            "--out",
            str(tmp_path / "ev"),
        ],
    )
    assert res.exit_code == 1 and "was made from" in res.output and "Traceback" not in res.output
    with pytest.raises(SplitsError, match="not a csc-splits/1"):
        (tmp_path / "bad.json").write_text('{"parts": []}')
        DatasetSplits.read(tmp_path / "bad.json")


def _rule_lm():
    """The rule-following fake LM of the optimizer tests."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "optimizers"))
    from test_optimize import RuleLM

    return RuleLM()


def test_optimize_with_splits_never_uses_test_dialogues(tmp_path: Path, monkeypatch) -> None:
    import csc.lm
    from csc.optimizers.store import read_metadata

    data = tmp_path / "d.jsonl"
    write_dialogues(_dialogues(30), data)
    splits = _export(data, tmp_path / "sft")
    monkeypatch.setattr(csc.lm, "build_lm", lambda *a, **k: _rule_lm())
    program = tmp_path / "p.json"
    args = ["optimize", "--train", str(data), "--lm", "x/y", "--out", str(program)]
    res = CliRunner().invoke(app, [*args, "--splits", str(tmp_path / "sft" / "splits.json")])
    assert res.exit_code == 0, res.output
    meta = read_metadata(program)
    assert set(meta["train_dialogue_ids"]) <= set(splits["parts"]["train"])
    assert set(meta["dev_dialogue_ids"]) <= set(splits["parts"]["validation"])
    assert not set(meta["train_dialogue_ids"]) & set(splits["parts"]["test"])

    # evaluate refuses the compiled program on its own training dialogues, before any LM...
    monkeypatch.setattr(csc.lm, "build_lm", _never_build)
    ev = ["evaluate", "--data", str(data), "--supporter", f"optimized:{program}"]
    res = CliRunner().invoke(app, [*ev, "--out", str(tmp_path / "ev")])
    assert res.exit_code == 1 and "trained or compiled on" in res.output
    # ...and takes the held-out ones.
    monkeypatch.setattr(csc.lm, "build_lm", lambda *a, **k: _rule_lm())
    res = CliRunner().invoke(
        app,
        [
            *ev,
            "--splits",
            str(tmp_path / "sft"),
            "--no-bertscore",
            "--context",
            "ref",
            "--out",
            str(tmp_path / "ev"),
        ],
    )
    assert res.exit_code == 0, res.output
    # --allow-seen overrides the refusal.
    res = CliRunner().invoke(
        app,
        [*ev, "--allow-seen", "--no-bertscore", "--context", "ref", "--out", str(tmp_path / "e2")],
    )
    assert res.exit_code == 0, res.output


def test_finetuned_supporter_is_refused_on_its_training_dialogues(tmp_path, monkeypatch) -> None:
    import csc.lm

    data = tmp_path / "d.jsonl"
    write_dialogues(_dialogues(30), data)
    splits = _export(data, tmp_path / "sft")
    run = tmp_path / "run"
    run.mkdir()
    # What `csc finetune run` writes: its data folder (the export) and the train ids.
    (run / "csc_finetune.json").write_text(
        json.dumps({"data": {"dir": str(tmp_path / "sft")}, "base_model": "local"})
    )
    monkeypatch.setattr(csc.lm, "build_lm", _never_build)
    for command in (
        ["evaluate", "--supporter", f"finetuned:{run}"],
        ["compare", "--supporter", "zs=zero-shot", "--supporter", f"ft=finetuned:{run}"],
    ):
        res = CliRunner().invoke(app, [*command, "--data", str(data), "--out", str(tmp_path / "o")])
        assert res.exit_code == 1, res.output
        assert "trained or compiled on" in res.output and "splits.json" in res.output
        assert "Traceback" not in res.output
    train = set(splits["parts"]["train"])
    (run / "csc_finetune.json").write_text(
        json.dumps({"data": {"train_dialogue_ids": sorted(train)}})
    )
    from csc.eval.harness import SeenDialoguesError, check_unseen, supporter_from_spec

    spec = supporter_from_spec(f"finetuned:{run}")
    with pytest.raises(SeenDialoguesError):
        check_unseen(spec, [d for d in read_dialogues(data) if d.id in train])
    check_unseen(spec, [d for d in read_dialogues(data) if d.id not in train])


def test_duplicate_ids_fail_before_any_lm_is_built(tmp_path: Path, monkeypatch) -> None:
    import csc.lm

    data = tmp_path / "dup.jsonl"
    write_dialogues([*_dialogues(3), *_dialogues(1)], data)
    monkeypatch.setattr(csc.lm, "build_lm", _never_build)
    for command in (
        ["evaluate"],
        ["compare", "--supporter", "zs=zero-shot"],
        ["optimize", "--out", str(tmp_path / "p.json"), "--train"],
    ):
        flag = [] if command[0] == "optimize" else ["--data"]
        res = CliRunner().invoke(app, [*command, *flag, str(data)])
        assert res.exit_code == 1, res.output
        lines = [line for line in res.output.splitlines() if line.strip()]
        assert len(lines) == 1 and "'d0' occurs more than once (records 1 and 4)" in lines[0]
