"""csc compare: the table and chart from fixed evaluation results, and a run on a dummy LM."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import dspy
import pytest

from csc.data.io import read_dialogues
from csc.eval.compare import (
    CompareError,
    Comparison,
    compare_supporters,
    markdown_table,
    parse_supporter_args,
    rows_from_result,
    write_comparison,
)
from csc.eval.harness import ContextResult, EvaluationResult

SAMPLE = Path(__file__).resolve().parents[2] / "data" / "samples" / "sample_en.json"


def _result(acc: float, bleu2: float, latency: float) -> EvaluationResult:
    contexts = {}
    for name, shift in (("reference", 0.0), ("generated", -5.0)):
        metrics = {
            "bleu2": bleu2 + shift,
            "bleu4": bleu2 / 2,
            "rougeL": 10.0,
            "bertscore": None,
            "acc": acc + shift,
            "macro_f1": acc / 2,
            "n_examples": 8,
            "prompt_tokens": 8000,
            "completion_tokens": 400,
            "mean_latency_s": latency,
        }
        contexts[name] = ContextResult(name, [], metrics, {}, 1.0)
    return EvaluationResult(contexts=contexts, info={})


@pytest.fixture
def comparison() -> Comparison:
    rows = []
    for name, spec, acc, bleu2, lat in (
        ("zero-shot", "zero-shot", 12.5, 3.0, 2.0),
        ("optimized", "optimized:p.json", 25.0, 4.0, 3.0),
        ("finetuned", "finetuned:runs/ft", 50.0, 6.5, 1.5),
    ):
        rows += rows_from_result(name, spec, _result(acc, bleu2, lat), lm="local")
    return Comparison(rows=rows, info={"data": "test.jsonl", "examples": 8, "lm": "local"})


def test_rows_carry_metrics_and_cost_per_turn(comparison: Comparison) -> None:
    ft = next(r for r in comparison.rows if r.supporter == "finetuned" and r.context == "reference")
    assert ft.metrics == {
        "B-2": 6.5,
        "B-4": 3.25,
        "R-L": 10.0,
        "BS": None,
        "ACC": 50.0,
        "F1": 25.0,
    }
    assert ft.prompt_tokens == 1000.0 and ft.completion_tokens == 50.0 and ft.latency_s == 1.5
    assert len(comparison.rows) == 6


def test_markdown_table_bolds_the_best_per_context(comparison: Comparison) -> None:
    table = markdown_table(comparison)
    lines = table.strip().splitlines()
    assert lines[0].startswith("| supporter | context | turns | B-2 | B-4 | R-L | BS | ACC | F1 |")
    assert len(lines) == 2 + 6
    ft_ref = next(line for line in lines if line.startswith("| finetuned | reference"))
    assert "**50.00**" in ft_ref and "**6.50**" in ft_ref and "| – |" in ft_ref
    zs_ref = next(line for line in lines if line.startswith("| zero-shot | reference"))
    assert "**" not in zs_ref.split("|")[4]  # B-2 of the worst supporter is not bold
    # prompt, cached, completion tokens per turn; no LiteLLM price for the embedded model.
    assert "| 1000 | – | 50.0 | – | 2.00 |" in zs_ref


def test_cost_per_turn_uses_litellm_prices_with_cached_tokens() -> None:
    litellm = pytest.importorskip("litellm")
    result = _result(50.0, 6.5, 1.0)
    result.contexts["reference"].metrics["cached_prompt_tokens"] = 6000
    row = rows_from_result("api", "zero-shot", result, lm="openai/gpt-4o-mini")[0]
    prompt, completion = litellm.cost_per_token(
        model="openai/gpt-4o-mini",
        prompt_tokens=8000,
        completion_tokens=400,
        cache_read_input_tokens=6000,
    )
    assert row.cached_prompt_tokens == 750.0
    assert row.cost_usd == pytest.approx((prompt + completion) / 8)
    assert row.cost_usd > 0


def test_write_comparison_files(comparison: Comparison, tmp_path: Path) -> None:
    paths = write_comparison(comparison, tmp_path)
    assert set(paths) == {"md", "csv", "json", "png"}
    md = paths["md"].read_text()
    assert "test.jsonl" in md and "| optimized | generated |" in md
    with paths["csv"].open() as fh:
        rows = list(csv.DictReader(fh))
    assert [r["supporter"] for r in rows[::2]] == ["zero-shot", "optimized", "finetuned"]
    assert float(rows[4]["ACC"]) == 50.0 and rows[4]["BS"] == ""
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert paths["png"].stat().st_size > 5000
    again = Comparison.from_dict(json.loads(paths["json"].read_text()))
    assert again.rows == comparison.rows


def test_parse_supporter_args() -> None:
    assert parse_supporter_args(["zs=zero-shot", "ft=finetuned:a=b", "direct"]) == {
        "zs": "zero-shot",
        "ft": "finetuned:a=b",
        "direct": "direct",
    }
    with pytest.raises(CompareError, match="twice"):
        parse_supporter_args(["a=zero-shot", "a=direct"])
    with pytest.raises(CompareError, match="NAME=SPEC"):
        parse_supporter_args(["=zero-shot"])
    with pytest.raises(CompareError, match="at least one"):
        parse_supporter_args([])


def _dummy_lm(spec: object) -> dspy.BaseLM:
    # Answers by which output field the prompt asks for (strategy, or the reply).
    return dspy.utils.DummyLM(
        {
            "starting with the field `[[ ## strategy ## ]]`": {"strategy": "GT"},
            "starting with the field `[[ ## response ## ]]`": {
                "response": "Hello, how can I help?"
            },
        }
    )


def test_compare_runs_every_supporter_on_the_same_turns_and_shares_lms() -> None:
    dialogues = list(read_dialogues(SAMPLE))[:2]
    built: list[str] = []

    def factory(spec: object) -> dspy.BaseLM:
        built.append(spec.model)  # type: ignore[attr-defined]
        return _dummy_lm(spec)

    comparison = compare_supporters(
        dialogues,
        {"a": "zero-shot", "b": "direct", "c": "finetuned:/nowhere"},
        lm="local",
        context="both",
        limit=5,
        num_threads=1,
        with_bertscore=False,
        lm_factory=factory,
        progress=False,
    )
    # zero-shot and direct share the default LM; the fine-tuned supporter brings its own.
    assert built == ["local", "finetuned:/nowhere"]
    assert [(r.supporter, r.context) for r in comparison.rows] == [
        (s, c) for s in "abc" for c in ("reference", "generated")
    ]
    assert {r.turns for r in comparison.rows} == {5}
    a_ref = comparison.rows[0]
    gold = [t.strategy for d in dialogues for t in d.supporter_turns][:5]
    assert a_ref.metrics["ACC"] == pytest.approx(100 * gold.count("GT") / 5)
    assert comparison.info["examples"] == 5


def test_finetuned_supporters_run_and_show_the_prompt_variant_they_were_trained_on(
    tmp_path: Path,
) -> None:
    from csc.eval.harness import supporter_from_spec

    dialogues = list(read_dialogues(SAMPLE))[:1]
    compact_run, old_run = tmp_path / "compact", tmp_path / "old"
    for run, meta in ((compact_run, {"prompt": "compact"}), (old_run, {})):
        run.mkdir()
        (run / "csc_finetune.json").write_text(json.dumps({"base_model": "local", **meta}))
    # A run from before the variant was recorded was trained on the full prompt.
    assert supporter_from_spec(f"finetuned:{old_run}").program.prompt == "full"
    lms: dict[str, dspy.BaseLM] = {}

    def factory(spec: object) -> dspy.BaseLM:
        return lms.setdefault(spec.model, _dummy_lm(spec))  # type: ignore[attr-defined]

    comparison = compare_supporters(
        dialogues,
        {"zs": "zero-shot", "ft": f"finetuned:{compact_run}"},
        lm="local",
        context="reference",
        limit=3,
        num_threads=1,
        with_bertscore=False,
        lm_factory=factory,
        progress=False,
    )
    assert [(r.supporter, r.prompt) for r in comparison.rows] == [
        ("zs", "full"),
        ("ft", "compact"),
    ]
    sent = {
        spec: "".join(m["content"] for call in lm.history for m in call["messages"])
        for spec, lm in lms.items()
    }
    assert "Emotion Management" in sent["local"]
    assert "Emotion Management" not in sent[f"finetuned:{compact_run}"]
    assert "strategy_definition" not in sent[f"finetuned:{compact_run}"]
    table = markdown_table(comparison)
    assert table.splitlines()[0].endswith("| latency_s | prompt | knowledge | made_tok | made_s |")
    # A run without recorded export or training times: gold SFT, no LM tokens, time unknown.
    assert next(line for line in table.splitlines() if line.startswith("| ft |")).endswith(
        "| compact | gold SFT | 0 | – |"
    )
    paths = write_comparison(comparison, tmp_path / "out")
    with paths["csv"].open() as fh:
        assert [r["prompt"] for r in csv.DictReader(fh)] == ["full", "compact"]


def test_compare_shows_where_knowledge_came_from_and_what_it_cost(tmp_path: Path) -> None:
    """The knowledge column and the one-time cost come from the program's sidecar, the adapter's
    csc_finetune.json and its export's export.json."""
    from csc.optimizers.store import save_program
    from csc.programs.supporter import Supporter

    dialogues = list(read_dialogues(SAMPLE))[:1]
    program = Supporter("csc", "en")
    program.strategist.demos = [dspy.Example(history="h", strategy="GT")]
    opt = save_program(
        program,
        tmp_path / "opt.json",
        {
            "kind": "supporter",
            "framework": "csc",
            "language": "en",
            "optimizer": "bootstrap",
            "seconds": 12.5,
            "lm_usage": {"total_tokens": 3400, "prompt_tokens": 3000, "completion_tokens": 400},
        },
    )
    # An instruction-only program (GEPA-like: no demos), with only the older token fields.
    plain = save_program(
        Supporter("csc", "en"),
        tmp_path / "plain.json",
        {
            "kind": "supporter",
            "framework": "csc",
            "language": "en",
            "seconds": 4.0,
            "prompt_tokens": 90,
            "completion_tokens": 10,
        },
    )
    export = tmp_path / "sft"
    export.mkdir()
    (export / "export.json").write_text(
        json.dumps(
            {
                "targets": "teacher",
                "teacher": {"spec": f"optimized:{opt}", "program": {"file": str(opt)}},
                "cost": {"wall_time_s": 30.0, "prompt_tokens": 5000, "completion_tokens": 600},
            }
        )
    )
    runs = {}
    for name, data in (
        ("teacher-ft", {"dir": str(export)}),  # read through the export folder
        ("gold-ft", {"targets": "gold", "export_cost": {"wall_time_s": 2.0}}),
    ):
        runs[name] = tmp_path / name
        runs[name].mkdir()
        (runs[name] / "csc_finetune.json").write_text(
            json.dumps(
                {"base_model": "local", "prompt": "compact", "data": data, "wall_time_s": 100.0}
            )
        )
    comparison = compare_supporters(
        dialogues,
        {
            "zs": "zero-shot",
            "opt": f"optimized:{opt}",
            "plain": f"optimized:{plain}",
            "tft": f"finetuned:{runs['teacher-ft']}",
            "gft": f"finetuned:{runs['gold-ft']}",
        },
        lm="local",
        context="reference",
        limit=2,
        num_threads=1,
        with_bertscore=False,
        lm_factory=_dummy_lm,
        progress=False,
        allow_seen=True,
    )
    got = {r.supporter: (r.knowledge, r.making_tokens, r.making_s) for r in comparison.rows}
    assert got == {
        "zs": ("none", 0, 0.0),
        "opt": ("prompt demos", 3400, 12.5),
        "plain": ("prompt instructions", 100, 4.0),
        # The teacher's optimization + its outputs (export) + training.
        "tft": ("teacher SFT", 3400 + 5600, 12.5 + 30.0 + 100.0),
        "gft": ("gold SFT", 0, 102.0),
    }
    tft = next(r for r in comparison.rows if r.supporter == "tft")
    assert set(tft.making) == {"teacher_optimization", "data", "training"}
    assert tft.making["data"]["targets"] == "teacher"
    table = markdown_table(comparison)
    assert next(x for x in table.splitlines() if x.startswith("| tft |")).endswith(
        "| teacher SFT | 9000 | 142.5 |"
    )
    paths = write_comparison(comparison, tmp_path / "out")
    with paths["csv"].open() as fh:
        assert [r["knowledge"] for r in csv.DictReader(fh)] == [
            "none",
            "prompt demos",
            "prompt instructions",
            "teacher SFT",
            "gold SFT",
        ]
    assert "knowledge: where the supporter's knowledge came from" in paths["md"].read_text()
    saved = json.loads(paths["json"].read_text())
    assert Comparison.from_dict(saved).rows[3].making["training"]["wall_time_s"] == 100.0
