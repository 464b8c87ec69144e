"""The rewriting pipeline and its runner with a scripted LM: every stage, counts, resume,
failures, and no PII in any LM prompt or output file."""

from __future__ import annotations

import json
from pathlib import Path

import dspy
import pytest
from rewrite_fakes import FIXTURES, PII_VALUES, RewriteScript, lm

from csc.data.io import read_dialogues
from csc.framework import Framework
from csc.programs.rewrite import RewritePipeline, strip_trailing_notes, structure_problems
from csc.programs.rewrite_run import RewriteConfig, RewriteRun
from csc.programs.rule_filter import RuleFilterConfig

FW = Framework.load("csc")


def raw(lang: str):
    return list(
        read_dialogues(
            FIXTURES / f"raw_{lang}.json",
            mapping=FIXTURES / f"raw_{lang}.mapping.yaml",
            allow_unlabelled=True,
        )
    )


def pipeline(script: RewriteScript, lang: str = "en", **kw) -> RewritePipeline:
    fake = lm(script)
    return RewritePipeline(
        FW, lang, lms=dict.fromkeys(("prefilter", "rewriter", "judge", "labeler"), fake), **kw
    )


def test_kept_dialogue_is_labelled_alternating_and_notes_are_stripped():
    script = RewriteScript(turns=12)
    pred = pipeline(script)(raw("en")[0])
    assert pred.outcome == "kept" and pred.stage == "done"
    d = pred.dialogue
    assert d.alternates() and all(t.strategy for t in d.supporter_turns)
    assert not any("Note" in t.text for t in d.turns)
    assert d.metadata["notes_stripped"] == 6
    u = d.metadata["utilization"]
    assert u["before"]["turns"] == 6 and u["after"]["turns"] == 6
    assert u["before"]["using"] == 6  # the scripted labeler says PS
    assert set(d.metadata["usage"]) == {"prefilter", "rewriter", "judge", "labeler"}
    assert script.calls.count("rewriter") == 1


def test_rule_drop_makes_no_lm_call():
    script = RewriteScript()
    dropped = next(d for d in raw("en") if d.id == "EN-1003")
    pred = pipeline(script)(dropped)
    assert (pred.outcome, pred.stage, pred.reason) == ("dropped", "rules", "short_customer_turns")
    assert script.calls == []


def test_prefilter_drop_records_the_reason():
    pred = pipeline(RewriteScript(abusive="X200"))(raw("en")[1])
    assert (pred.outcome, pred.stage, pred.reason) == ("dropped", "prefilter", "abusive")


def test_postfilter_rejects_short_or_judged_dialogues_with_reasons():
    short = pipeline(RewriteScript(turns=6))(raw("en")[0])
    assert short.outcome == "rejected" and "too_few_utterances" in short.reason
    judged = pipeline(RewriteScript(judge={"no_noise": False}))(raw("en")[0])
    assert judged.outcome == "rejected" and judged.reason.startswith("no_noise")
    assert judged.dialogue.metadata["postfilter"]["judge"]["no_noise"]["pass"] is False


def test_structure_problems():
    from csc.dialogue import Dialogue, Speaker, Turn

    d = Dialogue(
        id="x",
        turns=[
            Turn(speaker=Speaker.SUPPORTER, text="a"),
            Turn(speaker=Speaker.SUPPORTER, text="b"),
        ],
    )
    problems = structure_problems(d, 1, 50)
    assert "speakers_do_not_alternate" in problems
    assert any(p.startswith("supporter_turns_without_strategy") for p in problems)


def test_strip_trailing_notes():
    assert strip_trailing_notes("好的，已为您处理。（注：改写后体现解决实施）") == (
        "好的，已为您处理。",
        1,
    )
    assert strip_trailing_notes("Sure (Note: empathy added) (strategy: EM)") == ("Sure", 2)
    assert strip_trailing_notes("Call us (24/7) anytime") == ("Call us (24/7) anytime", 0)


def make_run(out: Path, script: RewriteScript, lang: str, **kw) -> RewriteRun:
    fake = lm(script)
    roles = ("prefilter", "rewriter", "judge", "labeler")
    config = RewriteConfig(
        data=str(FIXTURES / f"raw_{lang}.json"),
        framework="csc",
        framework_digest=RewriteConfig.framework_digest_of(FW),
        language=lang,
        rules=RuleFilterConfig(),
        redact=True,
        prefilter=True,
        judge=True,
        utilization=True,
        min_utterances=10,
        max_utterances=50,
        temperature=0.7,
        seed=0,
        lms=dict.fromkeys(roles, "scripted"),
    )
    pipe = RewritePipeline(FW, lang, lms=dict.fromkeys(roles, fake), **kw)
    return RewriteRun(out, config, pipe)


@pytest.mark.parametrize("lang", ["zh", "en"])
def test_no_pii_value_reaches_the_lm_or_any_output_file(tmp_path, lang):
    script = RewriteScript(turns=12)
    summary = make_run(tmp_path, script, lang).run(raw(lang), concurrency=2, progress=False)
    assert script.prompts, "the LM was called"
    prompts = "\n".join(script.prompts)
    written = "\n".join(p.read_text(encoding="utf-8") for p in tmp_path.iterdir())
    for value in PII_VALUES:
        assert value not in prompts, value
        assert value not in written, value
    assert "[" in prompts and ("[电话号码]" in prompts or "[Phone number]" in prompts)
    c = summary["counts"]
    assert c["in"] == c["dropped"] + c["rejected"] + c["kept"] + c["failed"] == len(raw(lang))


