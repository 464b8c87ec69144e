"""`csc optimize --program rolecs` and `csc synthesize --program`: RoleCS's supporter agents are
compiled against their own metrics, saved as one program, and run by the synthesis loop."""

from __future__ import annotations

import json

import dspy
import pytest
from rolecs_demo_lm import (
    NO_STRATEGY_REPLY,
    agent_demo_lm,
    field_value,
    labelled_dialogues,
    rolecs_recorder_lm,
)

from csc.data.profiles import CustomerProfile
from csc.eval.examples import split_dialogues
from csc.eval.splits import data_sha256
from csc.framework import Framework
from csc.optimizers import load_program, save_program
from csc.optimizers.optimize import optimize_rolecs, project_lm_calls
from csc.programs.rolecs import RoleCS
from csc.programs.rolecs_agents import RoleCSAgents, rolecs_examples

FW = Framework.load("csc")
PROFILE = CustomerProfile(id="p1", description="You are a calm customer who writes briefly.")


def _examples(n: int):
    parts = split_dialogues(labelled_dialogues(n), seed=0)
    return rolecs_examples(parts.train, FW, "en"), rolecs_examples(parts.dev, FW, "en")


@pytest.fixture(scope="module")
def compiled():
    train, dev = _examples(12)
    lm, engine = agent_demo_lm()
    result = optimize_rolecs(train, dev, optimizer="bootstrap", lm=lm, num_threads=2)
    return result, train, dev, lm, list(engine.requests)


def test_examples_follow_the_labelled_turns():
    examples = rolecs_examples(labelled_dialogues(1), FW, "en")
    assert [ex.strategy for ex in examples] == ["GT", "IV", "RI", "AC"]
    assert [ex.stage for ex in examples] == ["connecting", "connecting", "resolving", "maintaining"]
    assert examples[1].reply == "Please confirm your card number (code IV)."
    assert len(examples[1].history) == 2 and examples[1].scenario == ""
    assert set(examples[0].inputs().keys()) == {"scenario", "history"}


def test_each_agent_gains_only_from_its_demos(compiled):
    result, _, dev, lm, _ = compiled
    agents = result.metadata["agents"]
    assert set(agents) == {"supporter_assistant", "supporter"}
    # Zero-shot, the assistant answers OT and the reply carries out no strategy: both score 0.
    assert agents["supporter_assistant"]["dev_before"] == 0.0
    assert agents["supporter"]["dev_before"] == 0.0
    assert agents["supporter_assistant"]["dev_after"] > 0 and agents["supporter"]["dev_after"] > 0
    assert agents["supporter"]["metric"] == "adherence"
    assert (result.dev_before, result.dev_after) == (
        agents["supporter_assistant"]["dev_before"],
        agents["supporter_assistant"]["dev_after"],
    )
    program = result.program
    assert isinstance(program, RoleCSAgents)
    taught = {d["strategy"] for d in program.supporter_assistant.demos}
    expected = 100 * sum(ex.strategy in taught for ex in dev) / len(dev)
    assert agents["supporter_assistant"]["dev_after"] == pytest.approx(expected, abs=0.01)
    with dspy.context(lm=lm):
        replies = [program(history=ex.history, strategy=ex.strategy).response for ex in dev]
    shown = {d["strategy"].split(" ")[0] for d in program.supporter.demos}
    assert [r != NO_STRATEGY_REPLY for r in replies] == [ex.strategy in shown for ex in dev]


def test_saved_demos_are_lean_and_hold_no_labeler_calls(compiled):
    program = compiled[0].program
    for demo in program.supporter_assistant.demos:
        # The definitions are in every live call; a demo does not repeat them.
        assert set(demo) <= {"scenario", "history", "feedback", "stage", "strategy"}
        assert demo["strategy"] in FW.codes
    for demo in program.supporter.demos:
        assert set(demo) <= {"scenario", "strategy", "history", "reply"}
        # The supporter is given a strategy with its definition, labelled demos included.
        assert demo["strategy"].startswith(demo["strategy"].split(" ")[0] + " (")


