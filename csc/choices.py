"""The closed sets of values csc options take, shared by the library and the ``csc`` command line.

Typer turns a ``Literal`` annotation into a choice that ``--help`` lists and that fails with one
uniform message; the library annotates the same parameters with the same types. The module
imports nothing heavy (no dspy, torch), so ``csc --help`` stays fast.
"""

from __future__ import annotations

from typing import Literal, get_args

PromptVariant = Literal["full", "compact"]
"""Supporter prompt: ``full`` (with the framework's definitions) or ``compact`` (student)."""
SftTask = Literal["strategy", "response", "joint"]
"""Rows of an SFT export: next strategy, reply given the gold strategy, or both."""
SftTargets = Literal["gold", "teacher", "both"]
"""Targets of an SFT export's train rows: the dialogues', a teacher supporter's, or both."""
ProgramKind = Literal["strategy", "supporter", "labeler", "rolecs"]
"""What ``csc optimize`` compiles; ``rolecs``: RoleCS's supporter agents (optimize_rolecs)."""
OptimizerName = Literal["bootstrap", "mipro", "gepa"]
Budget = Literal["light", "medium", "heavy"]
MetricName = Literal["acc", "acc+bertscore"]
Device = Literal["auto", "cpu", "cuda"]
OutputFormat = Literal["jsonl", "dianjin"]
"""What ``csc synthesize`` and ``csc rewrite`` write."""
EvalSplit = Literal["all", "test"]
Executor = Literal["local", "ray"]
"""Where ``csc synthesize`` runs its dialogues: this process's threads, or Ray tasks."""
Context = Literal["reference", "generated"]
"""What a supporter turn is scored on: the reference history or the simulated one."""
CONTEXTS: tuple[Context, ...] = get_args(Context)
CONTEXT_NAMES: dict[str, Context] = {"ref": "reference", "gen": "generated"} | {
    c: c for c in CONTEXTS
}
"""``--context`` short names (and full names) -> context."""
