"""Compare supporters side by side: the same examples, every metric, cost, one table and chart.

:func:`compare_supporters` evaluates each named supporter spec (``zero-shot``,
``optimized:PATH``, ``finetuned:DIR``) with the evaluation harness on identical examples, in the
reference and/or generated context, and :func:`write_comparison` writes::

    compare.md    Markdown table (one row per supporter and context)
    compare.csv   the same numbers, machine-readable
    compare.json  the numbers plus what produced them (data, LM, limits, timings)
    compare.png   grouped bar chart of the quality metrics
    report.html   the table and chart plus every supporter's turns side by side (csc.eval.viewer)

Next to quality and per-turn cost, every row says where the supporter's knowledge came from
(:func:`knowledge_source`: ``none`` for zero-shot, ``prompt demos`` / ``prompt instructions`` for
an optimized program, ``gold SFT`` / ``teacher SFT`` / ``gold+teacher SFT`` for a fine-tuned
adapter) and the one-time cost of making it (LM tokens and wall time of optimization, or of the
data export plus training), read from the program's or adapter's metadata.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from csc.choices import CONTEXT_NAMES
from csc.eval.report import format_value
from csc.programs.run_folder import read_json_object

# Column order of the table: quality metrics as in the paper, then cost.
METRIC_COLUMNS: tuple[str, ...] = ("B-2", "B-4", "R-L", "BS", "ACC", "F1")
COST_COLUMNS: tuple[str, ...] = (
    "prompt_tok",
    "cached_tok",
    "completion_tok",
    "cost_usd",
    "latency_s",
)
# Where the knowledge came from and the one-time cost of making it (see knowledge_source).
KNOWLEDGE_COLUMNS: tuple[str, ...] = ("knowledge", "made_tok", "made_s")
# Every column of compare.csv; the Markdown table leaves out the spec.
_COLUMNS: tuple[str, ...] = (
    "supporter",
    "spec",
    "context",
    "turns",
    *METRIC_COLUMNS,
    *COST_COLUMNS,
    "prompt",
    *KNOWLEDGE_COLUMNS,
)
# Table columns -> ComparisonRow attributes, where the names differ.
_ATTRS = {
    "prompt_tok": "prompt_tokens",
    "cached_tok": "cached_prompt_tokens",
    "completion_tok": "completion_tokens",
    "made_tok": "making_tokens",
    "made_s": "making_s",
}
# Decimal places of the Markdown table's cost and knowledge cells.
_DIGITS = {"prompt_tok": 0, "cached_tok": 0, "completion_tok": 1, "cost_usd": 6, "made_s": 1}
# Harness metric keys -> table columns.
_HARNESS_KEYS = {
    "B-2": "bleu2",
    "B-4": "bleu4",
    "R-L": "rougeL",
    "BS": "bertscore",
    "ACC": "acc",
    "F1": "macro_f1",
}


class CompareError(ValueError):
    """A comparison request is malformed (bad ``NAME=SPEC``, duplicate names, no supporters)."""


@dataclass
class ComparisonRow:
    """One supporter's scores in one context (``ref`` or ``gen``)."""

    supporter: str
    spec: str
    context: str
    turns: int
    metrics: dict[str, float | None]
    prompt_tokens: float | None = None  # mean per supporter turn
    completion_tokens: float | None = None
    latency_s: float | None = None
    lm: str = ""
    cached_prompt_tokens: float | None = None  # mean per turn; part of prompt_tokens
    cost_usd: float | None = None  # mean per turn, LiteLLM prices; None when unknown
    lm_usage: dict[str, Any] | None = None  # this invocation's calls (csc.usage), uncached turns
    # Supporter prompt variant (full | compact, see csc.signatures.supporter); None: unknown.
    prompt: str | None = None
    # Where the supporter's knowledge came from, and the one-time cost of making it: LM tokens
    # and wall seconds (None: not recorded), with the breakdown (see knowledge_source).
    knowledge: str | None = None
    making_tokens: int | None = None
    making_s: float | None = None
    making: dict[str, Any] | None = None

    def cells(self) -> dict[str, Any]:
        """The row as flat table cells, in column order."""
        return {
            c: self.metrics.get(c) if c in METRIC_COLUMNS else getattr(self, _ATTRS.get(c, c))
            for c in _COLUMNS
        }


