"""Write an evaluation's outputs: metrics.json, predictions.jsonl, report.md, report.html (the
viewer page of :mod:`csc.eval.viewer`: tables, plots and every scored turn) and PNG plots.

Plots (matplotlib, Agg backend, one set per context): ``confusion_<context>.png`` (gold rows,
predicted columns), ``strategy_f1_<context>.png`` (per-strategy F1) and
``strategy_distribution_<context>.png`` (gold vs predicted strategy counts).
"""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the writers only read results; importing the harness would pull in dspy
    from csc.eval.harness import ContextResult, EvaluationResult

__all__ = [
    "HEADLINE_METRICS",
    "format_value",
    "plot_context",
    "write_metrics",
    "write_predictions",
    "write_report",
]

HEADLINE_METRICS: list[tuple[str, str]] = [
    ("bleu2", "BLEU-2"),
    ("bleu4", "BLEU-4"),
    ("rougeL", "ROUGE-L"),
    ("bertscore", "BERTScore"),
    ("acc", "ACC"),
    ("macro_f1", "Macro-F1"),
]


def write_predictions(result: EvaluationResult, path: str | Path) -> Path:
    """One JSON line per scored example and context (ordered by context, then dialogue order)."""
    path = Path(path)
    with path.open("w", encoding="utf-8") as fh:
        for rec in result.records:
            fh.write(json.dumps(rec.to_dict(), ensure_ascii=False) + "\n")
    return path


