"""Teacher targets (issue #12 item 1): a deterministic fake teacher's outputs become the train
rows' answers, the student's prompts stay byte-identical to inference, the run resumes without
duplicates, disagreements with the gold labels are counted and can be dropped."""

from __future__ import annotations

import json
from pathlib import Path

import dspy
import pytest
from conftest import tiny_recipe_dict
from datasets import load_from_disk
from teacher_fakes import FakeTeacherLM, teacher_answer

from csc.data.io import read_dialogues
from csc.eval.examples import supporter_examples
from csc.finetune.export import ExportError, export_sft
from csc.programs.supporter import (
    Supporter,
    response_generation_messages,
    strategy_prediction_messages,
)

SAMPLE = Path(__file__).resolve().parents[2] / "data" / "samples" / "sample_en.json"


def _export(out: Path, lm: FakeTeacherLM | None = None, **kwargs):
    lm = lm or FakeTeacherLM()
    kwargs.setdefault("teacher", "zero-shot")
    return export_sft(
        SAMPLE,
        out,
        seed=0,
        progress=False,
        teacher_lm="fake-teacher",
        lm_factory=lambda spec: lm,
        concurrency=3,
        **kwargs,
    )


def _train_examples(meta: dict) -> list[dspy.Example]:
    train = set(meta["split_dialogue_ids"]["train"])
    dialogues = [d for d in read_dialogues(SAMPLE) if d.id in train]
    return supporter_examples(dialogues, language="en")


def _teacher_says(example: dspy.Example) -> tuple[str, str]:
    """What the zero-shot teacher (full prompt) answers for an example, run on its own."""
    with dspy.context(lm=FakeTeacherLM(), adapter=dspy.ChatAdapter()):
        pred = Supporter("csc", "en")(history=example.history)
    return pred.strategy, pred.response