@dataclass
class Comparison:
    """All rows of a comparison plus what produced them."""

    rows: list[ComparisonRow]
    info: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (rows and info)."""
        return {"info": self.info, "rows": [asdict(r) for r in self.rows]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Comparison:
        """Inverse of :meth:`to_dict` (e.g. to re-plot a saved ``compare.json``)."""
        return cls(rows=[ComparisonRow(**r) for r in data["rows"]], info=data.get("info", {}))


def parse_supporter_args(values: Sequence[str]) -> dict[str, str]:
    """``["zs=zero-shot", "ft=finetuned:runs/ft"]`` -> ``{"zs": "zero-shot", "ft": ...}``.

    A value without ``=`` is its own name (``zero-shot``). Names must be unique.
    """
    if not values:
        raise CompareError("give at least one --supporter NAME=SPEC (e.g. zs=zero-shot)")
    out: dict[str, str] = {}
    for value in values:
        name, _, spec = value.partition("=") if "=" in value else (value, "", value)
        name, spec = name.strip(), spec.strip()
        if not name or not spec:
            raise CompareError(
                f"--supporter {value!r}: expected NAME=SPEC, e.g. ft=finetuned:runs/ft"
            )
        if name in out:
            raise CompareError(f"--supporter name {name!r} is used twice; names must be unique")
        out[name] = spec
    return out


# ---------------------------------------------------------------------------- output
def _fmt(value: Any, digits: int = 2) -> str:
    return format_value(value, digits, missing="–")


def markdown_table(comparison: Comparison) -> str:
    """The comparison as a Markdown table, best value per context and metric in bold."""
    header = [c for c in _COLUMNS if c != "spec"]
    values: dict[tuple[str, str], list[float]] = {}
    for row in comparison.rows:
        for name in METRIC_COLUMNS:
            value = row.metrics.get(name)
            if value is not None and not math.isnan(value):
                values.setdefault((row.context, name), []).append(value)
    # Bold only a real winner: a column where every supporter ties has none.
    best = {key: max(v) for key, v in values.items() if len(set(v)) > 1}
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in comparison.rows:
        cells = row.cells()
        out = [row.supporter, CONTEXT_NAMES.get(row.context, row.context), str(row.turns)]
        for name in METRIC_COLUMNS:
            value, text = cells[name], _fmt(cells[name])
            winner = value is not None and best.get((row.context, name)) == value
            out.append(f"**{text}**" if winner else text)
        out += [_fmt(cells[c], _DIGITS.get(c, 2)) for c in header[3 + len(METRIC_COLUMNS) :]]
        lines.append("| " + " | ".join(out) + " |")
    return "\n".join(lines) + "\n"


def write_csv(comparison: Comparison, path: Path) -> None:
    """One CSV row per supporter and context, columns as in the Markdown table plus the spec."""
    with path.open("w", encoding="utf-8", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=_COLUMNS)
        writer.writeheader()
        for row in comparison.rows:
            writer.writerow({k: ("" if v is None else v) for k, v in row.cells().items()})


def plot_comparison(comparison: Comparison, path: Path) -> None:
    """Grouped bar chart: one panel per context, metrics on the x axis, one bar per supporter."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed; safe in CI and over SSH
    import matplotlib.pyplot as plt

    contexts = list(dict.fromkeys(r.context for r in comparison.rows))
    supporters = list(dict.fromkeys(r.supporter for r in comparison.rows))
    fig, axes = plt.subplots(
        1,
        len(contexts),
        figsize=(1.6 + 1.3 * len(METRIC_COLUMNS) * len(contexts), 4.2),
        squeeze=False,
    )
    width = 0.8 / max(len(supporters), 1)
    for ax, context in zip(axes[0], contexts):
        for i, name in enumerate(supporters):
            row = next(
                (r for r in comparison.rows if r.context == context and r.supporter == name), None
            )
            if row is None:
                continue
            values = [row.metrics.get(m) for m in METRIC_COLUMNS]
            heights = [0.0 if v is None or math.isnan(v) else v for v in values]
            xs = [j + (i - (len(supporters) - 1) / 2) * width for j in range(len(METRIC_COLUMNS))]
            bars = ax.bar(xs, heights, width, label=name)
            ax.bar_label(bars, labels=[_fmt(v, 1) for v in values], fontsize=7, padding=1)
        ax.set_xticks(range(len(METRIC_COLUMNS)), METRIC_COLUMNS)
        ax.set_title(f"{CONTEXT_NAMES.get(context, context)} context")
        ax.set_ylabel("score (0–100)")
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].legend(fontsize=8)
    title = comparison.info.get("title")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_comparison(comparison: Comparison, out_dir: str | Path) -> dict[str, Path]:
    """Write compare.md, compare.csv, compare.json and compare.png to ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {ext: out / f"compare.{ext}" for ext in ("md", "csv", "json", "png")}
    info = comparison.info
    notes = []
    if info:
        described = ", ".join(
            f"{k}: {info[k]}"
            for k in ("data", "examples", "lm", "framework", "limit", "wall_time_s")
            if info.get(k) is not None
        )
        notes.append(f"{described}\n")
    notes.append(
        "B-2/B-4: BLEU, R-L: ROUGE-L, BS: BERTScore F1, ACC: strategy accuracy, F1: strategy "
        "macro-F1 (all ×100); prompt_tok/completion_tok: mean tokens per supporter turn "
        "(prompt_tok is the whole prompt, cached_tok the part of it served from the server's "
        "prefix cache); cost_usd: mean LiteLLM-priced cost per turn (– where LiteLLM has no "
        "price); latency_s: mean seconds per supporter turn. Turns answered from DSPy's response "
        "cache cost 0 tokens; prompt: the supporter's prompt variant (full, or compact: the "
        "student prompt without the framework's definitions that a fine-tuned supporter was "
        "trained on); knowledge: where the supporter's knowledge came from (none: zero-shot; "
        "prompt demos / prompt instructions: an optimized program; gold SFT / teacher SFT / "
        "gold+teacher SFT: an adapter fine-tuned on the dialogues' own targets or a teacher's "
        "outputs); made_tok / made_s: the one-time cost of making it, LM tokens and wall seconds "
        "(optimization; or the data export, its teacher's optimization if recorded, and "
        "training; – where not recorded); the breakdown is in compare.json.\n"
    )
    paths["md"].write_text(
        "# Supporter comparison\n\n" + "\n".join(notes) + "\n" + markdown_table(comparison),
        encoding="utf-8",
    )
    write_csv(comparison, paths["csv"])
    paths["json"].write_text(
        json.dumps(comparison.to_dict(), ensure_ascii=False, indent=2) + "\n", encoding="utf-8"
    )
    plot_comparison(comparison, paths["png"])
    from csc.eval.viewer import write_report_html

    html = write_report_html(out)  # report.html: the table, the chart and every supporter's turns
    if html is not None:
        paths["html"] = html
    return paths


def rows_from_result(
    name: str,
    spec: str,
    result: Any,
    lm: str = "",
    prompt: str | None = None,
    knowledge: KnowledgeSource | None = None,
) -> list[ComparisonRow]:
    """Comparison rows (one per context) from a harness ``EvaluationResult``; ``prompt`` is the
    supporter's prompt variant, ``knowledge`` where its knowledge came from."""
    from csc.usage import Usage, litellm_cost

    rows: list[ComparisonRow] = []
    for context, res in result.contexts.items():
        metrics = res.metrics
        n = int(metrics.get("n_examples") or len(res.records) or 0)
        spent = Usage(
            prompt_tokens=int(metrics.get("prompt_tokens") or 0),
            cached_prompt_tokens=int(metrics.get("cached_prompt_tokens") or 0),
            completion_tokens=int(metrics.get("completion_tokens") or 0),
        )
        cost = litellm_cost(lm, spent) if lm else None
        rows.append(
            ComparisonRow(
                supporter=name,
                spec=spec,
                context=context,
                turns=n,
                metrics={col: _num(metrics.get(key)) for col, key in _HARNESS_KEYS.items()},
                prompt_tokens=_per_turn(metrics.get("prompt_tokens"), n),
                completion_tokens=_per_turn(metrics.get("completion_tokens"), n),
                latency_s=_num(metrics.get("mean_latency_s")),
                lm=lm,
                cached_prompt_tokens=_per_turn(metrics.get("cached_prompt_tokens"), n),
                cost_usd=_per_turn(cost, n),
                lm_usage=metrics.get("lm_usage"),
                prompt=prompt,
                knowledge=knowledge.label if knowledge else None,
                making_tokens=knowledge.tokens if knowledge else None,
                making_s=knowledge.seconds if knowledge else None,
                making=knowledge.parts if knowledge else None,
            )
        )
    return rows


