"""The resumable synthesis runner: filter routing, resume, torn lines, failures, summary, CLI."""

from __future__ import annotations

import itertools
import json
import threading
from pathlib import Path

import pytest
from rolecs_fakes import Script, ScriptedLM

from csc.data.profiles import CustomerProfile
from csc.data.topics import resolve_topics
from csc.framework import Framework
from csc.lm import AGENT_ROLES
from csc.programs.synthesis import (
    RunConfigError,
    SynthesisConfig,
    SynthesisRun,
    plan_grid,
    read_run_dialogues,
)

FW = Framework.load("csc")
PROFILES = [
    CustomerProfile(id=f"p{i}", description=f"You are customer number {i}, calm and brief.")
    for i in range(3)
]
TOPICS = resolve_topics(["product,account"])


def make_run(out: Path, script: Script, seed: int = 0, filter: bool = True) -> SynthesisRun:
    config = SynthesisConfig.build(
        framework=FW,
        language="en",
        topics=TOPICS,
        profiles=PROFILES,
        seed=seed,
        max_utterances=12,
        temperature=0.7,
        filter=filter,
        lms={"default": "scripted"},
    )
    lm = ScriptedLM(script)
    return SynthesisRun(
        out,
        config,
        FW,
        PROFILES,
        lms=dict.fromkeys(AGENT_ROLES, lm),
    )


def ids(path: Path) -> list[str]:
    if not path.exists():
        return []
    return [json.loads(line)["id"] for line in path.read_text().splitlines() if line.strip()]


def test_grid_is_seeded_and_prefix_stable():
    big = plan_grid(TOPICS, PROFILES, 10, seed=3, run_key="k")
    small = plan_grid(TOPICS, PROFILES, 4, seed=3, run_key="k")
    assert [i.key for i in small] == [i.key for i in big[:4]]
    assert len({i.key for i in big}) == 10  # replicas beyond the 6-item grid get new keys
    assert [i.key for i in plan_grid(TOPICS, PROFILES, 4, seed=4, run_key="k")] != [
        i.key for i in small
    ]


def test_filter_routes_kept_and_rejected(tmp_path):
    counter = itertools.count()
    lock = threading.Lock()

    def judge(history):
        with lock:
            return {"natural_replies": next(counter) % 2 == 0}

    run = make_run(tmp_path, Script(judge=judge))
    summary = run.run(4, concurrency=2, progress=False)
    kept, rejected = ids(tmp_path / "dialogues.jsonl"), ids(tmp_path / "rejected.jsonl")
    assert len(kept) == 2 and len(rejected) == 2 and not set(kept) & set(rejected)
    for d in read_run_dialogues(tmp_path, "rejected"):
        assert d.metadata["judge"]["natural_replies"]["pass"] is False
        assert d.metadata["judge"]["natural_replies"]["reason"]
    assert summary["this_run"]["kept"] == 2 and summary["this_run"]["rejected"] == 2
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk["config_hash"] == run.key and on_disk["seed"] == 0
    assert on_disk["this_run"]["tokens"]["supporter"]["prompt_tokens"] > 0
    assert on_disk["lms"]["judge"] == "scripted"


def test_no_filter_keeps_everything_without_judging(tmp_path):
    script = Script(judge={"natural_replies": False})
    make_run(tmp_path, script, filter=False).run(3, progress=False)
    assert len(ids(tmp_path / "dialogues.jsonl")) == 3
    assert "judge" not in script.calls


def test_rerun_resumes_without_duplicates_and_repairs_torn_line(tmp_path):
    make_run(tmp_path, Script()).run(3, progress=False)
    first = ids(tmp_path / "dialogues.jsonl")
    # Same command again: nothing new.
    script = Script()
    summary = make_run(tmp_path, script).run(3, progress=False)
    assert summary["this_run"]["already_done"] == 3 and script.calls == []
    assert ids(tmp_path / "dialogues.jsonl") == first
    # A kill mid-write leaves a torn last line: it is cut and its dialogue redone.
    path = tmp_path / "dialogues.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:-1]) + lines[-1][:40])
    with pytest.warns(UserWarning, match="incomplete last line"):
        summary = make_run(tmp_path, Script()).run(5, progress=False)
    final = ids(path)
    assert len(final) == len(set(final)) == 5
    assert set(first) <= set(final)
    assert summary["this_run"]["kept"] == 3 and summary["totals"]["missing"] == 0