@pytest.fixture(scope="module")
def taught(tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("teacher") / "sft"
    lm = FakeTeacherLM()
    result = _export(out, lm)
    return out, result, lm


def test_teacher_targets_are_the_teachers_outputs(taught) -> None:
    out, _, _ = taught
    meta = json.loads((out / "export.json").read_text())
    assert meta["targets"] == "teacher" and meta["teacher"]["spec"] == "zero-shot"
    train = load_from_disk(str(out))["train"]
    examples = {(e.dialogue_id, e.turn_index): e for e in _train_examples(meta)}
    assert len(train) == 2 * len(examples)  # one strategy and one response row per turn
    adapter = dspy.ChatAdapter()
    student = Supporter("csc", "en", prompt="compact")
    for row in train:
        assert row["target_source"] == "teacher"
        example = examples[(row["dialogue_id"], row["turn"])]
        code, reply = _teacher_says(example)
        assert row["strategy"] == code and row["gold_strategy"] == example.strategy
        target = row["messages"][-1]["content"]
        if row["task"] == "strategy":
            assert adapter.parse(student.strategist.signature, target) == {"strategy": code}
        else:
            assert adapter.parse(student.responder.signature, target) == {"response": reply}
            assert reply.startswith(f"Teacher reply carrying out {code} ")


def test_student_prompts_are_byte_identical_to_inference(taught) -> None:
    """The rows' prompts equal the student program's own messages (prompt-export helpers), and
    what the real compact Supporter sends on a recording LM, byte for byte."""
    out, _, _ = taught
    meta = json.loads((out / "export.json").read_text())
    train = load_from_disk(str(out))["train"]
    examples = {(e.dialogue_id, e.turn_index): e for e in _train_examples(meta)}
    student = Supporter("csc", "en", prompt="compact")

    def plain(messages: list[dict]) -> list[dict]:
        return [{"role": m["role"], "content": m["content"]} for m in messages]

    with dspy.context(adapter=dspy.ChatAdapter()):
        for row in train:
            example = examples[(row["dialogue_id"], row["turn"])]
            if row["task"] == "strategy":
                expected = strategy_prediction_messages(student, example.history)
            else:
                expected = response_generation_messages(student, example.history, row["strategy"])
            assert row["messages"][:-1] == plain(expected)
    # And what the student really sends when it predicts the teacher's strategy.
    rows = [r for r in train if r["turn"] > 2]
    first = rows[0]
    pair = {
        r["task"]: r
        for r in rows
        if (r["dialogue_id"], r["turn"]) == (first["dialogue_id"], first["turn"])
    }
    example = examples[(first["dialogue_id"], first["turn"])]
    lm = dspy.utils.DummyLM([{"strategy": first["strategy"]}, {"response": "ok"}])
    with dspy.context(lm=lm, adapter=dspy.ChatAdapter()):
        Supporter("csc", "en", prompt="compact")(history=example.history)
    sent = [plain(entry["messages"]) for entry in lm.history]
    assert pair["strategy"]["messages"][:-1] == sent[0]
    assert pair["response"]["messages"][:-1] == sent[1]


def test_teacher_runs_on_the_train_split_only(taught) -> None:
    out, result, lm = taught
    meta = result.metadata
    n_train_turns = len(_train_examples(meta))
    assert lm.served == 2 * n_train_turns  # strategist + responder per train turn, nothing else
    lines = [json.loads(x) for x in (out / meta["teacher"]["outputs"]).read_text().splitlines()]
    assert {r["dialogue_id"] for r in lines} <= set(meta["split_dialogue_ids"]["train"])
    assert len(lines) == n_train_turns
    dsd = load_from_disk(str(out))
    for split in ("validation", "test"):
        assert set(dsd[split]["target_source"]) == {"gold"}
        assert dsd[split]["strategy"] == dsd[split]["gold_strategy"]
    assert (out / "splits.json").is_file()


def test_metadata_records_teacher_lm_program_and_cost(taught) -> None:
    _, result, _ = taught
    teacher = result.metadata["teacher"]
    assert teacher["lm"]["model"] == "fake-teacher"
    assert teacher["program"]["kind"] == "supporter" and teacher["program"]["prompt"] == "full"
    assert len(teacher["program"]["sha256"]) == 64
    assert teacher["turns"] == teacher["answered_turns"] and teacher["failed_turns"] == 0
    cost = result.metadata["cost"]
    assert cost["prompt_tokens"] == teacher["prompt_tokens"] > 0
    assert cost["completion_tokens"] > 0 and cost["lm_calls_this_run"] == 2 * teacher["turns"]
    assert cost["wall_time_s"] >= teacher["wall_time_s"] > 0


def test_disagreements_are_counted_and_can_be_dropped(taught, tmp_path: Path) -> None:
    _, result, _ = taught
    meta = result.metadata
    expected = sum(_teacher_says(e)[0] != e.strategy for e in _train_examples(meta))
    assert 0 < expected < len(_train_examples(meta))  # the fake disagrees on some turns only
    assert result.disagreeing_turns == meta["disagreeing_turns"] == expected
    assert meta["teacher"]["disagreeing_turns"] == expected
    assert meta["dropped_disagreeing_turns"] == 0

    dropped = _export(tmp_path / "dropped", drop_disagreeing=True)
    train = load_from_disk(str(tmp_path / "dropped"))["train"]
    assert dropped.dropped_disagreeing_turns == dropped.disagreeing_turns == expected
    assert len(train) == 2 * (len(_train_examples(meta)) - expected)
    assert all(r["strategy"] == r["gold_strategy"] for r in train)


def test_both_targets_write_gold_rows_and_distinct_teacher_rows(tmp_path: Path) -> None:
    both = _export(tmp_path / "both", targets="both")
    train = load_from_disk(str(tmp_path / "both"))["train"]
    n = len(_train_examples(both.metadata))
    gold = [r for r in train if r["target_source"] == "gold"]
    taught_rows = [r for r in train if r["target_source"] == "teacher"]
    assert len(gold) == 2 * n
    # Where the teacher agrees, its strategy row equals the gold one and is written once.
    assert len([r for r in taught_rows if r["task"] == "strategy"]) == both.disagreeing_turns
    assert len([r for r in taught_rows if r["task"] == "response"]) == n
    assert both.metadata["targets"] == "both"


def test_an_interrupted_teacher_run_resumes_without_duplicates(tmp_path: Path) -> None:
    out = tmp_path / "sft"
    # The server goes away after 11 calls: some turns are answered, the rest fail.
    first = _export(out, FakeTeacherLM(fail_after=11))
    teacher = first.metadata["teacher"]
    assert 0 < teacher["answered_turns"] < teacher["turns"]
    assert teacher["failed_turns"] == teacher["turns"] - teacher["answered_turns"]
    train = load_from_disk(str(out))["train"]
    assert len(train) == 2 * teacher["answered_turns"]  # failed turns have no rows
    outputs = out / teacher["outputs"]
    assert len(outputs.read_text().splitlines()) == teacher["answered_turns"]

    # Re-running asks the teacher only for the turns it has not answered.
    lm = FakeTeacherLM()
    again = _export(out, lm, overwrite=True)
    resumed = again.metadata["teacher"]
    assert resumed["turns_from_earlier_runs"] == teacher["answered_turns"]
    assert lm.served == 2 * (teacher["turns"] - teacher["answered_turns"])
    lines = [json.loads(x) for x in (out / resumed["outputs"]).read_text().splitlines()]
    keys = [(r["dialogue_id"], r["turn_index"]) for r in lines]
    assert len(keys) == len(set(keys)) == resumed["turns"] == resumed["answered_turns"]
    assert load_from_disk(str(out))["train"].num_rows == 2 * resumed["turns"]
    # The same outputs as an uninterrupted export.
    fresh = _export(tmp_path / "fresh")
    assert sorted(map(json.dumps, load_from_disk(str(out))["train"]["messages"])) == sorted(
        map(json.dumps, load_from_disk(str(tmp_path / "fresh"))["train"]["messages"])
    )
    assert fresh.metadata["teacher"]["key"] == resumed["key"]


def test_a_folder_with_only_teacher_outputs_is_resumed(tmp_path: Path) -> None:
    """A kill during the teacher run leaves OUT holding only teacher/: the next run resumes it
    without --overwrite and calls the teacher for nothing already answered."""
    out = tmp_path / "sft"
    _export(out)
    for item in out.iterdir():  # what a kill after the teacher run, before the swap, leaves
        if item.name != "teacher":
            if item.is_dir():
                import shutil

                shutil.rmtree(item)
            else:
                item.unlink()
    lm = FakeTeacherLM()
    result = _export(out, lm)
    assert lm.served == 0
    assert (
        result.metadata["teacher"]["turns_from_earlier_runs"] == result.metadata["teacher"]["turns"]
    )


def test_teacher_options_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="needs a teacher"):
        export_sft(SAMPLE, tmp_path / "a", targets="teacher", progress=False)
    with pytest.raises(ExportError, match="would not be used"):
        _export(tmp_path / "b", targets="gold")
    with pytest.raises(ExportError, match=r"optimized:nowhere\.json"):
        _export(tmp_path / "c", teacher="optimized:nowhere.json")
    assert not (tmp_path / "c").exists() or not any((tmp_path / "c").iterdir())
    # A teacher that fails on every turn is a clear error, not an empty export.
    with pytest.raises(ExportError, match="failed on all"):
        _export(tmp_path / "d", FakeTeacherLM(fail_after=0))


