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


def both_ways(data: str, program: Any, examples: list[Any], threads: int, gold=None) -> list[dict]:
    """Label counts and entropy of ``program`` on the embedded LM without and with calibration;
    accuracy and macro-F1 too when ``gold`` labels are given."""
    from csc.engine import LocalLM
    from csc.eval.metrics import strategy_scores
    from csc.framework import Framework

    rows = []
    for calibrate in (False, True):
        lm = LocalLM(cache=False, calibrate_choices=calibrate)
        predicted, seconds = predict(program, examples, lm, threads)
        row = {"data": data, "calibrated": calibrate, "n": len(examples), "seconds": seconds}
        row |= {
            "entropy": entropy_bits(predicted),
            "counts": dict(Counter(predicted).most_common()),
        }
        if gold is not None:
            scores = strategy_scores(gold, predicted, Framework.load("csc").codes)
            row |= {"acc": scores.accuracy, "macro_f1": scores.macro_f1}
            row |= {"gold_entropy": entropy_bits(gold)}
            row |= {"majority_acc": 100.0 * Counter(gold).most_common(1)[0][1] / len(gold)}
        rows.append(row)
    return rows


def sample_rows(language: str, limit: int | None, threads: int) -> list[dict[str, Any]]:
    """Scores on one shipped sample, without and with calibration."""
    from csc.data.io import read_dialogues
    from csc.eval.examples import supporter_examples
    from csc.framework import Framework
    from csc.programs.supporter import StrategyPredictor

    dialogues = list(read_dialogues(SAMPLES[language]))
    examples = supporter_examples(dialogues, language=language)[:limit]
    program = StrategyPredictor(Framework.load("csc"), language)
    gold = [ex.strategy for ex in examples]
    return both_ways(f"sample_{language}", program, examples, threads, gold)


def benchmark_rows(requests: int, threads: int) -> list[dict[str, Any]]:
    """The strategy check of ``benchmarks/local_lm.py`` (no gold labels), both ways."""
    import dspy

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
    return both_ways("local_lm.py histories", dspy.Predict(NextStrategy), examples, threads)


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