def test_failures_are_recorded_and_retried(tmp_path):
    def fail(role, messages):
        text = messages[-1]["content"]
        if role == "customer" and "customer number 1" in text:
            raise RuntimeError("upstream 503")
        if role == "planner" and "customer number 2" in text:
            return "no fields here at all"
        return None

    summary = make_run(tmp_path, Script(fail=fail)).run(6, concurrency=3, progress=False)
    records = [json.loads(line) for line in (tmp_path / "failures.jsonl").read_text().splitlines()]
    assert summary["this_run"]["failed"] == len(records) == 4  # 2 topics x profiles 1 and 2
    errors = {r["role"]: r for r in records}
    assert "upstream 503" in errors["customer"]["error"]
    assert errors["customer"]["partial_turns"] >= 1
    assert "no fields here at all" in errors["planner"]["raw_output"]
    assert len(ids(tmp_path / "dialogues.jsonl")) == 2
    # The next run retries exactly the failed ones.
    script = Script()
    summary = make_run(tmp_path, script).run(6, progress=False)
    assert summary["this_run"]["kept"] == 4 and summary["this_run"]["already_done"] == 2
    final = ids(tmp_path / "dialogues.jsonl")
    assert len(final) == len(set(final)) == 6


def test_different_configuration_in_same_folder_is_an_error(tmp_path):
    make_run(tmp_path, Script()).run(1, progress=False)
    with pytest.raises(RunConfigError, match="differs in: seed"):
        make_run(tmp_path, Script(), seed=1).run(1, progress=False)


def test_cli_synthesize_end_to_end(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    import csc.lm
    from csc.cli import app

    monkeypatch.setattr(csc.lm, "build_lm", lambda spec, **kw: ScriptedLM(Script()))
    out = tmp_path / "run"
    args = [
        "synthesize",
        "--out",
        str(out),
        "--dialogues",
        "2",
        "--topics",
        "product",
        "--concurrency",
        "2",
        "--lm",
        "openai/fake",
        "--to",
        "dianjin",
        "--show",
        "1",
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "Supporter [GT]:" in result.output
    assert len(ids(out / "dialogues.jsonl")) == 2
    stats = json.loads((out / "stats.json").read_text())
    assert stats["dialogues"] == 2 and stats["filter_pass_rate"]["all"] == 1.0
    released = json.loads((out / "dialogues.dianjin.json").read_text())
    assert released[0]["dialogue"][0]["strategy"] == "策略1 礼貌问候"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["lms"]["customer"] == "dummy"
    # A different configuration into the same folder is refused with a clear message.
    again = CliRunner().invoke(app, [*args[:-4], "--seed", "9"])
    assert again.exit_code == 1 and "different configuration" in again.output


def test_turn_token_budgets_apply_to_embedded_lms_only():
    from csc.cli.common import token_budgets
    from csc.lm import AGENT_ROLES, load_lm_settings
    from csc.programs.rolecs import EMBEDDED_TOKEN_BUDGETS

    def _token_budgets(value, settings, no_filter):  # as `csc synthesize` calls it
        roles = [r for r in AGENT_ROLES if r != "judge" or not no_filter]
        return token_budgets(value, settings, roles, EMBEDDED_TOKEN_BUDGETS)

    mixed = load_lm_settings(
        env={}, overrides={"model": "local"}, role_overrides={"judge": "openai/gpt-4o-mini"}
    )
    auto = _token_budgets("auto", mixed, no_filter=False)
    assert "judge" not in auto and auto["supporter"] == EMBEDDED_TOKEN_BUDGETS["supporter"]
    assert _token_budgets("none", mixed, no_filter=False) == {}
    assert set(_token_budgets("64", mixed, no_filter=True).values()) == {64}
