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
    """How many LM calls a run will make, including the dev evaluations before and after."""
    n_pred = len(PROGRAM_KINDS[kind]().predictors())
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


def _evaluate(
    program: dspy.Module, devset: Sequence[dspy.Example], metric: Callable, threads: int
) -> float:
    if not devset:
        return float("nan")
    evaluate = dspy.Evaluate(
        devset=list(devset), metric=metric, num_threads=threads, display_progress=True
    )
    return float(evaluate(program).score)


def _compiler(
    optimizer: str,
    budget: str,
    metric: Callable,
    gepa_metric: Callable,
    task_lm: Any,
    prompt_lm: Any,
    seed: int,
    threads: int,
) -> Any:
    demos, labeled, rounds = BUDGETS[budget]
    if optimizer == "bootstrap":
        return dspy.BootstrapFewShot(
            metric=metric,
            max_bootstrapped_demos=demos,
            max_labeled_demos=labeled,
            max_rounds=rounds,
        )
    if optimizer == "mipro":
        return dspy.MIPROv2(
            metric=metric,
            prompt_model=prompt_lm,
            task_model=task_lm,
            auto=budget,
            max_bootstrapped_demos=demos,
            max_labeled_demos=labeled,
            num_threads=threads,
            seed=seed,
        )
    if optimizer == "gepa":
        return dspy.GEPA(
            metric=gepa_metric,
            auto=budget,
            reflection_lm=prompt_lm,
            num_threads=threads,
            seed=seed,
        )
    raise ValueError(f"unknown optimizer {optimizer!r}; use bootstrap, mipro or gepa")


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
        if kind not in ("strategy", "supporter", "labeler"):
            raise ValueError(f"unknown program {kind!r}; use strategy, supporter or labeler")
        program = PROGRAM_KINDS[kind](fw, language)
        kind_name = kind
    lm = lm or dspy.settings.lm
    if lm is None:
        raise ValueError("no task LM: pass lm= or configure dspy.settings.lm")
    prompt_lm = prompt_lm or lm
    trainset = [ex for ex in trainset if ex.get("strategy")]
    devset = [ex for ex in devset if ex.get("strategy")]
    if kind_name == "labeler":  # the labeler reads the gold reply too: history + reply -> strategy
        trainset = [ex.with_inputs("history", "response") for ex in trainset]
        devset = [ex.with_inputs("history", "response") for ex in devset]
    if not trainset:
        raise ValueError("the training set has no supporter turns with a gold strategy")
    score_fn = build_metric(metric, fw, language)
    projection = project_lm_calls(
        kind_name if kind_name in PROGRAM_KINDS else "supporter",
        optimizer,
        budget,
        len(trainset),
        len(devset),
    )
    if on_projection:
        on_projection(projection)

    # Metered on the LM objects themselves: dspy.track_usage() loses what worker threads record.
    meter(lm)
    meter(prompt_lm)
    usage_before = usage_of(lm, prompt_lm)
    start = time.perf_counter()
    with dspy.context(lm=lm):
        before = _evaluate(program, devset, score_fn, num_threads)
        compiler = _compiler(
            optimizer,
            budget,
            score_fn,
            build_metric(metric, fw, language, for_gepa=True),
            lm,
            prompt_lm,
            seed,
            num_threads,
        )
        kwargs: dict[str, Any] = {"trainset": trainset}
        if optimizer in ("mipro", "gepa") and devset:
            kwargs["valset"] = devset
        compiled = compiler.compile(program, **kwargs)
        after = _evaluate(compiled, devset, score_fn, num_threads)
    seconds = time.perf_counter() - start
    usage = usage_of(lm, prompt_lm) - usage_before
    metadata = {
        "kind": kind_name,
        "framework": fw.name if fw.source.endswith(f"{fw.name}.yaml") else fw.source,
        "language": language,
        "optimizer": optimizer,
        "budget": budget,
        "metric": metric,
        "seed": seed,
        "lm": lm_name(lm),
        "prompt_lm": lm_name(prompt_lm),
        "n_train": len(trainset),
        "n_dev": len(devset),
        "dev_before": before,
        "dev_after": after,
        "lm_calls": usage.calls,
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "lm_usage": usage.to_dict(),
        "seconds": round(seconds, 2),
    }
    return OptimizationResult(
        compiled,
        before,
        after,
        usage.calls,
        usage.prompt_tokens,
        usage.completion_tokens,
        seconds,
        projection,
        metadata,
        usage,
    )
