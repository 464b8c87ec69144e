"""The evaluation harness: reference and generated context, caching, scores from records."""

from __future__ import annotations

import json
import re
import threading

import dspy
import pytest
from scripted_lm import ScriptedLM

from csc.dialogue import Dialogue, Speaker, Turn
from csc.eval.harness import PredictionRecord, evaluate_supporter, normalize_contexts
from csc.eval.metrics import corpus_bleu, strategy_accuracy
from csc.programs.supporter import DirectSupporter, Supporter


class PromptLM(ScriptedLM):
    """Answers from a function of the last user message; records every prompt it saw."""

    def __init__(self, answer):
        self.prompts: list[str] = []
        self.lock = threading.Lock()

        def respond(messages):
            prompt = messages[-1]["content"]
            with self.lock:
                self.prompts.append(prompt)
            return answer(prompt)

        super().__init__(respond)


def _history(prompt: str) -> str:
    return prompt.split("[[ ## history ## ]]")[1].split("[[ ##")[0]


def supporter_answer(prompt: str) -> dict[str, str]:
    """Strategy GT for an empty history, else PS; replies number the customer turns seen."""
    n_customer = _history(prompt).count("Customer:")
    if "[[ ## strategy_definition ## ]]" in prompt:
        return {"response": f"GEN{n_customer} we will fix the card today"}
    return {"strategy": "GT" if n_customer == 0 else "PS"}


def _dialogue(i: int) -> Dialogue:
    s, c = Speaker.SUPPORTER, Speaker.CUSTOMER
    return Dialogue(
        id=f"d{i}",
        topic="Technical support",
        turns=[
            Turn(speaker=s, text="Hello, how can I help you today?", strategy="GT"),
            Turn(speaker=c, text="My card was blocked."),
            Turn(speaker=s, text="Please try unlocking it in the app.", strategy="PS"),
            Turn(speaker=c, text="It still does not work."),
            Turn(speaker=s, text="We will fix the card today, sorry.", strategy="EM"),
            Turn(speaker=c, text="Thanks."),
        ],
    )


def test_reference_context_scores_match_records(tmp_path):
    lm = PromptLM(supporter_answer)
    dialogues = [_dialogue(i) for i in range(3)]
    with dspy.context(lm=lm):
        result = evaluate_supporter(
            Supporter(),
            dialogues,
            context="ref",
            num_threads=2,
            cache_dir=tmp_path,
            with_bertscore=False,
            progress=False,
        )
    res = result.contexts["reference"]
    assert [r.turn_index for r in res.records] == [0, 2, 4] * 3
    # GT and PS are right, EM is predicted as PS: 2 of 3 per dialogue.
    assert res.metrics["acc"] == pytest.approx(200 / 3)
    assert res.metrics["n_examples"] == 9
    hyps = [r.generated_response for r in res.records]
    refs = [r.gold_response for r in res.records]
    assert res.metrics["bleu4"] == pytest.approx(corpus_bleu(hyps, refs, 4, tokenize="13a"))
    assert res.metrics["bertscore"] is None
    # Reference histories only ever hold the reference supporter turns.
    assert not any("GEN" in _history(p) for p in lm.prompts)
    # Every finished record is in the resume cache.
    cached = (tmp_path / "reference.jsonl").read_text().splitlines()
    assert len(cached) == 9


def test_generated_context_feeds_own_turns_back(tmp_path):
    lm = PromptLM(supporter_answer)
    with dspy.context(lm=lm):
        result = evaluate_supporter(
            Supporter(),
            [_dialogue(0), _dialogue(1)],
            context="gen",
            num_threads=2,
            with_bertscore=False,
            progress=False,
        )
    records = result.contexts["generated"].records
    assert [r.generated_response for r in records[:3]] == [
        "GEN0 we will fix the card today",
        "GEN1 we will fix the card today",
        "GEN2 we will fix the card today",
    ]
    late = [_history(p) for p in lm.prompts if _history(p).count("Customer:") == 2]
    assert late, "the third supporter turn was never prompted"
    for hist in late:
        # The model's own earlier replies (and strategies) replace the reference ones ...
        assert "Supporter [GT]: GEN0" in hist and "Supporter [PS]: GEN1" in hist
        assert "Hello, how can I help" not in hist
        # ... while customer turns stay as in the reference.
        assert "Customer: It still does not work." in hist


