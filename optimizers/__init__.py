"""Compiling csc programs with DSPy optimizers against project metrics; saving and loading them."""

from csc.optimizers.optimize import (
    BUDGETS,
    CallProjection,
    OptimizationResult,
    build_metric,
    optimize_program,
    project_lm_calls,
)
from csc.optimizers.store import as_supporter, load_program, save_program

__all__ = [
    "BUDGETS",
    "CallProjection",
    "OptimizationResult",
    "as_supporter",
    "build_metric",
    "load_program",
    "optimize_program",
    "project_lm_calls",
    "save_program",
]