def test_usage_and_projection_are_recorded(compiled):
    result, train, dev, _, requests = compiled
    meta = result.metadata
    assert meta["kind"] == "rolecs" and meta["labeler"] == "zero-shot"
    assert meta["lm_calls"] == len(requests)
    assert sum(a["lm_usage"]["calls"] for a in meta["agents"].values()) == meta["lm_calls"]
    labeler_calls = sum("expert annotator" in system for system, _ in requests)
    assert labeler_calls >= 2 * len(dev)  # dev before and after, one per reply
    projection = project_lm_calls("rolecs", "bootstrap", "light", len(train), len(dev))
    assert meta["lm_calls"] <= projection.total


def test_saved_program_loads_as_agents_and_into_rolecs(compiled, tmp_path):
    result = compiled[0]
    path = save_program(result.program, tmp_path / "rolecs.json", result.metadata)
    state = json.loads(path.read_text())
    assert {"supporter_assistant", "supporter"} <= set(state)
    loaded, meta = load_program(path)
    assert isinstance(loaded, RoleCSAgents) and meta["kind"] == "rolecs"
    # Saved demos keep histories as they render in a prompt.
    saved, live = loaded.supporter.demos[0]["history"], result.program.supporter.demos[0]["history"]
    assert saved == (live if isinstance(live, str) else live.format())
    rolecs = RoleCS(FW, "en", judge=False)
    planner_instructions = rolecs.planner.signature.instructions
    rolecs.load(str(path))
    assert len(rolecs.supporter_assistant.demos) == len(result.program.supporter_assistant.demos)
    assert len(rolecs.supporter.demos) == len(result.program.supporter.demos)
    assert rolecs.planner.demos == [] and rolecs.planner.signature.instructions == (
        planner_instructions
    )


def test_rolecs_refuses_a_state_without_its_agents(tmp_path):
    from csc.programs.supporter import StrategyPredictor

    path = tmp_path / "strategy.json"
    StrategyPredictor().save(str(path))
    with pytest.raises(ValueError, match="none of the RoleCS agents"):
        RoleCS(FW, "en", judge=False).load(str(path))


# ---------------------------------------------------------------------------- synthesize


def _program_with_demo(tmp_path, reply: str):
    """A RoleCS agents program whose supporter has one demo unlike any default prompt."""
    from csc.signatures.types import DialogueHistory

    program = RoleCSAgents(FW, "en")
    program.supporter.demos = [
        {
            "scenario": "A customer lost a card.",
            "strategy": FW.render_strategy("PR", "en"),
            "history": DialogueHistory.of([], language="en"),
            "reply": reply,
        }
    ]
    program.supporter_assistant.demos = [
        {
            "scenario": "A customer lost a card.",
            "history": DialogueHistory.of([], language="en"),
            "feedback": "none",
            "stage": "connecting",
            "strategy": "GT",
        }
    ]
    meta = {"kind": "rolecs", "framework": "csc", "language": "en"}
    return save_program(program, tmp_path / "agents.json", meta)


@pytest.fixture()
def fake_lms(monkeypatch):
    """Every LM the CLI builds is the scripted RoleCS cast; yields the prompts it answered."""
    import csc.lm

    lm, engine = rolecs_recorder_lm()
    monkeypatch.setattr(csc.lm, "build_lm", lambda spec, **kw: lm)
    return engine.requests


def _synthesize(out, *extra):
    from typer.testing import CliRunner

    from csc.cli import app

    args = ["synthesize", "--out", str(out), "-n", "1", "--topics", "product", "--lm", "openai/x"]
    args += ["--no-filter", "--max-utterances", "8", "--concurrency", "1", *extra]
    return CliRunner().invoke(app, args)