def test_limit_covers_same_turns_in_both_contexts():
    lm = PromptLM(supporter_answer)
    with dspy.context(lm=lm):
        result = evaluate_supporter(
            Supporter(),
            [_dialogue(i) for i in range(3)],
            context="both",
            limit=5,
            num_threads=2,
            with_bertscore=False,
            progress=False,
        )
    keys = {
        ctx: [(r.dialogue_id, r.turn_index) for r in res.records]
        for ctx, res in result.contexts.items()
    }
    assert keys["reference"] == keys["generated"]
    assert keys["reference"] == [("d0", 0), ("d0", 2), ("d0", 4), ("d1", 0), ("d1", 2)]


def test_interrupted_run_resumes_from_cache(tmp_path):
    # A previous run finished d0 only (and left a truncated line behind).
    done = PredictionRecord("d0", 0, "reference", "GT", "GT", "Hello", "cached reply")
    lines = [json.dumps(done.to_dict()), '{"dialogue_id": "d0", "turn']
    (tmp_path / "reference.jsonl").write_text("\n".join(lines) + "\n")
    lm = PromptLM(supporter_answer)
    with dspy.context(lm=lm):
        result = evaluate_supporter(
            Supporter(),
            [_dialogue(0)],
            context="ref",
            cache_dir=tmp_path,
            num_threads=1,
            with_bertscore=False,
            progress=False,
        )
    records = result.contexts["reference"].records
    assert records[0].generated_response == "cached reply"
    assert result.metrics["reference"]["n_from_cache"] == 1
    assert len(records) == 3
    # Two turns left to do, two LM calls (strategy + reply) each.
    assert len(lm.prompts) == 4


def test_failed_turns_are_kept_as_error_rows():
    def broken(prompt):
        if "[[ ## strategy_definition ## ]]" in prompt and "blocked" in _history(prompt):
            raise RuntimeError("server said no")
        return supporter_answer(prompt)

    with dspy.context(lm=PromptLM(broken)):
        result = evaluate_supporter(
            Supporter(),
            [_dialogue(0)],
            context="ref",
            num_threads=1,
            with_bertscore=False,
            progress=False,
        )
    res = result.contexts["reference"]
    assert res.metrics["n_examples"] == 3
    assert res.metrics["n_errors"] == 2
    errors = [r for r in res.records if r.error]
    assert all("server said no" in r.error and r.predicted_strategy is None for r in errors)
    gold = [r.gold_strategy for r in res.records]
    pred = [r.predicted_strategy for r in res.records]
    assert res.metrics["acc"] == pytest.approx(strategy_accuracy(gold, pred))


def test_direct_supporter_labels_its_reply():
    def answer(prompt):
        if "[[ ## response ## ]]" in prompt and "[[ ## strategy ## ]]" not in prompt:
            return {"response": "Sorry, let me check that for you."}
        assert "Sorry, let me check that for you." in prompt  # the labeler sees the reply
        return {"strategy": "EM"}

    with dspy.context(lm=PromptLM(answer)):
        pred = DirectSupporter()(history=_dialogue(0).turns[:3])
    assert pred.strategy == "EM"
    assert pred.response == "Sorry, let me check that for you."


def test_contexts_and_duplicate_ids_are_checked():
    assert normalize_contexts("both") == ["reference", "generated"]
    with pytest.raises(ValueError, match="use ref, gen or both"):
        normalize_contexts("sideways")
    with pytest.raises(ValueError, match="occurs more than once"):
        evaluate_supporter(Supporter(), [_dialogue(0), _dialogue(0)], progress=False)


