"""Time and peak memory of ``csc stats`` on growing dialogue files.

Writes seeded synthetic dialogue files (JSONL, our format) of each size, runs ``csc stats FILE
--json`` on each in a fresh process, and prints the wall time and the peak resident memory of
that process. Target (issue #8 item 9): 10,000 dialogues within 30 s, with memory flat (about
the same peak for 1,000 and 10,000 dialogues).

    python benchmarks/stats_scale.py [--sizes 1000,10000] [--seed 0] [--keep DIR]

Dialogues are built from the shipped English and Chinese samples: each copies the strategy
sequence of a sample dialogue and perturbs every utterance (word drops, swaps and substitutions
from the sample vocabulary), and carries a customer profile description, so every statistic
(diversity, self-BLEU, persona fidelity) does real work.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from importlib import resources
from pathlib import Path


def _samples() -> list[dict]:
    from csc.data.io import read_dialogues

    folder = Path(str(resources.files("csc.data") / "samples"))
    files = [folder / "sample_en.json", folder / "sample_zh.json"]
    return [d.model_dump(mode="json") for file in files for d in read_dialogues(file)]


def _perturb(text: str, vocab: list[str], rng: random.Random) -> str:
    words = text.split() if " " in text else list(text)
    out = []
    for w in words:
        r = rng.random()
        if r < 0.1:
            continue
        out.append(rng.choice(vocab) if r < 0.3 else w)
    if len(out) > 3 and rng.random() < 0.5:
        i = rng.randrange(len(out) - 1)
        out[i], out[i + 1] = out[i + 1], out[i]
    joined = (" " if " " in text else "").join(out)
    return joined or text


def write_file(path: Path, n: int, seed: int) -> None:
    """``n`` seeded synthetic dialogues as JSONL."""
    rng = random.Random(seed)
    samples = _samples()
    vocab = sorted({w for d in samples for t in d["turns"] for w in t["text"].split()})
    profiles = [
        f"You are a {age}-year-old {job} who {habit}."
        for age in range(20, 70, 5)
        for job in ("teacher", "nurse", "driver", "student", "engineer", "farmer", "chef")
        for habit in ("pays by card", "uses the app daily", "travels often", "saves every month")
    ]
    with path.open("w", encoding="utf-8") as f:
        for i in range(n):
            base = rng.choice(samples)
            turns = [{**t, "text": _perturb(t["text"], vocab, rng)} for t in base["turns"]]
            record = {**base, "id": f"bench-{i}", "turns": turns, "profile": rng.choice(profiles)}
            f.write(json.dumps(record, ensure_ascii=False) + "\n")


def run_stats(path: Path) -> tuple[float, float, float, dict]:
    """(wall s, CPU s, peak RSS in MiB, parsed output) of ``csc stats PATH --json``."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "csc", "stats", str(path), "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    wall = time.perf_counter() - start
    # ru_maxrss of the children waited for so far; sizes run in increasing order, so the
    # maximum is this run's unless an earlier, smaller run used more.
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return wall, cpu, after.ru_maxrss / 1024, json.loads(proc.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000", help="comma-separated dialogue counts")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", type=Path, default=None, help="write the files here")
    args = parser.parse_args()
    sizes = sorted(int(s) for s in args.sizes.split(","))
    folder = args.keep or Path(tempfile.mkdtemp(prefix="csc-stats-bench-"))
    folder.mkdir(parents=True, exist_ok=True)
    print(f"load average before: {os.getloadavg()[0]:.2f} (on {os.cpu_count()} CPUs)")
    print(
        f"{'dialogues':>10} {'file MiB':>9} {'wall s':>7} {'CPU s':>6} {'peak RSS MiB':>13}  self-BLEU"
    )
    for n in sizes:
        path = folder / f"dialogues_{n}.jsonl"
        write_file(path, n, args.seed)
        wall, cpu, peak, out = run_stats(path)
        sm = out["sampling"]
        print(
            f"{n:>10} {path.stat().st_size / 2**20:>9.1f} {wall:>7.1f} {cpu:>6.1f} {peak:>13.0f}  "
            f"{out['diversity']['self_bleu']:.1f} ({sm['self_bleu_hypotheses']} turns x "
            f"{sm['self_bleu_references']} refs of {sm['supporter_turns']} supporter turns)"
        )


if __name__ == "__main__":
    main()
