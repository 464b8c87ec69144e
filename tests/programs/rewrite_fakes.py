"""A scripted fake LM for the rewriting pipeline: answers each stage's signature, offline, and
records every prompt it receives."""

from __future__ import annotations

import json
import re
import sys
import threading
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from rolecs_fakes import ScriptedLM, field

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "rewrite"
MARKERS = {
    "prefilter": ("You screen real customer-support", "你负责在真实客服聊天记录"),
    "rewriter": ("You rewrite a real customer-support", "你把一段真实的客服对话改写"),
    "judge": ("You review a rewritten", "你负责审核一段改写后"),
    "labeler": ("expert annotator of customer-support", "客服对话标注专家"),
}
# Every PII value written into the raw fixtures (raw_zh.json, raw_en.json).
PII_VALUES = [
    "13812345678",
    "张伟",
    "11010519491231002X",
    "6222021234567890124",
    "2023110598765432",
    "北京市朝阳区建国路88号",
    "010-62345678",
    "zhangwei@example.cn",
    "李娜",
    "88123470",
    "https://www.example.com/coupon",
    "4111 1111 1111 1111",
    "Emily",
    "Carter",
    "(415) 555-2671",
    "A12345678",
    "192.168.10.24",
    "emily.carter@example.org",
    "221 Baker Street",
    "David",
    "212-555-0187",
    "https://bank.example.com/fees",
    "1Z999AA10123456784",
    "203.0.113.45",
]


def role_of(messages: list[dict[str, Any]]) -> str:
    system = messages[0]["content"]
    for role, marks in MARKERS.items():
        if any(m in system for m in marks):
            return role
    raise AssertionError(f"unknown prompt: {system[:200]}")


def alternating(n: int, codes=("GT", "IV", "PR", "PS", "ID", "RI", "FR", "AC")) -> list[dict]:
    """Exchanges making ``n`` turns that open with the supporter (first customer message empty)."""
    exchanges = []
    for i in range(0, n, 2):
        exchanges.append(
            {
                "customer": "" if i == 0 else f"Customer says {i - 1}",
                "supporter": f"Reply {i} (Note: rewritten for clarity)",
                "strategy": codes[(i // 2) % len(codes)],
            }
        )
    return exchanges


class RewriteScript:
    """Answers per role; ``abusive``: ids (substrings of the dialogue) the pre-filter drops;
    ``turns``: how many turns the rewriter writes; ``judge``: criterion -> pass; ``raw``: a
    string the rewriter returns instead (unparseable output)."""

    def __init__(
        self,
        turns: int = 12,
        judge: dict | None = None,
        abusive: str | None = None,
        raw: str | None = None,
        label: str = "PS",
        delay: float = 0.0,
    ):
        self.turns, self.judge, self.abusive, self.raw = turns, judge or {}, abusive, raw
        self.label, self.delay = label, delay
        self.prompts: list[str] = []
        self.calls: list[str] = []
        self.lock = threading.Lock()

    def __call__(self, messages: list[dict[str, Any]]) -> dict[str, Any] | str:
        if self.delay:
            import time

            time.sleep(self.delay)
        role = role_of(messages)
        with self.lock:
            self.calls.append(role)
            self.prompts.extend(m["content"] for m in messages if isinstance(m["content"], str))
        if role == "prefilter":
            dialogue = field(messages, "dialogue")
            bad = bool(self.abusive and self.abusive in dialogue)
            return {
                "reason": "abusive" if bad else "polite",
                "abusive_language": bad,
                "disrespectful_agent": False,
            }
        if role == "rewriter":
            if self.raw is not None:
                return self.raw
            return {"exchanges": alternating(self.turns)}
        if role == "judge":
            out = {}
            for c in ("complete_ending", "strategy_adherence", "no_noise"):
                out[f"{c}_reason"] = "ok"
                out[c] = self.judge.get(c, True)
            return out
        history = field(messages, "history")
        return {"strategy": "OT" if "没有了" in history else self.label}


def lm(script: RewriteScript) -> ScriptedLM:
    return ScriptedLM(script)


def dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False)


__all__ = ["FIXTURES", "PII_VALUES", "RewriteScript", "alternating", "dumps", "lm", "re"]
