"""Teacher outputs as SFT targets: DSPy's BootstrapFinetune idea with TRL as the trainer.

``csc finetune export --teacher SPEC`` runs a *teacher* supporter (any spec ``csc evaluate``
accepts: ``zero-shot``, ``direct``, ``optimized:P.json``, ``finetuned:DIR``) on any LM over the
supporter turns of the **train** dialogues, and the export writes the teacher's strategy and reply
as the targets of the student's rows. The student's prompts stay the ones it sends at inference;
only the answers change.

The teacher run is the evaluation harness's reference-context run
(:func:`csc.eval.harness.evaluate_supporter`): concurrent (``concurrency`` turns at a time),
answered from DSPy's response cache when a request repeats, and appended turn by turn to
``OUT/teacher/<key>/reference.jsonl`` in the export folder, so an interrupted export resumes
where it stopped without calling the teacher twice for a turn. ``<key>`` hashes everything that
changes the teacher's outputs (spec, program state, LM settings, data, framework, language); a
different teacher in the same folder never reuses them.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from csc.dialogue import Dialogue
from csc.finetune.export import TEACHER_DIR
from csc.framework import Framework

__all__ = [
    "TEACHER_DIR",
    "TeacherError",
    "TeacherOutputs",
    "describe_lm_spec",
    "program_sha256",
    "run_teacher",
]

_OUTPUTS_FILE = "reference.jsonl"  # the harness's cache file of the reference context


class TeacherError(ValueError):
    """The teacher cannot be built or produced no usable output."""


@dataclass
class TeacherOutputs:
    """What the teacher said for each train turn, and how it was made (``metadata``)."""

    spec: str
    # (dialogue id, turn index) -> (strategy code, reply) of every turn the teacher answered.
    outputs: dict[tuple[str, int], tuple[str, str]]
    failed: dict[tuple[str, int], str] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)

    def get(self, dialogue_id: str, turn_index: int) -> tuple[str, str] | None:
        """The teacher's (strategy, reply) for a turn, or None when it failed on it."""
        return self.outputs.get((dialogue_id, turn_index))


def program_sha256(program: Any) -> str:
    """SHA-256 of a DSPy program's saved state (instructions, fields, demos): what it sends."""
    from csc.programs.run_folder import digest

    return digest(program.dump_state())


def describe_lm_spec(spec: Any) -> dict[str, Any]:
    """An LM spec for metadata: model, redacted endpoint(s) and sampling settings; never a key
    (``api_key_env`` is only the variable's name and is left out too)."""
    from csc.lm import redact_url

    return {
        "model": spec.model,
        "api_base": redact_url(spec.api_base) if spec.api_base else None,
        "temperature": spec.temperature,
        "max_tokens": spec.max_tokens,
        "description": spec.describe(),
    }


def _program_info(spec: str, program: Any) -> dict[str, Any]:
    from csc.eval.harness import spec_file
    from csc.eval.splits import data_sha256

    info: dict[str, Any] = {
        "kind": getattr(program, "kind", type(program).__name__),
        "prompt": getattr(program, "prompt", None),
        "sha256": program_sha256(program),
        "demos": sum(len(p.demos) for p in program.predictors()),
    }
    file = spec_file(spec)
    if file is not None:
        info["file"] = str(file.resolve())
        info["file_sha256"] = data_sha256(file)
    return info