# ---------------------------------------------------------------------------- knowledge
@dataclass
class KnowledgeSource:
    """Where a supporter's knowledge came from and the one-time cost of making it.

    ``tokens`` are LM tokens (prompt + completion) spent making it: the optimizer's calls, or a
    teacher's calls while exporting its data (0 for gold targets); ``seconds`` is wall time
    (optimization, or export plus training). Either is None where the metadata does not record
    it. ``parts`` holds the breakdown (``optimization``, ``teacher_optimization``, ``data``,
    ``training``).
    """

    label: str
    tokens: int | None = None
    seconds: float | None = None
    parts: dict[str, Any] = field(default_factory=dict)


_TARGET_LABELS = {"gold": "gold SFT", "teacher": "teacher SFT", "both": "gold+teacher SFT"}


def knowledge_source(
    spec: str, metadata: dict[str, Any] | None = None, program: Any = None
) -> KnowledgeSource:
    """Where the supporter ``spec`` got its knowledge, from its metadata.

    * ``zero-shot`` / ``direct`` — ``none``, nothing to make;
    * ``optimized:P.json`` — ``prompt demos`` (the compiled program has few-shot demos) or
      ``prompt instructions`` (none: only instructions were rewritten); the optimization's
      tokens and seconds from the sidecar (``metadata``, else ``P.meta.json``);
    * ``finetuned:DIR`` — ``gold SFT``, ``teacher SFT`` or ``gold+teacher SFT`` from the targets
      its export used (``DIR/csc_finetune.json``, else the export's ``export.json``); the cost
      is the export's (teacher tokens and wall time), the teacher's own optimization when the
      teacher was an optimized program whose sidecar is still there, and training's wall time.
    """
    head, _, arg = spec.partition(":")
    if head == "optimized" and arg:
        return _optimized_knowledge(arg, metadata, program)
    if head == "finetuned" and arg:
        return _finetuned_knowledge(Path(arg))
    return KnowledgeSource("none", 0, 0.0)


