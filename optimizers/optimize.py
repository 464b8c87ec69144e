"""Compile supporter programs with DSPy optimizers against the project's metrics.

Three optimizers, each with a light / medium / heavy budget:

* ``bootstrap`` — :class:`dspy.BootstrapFewShot`: few-shot demos the program gets right;
* ``mipro`` — :class:`dspy.MIPROv2`: proposes instructions (with the prompt LM) and demo sets and
  searches their combinations;
* ``gepa`` — :class:`dspy.GEPA`: reflective instruction evolution; its metric returns textual
  feedback naming the gold and predicted strategies with their definitions and rules.

Python use::

    from csc.optimizers import optimize_program
    result = optimize_program("strategy", train_examples, dev_examples,
                              optimizer="bootstrap", lm=build_lm("local"))
    result.program.save("strategy.json")   # or csc.optimizers.save_program(...)

RoleCS's two supporter agents (``csc optimize --program rolecs``) are compiled by
:func:`optimize_rolecs`: the supporter assistant against strategy accuracy, the supporter against
strategy adherence judged by an independent strategy labeler.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import dspy

from csc.choices import Budget, MetricName, OptimizerName, ProgramKind
from csc.data.turns import as_framework
from csc.eval.metrics import (
    strategy_accuracy_metric,
    strategy_and_bertscore_metric,
    strategy_feedback_metric,
)
from csc.framework import Framework, Language
from csc.lm import lm_name
from csc.optimizers.store import PROGRAM_KINDS
from csc.usage import Usage, meter, usage_of

__all__ = [
    "BUDGETS",
    "CallProjection",
    "OptimizationResult",
    "build_metric",
    "optimize_program",
    "optimize_rolecs",
    "project_lm_calls",
]


# BootstrapFewShot settings per budget: (max bootstrapped demos, max labeled demos, rounds).
# Histories are long, so demo counts stay small enough for an 8k-token context.
BUDGETS: dict[str, tuple[int, int, int]] = {
    "light": (2, 2, 1),
    "medium": (4, 4, 1),
    "heavy": (8, 8, 2),
}
# MIPROv2's auto settings (dspy.teleprompt.mipro_optimizer_v2.AUTO_RUN_SETTINGS).
_MIPRO_AUTO = {"light": (6, 100), "medium": (12, 300), "heavy": (18, 1000)}


def build_metric(
    name: MetricName, framework: Framework, language: Language, *, for_gepa: bool = False
) -> Callable[..., Any]:
    """The DSPy metric for ``acc`` (strategy accuracy) or ``acc+bertscore`` (half each).

    With ``for_gepa`` the metric also returns textual feedback (GEPA's five-argument shape).
    """
    if name == "acc":
        base: Callable[..., Any] = strategy_accuracy_metric
    elif name == "acc+bertscore":
        base = strategy_and_bertscore_metric(0.5)
    else:
        raise ValueError(f"unknown metric {name!r}; use acc or acc+bertscore")
    return strategy_feedback_metric(framework, language, base) if for_gepa else base


@dataclass
class CallProjection:
    """Projected LM calls of an optimization run (an upper bound where the optimizer stops early)."""

    task_calls: int
    prompt_calls: int
    detail: str

    @property
    def total(self) -> int:
        """Task plus prompt-model calls."""
        return self.task_calls + self.prompt_calls


def project_lm_calls(
    kind: str, optimizer: str, budget: str, n_train: int, n_dev: int
) -> CallProjection:
    """How many LM calls a run will make, including the dev evaluations before and after.

    ``rolecs`` compiles its two agents one after the other; every run of the reply agent is
    scored by one strategy-labeler call, which doubles its calls.
    """
    if kind == "rolecs":
        agent = _projection(1, optimizer, budget, n_train, n_dev)  # each agent alike
        return CallProjection(
            agent.task_calls + 2 * agent.task_calls,
            2 * agent.prompt_calls,
            f"supporter assistant: {agent.detail}; supporter: the same, each run plus one "
            "labeler call",
        )
    return _projection(len(PROGRAM_KINDS[kind]().predictors()), optimizer, budget, n_train, n_dev)


def _projection(
    n_pred: int, optimizer: str, budget: str, n_train: int, n_dev: int
) -> CallProjection:
    evals = 2 * n_dev * n_pred
    if optimizer == "bootstrap":
        _, _, rounds = BUDGETS[budget]
        boot = n_train * n_pred * rounds
        return CallProjection(
            boot + evals,
            0,
            f"bootstrap <= {n_train} train x {n_pred} predictor(s) x {rounds} round(s) = {boot}; "
            f"dev before/after 2 x {n_dev} x {n_pred} = {evals}",
        )
    if optimizer == "mipro":
        n, val_cap = _MIPRO_AUTO[budget]
        val = min(n_dev, val_cap)
        trials = int(max(2 * (2 * n_pred) * math.log2(n), 1.5 * n))
        minibatch = val > 50
        per_trial = min(35, val) if minibatch else val
        fulls = (trials // 5 + 1) * val if minibatch else 0
        boot = n * min(n_train, 4 * BUDGETS[budget][0] + 4) * n_pred
        task = (boot + trials * per_trial + fulls) * n_pred + evals
        prompt = 10 + (n // 2) * n_pred + n_pred + 1
        return CallProjection(
            task,
            prompt,
            f"{n} candidates, {trials} trials on {val} dev examples; "
            f"~{prompt} instruction-proposal calls on the prompt LM",
        )
    if optimizer == "gepa":
        n, _ = _MIPRO_AUTO[budget]
        metric_calls = dspy.GEPA.auto_budget(None, n_pred, n, max(n_dev, 1))
        reflections = max(1, metric_calls // 3)
        return CallProjection(
            metric_calls * n_pred + evals,
            reflections,
            f"GEPA auto={budget}: {metric_calls} program runs; <= {reflections} reflection calls",
        )
    raise ValueError(f"unknown optimizer {optimizer!r}; use bootstrap, mipro or gepa")


@dataclass
class OptimizationResult:
    """A compiled program with its dev scores and the cost of compiling it.

    ``usage`` counts every call of the task and prompt LMs made by the run, on every thread
    (see :mod:`csc.usage`); ``lm_calls``/``prompt_tokens``/``completion_tokens`` are its fields.
    """

    program: dspy.Module
    dev_before: float
    dev_after: float
    lm_calls: int
    prompt_tokens: int
    completion_tokens: int
    seconds: float
    projection: CallProjection
    metadata: dict[str, Any] = field(default_factory=dict)
    usage: Usage = field(default_factory=Usage)

    @classmethod
    def of(
        cls,
        program: dspy.Module,
        before: float,
        after: float,
        usage: Usage,
        seconds: float,
        projection: CallProjection,
        metadata: dict[str, Any],
    ) -> OptimizationResult:
        """A result whose metadata also records the dev scores, the usage and the time."""
        totals = (usage.calls, usage.prompt_tokens, usage.completion_tokens)
        metadata = {
            **metadata,
            "dev_before": before,
            "dev_after": after,
            **dict(zip(("lm_calls", "prompt_tokens", "completion_tokens"), totals)),
            "lm_usage": usage.to_dict(),
            "seconds": round(seconds, 2),
        }
        return cls(program, before, after, *totals, seconds, projection, metadata, usage)


def _evaluate(
    program: dspy.Module, devset: Sequence[dspy.Example], metric: Callable, threads: int
) -> float:
    if not devset:
        return float("nan")
    evaluate = dspy.Evaluate(
        devset=list(devset), metric=metric, num_threads=threads, display_progress=True
    )
    return float(evaluate(program).score)


def _compile_and_score(
    program: dspy.Module,
    trainset: Sequence[dspy.Example],
    devset: Sequence[dspy.Example],
    score_fn: Callable,
    gepa_fn: Callable,
    *,
    optimizer: str,
    budget: str,
    lm: Any,
    prompt_lm: Any,
    seed: int,
    num_threads: int,
    finish: Callable[[dspy.Module], None] | None = None,
) -> tuple[dspy.Module, float, float]:
    """Score ``program`` on ``devset``, compile it on ``trainset``, let ``finish`` adjust the
    compiled program, and score that: (compiled, dev before, dev after)."""
    with dspy.context(lm=lm):
        before = _evaluate(program, devset, score_fn, num_threads)
        demos, labeled, rounds = BUDGETS[budget]
        limits = {"max_bootstrapped_demos": demos, "max_labeled_demos": labeled}
        threads_seed = {"num_threads": num_threads, "seed": seed}
        if optimizer == "bootstrap":
            compiler: Any = dspy.BootstrapFewShot(metric=score_fn, max_rounds=rounds, **limits)
        elif optimizer == "mipro":
            compiler = dspy.MIPROv2(
                metric=score_fn,
                prompt_model=prompt_lm,
                task_model=lm,
                auto=budget,
                **limits,
                **threads_seed,
            )
        elif optimizer == "gepa":
            compiler = dspy.GEPA(
                metric=gepa_fn, auto=budget, reflection_lm=prompt_lm, **threads_seed
            )
        else:
            raise ValueError(f"unknown optimizer {optimizer!r}; use bootstrap, mipro or gepa")
        kwargs: dict[str, Any] = {"trainset": list(trainset)}
        if optimizer in ("mipro", "gepa") and devset:
            kwargs["valset"] = list(devset)
        compiled = compiler.compile(program, **kwargs)
        if finish is not None:
            finish(compiled)
        after = _evaluate(compiled, devset, score_fn, num_threads)
    return compiled, before, after


def optimize_program(
    kind: ProgramKind | dspy.Module,
    trainset: Sequence[dspy.Example],
    devset: Sequence[dspy.Example],
    *,
    optimizer: OptimizerName = "bootstrap",
    budget: Budget = "light",
    metric: MetricName = "acc",
    lm: Any = None,
    prompt_lm: Any = None,
    framework: Framework | str = "csc",
    language: Language = "en",
    seed: int = 0,
    num_threads: int = 4,
    on_projection: Callable[[CallProjection], None] | None = None,
) -> OptimizationResult:
    """Compile a supporter sub-program and score it on ``devset`` before and after.

    Args:
        kind: ``strategy`` (the strategy predictor), ``supporter`` (strategy + reply), or a
            program instance to start from.
        trainset / devset: examples from :func:`csc.eval.examples.supporter_examples`.
        optimizer, budget: see the module docstring.
        metric: ``acc`` or ``acc+bertscore``.
        lm: the task LM (default: ``dspy.settings.lm``); prompt_lm: the LM that proposes
            instructions (MIPROv2) or reflects (GEPA); defaults to ``lm``.
        on_projection: called with the projected number of LM calls before anything runs.
    """
    fw = as_framework(framework)
    if isinstance(kind, dspy.Module):
        program = kind
        kind_name = getattr(program, "kind", type(program).__name__)
    else:
        if kind == "rolecs":
            raise ValueError("RoleCS's supporter agents compile with optimize_rolecs()")
        if kind not in ("strategy", "supporter", "labeler"):
            raise ValueError(f"unknown program {kind!r}; use strategy, supporter or labeler")
        program = PROGRAM_KINDS[kind](fw, language)
        kind_name = kind
    lm, prompt_lm, trainset, devset = _labelled_run(lm, prompt_lm, trainset, devset)
    if kind_name == "labeler":  # the labeler reads the gold reply too: history + reply -> strategy
        trainset = [ex.with_inputs("history", "response") for ex in trainset]
        devset = [ex.with_inputs("history", "response") for ex in devset]
    score_fn = build_metric(metric, fw, language)
    projected = kind_name if kind_name in PROGRAM_KINDS else "supporter"
    projection = project_lm_calls(projected, optimizer, budget, len(trainset), len(devset))
    if on_projection:
        on_projection(projection)

    # Metered on the LM objects themselves: dspy.track_usage() loses what worker threads record.
    meter(lm)
    meter(prompt_lm)
    usage_before = usage_of(lm, prompt_lm)
    start = time.perf_counter()
    compiled, before, after = _compile_and_score(
        program,
        trainset,
        devset,
        score_fn,
        build_metric(metric, fw, language, for_gepa=True),
        optimizer=optimizer,
        budget=budget,
        lm=lm,
        prompt_lm=prompt_lm,
        seed=seed,
        num_threads=num_threads,
    )
    seconds = time.perf_counter() - start
    usage = usage_of(lm, prompt_lm) - usage_before
    metadata = _run_metadata(
        fw, language, optimizer, budget, seed, lm, prompt_lm, trainset, devset, kind=kind_name
    )
    metadata["metric"] = metric
    return OptimizationResult.of(compiled, before, after, usage, seconds, projection, metadata)


def _labelled_run(
    lm: Any, prompt_lm: Any, trainset: Sequence[dspy.Example], devset: Sequence[dspy.Example]
) -> tuple[Any, Any, list[dspy.Example], list[dspy.Example]]:
    """The task and prompt LMs (defaults applied) and the examples with a gold strategy."""
    lm = lm or dspy.settings.lm
    if lm is None:
        raise ValueError("no task LM: pass lm= or configure dspy.settings.lm")
    trainset = [ex for ex in trainset if ex.get("strategy")]
    if not trainset:
        raise ValueError("the training set has no supporter turns with a gold strategy")
    return lm, prompt_lm or lm, trainset, [ex for ex in devset if ex.get("strategy")]


def _run_metadata(
    fw: Framework,
    language: str,
    optimizer: str,
    budget: str,
    seed: int,
    lm: Any,
    prompt_lm: Any,
    trainset: Sequence[Any],
    devset: Sequence[Any],
    **extra: Any,
) -> dict[str, Any]:
    """The sidecar metadata every optimization run records (``extra`` first: ``kind``...)."""
    return {
        **extra,
        "framework": fw.name if fw.source.endswith(f"{fw.name}.yaml") else fw.source,
        "language": language,
        "optimizer": optimizer,
        "budget": budget,
        "seed": seed,
        "lm": lm_name(lm),
        "prompt_lm": lm_name(prompt_lm),
        "n_train": len(trainset),
        "n_dev": len(devset),
    }


def optimize_rolecs(
    trainset: Sequence[dspy.Example],
    devset: Sequence[dspy.Example],
    *,
    optimizer: OptimizerName = "bootstrap",
    budget: Budget = "light",
    lm: Any = None,
    prompt_lm: Any = None,
    labeler: dspy.Module | None = None,
    labeler_lm: Any = None,
    framework: Framework | str = "csc",
    language: Language = "en",
    seed: int = 0,
    num_threads: int = 4,
    on_projection: Callable[[CallProjection], None] | None = None,
) -> OptimizationResult:
    """Compile RoleCS's two supporter agents, each against its own metric, into one program.

    * the supporter assistant (scenario, history -> next strategy) against strategy accuracy;
    * the supporter (scenario, history, strategy -> reply) against strategy adherence: the
      ``labeler`` (default: a zero-shot :class:`~csc.programs.supporter.StrategyLabeler`) run on
      ``labeler_lm`` (default: ``lm``) reads the reply and must name the strategy it was given.

    Args:
        trainset / devset: examples from :func:`csc.programs.rolecs_agents.rolecs_examples`.
        optimizer, budget, lm, prompt_lm, seed, num_threads, on_projection: as in
            :func:`optimize_program`.

    Returns an :class:`OptimizationResult` whose ``program`` is a
    :class:`~csc.programs.rolecs_agents.RoleCSAgents`; ``dev_before``/``dev_after`` are the
    supporter assistant's strategy accuracy, and ``metadata["agents"]`` has each agent's scores,
    usage and time.
    """
    from csc.eval.metrics import strategy_adherence_metric
    from csc.programs.rolecs_agents import (
        RoleCSAgents,
        SupporterAssistantAgent,
        SupporterReplyAgent,
        tidy_agent_demos,
    )
    from csc.programs.supporter import StrategyLabeler

    fw = as_framework(framework)
    lm, prompt_lm, trainset, devset = _labelled_run(lm, prompt_lm, trainset, devset)
    labeler_spec = "zero-shot" if labeler is None else type(labeler).__name__
    labeler = labeler or StrategyLabeler(fw, language)
    judge_lm = labeler_lm or lm
    projection = project_lm_calls("rolecs", optimizer, budget, len(trainset), len(devset))
    if on_projection:
        on_projection(projection)

    lms = list({id(x): x for x in (lm, prompt_lm, judge_lm)}.values())
    for each in lms:
        meter(each)

    agents: dict[str, dict[str, Any]] = {}
    compiled: dict[str, dspy.Module] = {}
    plan = [
        (
            "supporter_assistant",
            SupporterAssistantAgent(fw, language),
            ("scenario", "history"),
            "acc",
            strategy_accuracy_metric,
            strategy_feedback_metric(fw, language),
        ),
        (
            "supporter",
            SupporterReplyAgent(fw, language),
            ("scenario", "history", "strategy"),
            "adherence",
            strategy_adherence_metric(labeler, lm=judge_lm),
            strategy_adherence_metric(
                labeler, lm=judge_lm, framework=fw, language=language, feedback=True
            ),
        ),
    ]
    usage_start = usage_of(*lms)
    start = time.perf_counter()
    for name, program, inputs, metric_name, score_fn, gepa_fn in plan:
        usage_before = usage_of(*lms)
        began = time.perf_counter()
        compiled[name], before, after = _compile_and_score(
            program,
            [ex.with_inputs(*inputs) for ex in trainset],
            [ex.with_inputs(*inputs) for ex in devset],
            score_fn,
            gepa_fn,
            optimizer=optimizer,
            budget=budget,
            lm=lm,
            prompt_lm=prompt_lm,
            seed=seed,
            num_threads=num_threads,
            finish=lambda compiled: tidy_agent_demos(compiled, fw, language),
        )
        usage = usage_of(*lms) - usage_before
        agents[name] = {
            "metric": metric_name,
            "dev_before": before,
            "dev_after": after,
            "demos": len(compiled[name].predictors()[0].demos),
            "lm_usage": usage.to_dict(),
            "seconds": round(time.perf_counter() - began, 2),
        }
    seconds = time.perf_counter() - start
    usage = usage_of(*lms) - usage_start
    program = RoleCSAgents.from_agents(compiled["supporter_assistant"], compiled["supporter"])
    metadata = _run_metadata(
        fw, language, optimizer, budget, seed, lm, prompt_lm, trainset, devset, kind="rolecs"
    )
    metadata.update(
        metric="acc (supporter_assistant), adherence (supporter)",
        labeler=labeler_spec,
        labeler_lm=lm_name(judge_lm),
        agents=agents,
    )
    before, after = (agents["supporter_assistant"][k] for k in ("dev_before", "dev_after"))
    return OptimizationResult.of(program, before, after, usage, seconds, projection, metadata)
