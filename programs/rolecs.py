"""RoleCS: five role-playing agents synthesize one strategy-labelled support dialogue.

Loop (arXiv 2508.04423, RoleCS): supporter assistant -> supporter -> (stop on the framework's
closing strategy or at the utterance limit) -> customer assistant -> customer -> (stop when the
customer ends it) -> repeat. The framework's conversation policy is enforced in code by
:class:`~csc.programs.rolecs_policy.StrategyPolicy`: a strategy choice that breaks it is re-asked
once with feedback, then corrected; both are counted by kind in the dialogue's metadata. The
quality filter is :class:`~csc.programs.rolecs_judge.RoleCSJudge`.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import dspy

from csc.data.profiles import CustomerProfile
from csc.data.topics import Topic
from csc.data.turns import as_framework
from csc.dialogue import Dialogue, Speaker, Turn
from csc.framework import Framework, Language, check_language
from csc.programs.rolecs_judge import RoleCSJudge
from csc.programs.rolecs_policy import StrategyPolicy, policy_definitions
from csc.signatures.rolecs import rolecs_signatures
from csc.signatures.types import DialogueHistory, type_demo_histories
from csc.usage import add_role_usage, usage_label

DEFAULT_MAX_UTTERANCES = 50

EMBEDDED_TOKEN_BUDGETS: dict[str, int] = {
    "planner": 160,
    "supporter_assistant": 40,
    "supporter": 90,
    "customer_assistant": 50,
    "customer": 90,
    "judge": 240,
}
"""Completion-token limits per role for small embedded models, which otherwise fill every text
field up to the engine's length bound (a 135M model rambles); the embedded engine shares the budget
between fields so answers stay parseable. Remote LMs get no limit by default."""


class DialogueFailure(RuntimeError):
    """An agent call failed or its output could not be parsed; carries what is needed to record
    the failure: the role, the raw LM output when there was one, and the partial dialogue."""

    def __init__(
        self, role: str, cause: BaseException, raw_output: str | None, partial: Dialogue
    ) -> None:
        super().__init__(f"{role} failed: {type(cause).__name__}: {cause}")
        self.role, self.cause, self.raw_output, self.partial = role, cause, raw_output, partial


def rollout_id(seed: int, dialogue_key: str, role: str, step: int, attempt: int = 0) -> int:
    """A reproducible per-call rollout id: distinct for every dialogue, role, step and attempt,
    identical for the same seed, so runs are diverse yet repeatable (and cache-friendly)."""
    text = f"{seed}:{dialogue_key}:{role}:{step}:{attempt}"
    return int(hashlib.sha256(text.encode("utf-8")).hexdigest()[:12], 16)


def call_config(
    seed: int,
    key: str,
    role: str,
    step: int,
    attempt: int,
    temperature: float | None,
    token_budgets: Mapping[str, int],
) -> dict[str, Any]:
    """The ``config`` of one agent call: its rollout id, the temperature (when set) and the
    role's ``max_tokens`` (when budgeted)."""
    config: dict[str, Any] = {"rollout_id": rollout_id(seed, key, role, step, attempt)}
    if temperature is not None:
        config["temperature"] = temperature
    if role in token_budgets:
        config["max_tokens"] = token_budgets[role]
    return config


def _raw_output(exc: BaseException) -> str | None:
    """The raw LM text behind a parse failure, found on the exception or its causes."""
    seen: BaseException | None = exc
    for _ in range(5):  # bounded: a cause chain can loop
        if seen is None:
            break
        if getattr(seen, "lm_response", None):
            return str(seen.lm_response)  # type: ignore[attr-defined]
        seen = seen.__cause__ or seen.__context__
    return None