def _optimization_cost(meta: dict[str, Any]) -> dict[str, Any]:
    usage = meta.get("lm_usage") or {}
    tokens = usage.get("total_tokens")
    if tokens is None and ("prompt_tokens" in meta or "completion_tokens" in meta):
        tokens = int(meta.get("prompt_tokens") or 0) + int(meta.get("completion_tokens") or 0)
    seconds = meta.get("seconds", meta.get("wall_time_s"))
    return {
        "optimizer": meta.get("optimizer"),
        "lm": meta.get("lm"),
        "tokens": None if tokens is None else int(tokens),
        "wall_time_s": None if seconds is None else float(seconds),
    }


def _optimized_knowledge(
    path: str, metadata: dict[str, Any] | None, program: Any
) -> KnowledgeSource:
    from csc.optimizers.store import sidecar_path

    meta = metadata or read_json_object(sidecar_path(path))
    if program is not None:
        demos = sum(len(p.demos) for p in program.predictors())
    else:
        state = read_json_object(Path(path))
        demos = sum(len(v.get("demos") or []) for v in state.values() if isinstance(v, dict))
    cost = _optimization_cost(meta)
    label = "prompt demos" if demos else "prompt instructions"
    return KnowledgeSource(
        label, cost["tokens"], cost["wall_time_s"], {"optimization": {**cost, "demos": demos}}
    )


