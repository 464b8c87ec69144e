"""Throughput of the evaluation metrics (everything except the LM).

Scores N synthetic reference/prediction pairs in English and N in Chinese (default 50,000 each)
with corpus BLEU-2 and BLEU-4 (one pass), ROUGE-L, BERTScore (offline all-MiniLM-L6-v2) and the strategy
scores, and prints the time per metric.

    python benchmarks/eval_throughput.py [--pairs 50000] [--seed 0] [--no-bertscore]

Pairs are short support replies (5-16 words, 8-24 characters in Chinese) drawn from a seeded
phrase grammar, with predictions made by perturbing the reference (word drops, swaps and
substitutions), so every metric sees realistic partial overlap.
"""

from __future__ import annotations

import argparse
import random
import time

# Vocabulary of the English replies (one string: a 71-item list takes 71 lines once formatted).
EN_VOCABULARY = """
    thank you for contacting us i have checked your account the transfer card payment please
    wait a moment while verify identity details sorry to hear that problem we will help
    resolve this today can try again restart app update bank branch phone number email
    receive refund within three working days is there anything else may assist with policy
    fee interest rate loan limit security code password reset online service closed opened
"""
EN_WORDS = EN_VOCABULARY.split()
ZH_CHARS = (
    "您好感谢来电请问有什么可以帮您我已经为查询账户转账银行卡支付稍等核实身份信息很抱歉"
    "听到这个问题们会尽快解决今天再试一次重启应用更新网点手机号码邮箱退款三个工作日内"
    "到还有其他需要政策费用利率贷款额度安全验证码密码重置在线服务"
)
CODES = ("GT", "IV", "RP", "PR", "EM", "PS", "ID", "RI", "FR", "RC", "AC", "OT")


def make_pairs(n: int, language: str, rng: random.Random) -> tuple[list[str], list[str]]:
    """``n`` (prediction, reference) pairs of short replies in ``language``."""
    hyps, refs = [], []
    for _ in range(n):
        en = language == "en"
        alphabet, join, end = (EN_WORDS, " ", ".") if en else (ZH_CHARS, "", "。")
        ref = [
            rng.choice(alphabet) for _ in range(rng.randint(5, 16) if en else rng.randint(8, 24))
        ]
        hyp = list(ref)
        for _ in range(rng.randint(1, max(2, len(hyp) // 3))):
            op = rng.random()
            i = rng.randrange(len(hyp))
            if op < 0.4:
                hyp[i] = rng.choice(alphabet)
            elif op < 0.7 and len(hyp) > 3:
                del hyp[i]
            else:
                j = rng.randrange(len(hyp))
                hyp[i], hyp[j] = hyp[j], hyp[i]
        refs.append(join.join(ref) + end)
        hyps.append(join.join(hyp) + end)
    return hyps, refs


def main() -> None:
    """Run the benchmark and print one line per metric and language, then the total."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=50_000, help="pairs per language")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-bertscore", action="store_true", help="skip BERTScore")
    args = parser.parse_args()

    import torch

    from csc.eval.strategy_metrics import strategy_scores
    from csc.eval.text_metrics import BertScorer, corpus_bleu_orders, rouge_l

    rng = random.Random(args.seed)
    data = {lang: make_pairs(args.pairs, lang, rng) for lang in ("en", "zh")}
    gold = [rng.choice(CODES) for _ in range(2 * args.pairs)]
    pred = [g if rng.random() < 0.45 else rng.choice(CODES) for g in gold]

    print(f"{args.pairs} pairs per language; torch threads: {torch.get_num_threads()}")
    timings: list[tuple[str, float]] = []

    def timed(name: str, fn) -> None:  # type: ignore[no-untyped-def]
        start = time.perf_counter()
        value = fn()
        seconds = time.perf_counter() - start
        timings.append((name, seconds))
        print(f"{name:<22} {seconds:8.2f} s   value {value:7.2f}", flush=True)

    for lang, (hyps, refs) in data.items():
        timed(
            f"BLEU-2+4 ({lang})",
            lambda h=hyps, r=refs, la=lang: corpus_bleu_orders(h, r, (2, 4), language=la)[4],
        )
        timed(f"ROUGE-L ({lang})", lambda h=hyps, r=refs, la=lang: rouge_l(h, r, language=la))
    timed("strategy ACC/F1", lambda: strategy_scores(gold, pred, CODES).macro_f1)
    if not args.no_bertscore:
        start = time.perf_counter()
        scorer = BertScorer()
        timings.append(("BERTScore model load", time.perf_counter() - start))
        print(f"{'BERTScore model load':<22} {timings[-1][1]:8.2f} s", flush=True)
        for lang, (hyps, refs) in data.items():
            timed(
                f"BERTScore ({lang})",
                lambda h=hyps, r=refs: 100 * sum(scorer.score(h, r, progress=True)) / len(h),
            )
    total = sum(s for _, s in timings)
    print(f"{'total':<22} {total:8.2f} s")


if __name__ == "__main__":
    main()