def run_teacher(
    spec: str,
    dialogues: Sequence[Dialogue],
    out_dir: str | Path,
    *,
    framework: Framework,
    language: str,
    data_sha256: str,
    lm: Any = None,
    lm_factory: Callable[[Any], Any] | None = None,
    concurrency: int = 4,
    held_out_ids: Sequence[str] = (),
    progress: bool = True,
) -> TeacherOutputs:
    """Run the teacher ``spec`` on every supporter turn of ``dialogues`` (reference context).

    Args:
        spec: a supporter spec (see :func:`csc.eval.harness.supporter_from_spec`).
        dialogues: the train dialogues only; the caller never passes held-out ones.
        out_dir: the export folder; outputs are appended to ``out_dir/teacher/<key>/``.
        lm: the teacher's LM spec (:class:`csc.lm.LMSpec` or a model string; default: the
            default LM); a ``finetuned:DIR`` teacher runs on its own adapter instead.
        lm_factory: builds an LM from an :class:`~csc.lm.LMSpec` (default
            :func:`csc.lm.build_lm`); tests pass fakes.
        held_out_ids: validation/test dialogue ids, to report whether an optimized or
            fine-tuned teacher has seen any of them (its demos or weights may carry them).
    """
    import dspy

    from csc.eval.harness import evaluate_supporter, supporter_from_spec
    from csc.framework import FrameworkError
    from csc.lm import LMConfigError, build_lm, lm_name, redact_secrets
    from csc.optimizers.store import ProgramStoreError

    try:
        chosen = supporter_from_spec(spec, framework=framework, language=language)
    except (ValueError, ProgramStoreError, FrameworkError) as exc:
        raise TeacherError(f"--teacher {spec}: {exc}") from None
    lm_spec = chosen.lm_for(lm)
    try:
        client = (lm_factory or build_lm)(lm_spec)
    except (LMConfigError, FileNotFoundError, OSError) as exc:
        raise TeacherError(
            f"--teacher {spec}: cannot build its LM {lm_spec.model!r}: {redact_secrets(str(exc))}"
        ) from None
    program = chosen.program
    info = _program_info(spec, program)
    key_parts = {
        "spec": spec,
        "program": info["sha256"],
        "program_file": info.get("file_sha256"),
        "lm": lm_spec.model_dump(exclude={"api_key_env"}),
        "data": data_sha256,
        "framework": framework.to_dict(),
        "language": language,
    }
    key = hashlib.sha256(json.dumps(key_parts, sort_keys=True).encode()).hexdigest()[:16]
    cache_dir = Path(out_dir) / TEACHER_DIR / key
    started = time.perf_counter()
    with dspy.context(lm=client):
        result = evaluate_supporter(
            program,
            list(dialogues),
            context="reference",
            framework=framework,
            language=language,
            num_threads=concurrency,
            cache_dir=cache_dir,
            with_bertscore=False,
            progress=progress,
        )
    seconds = time.perf_counter() - started
    ref = result.contexts["reference"]
    outputs: dict[tuple[str, int], tuple[str, str]] = {}
    failed: dict[tuple[str, int], str] = {}
    for rec in ref.records:
        where = (rec.dialogue_id, rec.turn_index)
        if rec.error is None and rec.predicted_strategy and rec.generated_response.strip():
            outputs[where] = (rec.predicted_strategy, rec.generated_response.strip())
        else:
            failed[where] = rec.error or "the teacher gave no strategy or an empty reply"
    if ref.records and not outputs:
        first = next(iter(failed.values()))
        raise TeacherError(
            f"--teacher {spec} on {lm_name(client)} failed on all {len(failed)} train turns, "
            f"e.g.: {first}; outputs so far are in {cache_dir}"
        )
    labelled = [
        r for r in ref.records if r.gold_strategy and (r.dialogue_id, r.turn_index) in outputs
    ]
    agreeing = sum(
        _code(framework, r.gold_strategy) == outputs[(r.dialogue_id, r.turn_index)][0]
        for r in labelled
    )
    seen_held_out = sorted(set(held_out_ids) & chosen.seen_ids)
    metrics = ref.metrics
    metadata = {
        "spec": spec,
        "lm": describe_lm_spec(lm_spec),
        "lm_name": lm_name(client),
        "program": info,
        "key": key,
        "outputs": f"{TEACHER_DIR}/{key}/{_OUTPUTS_FILE}",
        "turns": len(ref.records),
        "answered_turns": len(outputs),
        "failed_turns": len(failed),
        "turns_from_earlier_runs": int(metrics.get("n_from_cache") or 0),
        "labelled_turns": len(labelled),
        "agreeing_turns": agreeing,
        "disagreeing_turns": len(labelled) - agreeing,
        "agreement": round(100.0 * agreeing / len(labelled), 2) if labelled else None,
        # Tokens of every turn's teacher calls, summed over the runs that made them (DSPy
        # response-cache hits cost 0); lm_usage is what this invocation spent.
        "prompt_tokens": int(metrics.get("prompt_tokens") or 0),
        "completion_tokens": int(metrics.get("completion_tokens") or 0),
        "lm_usage": metrics.get("lm_usage"),
        "mean_latency_s": round(float(metrics.get("mean_latency_s") or 0.0), 4),
        "wall_time_s": round(seconds, 2),
        "concurrency": concurrency,
        "seen_held_out_dialogues": len(seen_held_out),
    }
    return TeacherOutputs(spec, outputs, failed, metadata)


def _code(framework: Framework, label: str) -> str | None:
    try:
        return framework.normalize(label)
    except ValueError:
        return None
