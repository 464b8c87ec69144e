"""Real files in the shapes the viewer reads: a synthesis run folder, evaluation and comparison
folders. Built from the project's own models and writers, so a change of shape shows up here."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from csc.data.io import write_dialogues
from csc.dialogue import Dialogue, Speaker, Turn

CRITERIA = (
    "strategy_adherence",
    "unreasonable_demands",
    "natural_replies",
    "varied_expression",
    "role_consistency",
)
SCRIPT_TEXT = '<script>window.__pwned = 1</script><img src=x onerror="window.__pwned=2">'


def rolecs_dialogue(
    key: str,
    strategies: list[str],
    *,
    topic: str = "Product consultation",
    failed: tuple[str, ...] = (),
    text: str | None = None,
    language: str = "en",
) -> Dialogue:
    """A finished RoleCS dialogue as ``SynthesisRun`` writes it (metadata shapes included)."""
    turns = []
    for i, code in enumerate(strategies):
        reply = text if (text and i == 1) else f"Supporter reply {i + 1} of {key} using {code}."
        if language == "zh":
            reply = f"您好，这是第{i + 1}条客服回复。"
        meta: dict[str, Any] = {"stage": "connecting", "predicted_stage": "connecting"}
        if i == 0 and code == "GT" and key.endswith("1"):
            meta["policy"] = {
                "violation": "opening",
                "first_choice": "PS",
                "second_choice": "PS",
                "action": "corrected",
                "corrected_to": "GT",
            }
        turns.append(Turn(speaker=Speaker.SUPPORTER, text=reply, strategy=code, metadata=meta))
        if i < len(strategies) - 1:
            said = (
                f"Customer message {i + 1} about my card." if language == "en" else "我的卡怎么了？"
            )
            turns.append(
                Turn(
                    speaker=Speaker.CUSTOMER,
                    text=said,
                    metadata={"direction": "Ask about the fee.", "finished": False, "reason": ""},
                )
            )
    judge = {
        c: {"pass": c not in failed, "reason": f"{c}: {'fails' if c in failed else 'fine'}"}
        for c in CRITERIA
    }
    return Dialogue(
        id=key,
        topic=topic,
        turns=turns,
        scenario=f"A customer asks about {topic.lower()}.",
        profile={"id": "p1", "description": "You are a calm nurse.", "language": language},
        metadata={
            "source": "rolecs",
            "framework": "csc",
            "language": language,
            "goal": "understand the fee",
            "end_reason": "closing",
            "policy_corrections": {"opening": 1} if key.endswith("1") else {},
            "policy_reasks": {},
            "judge": judge,
            "passed": not failed,
            "run": "abc123",
        },
    )


def make_run_folder(out: Path) -> dict[str, list[str]]:
    """A run folder with 4 kept, 2 rejected and 1 failed dialogue; returns the ids by status."""
    out.mkdir(parents=True, exist_ok=True)
    kept = [
        rolecs_dialogue("d01", ["GT", "IV", "EM", "PS", "AC"]),
        rolecs_dialogue(
            "d02", ["GT", "IV", "PR", "ID", "AC"], topic="Account and transaction management"
        ),
        rolecs_dialogue("d03", ["GT", "IV", "ID", "RI", "FR", "AC"], text=SCRIPT_TEXT),
        rolecs_dialogue(
            "d04", ["GT", "IV", "PS", "AC"], topic="Technical support and online services"
        ),
    ]
    rejected = [
        rolecs_dialogue("d05", ["GT", "IV", "EM", "EM", "AC"], failed=("natural_replies",)),
        rolecs_dialogue(
            "d06", ["GT", "IV", "RP", "AC"], failed=("varied_expression", "role_consistency")
        ),
    ]
    write_dialogues(kept, out / "dialogues.jsonl")
    write_dialogues(rejected, out / "rejected.jsonl")
    failure = {
        "id": "d07",
        "run": "abc123",
        "topic": "Product consultation",
        "profile_id": "p2",
        "replica": 0,
        "role": "customer",
        "error_type": "AdapterParseError",
        "error": "LM response cannot be serialized to a JSON object.",
        "raw_output": "no fields </script> here",
        "partial_turns": 1,
        "partial": rolecs_dialogue("d07", ["GT"]).model_dump(mode="json"),
        "usage": None,
        "time": "2026-11-21T19:04:51+00:00",
        "some_future_field": {"kept": True},  # the loader must tolerate extra fields
    }
    (out / "failures.jsonl").write_text(json.dumps(failure) + "\n", encoding="utf-8")
    (out / "run.json").write_text(
        json.dumps({"config_hash": "abc123", "config": {"framework": "csc", "language": "en"}}),
        encoding="utf-8",
    )
    return {
        "kept": [d.id for d in kept],
        "rejected": [d.id for d in rejected],
        "failed": ["d07"],
    }


def make_evaluation_folder(out: Path, data: Path, supporter: str = "zero-shot") -> Path:
    """``csc evaluate`` output for the dialogues in ``data``: predictions (half the strategies
    wrong) and metrics.json, written by the harness's own record type."""
    from csc.data.io import read_dialogues
    from csc.eval.harness import PredictionRecord

    out.mkdir(parents=True, exist_ok=True)
    records = []
    for context in ("reference", "generated"):
        for dialogue in read_dialogues(data):
            for index, turn in enumerate(dialogue.turns):
                if not turn.is_supporter:
                    continue
                wrong = (index // 2) % 2 == 1
                records.append(
                    PredictionRecord(
                        dialogue_id=dialogue.id,
                        turn_index=index,
                        context=context,
                        gold_strategy=turn.strategy,
                        predicted_strategy="OT" if wrong else turn.strategy,
                        gold_response=turn.text,
                        generated_response=f"{supporter} says hello at {index}",
                    )
                )
    with (out / "predictions.jsonl").open("w", encoding="utf-8") as fh:
        for rec in records:
            fh.write(json.dumps(rec.to_dict(), ensure_ascii=False) + "\n")
    metrics = {
        "supporter": supporter,
        "lm": "local",
        "data": str(data),
        "framework": "csc",
        "language": "en",
        "contexts": {
            ctx: {
                "acc": 50.0,
                "bleu2": 1.0,
                "n_examples": 10,
                "n_errors": 0,
                "strategy": {
                    "per_strategy": {
                        "GT": {
                            "precision": 100.0,
                            "recall": 100.0,
                            "f1": 100.0,
                            "support": 2,
                            "predicted": 2,
                        }
                    }
                },
            }
            for ctx in ("reference", "generated")
        },
    }
    (out / "metrics.json").write_text(json.dumps(metrics), encoding="utf-8")
    return out


def make_showcase_run(out: Path) -> Path:
    """A run folder of the English sample dialogues with judge verdicts, for the screenshot."""
    from csc.data.io import read_dialogues

    samples = Path(__file__).resolve().parents[2] / "data" / "samples" / "sample_en.json"
    kept, rejected = [], []
    for i, dialogue in enumerate(read_dialogues(samples)):
        failed = ("natural_replies",) if i % 3 == 1 else ()
        judge = {
            c: {
                "pass": c not in failed,
                "reason": "The supporter repeats the same apology three times; it reads scripted."
                if c in failed
                else "Fine.",
            }
            for c in CRITERIA
        }
        dialogue.scenario = f"A customer contacts support about {dialogue.topic.lower()}."
        dialogue.profile = {"description": "You are a 34-year-old nurse, polite but short on time."}
        dialogue.metadata.update(
            goal="Get the problem solved today", end_reason="closing", judge=judge, language="en"
        )
        (rejected if failed else kept).append(dialogue)
    write_dialogues(kept, out / "dialogues.jsonl")
    write_dialogues(rejected, out / "rejected.jsonl")
    return out