def test_chinese_history_and_metrics_language():
    s, c = Speaker.SUPPORTER, Speaker.CUSTOMER
    dialogue = Dialogue(
        id="zh1",
        turns=[
            Turn(speaker=s, text="您好，请问有什么可以帮您？", strategy="GT"),
            Turn(speaker=c, text="我的银行卡被冻结了。"),
            Turn(speaker=s, text="请您在手机银行中尝试解冻。", strategy="PS"),
        ],
    )

    def answer(prompt):
        hist = _history(prompt)
        if "[[ ## strategy_definition ## ]]" in prompt:
            return {"response": "请您在手机银行中解冻。"}
        return {"strategy": "PS" if "客户：" in hist or "客户:" in hist else "GT"}

    lm = PromptLM(answer)
    with dspy.context(lm=lm):
        result = evaluate_supporter(
            Supporter(language="zh"),
            [dialogue],
            context="ref",
            num_threads=1,
            with_bertscore=False,
            progress=False,
        )
    assert result.info["language"] == "zh"
    assert any(re.search(r"客户: 我的银行卡", p) for p in lm.prompts)
    assert result.metrics["reference"]["acc"] == 100.0
    assert result.metrics["reference"]["rougeL"] > 0


class _WanderingStrategist(dspy.Module):
    """A hand-made sub-program whose strategy output is sometimes not a strategy at all."""

    def __init__(self):
        super().__init__()
        self.n = 0
        self.lock = threading.Lock()

    def forward(self, history):
        with self.lock:
            self.n += 1
            n = self.n
        return dspy.Prediction(strategy="PS" if n % 2 else "I would say: be nice")


def test_strategy_fallbacks_and_unparsed_outputs_are_counted_next_to_accuracy():
    program = Supporter()
    program.strategist = _WanderingStrategist()
    with dspy.context(lm=PromptLM(supporter_answer)):
        result = evaluate_supporter(
            program,
            [_dialogue(i) for i in range(4)],
            context="ref",
            with_bertscore=False,
            progress=False,
        )
    m = result.metrics["reference"]
    records = result.contexts["reference"].records
    fell_back = [r for r in records if r.strategy_fallback]
    assert m["strategy_fallbacks"] == len(fell_back) == m["n_examples"] // 2
    assert {r.predicted_strategy for r in fell_back} == {"OT"}  # the csc fallback strategy

    # An output the adapter cannot parse at all is an error row, also counted.
    def unparseable(prompt):
        if "[[ ## strategy_definition ## ]]" in prompt:
            return {"response": "ok"}
        return {"strategy": "banana"}

    with dspy.context(lm=PromptLM(unparseable)):
        result = evaluate_supporter(
            Supporter(),
            [_dialogue(i) for i in range(4)],
            context="ref",
            with_bertscore=False,
            progress=False,
        )
    m = result.metrics["reference"]
    assert m["strategy_parse_errors"] == m["n_examples"] == m["n_errors"] > 0
    assert m["acc"] == 0.0

    # A reply that cannot be parsed is an error, but not an unparsed strategy.
    def no_reply(prompt):
        return {"strategy": "PS"}

    with dspy.context(lm=PromptLM(no_reply)):
        result = evaluate_supporter(
            Supporter(), [_dialogue(0)], context="ref", with_bertscore=False, progress=False
        )
    m = result.metrics["reference"]
    assert m["n_errors"] == m["n_examples"] > 0 and m["strategy_parse_errors"] == 0


def test_shards_cache_their_own_files_and_an_unsharded_run_scores_the_union(tmp_path):
    dialogues = [_dialogue(i) for i in range(5)]

    def evaluate(shard):
        lm = PromptLM(supporter_answer)
        with dspy.context(lm=lm):
            result = evaluate_supporter(
                Supporter(),
                dialogues,
                context="both",
                cache_dir=tmp_path,
                num_threads=2,
                with_bertscore=False,
                progress=False,
                shard=shard,
            )
        return result, lm

    seen = [{r.dialogue_id for r in evaluate((i, 2))[0].records} for i in range(2)]
    assert seen == [{"d0", "d2", "d4"}, {"d1", "d3"}]
    assert {p.name for p in tmp_path.glob("generated.shard-*")} == {
        "generated.shard-0-of-2.jsonl",
        "generated.shard-1-of-2.jsonl",
    }
    whole, lm = evaluate(None)
    assert lm.prompts == []  # every turn came from the shards' caches
    for ctx in ("reference", "generated"):
        assert whole.metrics[ctx]["n_from_cache"] == whole.metrics[ctx]["n_examples"] == 15