def _finetuned_knowledge(run_dir: Path) -> KnowledgeSource:
    meta = read_json_object(run_dir / "csc_finetune.json")
    data = meta.get("data") or {}
    export = read_json_object(Path(str(data["dir"])) / "export.json") if data.get("dir") else {}
    targets = data.get("targets") or export.get("targets") or "gold"
    export_cost = data.get("export_cost") or export.get("cost") or {}
    teacher = data.get("teacher") or export.get("teacher") or None
    parts: dict[str, Any] = {}
    tokens: int | None = 0
    seconds: float | None = 0.0

    def add(part: str, part_tokens: Any, part_seconds: Any, **extra: Any) -> None:
        nonlocal tokens, seconds
        parts[part] = {"tokens": part_tokens, "wall_time_s": part_seconds, **extra}
        tokens = None if tokens is None or part_tokens is None else tokens + int(part_tokens)
        seconds = None if seconds is None or part_seconds is None else seconds + part_seconds

    if teacher:
        file = (teacher.get("program") or {}).get("file")
        if file and str(teacher.get("spec", "")).startswith("optimized:"):
            from csc.optimizers.store import sidecar_path

            sidecar = read_json_object(sidecar_path(file))
            if sidecar:
                cost = _optimization_cost(sidecar)
                add("teacher_optimization", cost["tokens"], cost["wall_time_s"], file=file)
    if export_cost:
        add(
            "data",
            int(export_cost.get("prompt_tokens") or 0)
            + int(export_cost.get("completion_tokens") or 0),
            export_cost.get("wall_time_s"),
            targets=targets,
            teacher=(teacher or {}).get("spec"),
        )
    else:  # an export from before its cost was recorded: gold targets made no LM calls
        add("data", 0 if targets == "gold" else None, None, targets=targets)
    add(
        "training",
        0,
        meta.get("wall_time_s"),
        steps=meta.get("steps"),
        device=meta.get("device"),
        resumed_from=meta.get("resumed_from"),
    )
    label = _TARGET_LABELS.get(str(targets), f"{targets} SFT")
    return KnowledgeSource(label, tokens, None if seconds is None else round(seconds, 2), parts)


def _per_turn(total: Any, n: int) -> float | None:
    return float(total) / n if n and total is not None else None


def _num(value: Any) -> float | None:
    return None if value is None else float(value)


