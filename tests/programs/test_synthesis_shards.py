"""Sharded synthesis: --shard I/N partitions the grid, shards resume, merge rebuilds the run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rolecs_fakes import Script, ScriptedLM
from test_synthesis import make_run

from csc.programs.synthesis import (
    RunConfigError,
    ShardError,
    merge_runs,
    parse_shard,
    plan_grid,
    select_shard,
)


def records(path: Path) -> dict[str, dict]:
    if not path.exists():
        return {}
    out = {}
    for line in path.read_text().splitlines():
        if line.strip():
            obj = json.loads(line)
            out[obj["id"]] = obj
    return out


def comparable(dialogue: dict) -> dict:
    """A dialogue without what legitimately differs between runs (usage timings)."""
    meta = {k: v for k, v in dialogue["metadata"].items() if k != "usage"}
    return {**dialogue, "metadata": meta}


def test_parse_shard():
    assert parse_shard("0/3") == (0, 3) and parse_shard(None) is None
    for bad in ("3/3", "-1/2", "1", "a/b", "0/0"):
        with pytest.raises(ShardError, match="I/N"):
            parse_shard(bad)


def test_shards_partition_the_grid_and_grow_with_n():
    from test_synthesis import PROFILES, TOPICS

    items = plan_grid(TOPICS, PROFILES, 10, seed=1, run_key="k")
    parts = [select_shard(items, (i, 3)) for i in range(3)]
    keys = [item.key for part in parts for item in part]
    assert sorted(keys) == sorted(item.key for item in items) and len(set(keys)) == 10
    assert [len(p) for p in parts] == [4, 3, 3]
    bigger = select_shard(plan_grid(TOPICS, PROFILES, 16, seed=1, run_key="k"), (1, 3))
    assert [i.key for i in bigger[: len(parts[1])]] == [i.key for i in parts[1]]


def test_union_of_shards_equals_unsharded_run_and_merge(tmp_path):
    whole = tmp_path / "whole"
    make_run(whole, Script()).run(8, concurrency=3, progress=False)
    shard_dirs = []
    for i in range(3):
        d = tmp_path / f"shard{i}"
        summary = make_run(d, Script()).run(8, concurrency=2, progress=False, shard=(i, 3))
        assert summary["shard"] == f"{i}/3" and summary["totals"]["missing"] == 0
        shard_dirs.append(d)
    # Resuming a shard does nothing; resuming it as another shard is refused.
    script = Script()
    again = make_run(shard_dirs[1], script).run(8, progress=False, shard=(1, 3))
    assert again["this_run"]["already_done"] == again["this_run"]["requested"] and not script.calls
    assert len(again["invocations"]) == 2
    with pytest.raises(RunConfigError, match="shard 1/3"):
        make_run(shard_dirs[1], Script()).run(8, progress=False, shard=(2, 3))
    with pytest.raises(RunConfigError, match="unsharded"):
        make_run(shard_dirs[1], Script()).run(8, progress=False)

    merged = tmp_path / "merged"
    summary = merge_runs(merged, shard_dirs)
    want = records(whole / "dialogues.jsonl")
    got = records(merged / "dialogues.jsonl")
    assert set(got) == set(want) and len(want) == 8
    # The scripted LM is deterministic: the dialogues themselves are identical too.
    assert {k: comparable(v) for k, v in got.items()} == {k: comparable(v) for k, v in want.items()}
    assert summary["merged"]["all_shards"] is True
    assert summary["merged"]["shards"] == ["0/3", "1/3", "2/3"]
    assert summary["totals"]["kept"] == 8 and summary["totals"]["missing"] == 0
    # Every invocation of every shard is listed (shard 1 ran twice), with the usage summed.
    assert len(summary["invocations"]) == 4
    calls = sum(inv["lm_usage"]["calls"] for inv in summary["invocations"])
    assert summary["totals"]["lm_usage"]["calls"] == calls > 0
    # The merged folder is an ordinary run: the same flags resume it, and nothing is redone.
    script = Script()
    resumed = make_run(merged, script).run(8, progress=False)
    assert resumed["this_run"]["already_done"] == 8 and not script.calls
    assert resumed["totals"]["invocations"] == 5


def test_merge_keeps_failures_only_when_unfinished(tmp_path):
    def fail(role, messages):
        return "no fields here" if role == "planner" else None

    a, b = tmp_path / "a", tmp_path / "b"
    make_run(a, Script(fail=fail)).run(2, progress=False, shard=(0, 2))
    make_run(b, Script()).run(2, progress=False, shard=(1, 2))
    summary = merge_runs(tmp_path / "m", [a, b])
    assert summary["totals"]["failed"] == 1 and summary["totals"]["kept"] == 1
    assert len(records(tmp_path / "m" / "failures.jsonl")) == 1
    # Finishing the failed dialogue in its shard, then merging again, drops the failure.
    make_run(a, Script()).run(2, progress=False, shard=(0, 2))
    summary = merge_runs(tmp_path / "m2", [a, b])
    assert summary["totals"]["failed"] == 0 and summary["totals"]["kept"] == 2
    assert records(tmp_path / "m2" / "failures.jsonl") == {}


def test_merge_refuses_different_configurations(tmp_path):
    make_run(tmp_path / "a", Script()).run(1, progress=False)
    make_run(tmp_path / "b", Script(), seed=5).run(1, progress=False)
    with pytest.raises(RunConfigError, match="same configuration"):
        merge_runs(tmp_path / "m", [tmp_path / "a", tmp_path / "b"])
    with pytest.raises(RunConfigError, match="not a synthesis run folder"):
        merge_runs(tmp_path / "m", [tmp_path / "nothing"])


def test_cli_shard_and_merge(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    import csc.lm
    from csc.cli import app

    monkeypatch.setattr(csc.lm, "build_lm", lambda spec, **kw: ScriptedLM(Script()))
    common = ["--dialogues", "4", "--topics", "product", "--lm", "openai/fake", "--show", "0"]
    runner = CliRunner()
    bad = runner.invoke(app, ["synthesize", "--out", str(tmp_path / "x"), "--shard", "2/2"])
    assert bad.exit_code == 1 and "I/N" in bad.output
    for i in range(2):
        res = runner.invoke(
            app, ["synthesize", "--out", str(tmp_path / f"s{i}"), "--shard", f"{i}/2", *common]
        )
        assert res.exit_code == 0, res.output
        assert f"shard {i}/2" in res.output
    res = runner.invoke(
        app,
        [
            "synthesize",
            "merge",
            str(tmp_path / "s0"),
            str(tmp_path / "s1"),
            "--out",
            str(tmp_path / "all"),
        ],
    )
    assert res.exit_code == 0, res.output
    assert "4 kept" in res.output
    stats = json.loads((tmp_path / "all" / "stats.json").read_text())
    assert stats["dialogues"] == 4
    res = runner.invoke(
        app, ["synthesize", "merge", str(tmp_path / "s0"), "--out", str(tmp_path / "all")]
    )
    assert res.exit_code == 0 and "NOT all shards" in res.output
