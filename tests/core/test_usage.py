"""csc.usage: one count of every LM call, whatever thread made it (issue #17).

Each test runs the same calls at 1 and at 8 threads and checks the counted usage against the sum
over the individual calls DSPy recorded in the LM's history.
"""

from __future__ import annotations

import sys
import uuid
from pathlib import Path

import dspy
import pytest
from counting_lm import CountingLM, history_usage

from csc.data.io import read_dialogues
from csc.eval.examples import split_dialogues, supporter_examples
from csc.eval.harness import evaluate_supporter
from csc.eval.metrics import strategy_accuracy_metric
from csc.framework import Framework
from csc.optimizers import optimize_program
from csc.programs.supporter import StrategyPredictor, Supporter
from csc.usage import Usage, format_usage, meter, usage_label, usage_of

SAMPLE = Path(__file__).resolve().parents[2] / "data" / "samples" / "sample_en.json"
DIALOGUES = list(read_dialogues(SAMPLE))
FW = Framework.load("csc")


def _counted(usage: Usage) -> dict[str, int]:
    return {
        "calls": usage.calls,
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "cached_prompt_tokens": usage.cached_prompt_tokens,
    }


def test_meter_counts_every_call_and_dspy_cache_hits_apart() -> None:
    from dspy.lm15 import Message, Response, TextPart
    from dspy.lm15 import Usage as WireUsage

    class Engine:
        def complete(self, request):
            text = "[[ ## strategy ## ]]\nEM\n\n[[ ## completed ## ]]"
            return Response(
                id=None,
                model="m",
                message=Message.assistant([TextPart(text)]),
                finish_reason="stop",
                usage=WireUsage(input_tokens=100, output_tokens=3, cache_read_tokens=60),
            )

    # A model name of its own, so DSPy's on-disk cache holds nothing for it yet.
    lm = meter(dspy.LM(f"openai/csc-test-{uuid.uuid4().hex}", engine=Engine(), cache=True))
    with dspy.context(lm=lm):
        for _ in range(3):
            StrategyPredictor()(history=[])
    usage = usage_of(lm)
    assert (usage.calls, usage.cached_calls) == (1, 2)  # the same request twice more: cache hits
    assert (usage.prompt_tokens, usage.cached_prompt_tokens, usage.completion_tokens) == (
        100,
        60,
        3,
    )
    assert "(+2 answered from the DSPy cache)" in format_usage(usage)
    assert "(of which 60 cached)" in format_usage(usage)
    assert usage.cost_usd is None  # LiteLLM has no price for this made-up model

    # A model LiteLLM prices: cost from its table, cached prompt tokens at the cached rate.
    litellm = pytest.importorskip("litellm")
    priced = meter(dspy.LM("openai/gpt-4o-mini", engine=Engine(), cache=False))
    with dspy.context(lm=priced):
        StrategyPredictor()(history=[])
    prompt, completion = litellm.cost_per_token(
        model="openai/gpt-4o-mini",
        prompt_tokens=100,
        completion_tokens=3,
        cache_read_input_tokens=60,
    )
    assert usage_of(priced).cost_usd == pytest.approx(prompt + completion)


def test_meter_keeps_dspy_track_usage_working_and_labels_calls() -> None:
    lm = meter(CountingLM())
    with dspy.context(lm=lm), dspy.track_usage() as tracker:
        with usage_label("strategist"):
            StrategyPredictor()(history=[])
        StrategyPredictor()(history=[])
    totals = tracker.get_total_tokens()["dummy"]
    assert totals["prompt_tokens"] == usage_of(lm).prompt_tokens > 0
    labels = lm.callbacks[0].by_label()
    assert labels["strategist"].calls == 1 and labels[None].calls == 1
    # Attaching twice does not count twice.
    meter(lm)
    assert len(lm.callbacks) == 1


def test_failed_calls_are_counted() -> None:
    def broken(messages):
        raise RuntimeError("server down")

    lm = meter(CountingLM(broken))
    with dspy.context(lm=lm), pytest.raises(Exception, match="server down"):
        StrategyPredictor()(history=[])
    assert usage_of(lm).failed_calls == 1 and usage_of(lm).calls == 0


@pytest.mark.parametrize("threads", [1, 8])
def test_dspy_evaluate_counts_every_thread(threads: int) -> None:
    examples = supporter_examples(DIALOGUES)[:32]
    lm = meter(CountingLM(delay=0.005))
    with dspy.context(lm=lm):
        evaluate = dspy.Evaluate(
            devset=examples,
            metric=strategy_accuracy_metric,
            num_threads=threads,
            display_progress=False,
        )
        evaluate(StrategyPredictor())
    counted = usage_of(lm)
    assert _counted(counted) == history_usage(lm)
    assert counted.calls == lm.served == len(examples)
    assert counted.cached_prompt_tokens > 0