class RoleCS(dspy.Module):
    """Synthesize one strategy-labelled support dialogue with five role-playing agents.

    Args:
        framework: the strategy framework (object, name or YAML path).
        language: ``en`` or ``zh``; prompts, definitions and the dialogue use it.
        lms: optional LM per role (``planner``, ``supporter_assistant``, ``supporter``,
            ``customer_assistant``, ``customer``, ``judge``); a missing role uses the LM of the
            current DSPy context.
        temperature: sampling temperature sent with every call (None: the LM's default).
        max_utterances: utterance limit of a dialogue, closing turn included.
        judge: score each dialogue with :class:`RoleCSJudge` at the end.
        token_budgets: optional ``max_tokens`` per role sent with each call (see
            :data:`EMBEDDED_TOKEN_BUDGETS`).
        min_utterances: a customer's "finished" before this many utterances is ignored (and
            marked ``finish_ignored`` on the turn), so a weak customer model cannot end a dialogue
            right after the greeting; 0 turns the rule off.

    ``RoleCS(...).load("P.json")`` runs compiled supporter agents (see :meth:`load_state`).
    """

    def __init__(
        self,
        framework: Framework | str = "csc",
        language: Language = "en",
        *,
        lms: Mapping[str, Any] | None = None,
        temperature: float | None = None,
        max_utterances: int = DEFAULT_MAX_UTTERANCES,
        judge: bool = True,
        token_budgets: Mapping[str, int] | None = None,
        min_utterances: int = 0,
    ) -> None:
        super().__init__()
        self.language: Language = check_language(language)
        self.framework = as_framework(framework)
        sigs = rolecs_signatures(self.framework, language)
        self.planner = dspy.Predict(sigs.planner)
        self.supporter_assistant = dspy.Predict(sigs.supporter_assistant)
        self.supporter = dspy.Predict(sigs.supporter)
        self.customer_assistant = dspy.Predict(sigs.customer_assistant)
        self.customer = dspy.Predict(sigs.customer)
        self.judge = RoleCSJudge(self.framework, language) if judge else None
        self.policy = StrategyPolicy(self.framework, language)
        self.lms = dict(lms or {})
        self.temperature = temperature
        self.max_utterances = max_utterances
        self.token_budgets = dict(token_budgets or {})
        self.min_utterances = min_utterances
        self._definitions = policy_definitions(self.framework, language)

    def load_state(self, state: dict, **kwargs: Any) -> None:
        """Load saved agent state (``program.load("P.json")``). A state that holds only some of
        the agents — :class:`~csc.programs.rolecs_agents.RoleCSAgents`, saved by ``csc optimize
        --program rolecs``, holds the supporter assistant and the supporter — replaces those and
        leaves the others as they are; a state holding none of them is an error."""
        own = self.dump_state()
        present = [name for name in own if name in state]
        if not present:
            raise ValueError(
                f"the saved state holds none of the RoleCS agents ({', '.join(own)}); save one "
                "with `csc optimize --program rolecs`"
            )
        super().load_state({**own, **{name: state[name] for name in present}}, **kwargs)
        type_demo_histories(self)

    # ------------------------------------------------------------------ calls
    def _call(
        self, role: str, state: _State, step: int, attempt: int = 0, **inputs: Any
    ) -> dspy.Prediction:
        """Call the agent ``role`` (the predictor of that name) as that role."""
        predictor = getattr(self, role)
        config = call_config(
            state.seed, state.key, role, step, attempt, self.temperature, self.token_budgets
        )
        with self._as_role(role, state):
            return predictor(**inputs, config=config)

    @contextmanager
    def _as_role(self, role: str, state: _State) -> Iterator[None]:
        """Run calls with the role's LM, count their tokens, and wrap any error with context."""
        lm = self.lms.get(role)
        try:
            with (
                dspy.context(lm=lm) if lm is not None else nullcontext(),
                usage_label(role),  # the run's per-role figures (csc.usage)
                dspy.track_usage() as tracker,
            ):
                try:
                    yield
                finally:
                    state.add_usage(role, tracker.get_total_tokens(), tracker.usage_data)
        except Exception as exc:
            raise DialogueFailure(role, exc, _raw_output(exc), state.dialogue()) from exc

    def _history(self, state: _State) -> DialogueHistory:
        return DialogueHistory.of(state.turns, language=self.language)

    def _choose_strategy(self, state: _State, step: int) -> tuple[str, dict[str, Any]]:
        previous = [t.strategy for t in state.turns if t.is_supporter and t.strategy]
        inputs = dict(
            scenario=state.scenario,
            history=self._history(state),
            strategy_definitions=self._definitions,
        )
        pred = self._call("supporter_assistant", state, step, feedback="none", **inputs)
        chosen = self.framework.normalize(str(pred.strategy))
        meta: dict[str, Any] = {"predicted_stage": str(pred.stage)}
        violation = self.policy.check(chosen, previous)
        if violation is None:
            return chosen, meta
        # Re-ask once, telling the assistant which rule it broke.
        again = self._call(
            "supporter_assistant",
            state,
            step,
            attempt=1,
            feedback=violation.feedback,
            **inputs,
        )
        second = self.framework.normalize(str(again.strategy))
        meta["predicted_stage"] = str(again.stage)
        record = {"violation": violation.kind, "first_choice": chosen, "second_choice": second}
        still = self.policy.check(second, previous)
        if still is None:
            state.reasks[violation.kind] += 1
            meta["policy"] = {**record, "action": "reasked"}
            return second, meta
        final = second
        for _ in range(3):  # a correction could in principle trip another rule; settle it
            if still is None:
                break
            state.corrections[still.kind] += 1
            final = self.policy.correct(still, final, previous)
            still = self.policy.check(final, previous)
        meta["policy"] = {**record, "action": "corrected", "corrected_to": final}
        return final, meta

    def _supporter_turn(
        self, state: _State, step: int, strategy: str, meta: dict[str, Any]
    ) -> Turn:
        pred = self._call(
            "supporter",
            state,
            step,
            scenario=state.scenario,
            strategy=self.framework.render_strategy(strategy, self.language),
            history=self._history(state),
        )
        stage = self.framework.strategy(strategy).stage
        return Turn(
            speaker=Speaker.SUPPORTER,
            text=str(pred.reply).strip(),
            strategy=strategy,
            metadata={"stage": stage, **meta},
        )

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        profile: CustomerProfile | str,
        topic: Topic | str,
        *,
        dialogue_id: str | None = None,
        seed: int = 0,
        max_utterances: int | None = None,
        on_turn: Callable[[Turn], None] | None = None,
    ) -> dspy.Prediction:
        """Synthesize one dialogue for a customer ``profile`` and a service ``topic``.

        Returns a prediction with ``dialogue`` (a :class:`~csc.dialogue.Dialogue`), ``scenario``,
        ``goal``, ``end_reason`` (``closing``, ``customer_finished`` or ``max_utterances``),
        ``judgement`` and ``passed`` (None without a judge). Raises :class:`DialogueFailure` when
        an agent call fails or cannot be parsed. ``on_turn`` is called with every new turn (the
        runner uses it to show progress inside long dialogues).
        """
        limit = max_utterances or self.max_utterances
        closing = self.framework.policy.closing
        if limit < (3 if closing else 2):
            raise ValueError(f"max_utterances must be at least {3 if closing else 2}, got {limit}")
        description = profile.description if isinstance(profile, CustomerProfile) else str(profile)
        topic_text = topic.display(self.language) if isinstance(topic, Topic) else str(topic)
        key = dialogue_id or hashlib.sha256(f"{description}|{topic_text}".encode()).hexdigest()[:16]
        state = _State(
            turns=_NotifyingList(on_turn),
            key=key,
            seed=seed,
            topic=topic.name if isinstance(topic, Topic) else str(topic),
            profile=profile.model_dump(exclude_none=True)
            if isinstance(profile, CustomerProfile)
            else description,
            framework=self.framework.name,
            language=self.language,
        )
        plan = self._call("planner", state, 0, profile=description, topic=topic_text)
        state.scenario, state.goal = str(plan.scenario).strip(), str(plan.goal).strip()

        step = 0
        while True:
            step += 1
            if closing and len(state.turns) + 3 > limit:
                # No room for another customer turn and a closing reply: close now.
                strategy, meta = closing, {"forced": "closing"}
                state.corrections["closing"] += 1
                state.end_reason = "max_utterances"
            else:
                strategy, meta = self._choose_strategy(state, step)
            state.turns.append(self._supporter_turn(state, step, strategy, meta))
            if closing and strategy == closing:
                state.end_reason = state.end_reason or "closing"
                break
            if len(state.turns) + 1 > limit:  # frameworks without a closing strategy
                state.end_reason = "max_utterances"
                break

            history = self._history(state)
            direction = self._call(
                "customer_assistant",
                state,
                step,
                scenario=state.scenario,
                goal=state.goal,
                profile=description,
                history=history,
            ).direction
            said = self._call(
                "customer",
                state,
                step,
                profile=description,
                scenario=state.scenario,
                history=history,
                direction=str(direction),
            )
            finished = bool(said.finished)
            too_early = finished and len(state.turns) + 1 < self.min_utterances
            state.turns.append(
                Turn(
                    speaker=Speaker.CUSTOMER,
                    text=str(said.utterance).strip(),
                    metadata={
                        "direction": str(direction).strip(),
                        "finished": finished,
                        "reason": str(said.reason).strip(),
                        **({"finish_ignored": True} if too_early else {}),
                    },
                )
            )
            finished = finished and not too_early
            if finished or len(state.turns) >= limit:
                state.end_reason = "customer_finished" if finished else "max_utterances"
                if closing:
                    # The policy ends every dialogue with the closing strategy.
                    state.corrections["closing"] += 1
                    state.turns.append(
                        self._supporter_turn(state, step + 1, closing, {"forced": "closing"})
                    )
                break

        judgement = None
        if self.judge is not None:
            config = call_config(seed, key, "judge", 0, 0, self.temperature, self.token_budgets)
            with self._as_role("judge", state):
                judgement = self.judge(state.dialogue(), config=config)
            state.judge = judgement.criteria
        return dspy.Prediction(
            dialogue=state.dialogue(),
            scenario=state.scenario,
            goal=state.goal,
            end_reason=state.end_reason,
            judgement=judgement.criteria if judgement is not None else None,
            passed=judgement.passed if judgement is not None else None,
        )