def test_synthesize_sends_the_saved_demos(tmp_path, fake_lms):
    marker = "Unusual demo reply: could you tell me the last four digits of the lost card?"
    program = _program_with_demo(tmp_path, marker)
    result = _synthesize(tmp_path / "with", "--program", str(program))
    assert result.exit_code == 0, result.output
    supporter_prompts = [
        messages
        for system, messages in fake_lms
        if "You are a professional customer-support agent" in system
    ]
    assert supporter_prompts
    # The demo reaches the supporter as a conversation turn before every question.
    assert all(
        any(field_value(text, "reply") == marker for _, text in messages[:-1])
        for messages in supporter_prompts
    )
    summary = json.loads((tmp_path / "with" / "summary.json").read_text())
    assert summary["program"] == {"path": str(program), "sha256": data_sha256(program)}
    run = json.loads((tmp_path / "with" / "run.json").read_text())
    assert run["config"]["program_sha256"] == data_sha256(program)

    # Without --program no prompt carries the demo, and the summary names no program.
    fake_lms.clear()
    result = _synthesize(tmp_path / "without")
    assert result.exit_code == 0, result.output
    assert fake_lms and not any(marker in text for _, messages in fake_lms for _, text in messages)
    summary = json.loads((tmp_path / "without" / "summary.json").read_text())
    assert summary["program"] is None
    run = json.loads((tmp_path / "without" / "run.json").read_text())
    assert run["config"]["program_sha256"] is None
    # A run with the default prompts keeps the key it had before programs existed.
    from csc.programs.run_folder import digest
    from csc.programs.synthesis import SynthesisConfig

    config = SynthesisConfig.model_validate(run["config"])
    earlier = {k: v for k, v in run["config"].items() if k != "program_sha256"}
    assert run["config_hash"] == config.digest() == digest(earlier)[:12]


def test_synthesize_refuses_a_program_that_does_not_fit(tmp_path, fake_lms):
    from csc.programs.supporter import StrategyPredictor

    strategy = save_program(
        StrategyPredictor(),
        tmp_path / "s.json",
        {"kind": "strategy", "framework": "csc", "language": "en"},
    )
    result = _synthesize(tmp_path / "a", "--program", str(strategy))
    assert result.exit_code == 1 and "optimize --program rolecs" in result.output
    agents = _program_with_demo(tmp_path, "hello")
    result = _synthesize(tmp_path / "b", "--program", str(agents), "--lang", "zh")
    assert result.exit_code == 1 and "--lang en" in result.output
    # The same folder resumes only with the same program.
    assert _synthesize(tmp_path / "c").exit_code == 0
    again = _synthesize(tmp_path / "c", "--program", str(agents))
    assert again.exit_code == 1 and "program_sha256" in again.output


def test_cli_optimize_rolecs_saves_one_program_with_both_agents(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    import csc.lm
    from csc.cli import app
    from csc.data.io import write_dialogues
    from csc.eval.harness import supporter_from_spec

    data = tmp_path / "dialogues.jsonl"
    write_dialogues(labelled_dialogues(10), data, "jsonl", framework=FW)
    lm, _ = agent_demo_lm()
    monkeypatch.setattr(csc.lm, "build_lm", lambda spec, **kw: lm)
    out = tmp_path / "rolecs.json"
    args = ["optimize", "--program", "rolecs", "--train", str(data), "--lm", "openai/x"]
    result = CliRunner().invoke(app, [*args, "--concurrency", "1", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "supporter_assistant dev acc: before 0.00" in result.output
    assert "supporter dev adherence: before 0.00" in result.output
    assert "csc synthesize --program" in result.output
    meta = json.loads(out.with_name("rolecs.meta.json").read_text())
    assert meta["kind"] == "rolecs" and set(meta["agents"]) == {"supporter_assistant", "supporter"}
    assert meta["train_dialogue_ids"] and not set(meta["train_dialogue_ids"]) & set(
        meta["dev_dialogue_ids"]
    )
    # The saved agents are a supporter too: `optimized:P.json` in evaluate / compare / export.
    spec = supporter_from_spec(f"optimized:{out}")
    assert isinstance(spec.program, RoleCSAgents)
    assert spec.seen_ids == set(meta["train_dialogue_ids"]) | set(meta["dev_dialogue_ids"])
    with dspy.context(lm=lm):
        pred = spec.program(history=rolecs_examples(labelled_dialogues(1), FW, "en")[0].history)
    assert pred.strategy in FW.codes and isinstance(pred.response, str)
    # Flags that only make sense for other programs are refused.
    bad = CliRunner().invoke(app, [*args, "--metric", "acc+bertscore", "--out", str(out)])
    assert bad.exit_code == 1 and "own metrics" in bad.output
    bad = CliRunner().invoke(
        app, ["optimize", "--train", str(data), "--labeler-lm", "x", "--out", str(out)]
    )
    assert bad.exit_code == 1 and "--program rolecs" in bad.output