def test_summary_counts_and_resume_after_failures(tmp_path):
    broken = RewriteScript(raw="this is not the expected format")
    s1 = make_run(tmp_path, broken, "zh").run(raw("zh"), progress=False)
    c1 = s1["counts"]
    assert c1["failed"] == 3 and c1["dropped"] == 3 and c1["kept"] == 0
    assert c1["dropped_by_rule"] == {
        "too_few_turns": 1,
        "too_many_turns": 0,
        "supporter_heavy": 0,
        "short_customer_turns": 1,
        "long_utterance": 1,
    }
    failures = [json.loads(x) for x in (tmp_path / "failures.jsonl").read_text().splitlines()]
    assert {f["role"] for f in failures} == {"rewriter"}
    assert all("not the expected format" in (f["raw_output"] or "") for f in failures)

    fixed = RewriteScript(turns=12)
    s2 = make_run(tmp_path, fixed, "zh").run(raw("zh"), progress=False)
    c2 = s2["counts"]
    assert (c2["in"], c2["kept"], c2["failed"], c2["dropped"]) == (6, 3, 0, 3)
    assert s2["this_run"]["already_done"] == 3 and s2["this_run"]["processed"] == 3
    assert fixed.calls.count("rewriter") == 3
    assert s2["tokens"]["rewriter"]["calls"] == 6  # failed attempts' tokens are counted too
    assert s2["utilization"]["after_kept"]["share"] is not None
    kept = (tmp_path / "dialogues.jsonl").read_text().splitlines()
    assert len(kept) == len({json.loads(x)["metadata"]["key"] for x in kept}) == 3


def test_a_changed_configuration_is_refused(tmp_path):
    from csc.programs.rewrite_run import RunConfigError

    make_run(tmp_path, RewriteScript(), "en").run(raw("en")[:1], progress=False)
    run = make_run(tmp_path, RewriteScript(), "zh")
    with pytest.raises(RunConfigError, match="different configuration"):
        run.run(raw("zh")[:1], progress=False)


def test_dspy_settings_are_untouched():
    assert dspy.settings.lm is None


@pytest.mark.parametrize("fmt", ["dianjin", "jsonl", "hf"])
def test_every_input_format_csc_data_reads(tmp_path, fmt):
    from csc.data.io import write_dialogues

    path = tmp_path / {"dianjin": "raw.json", "jsonl": "raw.jsonl", "hf": "raw_ds"}[fmt]
    write_dialogues(raw("zh"), path, fmt)
    dialogues = list(read_dialogues(path, allow_unlabelled=True))
    assert len(dialogues) == 6
    summary = make_run(tmp_path / "out", RewriteScript(), "zh").run(dialogues, progress=False)
    assert summary["counts"]["kept"] == 3


def test_labeler_is_optimizable_saved_and_used_by_the_pipeline(tmp_path):
    from csc.eval.examples import supporter_examples
    from csc.optimizers import load_program, optimize_program, save_program
    from csc.programs.supporter import StrategyLabeler

    samples = list(
        read_dialogues(Path(__file__).resolve().parents[2] / "data/samples/sample_en.json")
    )
    examples = supporter_examples(samples, language="en")[:6]
    script = RewriteScript(label="GT")
    result = optimize_program(
        "labeler", examples, examples, optimizer="bootstrap", lm=lm(script), num_threads=1
    )
    assert isinstance(result.program, StrategyLabeler)
    # The labeler reads the gold reply: every call's prompt carries a response field.
    assert script.calls and set(script.calls) == {"labeler"}
    assert any("[[ ## response ## ]]" in p for p in script.prompts)
    path = save_program(result.program, tmp_path / "labeler.json", result.metadata)
    loaded, meta = load_program(path)
    assert meta["kind"] == "labeler" and isinstance(loaded, StrategyLabeler)
    pred = pipeline(RewriteScript(label="EM"), labeler=loaded)(raw("en")[0])
    assert pred.dialogue.metadata["utilization"]["after"]["labels"][0] == "EM"


def test_shards_together_are_the_unsharded_run_and_merge_into_it(tmp_path):
    from csc.programs.rewrite_run import merge_rewrite_runs

    def outcomes(folder: Path) -> dict[str, str]:
        found = {}
        for name in ("dialogues.jsonl", "rejected.jsonl", "dropped.jsonl"):
            path = folder / name
            for line in path.read_text().splitlines() if path.exists() else []:
                record = json.loads(line)
                found[record.get("key") or record["metadata"]["key"]] = name
        return found

    whole = tmp_path / "whole"
    make_run(whole, RewriteScript(turns=12), "zh").run(raw("zh"), progress=False)
    shards = [tmp_path / f"s{i}" for i in range(2)]
    for i, folder in enumerate(shards):
        summary = make_run(folder, RewriteScript(turns=12), "zh").run(
            raw("zh"), progress=False, shard=(i, 2)
        )
        assert summary["counts"]["in"] == 3 and summary["shard"] == f"{i}/2"
    parts = [outcomes(f) for f in shards]
    assert not set(parts[0]) & set(parts[1])
    assert {**parts[0], **parts[1]} == outcomes(whole)
    with pytest.raises(Exception, match="shard 0/2"):  # a shard folder resumes only as itself
        make_run(shards[0], RewriteScript(turns=12), "zh").run(raw("zh"), progress=False)

    merged = merge_rewrite_runs(tmp_path / "merged", shards)
    assert merged["merged"]["all_shards"] and len(merged["invocations"]) == 2
    assert outcomes(tmp_path / "merged") == outcomes(whole)
    c = merged["counts"]
    assert c["in"] == 6 == c["dropped"] + c["rejected"] + c["kept"] + c["failed"]
    resumed = make_run(tmp_path / "merged", RewriteScript(turns=12), "zh").run(
        raw("zh"), progress=False
    )
    assert resumed["this_run"]["already_done"] == 6 and resumed["this_run"]["processed"] == 0