class _NotifyingList(list):
    """A turn list that reports each appended turn (progress display)."""

    def __init__(self, callback: Callable[[Turn], None] | None) -> None:
        super().__init__()
        self._callback = callback

    def append(self, turn: Turn) -> None:
        super().append(turn)
        if self._callback is not None:
            self._callback(turn)


@dataclass
class _State:
    """The dialogue under construction and its counters (one per forward call)."""

    key: str
    seed: int
    turns: list[Turn]  # a _NotifyingList: the runner's progress display sees each turn
    topic: str
    profile: Any
    framework: str
    language: str
    scenario: str = ""
    goal: str = ""
    end_reason: str | None = None
    corrections: Counter[str] = field(default_factory=Counter)
    reasks: Counter[str] = field(default_factory=Counter)
    usage: dict[str, dict[str, int]] = field(default_factory=dict)
    judge: dict[str, Any] | None = None

    def add_usage(
        self,
        role: str,
        totals: dict[str, dict[str, Any]],
        calls: dict[str, list[Any]] | None = None,
    ) -> None:
        # One entry per LM call that reported usage (a re-parse after a format error is a
        # second call); a response from DSPy's cache reports none.
        n = sum(len(entries) for entries in (calls or {}).values())
        add_role_usage(self.usage, role, totals.values(), calls=n)

    def dialogue(self) -> Dialogue:
        metadata: dict[str, Any] = {
            "source": "rolecs",
            "framework": self.framework,
            "language": self.language,
            "goal": self.goal,
            "end_reason": self.end_reason,
            "policy_corrections": dict(self.corrections),
            "policy_reasks": dict(self.reasks),
            "usage": self.usage,
            "seed": self.seed,
        }
        if self.judge is not None:
            metadata["judge"] = self.judge
            metadata["passed"] = all(v["pass"] for v in self.judge.values())
        return Dialogue(
            id=self.key,
            topic=self.topic,
            turns=list(self.turns),
            scenario=self.scenario or None,
            profile=self.profile,
            metadata=metadata,
        )
