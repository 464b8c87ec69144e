"""Compact vs full supporter prompt for a fine-tuned student, side by side in one run.

For each shipped sample (``data/samples/sample_en.json``, ``sample_zh.json``) and each prompt
variant (``full``: instructions plus the framework's definitions; ``compact``: the short student
prompt), this script:

1. exports the sample with ``csc.finetune.export.export_sft(prompt=variant)`` (the same split,
   seed 0, for both variants) and counts the prompt tokens per row with the base model's
   tokenizer and chat template;
2. trains the quick recipe (SmolLM2-135M LoRA, batch 2, fp32 on CPU) for the same number of steps
   on the ``--task`` rows (``strategy`` by default, as in issue #18's measurement) and reads
   steps/s from the run's metadata;
3. runs the trained student as ``finetuned:RUN`` (which picks the variant from the run's
   metadata) on the held-out test dialogues in the reference context, one thread, no LM cache:
   mean latency per supporter turn, strategy accuracy and macro-F1.

It prints a Markdown table (the one in docs/finetuning.md) and writes ``results.json`` under
``--out``. Variants alternate within a language, so the load of a shared machine hits both alike;
the load average is printed before and after. Usage::

    python benchmarks/student_prompt.py --steps 8 --out /tmp/student-bench
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = {
    "en": ROOT / "data" / "samples" / "sample_en.json",
    "zh": ROOT / "data" / "samples" / "sample_zh.json",
}
VARIANTS = ("full", "compact")


def prompt_tokens(export_dir: Path, tokenizer: Any) -> dict[str, float]:
    """Mean prompt tokens (chat template applied, target excluded) per train row and task."""
    from datasets import load_from_disk

    counts: dict[str, list[int]] = {}
    for row in load_from_disk(str(export_dir))["train"]:
        prompt = row["messages"][:-1]
        text = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
        n = len(tokenizer(text, add_special_tokens=False)["input_ids"])
        counts.setdefault(row["task"], []).append(n)
    return {task: statistics.fmean(values) for task, values in counts.items()}


def recipe_for(variant: str, steps: int, task: str) -> Any:
    """The shipped quick recipe, trained on ``task`` rows of the ``variant`` export."""
    from csc.finetune.recipes import Recipe

    data = Recipe.load("smollm2-135m-lora-quick").to_dict()
    data["prompt"] = variant
    data["data"]["task"] = None if task == "joint" else task
    # The full Chinese strategy prompt is ~2,300 tokens: keep every row in both variants.
    data["trainer"].update(max_steps=steps, max_length=4096, save_steps=steps)
    return Recipe.from_dict(data, source=f"smollm2-135m-lora-quick (prompt: {variant})")


def evaluate_student(
    run_dir: Path, data: Path, export_dir: Path, task: str, limit: int | None
) -> dict[str, Any]:
    """Latency per turn and strategy scores of ``finetuned:RUN`` on the test dialogues."""
    import dspy

    from csc.data.io import read_dialogues
    from csc.eval.harness import evaluate_supporter, supporter_from_spec
    from csc.eval.splits import DatasetSplits
    from csc.lm import build_lm
    from csc.programs.supporter import StrategyPredictor

    test_ids = set(DatasetSplits.read(export_dir / "splits.json").parts["test"])
    dialogues = [d for d in read_dialogues(data) if d.id in test_ids]
    language = json.loads((export_dir / "export.json").read_text("utf-8"))["language"]
    spec = supporter_from_spec(f"finetuned:{run_dir}", language=language)
    program = spec.program
    if task == "strategy":  # the student learnt only the strategy rows: score that sub-program
        program = StrategyPredictor(program.framework, program.language, program.prompt)
    lm = build_lm(f"finetuned:{run_dir}", cache=False, max_tokens=64, temperature=0.0)
    lm(messages=[{"role": "user", "content": "Hello"}])  # load the engine outside the timings
    with dspy.context(lm=lm):
        result = evaluate_supporter(
            program,
            dialogues,
            context="reference",
            limit=limit,
            num_threads=1,
            with_bertscore=False,
            progress=False,
        )
    metrics = result.contexts["reference"].metrics
    return {
        "prompt": program.prompt,
        "turns": metrics.get("n_examples"),
        "latency_s": metrics.get("mean_latency_s"),
        "acc": metrics.get("acc"),
        "macro_f1": metrics.get("macro_f1"),
        "lm_prompt_tokens_per_turn": (metrics.get("prompt_tokens") or 0)
        / max(metrics.get("n_examples") or 1, 1),
    }


def train_and_evaluate(
    args: argparse.Namespace, lang: str, variant: str, data: Path, export_dir: Path, out: Path
) -> dict[str, Any]:
    """Train one student for ``args.steps`` steps and score it on the test dialogues."""
    from csc.finetune.train import train

    run_dir = out / f"run-{lang}-{variant}"
    shutil.rmtree(run_dir, ignore_errors=True)
    load = os.getloadavg()[0]
    trained = train(export_dir, recipe_for(variant, args.steps, args.task), run_dir, device="cpu")
    print(
        f"[{lang}/{variant}] trained {trained.steps} steps in {trained.wall_time_s:.0f} s "
        f"({trained.steps_per_second:.4f} steps/s, load {load:.1f})",
        flush=True,
    )
    scores = evaluate_student(run_dir, data, export_dir, args.task, args.eval_limit)
    return {
        "train_rows": trained.train_rows,
        "steps_per_second": trained.steps_per_second,
        "train_wall_s": trained.wall_time_s,
        # CPU seconds per step (all threads): less sensitive than wall time to other jobs.
        "cpu_s_per_step": (trained.cpu_time_s or 0) / max(trained.steps, 1),
        "final_loss": trained.final_loss,
        "load_at_start": load,
        "load_after_eval": os.getloadavg()[0],
        **scores,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Export, train and evaluate every (language, variant); returns the results."""
    from csc.engine.model_store import base_source, load_tokenizer
    from csc.finetune.export import export_sft

    out = Path(args.out)
    if out.exists() and args.fresh:
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = load_tokenizer(base_source("local"))  # what training and serving use
    results: dict[str, Any] = {
        "load_before": os.getloadavg(),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "steps": args.steps,
        "task": args.task,
        "rows": [],
    }
    for lang, data in SAMPLES.items():
        for variant in args.variants:
            export_dir = out / f"export-{lang}-{variant}"
            if not (export_dir / "export.json").is_file():
                export_sft(
                    data,
                    export_dir,
                    task="joint",
                    seed=0,
                    val_fraction=0.0,
                    test_fraction=0.25,
                    prompt=variant,  # type: ignore[arg-type]
                    progress=False,
                )
            tokens = prompt_tokens(export_dir, tokenizer)
            row: dict[str, Any] = {
                "lang": lang,
                "variant": variant,
                "strategy_prompt_tokens": tokens.get("strategy"),
                "response_prompt_tokens": tokens.get("response"),
            }
            if lang in args.lang:  # training and inference only where asked (slow on CPU)
                row.update(train_and_evaluate(args, lang, variant, data, export_dir, out))
            print(json.dumps(row), flush=True)
            results["rows"].append(row)
            (out / "results.json").write_text(json.dumps(results, indent=2) + "\n", "utf-8")
    results["load_after"] = os.getloadavg()
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n", "utf-8")
    return results