def test_teacher_answer_is_deterministic() -> None:
    messages = [{"role": "user", "content": "starting with the field `[[ ## strategy ## ]]` x"}]
    assert teacher_answer(messages) == teacher_answer(list(messages))


def test_cli_exports_teacher_targets_and_reports_agreement(tmp_path: Path, monkeypatch) -> None:
    from typer.testing import CliRunner

    import csc.lm
    from csc.cli import app

    monkeypatch.setitem(csc.lm._SCHEMES, "fake-teacher", lambda arg, spec: FakeTeacherLM())
    out = tmp_path / "sft"
    args = ["finetune", "export", "--data", str(SAMPLE), "--out", str(out)]
    teacher = ["--teacher", "zero-shot", "--teacher-lm", "fake-teacher"]
    secret_base = "http://user:s3cretpassw0rd@teacher.example/v1"
    res = CliRunner().invoke(app, [*args, *teacher, "--api-base", secret_base, "-c", "2"])
    assert res.exit_code == 0, res.output
    assert "teacher targets" in res.output
    assert "strategy agrees with the gold label on" in res.output
    assert "disagreeing turns:" in res.output and "kept" in res.output
    meta = json.loads((out / "export.json").read_text())
    assert meta["teacher"]["lm"]["api_base"] == "http://user:***@teacher.example/v1"
    assert "s3cretpassw0rd" not in (out / "export.json").read_text()
    assert "s3cretpassw0rd" not in res.output
    # Re-running the finished export needs --overwrite, then answers everything from OUT.
    again = CliRunner().invoke(app, [*args, *teacher, "--api-base", secret_base, "--overwrite"])
    assert again.exit_code == 0, again.output
    assert "teacher LM calls this run: 0" in again.output
    # Errors are one clean line.
    for bad, needle in (
        ([*args, "--targets", "teacher", "--overwrite"], "needs a teacher"),
        ([*args, "--teacher-lm", "fake-teacher", "--overwrite"], "need --teacher SPEC"),
    ):
        res = CliRunner().invoke(app, bad)
        assert res.exit_code == 1 and needle in res.output, res.output
        assert "Traceback" not in res.output
    # A value outside the choice is Click's usage error (exit 2), listing the choices.
    res = CliRunner().invoke(app, [*args, "--targets", "mine"])
    assert res.exit_code == 2 and "gold" in res.output and "Traceback" not in res.output


