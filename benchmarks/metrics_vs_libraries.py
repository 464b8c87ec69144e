"""csc's ROUGE-L and BERTScore against the rouge-score and bert-score packages, in one run.

Scores the same N synthetic pairs per language (default 10,000 English and 10,000 Chinese, the
pairs of ``eval_throughput.py``) with both implementations and prints, per metric and language,
the time of each, the speed-up and the largest per-pair score difference. rouge-score gets a
character tokenizer for Chinese (its default tokenizer deletes non-ASCII text); bert-score runs
the offline all-MiniLM-L6-v2 with ``num_layers=6``. Model loading and imports are timed
separately and not counted in the comparison.

    python benchmarks/metrics_vs_libraries.py [--pairs 10000] [--bertscore-pairs N] [--no-bertscore]
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).parent))
from eval_throughput import make_pairs


def timed(fn):  # type: ignore[no-untyped-def]
    """``(result, seconds)`` of ``fn()``."""
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def compare(name: str, ours: tuple[list[float], float], lib: tuple[list[float], float]) -> None:
    """Print times, speed-up (library time / ours) and the largest score difference."""
    (a, t_ours), (b, t_lib) = ours, lib
    diff = max(abs(x - y) for x, y in zip(a, b))
    mean_a, mean_b = 100 * sum(a) / len(a), 100 * sum(b) / len(b)
    print(
        f"{name:<16} ours {t_ours:8.2f} s  library {t_lib:8.2f} s  speed-up {t_lib / t_ours:6.2f}x"
        f"  mean {mean_a:7.3f} / {mean_b:7.3f}  max |diff| {diff:.2e}",
        flush=True,
    )


def main() -> None:
    """Run both implementations on the same pairs and print one line per metric and language."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=10_000, help="pairs per language")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-bertscore", action="store_true", help="only ROUGE-L")
    parser.add_argument(
        "--bertscore-pairs", type=int, default=None, help="BERTScore on the first N pairs only"
    )
    args = parser.parse_args()

    rng = random.Random(args.seed)
    data = {lang: make_pairs(args.pairs, lang, rng) for lang in ("en", "zh")}
    print(f"{args.pairs} pairs per language; load average {os.getloadavg()[0]:.1f} at start")

    from csc.eval.metrics import rouge_l_scores

    _, seconds = timed(lambda: __import__("rouge_score.rouge_scorer"))
    print(f"import rouge_score: {seconds:.2f} s (not counted)")
    from rouge_score import rouge_scorer

    for lang, (hyps, refs) in data.items():
        # rouge-score's tokenizer deletes Chinese: give it characters, as csc does.
        chars = SimpleNamespace(tokenize=lambda text: [c for c in text if not c.isspace()])
        lib = rouge_scorer.RougeScorer(["rougeL"], tokenizer=chars if lang == "zh" else None)
        compare(
            f"ROUGE-L ({lang})",
            timed(lambda h=hyps, r=refs, la=lang: rouge_l_scores(h, r, language=la)),
            timed(
                lambda h=hyps, r=refs, s=lib: [
                    s.score(ref, hyp)["rougeL"].fmeasure for hyp, ref in zip(h, r)
                ]
            ),
        )

    if not args.no_bertscore:
        import bert_score
        import torch

        from csc.eval.metrics import BertScorer, default_bertscore_model

        print(f"torch threads: {torch.get_num_threads()}")
        ours, t_ours = timed(lambda: BertScorer(num_layers=6))
        lib, t_lib = timed(
            lambda: bert_score.BERTScorer(
                model_type=default_bertscore_model(), num_layers=6, device="cpu"
            )
        )
        print(f"model load: ours {t_ours:.2f} s, library {t_lib:.2f} s (not counted)")
        n = args.bertscore_pairs or args.pairs
        for lang, (all_hyps, all_refs) in data.items():
            hyps, refs = all_hyps[:n], all_refs[:n]
            compare(
                f"BERTScore ({lang}, {n})",
                timed(lambda h=hyps, r=refs: ours.score(h, r)),
                timed(lambda h=hyps, r=refs: lib.score(h, r)[2].tolist()),
            )
    print(f"load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