def markdown(results: dict[str, Any]) -> str:
    """The side-by-side table: one row per language and variant, plus the compact/full ratios."""
    lines = [
        "| sample | prompt | strategy prompt tok/row | response prompt tok/row | train steps/s "
        "| train CPU s/step | latency s/turn | ACC | macro-F1 | final loss |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    by = {(r["lang"], r["variant"]): r for r in results["rows"]}

    def f(value: Any, digits: int) -> str:
        return "–" if value is None else f"{value:.{digits}f}"

    columns = {"strategy_prompt_tokens": 0, "response_prompt_tokens": 0, "steps_per_second": 4}
    columns |= {"cpu_s_per_step": 0, "latency_s": 2, "acc": 1, "macro_f1": 1, "final_loss": 3}
    for (lang, variant), r in by.items():
        cells = [f(r.get(key), digits) for key, digits in columns.items()]
        lines.append(f"| {lang} | {variant} | {' | '.join(cells)} |")
    for lang in dict.fromkeys(lang for lang, _ in by):
        full, compact = by.get((lang, "full")), by.get((lang, "compact"))
        if full and compact:
            cells = [
                _ratio(full, compact, "strategy_prompt_tokens", True, " fewer"),
                _ratio(full, compact, "response_prompt_tokens", True, " fewer"),
                _ratio(full, compact, "steps_per_second"),
                _ratio(full, compact, "cpu_s_per_step", True, " less"),
                _ratio(full, compact, "latency_s", True, " faster"),
                _diff(full, compact, "acc"),
                _diff(full, compact, "macro_f1"),
            ]
            lines.append(f"| {lang} | compact vs full | {' | '.join(cells)} | |")
    return "\n".join(lines)


def _ratio(full: dict, compact: dict, key: str, inverse: bool = False, what: str = "") -> str:
    a, b = full.get(key), compact.get(key)
    return "–" if not a or not b else f"{(a / b if inverse else b / a):.2f}×{what}"


def _diff(full: dict, compact: dict, key: str) -> str:
    a, b = full.get(key), compact.get(key)
    return "–" if a is None or b is None else f"{b - a:+.1f}"


def main() -> None:
    """Parse the flags, run, print the table and the load averages."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=8, help="training steps per student")
    parser.add_argument("--task", choices=["strategy", "joint"], default="strategy")
    parser.add_argument(
        "--lang",
        nargs="*",
        choices=["en", "zh"],
        default=["en", "zh"],
        help="samples to train and run students on (prompt tokens are counted for both)",
    )
    parser.add_argument(
        "--variants",
        nargs="+",
        choices=VARIANTS,
        default=list(VARIANTS),
        help="variants in the order they run (swap it to check that the order does not matter)",
    )
    parser.add_argument("--eval-limit", type=int, default=None, help="test turns per student")
    parser.add_argument("--out", default="/tmp/csc-student-bench", help="work folder")
    parser.add_argument("--fresh", action="store_true", help="delete --out first")
    args = parser.parse_args()
    started = time.perf_counter()
    results = run(args)
    print()
    print(markdown(results))
    print(
        f"\n{results['machine']}; {args.steps} steps of batch 2 on {args.task} rows; load average "
        f"before {results['load_before'][0]:.1f}, after {results['load_after'][0]:.1f}; "
        f"total {time.perf_counter() - started:.0f} s"
    )


if __name__ == "__main__":
    main()