@pytest.mark.slow
def test_teacher_sft_adapter_shows_its_origin_and_cost_in_compare(
    taught, tiny_model_dir: Path, tmp_path: Path
) -> None:
    """export --teacher -> finetune run -> compare: the adapter's metadata carries the export's
    targets, teacher and cost, and compare's knowledge column reads them."""
    from csc.eval.compare import compare_supporters
    from csc.finetune.recipes import Recipe
    from csc.finetune.train import METADATA_FILE, train

    out, result, _ = taught
    recipe = Recipe.from_dict(tiny_recipe_dict(tiny_model_dir), source="tiny.yaml")
    run = train(out, recipe, tmp_path / "run", max_steps=1, device="cpu")
    meta = json.loads((tmp_path / "run" / METADATA_FILE).read_text())
    assert meta["data"]["targets"] == "teacher"
    assert meta["data"]["teacher"]["spec"] == "zero-shot"
    assert meta["data"]["export_cost"] == result.metadata["cost"]
    test_ids = set(result.metadata["split_dialogue_ids"]["test"])
    comparison = compare_supporters(
        [d for d in read_dialogues(SAMPLE) if d.id in test_ids],
        {"student": f"finetuned:{tmp_path / 'run'}"},
        context="reference",
        limit=1,
        num_threads=1,
        with_bertscore=False,
        lm_factory=lambda spec: FakeTeacherLM(),
        progress=False,
    )
    row = comparison.rows[0]
    cost = result.metadata["cost"]
    assert row.knowledge == "teacher SFT"
    assert row.making_tokens == cost["prompt_tokens"] + cost["completion_tokens"] > 0
    assert row.making_s == pytest.approx(cost["wall_time_s"] + meta["wall_time_s"], abs=0.01)
    assert run.wall_time_s > 0