def _optimizer_usage(threads: int) -> tuple[dict[str, int], dict[str, int], dict]:
    parts = split_dialogues(DIALOGUES * 1, seed=0)
    train = supporter_examples(parts.train)[:12]
    dev = supporter_examples(parts.train)[12:36]
    lm = CountingLM(delay=0.005)
    result = optimize_program(
        "strategy", train, dev, optimizer="bootstrap", lm=lm, num_threads=threads
    )
    reported = {
        "calls": result.lm_calls,
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": result.completion_tokens,
        "cached_prompt_tokens": result.usage.cached_prompt_tokens,
    }
    return reported, history_usage(lm), result.metadata


def test_optimizer_reports_every_call_at_1_and_8_threads() -> None:
    one, one_history, meta = _optimizer_usage(1)
    eight, eight_history, _ = _optimizer_usage(8)
    assert one == one_history
    assert eight == eight_history  # dspy.track_usage() lost the worker threads' calls here
    assert one == eight
    assert meta["lm_usage"]["prompt_tokens"] == meta["prompt_tokens"] == one["prompt_tokens"]


@pytest.mark.parametrize("threads", [1, 8])
def test_harness_metrics_agree_with_the_meter(threads: int) -> None:
    lm = CountingLM(delay=0.002)
    with dspy.context(lm=lm):
        result = evaluate_supporter(
            Supporter(FW, "en"),
            DIALOGUES,
            context="both",
            num_threads=threads,
            with_bertscore=False,
            progress=False,
        )
    history = history_usage(lm)
    total = {"calls": 0, "prompt_tokens": 0, "completion_tokens": 0, "cached_prompt_tokens": 0}
    for res in result.contexts.values():
        m = res.metrics
        lm_usage = m["lm_usage"]
        # Per-turn records (predictions.jsonl) and the run's meter say the same.
        assert lm_usage["prompt_tokens"] == m["prompt_tokens"]
        assert lm_usage["completion_tokens"] == m["completion_tokens"]
        assert lm_usage["cached_prompt_tokens"] == m["cached_prompt_tokens"]
        for key in total:
            total[key] += lm_usage[key]
    assert total == history


def _synthesis_usage(tmp_path: Path, threads: int) -> tuple[dict, dict[str, int]]:
    from csc.data.profiles import CustomerProfile
    from csc.data.topics import resolve_topics
    from csc.programs.synthesis import SynthesisConfig, SynthesisRun

    # The scripted RoleCS agents of the synthesis tests.
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "programs"))
    from rolecs_fakes import Script

    profiles = [
        CustomerProfile(id=f"p{i}", description=f"You are customer number {i}, calm and brief.")
        for i in range(4)
    ]
    topics = resolve_topics(["product,account"])
    config = SynthesisConfig.build(
        framework=FW,
        language="en",
        topics=topics,
        profiles=profiles,
        seed=0,
        max_utterances=12,
        temperature=0.7,
        filter=True,
        lms={"default": "counting"},
    )
    lm = CountingLM(Script(finish_at=3), delay=0.002)
    roles = ("planner", "supporter_assistant", "supporter", "customer_assistant", "customer")
    run = SynthesisRun(
        tmp_path / f"run{threads}",
        config,
        FW,
        profiles,
        lms={**dict.fromkeys(roles, lm), "judge": lm},
    )
    summary = run.run(8, concurrency=threads, progress=False)
    return summary, history_usage(lm)


def test_synthesize_reports_every_call_at_1_and_8_threads(tmp_path: Path) -> None:
    results = {}
    for threads in (1, 8):
        summary, history = _synthesis_usage(tmp_path, threads)
        this = summary["this_run"]
        assert this["kept"] == 8
        total = {k: this["lm_usage"][k] for k in history}
        assert total == history
        assert sum(u["calls"] for u in this["tokens"].values()) == history["calls"]
        assert {"planner", "judge", "supporter"} <= set(this["tokens"])
        results[threads] = total
    assert results[1] == results[8]


@pytest.mark.parametrize("threads", [1, 8])
def test_compare_cost_columns_agree_with_the_meter(threads: int) -> None:
    from csc.eval.compare import compare_supporters

    lms: list[CountingLM] = []

    def factory(spec):
        lms.append(CountingLM(delay=0.002))
        return lms[-1]

    comparison = compare_supporters(
        DIALOGUES[:4],
        {"zs": "zero-shot", "direct": "direct"},
        lm="openai/counting",
        context="both",
        framework=FW,
        num_threads=threads,
        with_bertscore=False,
        lm_factory=factory,
        progress=False,
    )
    assert len(lms) == 1  # both supporters share the LM: one meter
    total = 0
    for row in comparison.rows:
        assert row.prompt_tokens * row.turns == pytest.approx(row.lm_usage["prompt_tokens"])
        assert row.cached_prompt_tokens * row.turns == pytest.approx(
            row.lm_usage["cached_prompt_tokens"]
        )
        total += row.lm_usage["prompt_tokens"]
    assert total == history_usage(lms[0])["prompt_tokens"]
