"""Label bias of the embedded model's strategy predictor, with and without contextual calibration.

Run:  python benchmarks/strategy_calibration.py [--limit N] [--benchmark-requests 100]

For each shipped sample (``data/samples/sample_en.json``, ``sample_zh.json``) every supporter turn
is one request in the reference context (the history is the reference dialogue up to the turn).
The zero-shot ``StrategyPredictor`` runs on the embedded SmolLM2-135M (``LocalLM``, greedy,
``cache=False``) once with ``calibrate_choices=False`` and once with ``True``, and the script
prints accuracy, macro-F1, the entropy (bits) of the predicted-label distribution and the label
counts. ``--benchmark-requests N`` also runs the strategy check of ``benchmarks/local_lm.py`` (its
varied histories, its signature) both ways.

Entropy is 0 when one label is always predicted; log2(12) = 3.58 bits is the most for the twelve
CSC strategies. The gold labels' own entropy is printed for reference.
"""

# No `from __future__ import annotations`: the benchmark signature below is built at runtime.
import argparse
import importlib.util
import math
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = {"en": ROOT / "data/samples/sample_en.json", "zh": ROOT / "data/samples/sample_zh.json"}


def entropy_bits(labels: list[Any]) -> float:
    """Shannon entropy (bits) of the empirical distribution of ``labels``."""
    counts = Counter(labels)
    n = sum(counts.values())
    return max(0.0, -sum(c / n * math.log2(c / n) for c in counts.values())) if n else 0.0


def predict(program: Any, examples: list[Any], lm: Any, threads: int) -> tuple[list[Any], float]:
    """Run ``program`` on ``examples`` with ``lm`` (ChatAdapter, no JSON fallback)."""
    import dspy

    start = time.perf_counter()
    with dspy.context(lm=lm, adapter=dspy.ChatAdapter(use_json_adapter_fallback=False)):
        results = program.batch(
            examples,
            num_threads=threads,
            max_errors=len(examples),
            disable_progress_bar=True,
            timeout=3600,
        )
    return [getattr(r, "strategy", None) for r in results], time.perf_counter() - start


def sample_rows(language: str, limit: int | None, threads: int) -> list[dict[str, Any]]:
    """Scores on one shipped sample, without and with calibration."""
    from csc.data.io import read_dialogues
    from csc.engine import LocalLM
    from csc.eval.examples import supporter_examples
    from csc.eval.metrics import strategy_scores
    from csc.framework import Framework
    from csc.programs.supporter import StrategyPredictor

    framework = Framework.load("csc")
    dialogues = list(read_dialogues(SAMPLES[language]))
    examples = supporter_examples(dialogues, language=language)[:limit]
    gold = [ex.strategy for ex in examples]
    rows = []
    for calibrate in (False, True):
        lm = LocalLM(cache=False, calibrate_choices=calibrate)
        predicted, seconds = predict(StrategyPredictor(framework, language), examples, lm, threads)
        scores = strategy_scores(gold, predicted, framework.codes)
        rows.append(
            {
                "data": f"sample_{language}",
                "calibrated": calibrate,
                "n": len(examples),
                "acc": scores.accuracy,
                "macro_f1": scores.macro_f1,
                "entropy": entropy_bits(predicted),
                "gold_entropy": entropy_bits(gold),
                "majority_acc": 100.0 * Counter(gold).most_common(1)[0][1] / len(gold),
                "counts": dict(Counter(predicted).most_common()),
                "seconds": seconds,
            }
        )
    return rows


def benchmark_rows(requests: int, threads: int) -> list[dict[str, Any]]:
    """The strategy check of ``benchmarks/local_lm.py`` (no gold labels), both ways."""
    import dspy

    from csc.engine import LocalLM
    from csc.framework import Framework
    from csc.signatures.types import DialogueHistory

    spec = importlib.util.spec_from_file_location("local_lm_bench", ROOT / "benchmarks/local_lm.py")
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    framework = Framework.load("csc")

    class NextStrategy(dspy.Signature):
        """Choose the support strategy the supporter should use in the next turn."""

        history: DialogueHistory = dspy.InputField(desc="the conversation so far")
        strategy: framework.strategy_literal = dspy.OutputField(desc="one strategy code")

    examples = [dspy.Example(history=h).with_inputs("history") for h in bench.histories(requests)]
    rows = []
    for calibrate in (False, True):
        lm = LocalLM(cache=False, calibrate_choices=calibrate)
        predicted, seconds = predict(dspy.Predict(NextStrategy), examples, lm, threads)
        rows.append(
            {
                "data": "local_lm.py histories",
                "calibrated": calibrate,
                "n": len(examples),
                "entropy": entropy_bits(predicted),
                "counts": dict(Counter(predicted).most_common()),
                "seconds": seconds,
            }
        )
    return rows


def main() -> None:
    """Run the measurements and print one line per (data, calibration) pair."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--limit", type=int, default=None, help="first N supporter turns per sample"
    )
    parser.add_argument("--languages", default="en,zh", help="samples to run (en,zh)")
    parser.add_argument("--benchmark-requests", type=int, default=0, metavar="N")
    parser.add_argument("--threads", type=int, default=16)
    args = parser.parse_args()
    rows: list[dict[str, Any]] = []
    for language in [x for x in args.languages.split(",") if x]:
        rows += sample_rows(language, args.limit, args.threads)
        _print(rows[-2:])
    if args.benchmark_requests:
        rows += benchmark_rows(args.benchmark_requests, args.threads)
        _print(rows[-2:])


def _print(rows: list[dict[str, Any]]) -> None:
    for row in rows:
        head = f"{row['data']:<22} calibrated={row['calibrated']!s:<5} n={row['n']:<3}"
        if "acc" in row:
            head += (
                f" acc={row['acc']:5.1f}% macro-F1={row['macro_f1']:5.1f}%"
                f" (gold: majority acc {row['majority_acc']:.1f}%, entropy"
                f" {row['gold_entropy']:.2f} bits)"
            )
        print(f"{head} entropy={row['entropy']:.2f} bits in {row['seconds']:.0f} s")
        print(f"    predicted: {row['counts']}")


if __name__ == "__main__":
    main()
