"""CSConv rewriting: raw support dialogues in, strategy-annotated dialogues out.

Stages, each usable on its own:

1. :func:`~csc.programs.rule_filter.clean_dialogue` + :func:`~csc.programs.rule_filter.check_rules`
   — plain-code cleaning and the paper's rule pre-filter;
2. :class:`~csc.data.pii.PiiRedactor` — typed placeholders for PII, before any LM call;
3. :class:`ConductFilter` — LLM pre-filter: abusive language, impatient or disrespectful agents;
4. :class:`DialogueRewriter` — the rewriter (``rewriter`` LM role): every supporter turn labelled
   with one strategy code of the framework (typed output);
5. post-filter — :func:`strip_trailing_notes`, :func:`structure_problems` (alternation, labels,
   10-50 utterances) and :class:`PostFilterJudge` (complete ending, strategy adherence, no noise);
6. :func:`label_utilization` — strategy utilization before and after, measured by a
   :class:`~csc.programs.supporter.StrategyLabeler` (zero-shot or an optimized program).

:class:`RewritePipeline` composes them for one dialogue; :class:`csc.programs.rewrite_run.RewriteRun`
runs it over a file, concurrent and resumable.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import dspy

from csc.data.pii import PiiRedactor
from csc.data.turns import as_framework
from csc.dialogue import Dialogue, Speaker, Turn
from csc.framework import Framework, Language, check_language
from csc.programs.rolecs import _raw_output, call_config
from csc.programs.rolecs_judge import verdicts
from csc.programs.rule_filter import RuleFilterConfig, check_rules, clean_dialogue
from csc.programs.supporter import StrategyLabeler
from csc.signatures.rewrite import POSTFILTER_CRITERIA, rewrite_signatures
from csc.signatures.types import DialogueHistory
from csc.usage import add_role_usage, usage_label

__all__ = [
    "EMBEDDED_TOKEN_BUDGETS",
    "REWRITE_ROLES",
    "ConductFilter",
    "DialogueRewriter",
    "PostFilterJudge",
    "RewriteFailure",
    "RewritePipeline",
    "label_utilization",
    "strip_trailing_notes",
    "structure_problems",
]

REWRITE_ROLES: tuple[str, ...] = ("prefilter", "rewriter", "judge", "labeler")
"""The LM roles the rewriting pipeline uses (a subset of :data:`csc.lm.ROLES`)."""

EMBEDDED_TOKEN_BUDGETS: dict[str, int] = {
    "prefilter": 80,
    "rewriter": 700,
    "judge": 200,
    "labeler": 16,
}
"""Completion-token limits per role for small embedded models (see RoleCS's)."""


class RewriteFailure(RuntimeError):
    """An LM call of the pipeline failed or could not be parsed: the role, the raw LM output
    when there was one, and the token usage so far."""

    def __init__(
        self,
        role: str,
        cause: BaseException,
        raw_output: str | None,
        usage: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(f"{role} failed: {type(cause).__name__}: {cause}")
        self.role, self.cause, self.raw_output = role, cause, raw_output
        self.usage = dict(usage or {})


def _history(turns: list[Turn], language: str, show_strategies: bool = True) -> DialogueHistory:
    return DialogueHistory.of(turns, language=language, show_strategies=show_strategies)


# ----------------------------------------------------------------------------- modules
class ConductFilter(dspy.Module):
    """LLM pre-filter: drop dialogues with abusive language or an impatient or disrespectful
    agent. Returns ``Prediction(keep, abusive_language, disrespectful_agent, reason)``."""

    def __init__(self, framework: Framework | str = "csc", language: Language = "en") -> None:
        super().__init__()
        self.language: Language = language
        self.screen = dspy.Predict(rewrite_signatures(as_framework(framework), language).prefilter)

    def forward(self, dialogue: Dialogue, config: dict[str, Any] | None = None) -> dspy.Prediction:
        pred = self.screen(
            dialogue=_history(dialogue.turns, self.language, False), config=config or {}
        )
        abusive, rude = bool(pred.abusive_language), bool(pred.disrespectful_agent)
        return dspy.Prediction(
            keep=not (abusive or rude),
            abusive_language=abusive,
            disrespectful_agent=rude,
            reason=str(pred.reason).strip(),
        )


_TRAILING_NOTE = re.compile(
    r"\s*(?:[（(]\s*(?:注|备注|说明|改写说明|策略|note|notes|rewrite note|explanation|strategy)"
    r"\s*[:：][^（）()]*[)）]|[（(][^（）()]*(?:改写|rewritten|rewrite|strategy|策略)[^（）()]*[)）])\s*$",
    re.I,
)


def strip_trailing_notes(text: str) -> tuple[str, int]:
    """Remove parenthetical notes a rewriter appends after a turn, e.g. ``(Note: rewritten to
    show empathy)`` / ``（注：……）``; returns the text and how many notes were removed."""
    count = 0
    while True:
        new = _TRAILING_NOTE.sub("", text)
        if new == text:
            return text.strip(), count
        text, count = new, count + 1


class DialogueRewriter(dspy.Module):
    """Rewrite a (redacted, cleaned) dialogue so that every supporter turn carries out one
    strategy of the framework. Returns ``Prediction(dialogue, notes_stripped)``; the dialogue's
    supporter turns carry the rewriter's strategy codes."""

    def __init__(self, framework: Framework | str = "csc", language: Language = "en") -> None:
        super().__init__()
        self.framework = as_framework(framework)
        self.language: Language = language
        self.rewrite = dspy.Predict(rewrite_signatures(self.framework, language).rewriter)
        self._definitions = self.framework.render(language)

    def forward(self, dialogue: Dialogue, config: dict[str, Any] | None = None) -> dspy.Prediction:
        pred = self.rewrite(
            dialogue=_history(dialogue.turns, self.language, False),
            strategy_definitions=self._definitions,
            config=config or {},
        )
        turns, stripped = [], 0
        for raw in pred.exchanges or []:
            item = raw.model_dump() if hasattr(raw, "model_dump") else dict(raw)
            customer, n = strip_trailing_notes(str(item.get("customer") or ""))
            supporter, m = strip_trailing_notes(str(item.get("supporter") or ""))
            stripped += n + m
            if customer:  # empty only when the supporter opens (checked by the post-filter)
                turns.append(Turn(speaker=Speaker.CUSTOMER, text=customer))
            if supporter:
                code = str(item.get("strategy") or "").strip()
                turns.append(Turn(speaker=Speaker.SUPPORTER, text=supporter, strategy=code or None))
        rewritten = dialogue.model_copy(update={"turns": turns})
        return dspy.Prediction(dialogue=rewritten, notes_stripped=stripped)


def structure_problems(
    dialogue: Dialogue, min_utterances: int = 10, max_utterances: int = 50
) -> list[str]:
    """The post-filter's code checks: strictly alternating speakers, a strategy on every
    supporter turn, and ``min_utterances``-``max_utterances`` turns. Empty when all pass."""
    problems = []
    n = len(dialogue.turns)
    if n < min_utterances:
        problems.append(f"too_few_utterances: {n} < {min_utterances}")
    if n > max_utterances:
        problems.append(f"too_many_utterances: {n} > {max_utterances}")
    if not dialogue.alternates():
        problems.append("speakers_do_not_alternate")
    unlabelled = [i for i, t in enumerate(dialogue.turns) if t.is_supporter and not t.strategy]
    if unlabelled:
        problems.append(f"supporter_turns_without_strategy: {unlabelled}")
    if not dialogue.supporter_turns:
        problems.append("no_supporter_turns")
    return problems


class PostFilterJudge(dspy.Module):
    """LLM judge of a rewritten dialogue: complete ending, strategy adherence, no system or
    third-party noise. Returns ``Prediction(criteria, passed)`` like the RoleCS judge."""

    def __init__(self, framework: Framework | str = "csc", language: Language = "en") -> None:
        super().__init__()
        self.framework = as_framework(framework)
        self.language: Language = language
        self.judge = dspy.Predict(rewrite_signatures(self.framework, language).judge)

    def forward(self, dialogue: Dialogue, config: dict[str, Any] | None = None) -> dspy.Prediction:
        pred = self.judge(
            dialogue=_history(dialogue.turns, self.language),
            strategy_definitions=self.framework.render(self.language, with_rules=False),
            config=config or {},
        )
        return verdicts(pred, POSTFILTER_CRITERIA)


def label_utilization(
    labeler: StrategyLabeler,
    dialogue: Dialogue,
    call: Any = None,
) -> dict[str, Any]:
    """Label every supporter turn of ``dialogue`` with ``labeler`` (history before the turn +
    the turn); returns ``{"turns", "using", "labels"}`` where ``using`` counts labels other than
    the framework's fallback. ``call(labeler, **inputs)`` lets the pipeline route the calls."""
    fallback = labeler.framework.fallback.code if labeler.framework.fallback else None
    labels = []
    for i, turn in enumerate(dialogue.turns):
        if not turn.is_supporter:
            continue
        inputs = {
            "history": _history(dialogue.turns[:i], labeler.language, False),
            "response": turn.text,
        }
        pred = call(labeler, i, **inputs) if call else labeler(**inputs)
        labels.append(pred.strategy)
    return {
        "turns": len(labels),
        "using": sum(1 for code in labels if code != fallback),
        "labels": labels,
    }


# ----------------------------------------------------------------------------- pipeline
class RewritePipeline(dspy.Module):
    """The whole CSConv rewriting pipeline for one raw dialogue.

    Args:
        framework: the strategy framework (object, name or YAML path).
        language: ``en`` or ``zh``.
        rules: rule pre-filter thresholds (default: the paper's).
        redact: replace PII before any LM call (turning it off sends raw text to the LMs).
        redactor: the redactor to use (default: all types).
        prefilter: run the LLM pre-filter.
        judge: run the post-filter judge.
        utilization: label supporter turns before and after rewriting.
        min_utterances / max_utterances: the post-filter's length bounds (10-50).
        labeler: the strategy labeler (default: zero-shot); e.g. an optimized program.
        lms: optional LM per role (``prefilter``, ``rewriter``, ``judge``, ``labeler``); a
            missing role uses the LM of the current DSPy context.
        temperature: sampling temperature sent with every call (None: the LM's default).
        token_budgets: optional ``max_tokens`` per role.
    """

    def __init__(
        self,
        framework: Framework | str = "csc",
        language: Language = "en",
        *,
        rules: RuleFilterConfig | None = None,
        redact: bool = True,
        redactor: PiiRedactor | None = None,
        prefilter: bool = True,
        judge: bool = True,
        utilization: bool = True,
        min_utterances: int = 10,
        max_utterances: int = 50,
        labeler: StrategyLabeler | None = None,
        lms: Mapping[str, Any] | None = None,
        temperature: float | None = None,
        token_budgets: Mapping[str, int] | None = None,
    ) -> None:
        super().__init__()
        self.framework = as_framework(framework)
        self.language: Language = check_language(language)
        self.rules = rules or RuleFilterConfig()
        self.redactor = (redactor or PiiRedactor()) if redact else None
        self.conduct = ConductFilter(self.framework, language) if prefilter else None
        self.rewriter = DialogueRewriter(self.framework, language)
        self.judge = PostFilterJudge(self.framework, language) if judge else None
        self.labeler = (
            (labeler or StrategyLabeler(self.framework, language)) if utilization else None
        )
        self.min_utterances = min_utterances
        self.max_utterances = max_utterances
        # Each stage's predictors get their role's LM once; a role without one uses the LM of
        # the current DSPy context.
        for role, stage in (
            ("prefilter", self.conduct),
            ("rewriter", self.rewriter),
            ("judge", self.judge),
            ("labeler", self.labeler),
        ):
            if stage is not None and (lms or {}).get(role) is not None:
                stage.set_lm(lms[role])
        self.temperature = temperature
        self.token_budgets = dict(token_budgets or {})

    # ------------------------------------------------------------------ helpers
    def redact(self, dialogue: Dialogue) -> tuple[Dialogue, Counter[str]]:
        """``dialogue`` with PII replaced in every turn, the topic, scenario and metadata."""
        counts: Counter[str] = Counter()
        if self.redactor is None:
            return dialogue, counts
        r = self.redactor
        # Names found anywhere in the dialogue are redacted everywhere ("Thanks Emily").
        names = r.names_in((t.text for t in dialogue.turns), self.language)

        def red(value: Any) -> Any:
            return r.redact_value(value, self.language, counts, names)

        turns = [
            t.model_copy(update={"text": red(t.text), "metadata": red(t.metadata)})
            for t in dialogue.turns
        ]
        fields = {
            f: red(getattr(dialogue, f)) for f in ("topic", "scenario", "profile", "metadata")
        }
        return dialogue.model_copy(update={"turns": turns, **fields}), counts

    @contextmanager
    def _as_role(self, role: str, usage: dict[str, dict[str, int]]) -> Iterator[None]:
        # A tracker per stage call rather than Prediction.get_lm_usage(): DSPy attaches usage
        # only to the outermost module call, and this pipeline is itself a module.
        try:
            with (
                usage_label(role),  # run-level meters see the role (csc.usage)
                dspy.track_usage() as tracker,
            ):
                try:
                    yield
                finally:
                    add_role_usage(usage, role, tracker.get_total_tokens().values(), calls=1)
        except RewriteFailure:
            raise
        except Exception as exc:
            raise RewriteFailure(role, exc, _raw_output(exc), usage) from exc

    def _config(self, role: str, seed: int, key: str, step: int) -> dict[str, Any]:
        return call_config(seed, key, role, step, 0, self.temperature, self.token_budgets)

    def _label(self, dialogue: Dialogue, usage: dict, seed: int, key: str, phase: int):
        assert self.labeler is not None

        def call(labeler: StrategyLabeler, index: int, **inputs: Any) -> dspy.Prediction:
            cfg = self._config("labeler", seed, key, phase * 1000 + index)
            with self._as_role("labeler", usage):
                return labeler(**inputs, config=cfg)

        return label_utilization(self.labeler, dialogue, call)

    # ------------------------------------------------------------------ forward
    def forward(
        self, dialogue: Dialogue, *, key: str | None = None, seed: int = 0
    ) -> dspy.Prediction:
        """Run every stage on one raw dialogue.

        Returns a prediction with ``outcome`` (``dropped``, ``rejected`` or ``kept``), ``stage``
        (``rules``, ``prefilter``, ``postfilter`` or ``done``), ``reason`` (the rule, the
        pre-filter's reason, or the post-filter's problems), ``dialogue`` (the rewritten
        dialogue, None when dropped), ``redaction`` (counts per type) and ``usage`` (tokens
        per role). Raises :class:`RewriteFailure` when an LM call fails or cannot be parsed.
        """
        key = key or dialogue.id
        usage: dict[str, dict[str, int]] = {}
        cleaned = clean_dialogue(dialogue, self.rules, language=self.language)
        cleaning = {k: getattr(cleaned, k) for k in ("merged", "empty_removed", "system_removed")}
        rule = check_rules(cleaned.dialogue, self.rules)
        base = {"cleaning": cleaning, "usage": usage}
        if rule is not None:
            return dspy.Prediction(
                outcome="dropped", stage="rules", reason=rule, dialogue=None, redaction={}, **base
            )
        source, counts = self.redact(cleaned.dialogue)
        redaction = dict(counts)

        if self.conduct is not None:
            with self._as_role("prefilter", usage):
                screen = self.conduct(source, config=self._config("prefilter", seed, key, 0))
            if not screen.keep:
                return dspy.Prediction(
                    outcome="dropped",
                    stage="prefilter",
                    reason=screen.reason,
                    prefilter={
                        "abusive_language": screen.abusive_language,
                        "disrespectful_agent": screen.disrespectful_agent,
                    },
                    dialogue=None,
                    redaction=redaction,
                    **base,
                )

        before = self._label(source, usage, seed, key, 1) if self.labeler else None
        with self._as_role("rewriter", usage):
            rewritten = self.rewriter(source, config=self._config("rewriter", seed, key, 0))
        result = rewritten.dialogue
        problems = structure_problems(result, self.min_utterances, self.max_utterances)
        judgement = None
        if not problems and self.judge is not None:
            with self._as_role("judge", usage):
                judgement = self.judge(result, config=self._config("judge", seed, key, 0))
            problems = [
                f"{c}: {v['reason']}" for c, v in judgement.criteria.items() if not v["pass"]
            ]
        outcome = "rejected" if problems else "kept"
        after = self._label(result, usage, seed, key, 2) if self.labeler and not problems else None
        fallback = self.framework.fallback.code if self.framework.fallback else None
        labels = [t.strategy for t in result.supporter_turns]
        using = sum(1 for c in labels if c and c != fallback)
        utilization: dict[str, Any] = {"rewriter": {"turns": len(labels), "using": using}}
        if before is not None:
            utilization["before"] = before
        if after is not None:
            utilization["after"] = after
            utilization["adherence"] = {
                "turns": len(labels),
                "agree": sum(1 for a, b in zip(labels, after["labels"]) if a == b),
            }
        result.metadata = {
            **result.metadata,
            "source": "csconv-rewrite",
            "framework": self.framework.name,
            "language": self.language,
            "redaction": redaction,
            "cleaning": cleaning,
            "notes_stripped": rewritten.notes_stripped,
            "postfilter": {
                "passed": not problems,
                "problems": problems,
                "judge": judgement.criteria if judgement is not None else None,
            },
            "utilization": utilization,
            "usage": usage,
        }
        return dspy.Prediction(
            outcome=outcome,
            stage="postfilter" if problems else "done",
            reason="; ".join(problems),
            dialogue=result,
            redaction=redaction,
            **base,
        )
