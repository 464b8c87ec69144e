"""The `csc finetune` and `csc compare` entry points."""

from __future__ import annotations

import json
from pathlib import Path

import dspy
import pytest
import yaml
from conftest import tiny_recipe_dict
from typer.testing import CliRunner

from csc.cli import app

SAMPLE = Path(__file__).resolve().parents[2] / "data" / "samples" / "sample_en.json"
runner = CliRunner()


def test_export_cli_reports_counts_and_writes_test_split(tmp_path: Path) -> None:
    out = tmp_path / "sft"
    result = runner.invoke(
        app,
        [
            "finetune", "export", "--data", str(SAMPLE), "--out", str(out),
            "--task", "strategy", "--test-out", str(tmp_path / "test.jsonl"),
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    meta = json.loads((out / "export.json").read_text())
    assert meta["counts"]["test"]["dialogues"] == 1
    assert len((tmp_path / "test.jsonl").read_text().splitlines()) == 1
    assert "train" in result.output and str(meta["counts"]["train"]["rows"]) in result.output
    assert meta["prompt"] == "compact" and "compact prompt" in result.output  # the default
    full = runner.invoke(
        app,
        ["finetune", "export", "--data", str(SAMPLE), "--out", str(tmp_path / "full"),
         "--task", "strategy", "--prompt", "full"],
    )  # fmt: skip
    assert full.exit_code == 0, full.output
    assert json.loads((tmp_path / "full" / "export.json").read_text())["prompt"] == "full"
    bad = runner.invoke(
        app, ["finetune", "export", "--data", str(SAMPLE), "--out", "x", "--prompt", "tiny"]
    )
    assert bad.exit_code == 2 and "Invalid value for '--prompt'" in bad.output


def test_cli_errors_are_clean(tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["finetune", "export", "--data", str(tmp_path / "no.jsonl"), "--out", "x"]
    )
    assert result.exit_code == 1 and "no such file" in result.output
    bad = tmp_path / "bad.yaml"
    bad.write_text("trainer: {lerning_rate: 1}\n")
    result = runner.invoke(
        app, ["finetune", "run", "--data", str(tmp_path), "--recipe", str(bad), "--out", "o"]
    )
    assert result.exit_code == 1 and "lerning_rate" in result.output and str(bad) in result.output
    result = runner.invoke(app, ["finetune", "recipes"])
    assert "smollm2-135m-lora" in result.output


@pytest.mark.slow
def test_run_cli_trains_two_steps(tmp_path: Path, tiny_model_dir: Path) -> None:
    sft = tmp_path / "sft"
    assert (
        runner.invoke(
            app, ["finetune", "export", "--data", str(SAMPLE), "--out", str(sft)]
        ).exit_code
        == 0
    )
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe_dict(tiny_model_dir)))
    out = tmp_path / "run"
    result = runner.invoke(
        app,
        [
            "finetune", "run", "--data", str(sft), "--recipe", str(recipe), "--out", str(out),
            "--max-steps", "2", "--device", "cpu",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "trained 2 steps" in result.output
    meta = json.loads((out / "csc_finetune.json").read_text())
    assert meta["recipe_source"] == str(recipe) and meta["framework"] == "csc"
    assert meta["prompt"] == "compact" and "(compact prompt)" in result.output


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["compact", "full"])
def test_finetuned_supporter_sends_the_prompts_it_was_trained_on(
    variant: str, tmp_path: Path, tiny_model_dir: Path
) -> None:
    """export --prompt V, train a recipe with `prompt: V`, then `finetuned:RUN` from the run's
    metadata: the messages the supporter sends are the exported training prompts, byte for byte."""
    from datasets import load_from_disk

    from csc.data.io import read_dialogues
    from csc.eval.examples import supporter_examples
    from csc.eval.harness import supporter_from_spec

    sft, out = tmp_path / "sft", tmp_path / "run"
    exported = runner.invoke(
        app,
        ["finetune", "export", "--data", str(SAMPLE), "--out", str(sft), "--prompt", variant],
    )  # fmt: skip
    assert exported.exit_code == 0, exported.output
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(yaml.safe_dump({**tiny_recipe_dict(tiny_model_dir), "prompt": variant}))
    result = runner.invoke(
        app,
        ["finetune", "run", "--data", str(sft), "--recipe", str(recipe), "--out", str(out),
         "--max-steps", "1", "--device", "cpu"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    meta = json.loads((out / "csc_finetune.json").read_text())
    assert meta["prompt"] == variant and meta["cpu_time_s"] > 0
    program = supporter_from_spec(f"finetuned:{out}").program
    assert program.prompt == variant
    rows = [r for r in load_from_disk(str(sft))["train"] if r["turn"] == 4]
    by_task = {r["task"]: r for r in rows if r["dialogue_id"] == rows[0]["dialogue_id"]}
    dialogue = next(d for d in read_dialogues(SAMPLE) if d.id == rows[0]["dialogue_id"])
    example = next(e for e in supporter_examples([dialogue]) if e.turn_index == 4)
    gold = by_task["strategy"]["strategy"]
    # The LM answers the gold strategy, so the responder is asked for the exported response row.
    lm = dspy.utils.DummyLM([{"strategy": gold}, {"response": "Could you tell me more?"}])
    with dspy.context(lm=lm, adapter=dspy.ChatAdapter()):
        assert program(history=example.history).strategy == gold
    sent = [
        [{"role": m["role"], "content": m["content"]} for m in call["messages"]]
        for call in lm.history
    ]
    assert sent == [by_task["strategy"]["messages"][:-1], by_task["response"]["messages"][:-1]]
    assert ("strategy_definition" in sent[1][0]["content"]) == (variant == "full")


def test_compare_cli_writes_table_and_chart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fake_build_lm(spec: object, **_: object) -> dspy.BaseLM:
        return dspy.utils.DummyLM(
            {
                "`[[ ## strategy ## ]]`": {"strategy": "PS"},
                "`[[ ## response ## ]]`": {"response": "Let me check that for you."},
            }
        )

    monkeypatch.setattr("csc.lm.build_lm", fake_build_lm)
    out = tmp_path / "cmp"
    result = runner.invoke(
        app,
        [
            "compare", "--data", str(SAMPLE), "--split", "test", "--lm", "local",
            "--supporter", "zs=zero-shot", "--supporter", "direct=direct",
            "--supporter", "ft=finetuned:/x", "--context", "ref", "--limit", "3",
            "--no-bertscore", "--concurrency", "1", "--out", str(out),
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    for name in ("compare.md", "compare.csv", "compare.json", "compare.png"):
        assert (out / name).is_file()
    table = (out / "compare.md").read_text()
    # --limit 3: the first 3 dialogues of the file; --split test: the held-out one of them.
    turns = {
        line.split("|")[3].strip()
        for line in table.splitlines()
        if line.startswith(("| zs |", "| direct |", "| ft |"))
    }
    assert len(turns) == 1 and int(turns.pop()) > 0
    assert (out / "supporters" / "ft" / "metrics.json").is_file()