def write_metrics(result: EvaluationResult, path: str | Path, info: dict[str, Any]) -> Path:
    """metrics.json: per-context metrics and strategy detail, plus run information."""
    data = {
        **info,
        **result.info,
        "contexts": {
            name: {**res.metrics, "strategy": res.strategy} for name, res in result.contexts.items()
        },
    }
    path = Path(path)
    path.write_text(json.dumps(data, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    return path


def plot_context(res: ContextResult, out_dir: str | Path) -> list[Path]:
    """The three PNG plots of one context; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    labels: list[str] = res.strategy["labels"]
    paths: list[Path] = []
    if not labels:
        return paths

    def save(fig: Any, stem: str) -> None:
        fig.tight_layout()
        paths.append(Path(out_dir) / f"{stem}_{res.context}.png")
        fig.savefig(paths[-1], dpi=120)
        plt.close(fig)

    rows = [lab for lab in labels if lab != "-"]

    fig, ax = plt.subplots(
        figsize=(max(4.5, 1.0 + 0.5 * len(labels)), max(4.0, 1.0 + 0.5 * len(rows)))
    )
    matrix = res.strategy["confusion"]
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=90)
    ax.set_yticks(range(len(rows)), rows)
    ax.set_xlabel("predicted")
    ax.set_ylabel("gold")
    peak = max((max(r) for r in matrix), default=0) or 1
    for i, row in enumerate(matrix):
        for j, value in enumerate(row):
            if value:
                color = "white" if value > peak / 2 else "black"
                ax.text(j, i, str(value), ha="center", va="center", fontsize=7, color=color)
    ax.set_title(f"Strategy confusion ({res.context})", fontsize=10)
    save(fig, "confusion")

    per = res.strategy["per_strategy"]
    fig, ax = plt.subplots(figsize=(max(4.5, 1.5 + 0.45 * len(per)), 3.5))
    ax.bar(list(per), [v["f1"] for v in per.values()], color="#4C72B0")
    ax.set_ylabel("F1 (%)")
    ax.set_ylim(0, 100)
    ax.set_title(f"Per-strategy F1 ({res.context} context)")
    save(fig, "strategy_f1")

    gold = Counter(r.gold_strategy for r in res.records if r.gold_strategy)
    pred = Counter(r.predicted_strategy or "-" for r in res.records if r.gold_strategy)
    xs = list(range(len(labels)))
    fig, ax = plt.subplots(figsize=(max(4.5, 1.5 + 0.5 * len(labels)), 3.5))
    ax.bar([x - 0.2 for x in xs], [gold[c] for c in labels], 0.4, label="gold")
    ax.bar([x + 0.2 for x in xs], [pred[c] for c in labels], 0.4, label="predicted")
    ax.set_xticks(xs, labels, rotation=90)
    ax.set_ylabel("supporter turns")
    ax.legend()
    ax.set_title(f"Strategy distribution ({res.context} context)")
    save(fig, "strategy_distribution")
    return paths


def format_value(value: Any, digits: int = 2, missing: str = "n/a") -> str:
    """A report cell: a float to ``digits`` places, None or NaN as ``missing``, else the text."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return missing
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def write_report(
    result: EvaluationResult, out_dir: str | Path, info: dict[str, Any]
) -> dict[str, Path]:
    """Write metrics.json, predictions.jsonl, report.md and the plots into ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {
        "metrics": write_metrics(result, out_dir / "metrics.json", info),
        "predictions": write_predictions(result, out_dir / "predictions.jsonl"),
    }
    plots: dict[str, list[Path]] = {
        name: plot_context(res, out_dir) for name, res in result.contexts.items()
    }

    lines = [
        "# Supporter evaluation",
        "",
        f"- Supporter: `{info.get('supporter')}`",
        f"- LM: `{info.get('lm')}`",
        f"- Data: `{info.get('data')}` (sha256 `{str(info.get('data_sha256', ''))[:16]}…`), "
        f"framework `{info.get('framework')}`, language `{result.info.get('language')}`",
        f"- Examples: {info.get('selection', 'all supporter turns')}; "
        f"{result.info.get('n_dialogues')} dialogues",
        f"- BERTScore model: `{info.get('bertscore_model')}`",
        f"- Date: {info.get('date')}; total time {format_value(info.get('seconds'))} s",
        "",
        "## Metrics (%)",
        "",
        "| context | "
        + " | ".join(label for _, label in HEADLINE_METRICS)
        + " | strategy fallbacks | n | errors | time (s) |",
        "|---|" + "---:|" * (len(HEADLINE_METRICS) + 4),
    ]
    for name, res in result.contexts.items():
        m = res.metrics
        cells = [format_value(m.get(key)) for key, _ in HEADLINE_METRICS]
        fallbacks = (
            f"{m.get('strategy_fallbacks', 0)} + {m.get('strategy_parse_errors', 0)} unparsed"
        )
        lines.append(
            f"| {name} | "
            + " | ".join(cells)
            + f" | {fallbacks} | {m['n_examples']} | {m['n_errors']} | {m['seconds']:.1f} |"
        )
    lines += [
        "",
        "BLEU is sacrebleu corpus BLEU (tokenizer `zh` for Chinese, `13a` for English); ROUGE-L "
        "is mean F1 (Chinese by characters); BERTScore is mean F1 without rescaling; ACC and "
        "macro-F1 are over turns with a gold strategy. Strategy fallbacks: turns whose strategy "
        "output named no strategy and got the framework's fallback strategy (scored as "
        "predicted), plus outputs that could not be parsed at all (error rows, scored as wrong).",
    ]
    for name, res in result.contexts.items():
        lines += [
            "",
            f"## Strategies — {name} context",
            "",
            "| strategy | precision | recall | F1 | gold | predicted |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for code, v in res.strategy["per_strategy"].items():
            lines.append(
                f"| {code} | {v['precision']:.1f} | {v['recall']:.1f} | {v['f1']:.1f} | "
                f"{v['support']} | {v['predicted']} |"
            )
        lines.append("")
        lines += [f"![{p.stem}]({p.name})" for p in plots.get(name, [])]
        m = res.metrics
        tokens = m["prompt_tokens"] + m["completion_tokens"]
        cached = m.get("cached_prompt_tokens") or 0
        lines += [
            "",
            f"Tokens of the scored turns: {m['prompt_tokens']} prompt"
            + (f" (of which {cached} cached)" if cached else "")
            + f" + {m['completion_tokens']} completion = {tokens}; mean latency "
            f"{m['mean_latency_s']:.2f} s per turn.",
        ]
        if m.get("lm_usage") is not None:
            from csc.usage import Usage, format_usage

            known = {k: v for k, v in m["lm_usage"].items() if k in Usage.__dataclass_fields__}
            lines += ["", f"This run's LM usage ({name} context): {format_usage(Usage(**known))}."]
    report = out_dir / "report.md"
    report.write_text("\n".join(lines) + "\n", encoding="utf-8")
    files["report"] = report
    for paths in plots.values():
        for p in paths:
            files[p.stem] = p
    from csc.eval.viewer import write_report_html

    html = write_report_html(out_dir)  # report.html: the tables, plots and every scored turn
    if html is not None:
        files["html"] = html
    return files