# ---------------------------------------------------------------------------- running
def compare_supporters(
    dialogues: Sequence[Any],
    supporters: dict[str, str],
    *,
    lm: Any = None,
    context: str = "both",
    framework: Any = "csc",
    language: str | None = None,
    limit: int | None = None,
    num_threads: int = 4,
    cache_dir: str | Path | None = None,
    with_bertscore: bool = True,
    bertscore_model: str | None = None,
    lm_factory: Any = None,
    progress: bool = True,
    on_result: Any = None,
    allow_seen: bool = False,
) -> Comparison:
    """Evaluate every supporter on the same dialogues and turns and collect the rows.

    Args:
        dialogues: evaluation dialogues (gold strategies as framework codes).
        supporters: name -> supporter spec (``zero-shot``, ``direct``, ``optimized:PATH``,
            ``finetuned:DIR``), as accepted by :func:`csc.eval.harness.supporter_from_spec`.
        lm: the LM spec (string or :class:`csc.lm.LMSpec`) of supporters that bring none;
            ``finetuned:DIR`` supporters run on their own adapter. Supporters whose LM specs are
            equal share one LM object, hence one engine and one cache.
        context: ``ref``, ``gen`` or ``both``.
        limit: only the first N supporter turns in dialogue order (the same for everyone).
        cache_dir: per-supporter resume caches live in ``cache_dir/<name>-<hash>``; the hash
            covers the spec, program file, LM settings, framework and language.
        lm_factory: builds an LM from a spec (default :func:`csc.lm.build_lm`); tests pass fakes.
        on_result: called with ``(name, spec, EvaluationResult)`` after each supporter.
        allow_seen: score fine-tuned/optimized supporters even on dialogues they were trained
            or compiled on (otherwise :class:`~csc.eval.harness.SeenDialoguesError`).
    """
    import time

    import dspy

    from csc.data.turns import as_framework
    from csc.eval.examples import dialogue_language
    from csc.eval.harness import check_unseen, evaluate_supporter, supporter_from_spec
    from csc.lm import LMSpec, build_lm, lm_name

    if not supporters:
        raise CompareError("give at least one supporter to compare")
    fw = as_framework(framework)
    dialogues = list(dialogues)
    language = language or dialogue_language(dialogues)
    factory = lm_factory or build_lm
    base = lm if isinstance(lm, LMSpec) else LMSpec(model=lm) if lm else LMSpec()
    # Built first, so a bad spec fails before any (slow) evaluation starts.
    chosen = {
        name: supporter_from_spec(spec, framework=fw, language=language)
        for name, spec in supporters.items()
    }
    if not allow_seen:
        for sup in chosen.values():
            check_unseen(sup, dialogues)
    clients: dict[str, Any] = {}
    rows: list[ComparisonRow] = []
    started = time.perf_counter()
    for name, spec in supporters.items():
        sup = chosen[name]
        lm_spec = sup.lm_for(base)
        key = lm_spec.model_dump_json()
        if key not in clients:
            clients[key] = factory(lm_spec)
        client = clients[key]
        with dspy.context(lm=client):
            result = evaluate_supporter(
                sup.program,
                dialogues,
                context=context,
                framework=fw,
                language=language,
                limit=limit,
                num_threads=num_threads,
                cache_dir=Path(cache_dir) / _cache_key(name, spec, lm_spec, fw, language)
                if cache_dir
                else None,
                with_bertscore=with_bertscore,
                bertscore_model=bertscore_model,
                progress=progress,
            )
        rows.extend(
            rows_from_result(
                name,
                spec,
                result,
                lm=lm_name(client),
                prompt=getattr(sup.program, "prompt", None),
                knowledge=knowledge_source(spec, sup.metadata, sup.program),
            )
        )
        if on_result is not None:
            on_result(name, spec, result)
    info = {
        "examples": rows[0].turns if rows else 0,
        "lm": base.model,
        "framework": fw.name,
        "language": language,
        "context": context,
        "limit": limit,
        "supporters": supporters,
        "wall_time_s": round(time.perf_counter() - started, 1),
    }
    return Comparison(rows=rows, info=info)


def _cache_key(name: str, spec: str, lm_spec: Any, framework: Any, language: str) -> str:
    """Cache folder of one supporter: its name plus a hash of everything that changes its
    predictions, so re-running resumes but a changed LM, program or framework never reuses."""
    import hashlib
    import re

    from csc.eval.harness import spec_file
    from csc.eval.splits import data_sha256

    file = spec_file(spec)
    parts = {
        "spec": spec,
        "program": data_sha256(file) if file else None,
        "lm": lm_spec.model_dump(exclude={"api_key_env"}),
        "framework": framework.to_dict(),
        "language": language,
    }
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:12]
    return f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', name) or 'supporter'}-{digest}"
