"""Shape of the embedded model's replies on the shipped samples (reference context).

Run:  python benchmarks/reply_shape.py [--languages en,zh] [--stride K] [--gold-strategy] [--out DIR]

Every supporter turn of ``data/samples/sample_<lang>.json`` is one request: the zero-shot
``Supporter`` (predict the strategy, then reply with it) on the embedded SmolLM2-135M
(``LocalLM``, greedy, ``cache=False``) gets the reference dialogue up to the turn. The script
prints, per language:

* how many replies contain a transcript line: a line or sentence that starts with a speaker
  label (``Supporter [..]:``, ``Customer:``, ``客服：``, ``客户 [..]：``, or another role name) or
  with meta-text such as "My next response will be:";
* the median reply length against the references' (characters), and the longest reply;
* a few replies for reading.

``--stride K`` keeps every K-th supporter turn (spread over all dialogues) for a quicker run;
``--gold-strategy`` replies with the reference turn's strategy instead of predicting one (half
the LM calls; the reply's shape is what is measured).

``--out DIR`` writes every (reference, reply) pair to ``DIR/replies_<lang>.jsonl``.
"""

import argparse
import json
import re
import statistics
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

# Deliberately independent of the engine's own patterns: this is the check, not the mechanism.
_SPEAKERS = r"(?:Supporter|Customer|Agent|Assistant|User|客服|客户|用户|助手)"
TRANSCRIPT_LINE = re.compile(
    rf"(?:^|\n|[.!?。！？]\s*){_SPEAKERS}\s*(?:[\[【][^\]】\n]*[\]】])?\s*[:：]"
    r"|next (?:response|reply)|(?:^|\n)\s*(?:response|reply|回复|回答)\s*[:：]",
    re.I,
)


def has_transcript_line(reply: str) -> bool:
    """Whether ``reply`` holds a transcript line or meta-text (see the module docstring)."""
    return bool(TRANSCRIPT_LINE.search(reply))


def run(language: str, stride: int, gold_strategy: bool, threads: int) -> dict[str, Any]:
    """Replies for one sample and their shape figures."""
    import dspy

    from csc.data.io import read_dialogues
    from csc.engine import LocalLM
    from csc.eval.examples import supporter_examples
    from csc.programs.supporter import Supporter

    dialogues = list(read_dialogues(ROOT / f"data/samples/sample_{language}.json"))
    examples = supporter_examples(dialogues, language=language)[::stride]
    if gold_strategy:
        examples = [ex.copy().with_inputs("history", "strategy") for ex in examples]
    program = Supporter("csc", language)
    start = time.perf_counter()
    with dspy.context(lm=LocalLM(cache=False)):
        results = program.batch(
            examples, num_threads=threads, max_errors=len(examples), disable_progress_bar=True
        )
    seconds = time.perf_counter() - start
    replies = [str(getattr(r, "response", "") or "") for r in results]
    references = [ex.response for ex in examples]
    return {
        "language": language,
        "n": len(examples),
        "transcript": sum(has_transcript_line(r) for r in replies),
        "empty": sum(not r.strip() for r in replies),
        "median_reply": statistics.median(len(r) for r in replies),
        "median_reference": statistics.median(len(r) for r in references),
        "longest_reply": max(len(r) for r in replies),
        "seconds": seconds,
        "pairs": [{"reference": ref, "reply": rep} for ref, rep in zip(references, replies)],
    }


def main() -> None:
    """Run each language and print its figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--languages", default="en,zh")
    parser.add_argument("--stride", type=int, default=1, help="every K-th supporter turn")
    parser.add_argument("--gold-strategy", action="store_true", help="reply with the gold strategy")
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    for language in [x for x in args.languages.split(",") if x]:
        row = run(language, args.stride, args.gold_strategy, args.threads)
        ratio = row["median_reply"] / max(1, row["median_reference"])
        print(
            f"sample_{language} (stride {args.stride}, "
            f"{'gold' if args.gold_strategy else 'predicted'} strategy): {row['n']} replies in {row['seconds']:.0f} s; "
            f"with a transcript line: {row['transcript']}; empty: {row['empty']}; "
            f"median length {row['median_reply']:.0f} chars vs reference "
            f"{row['median_reference']:.0f} ({ratio:.2f}x); longest {row['longest_reply']}"
        )
        for pair in row["pairs"][:4]:
            print(f"    reply: {pair['reply']!r}")
        if args.out:
            args.out.mkdir(parents=True, exist_ok=True)
            with open(args.out / f"replies_{language}.jsonl", "w", encoding="utf-8") as fh:
                for pair in row["pairs"]:
                    fh.write(json.dumps(pair, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
