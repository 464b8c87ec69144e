"""Memory and speed of converting a flat support log (one row per message) into dialogues.

Writes a seeded help-desk export of N rows (default 1,000,000) as CSV, JSONL or parquet:
conversations of 4-16 messages, rows of a conversation contiguous but out of time order,
system lines, empty messages and same-speaker runs, as real exports have them. Then runs the
real command line on it, in a child process,

    csc data convert log.csv out.jsonl --mapping flat_log.yaml

and prints the child's wall time, rows per second and peak RSS, for N rows and for N/10 rows:
memory is flat when the two peaks are about the same.

    python benchmarks/flat_log.py [--rows 1000000] [--container csv|jsonl|parquet] [--keep DIR]
                                  [--interleaved]

``--interleaved`` mixes neighbouring conversations' rows (an export sorted by time across
conversations) and reads them with ``grouped: false``, which spills rows to a temporary file.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from itertools import islice
from pathlib import Path

MAPPING = """\
group_by: conversation_id
order_by: sent_at
topic_field: queue
speaker_field: author
text_field: body
strategy_field: null
supporter: [agent]
customer: [customer]
drop: [system]
text_join: "\\n"
merge_consecutive: true
"""
COLUMNS = ["conversation_id", "message_id", "sent_at", "author", "body", "queue"]
QUEUES = ["billing", "cards", "loans", "app", "complaints", "marketing", "fraud"]
PHRASES = [
    "Hello, thank you for contacting us.",
    "My card was blocked this morning.",
    "Could you tell me the last four digits?",
    "It is 4821.",
    "I have sent an unblock request; it takes up to 24 hours.",
    "您好，这里是在线客服，请问有什么可以帮您？",
    "我的银行卡被冻结了，能帮我看看吗？",
    "好的，请您提供一下卡号后四位。",
    "Thanks, that helps a lot!",
    "Is there anything else I can do for you?",
]


def rows(n: int, seed: int) -> Iterator[dict[str, object]]:
    """``n`` message rows, conversation by conversation, each conversation shuffled."""
    rng = random.Random(seed)
    made = conversation = 0
    while made < n:
        conversation += 1
        size = min(rng.randint(4, 16), n - made)
        queue = rng.choice(QUEUES)
        start = 1_700_000_000 + conversation * 3600
        author = "agent"
        messages = []
        for i in range(size):
            r = rng.random()
            if r < 0.05:
                who, body = "system", "Conversation transferred"
            else:
                # Mostly alternating, with same-speaker runs and empty messages now and then.
                if r > 0.25:
                    author = "customer" if author == "agent" else "agent"
                who, body = author, ("" if r < 0.08 else rng.choice(PHRASES))
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(start + i * 7))
            values = (f"conv-{conversation:08d}", made + i, stamp, who, body, queue)
            messages.append(dict(zip(COLUMNS, values)))
        rng.shuffle(messages)
        yield from messages
        made += size


def interleaved(rows: Iterator[dict[str, object]], seed: int) -> Iterator[dict[str, object]]:
    """The rows with neighbouring conversations mixed (a window of 1,000 rows), as in an export
    sorted by time across conversations."""
    rng = random.Random(seed)
    window: list[dict[str, object]] = []
    for row in rows:
        window.append(row)
        if len(window) == 1000:
            i = rng.randrange(len(window))
            window[i], window[-1] = window[-1], window[i]
            yield window.pop()
    rng.shuffle(window)
    yield from window


def write_log(path: Path, n: int, seed: int, mixed: bool = False) -> None:
    """Write ``n`` rows to ``path`` in the container its suffix names, streaming."""
    source = interleaved(rows(n, seed), seed) if mixed else rows(n, seed)
    if path.suffix == ".csv":
        with path.open("w", encoding="utf-8", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=COLUMNS)
            writer.writeheader()
            writer.writerows(source)
    elif path.suffix == ".jsonl":
        with path.open("w", encoding="utf-8") as f:
            for row in source:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        writer = None
        while batch := list(islice(source, 50_000)):
            table = pa.Table.from_pylist(batch)
            writer = writer or pq.ParquetWriter(path, table.schema)
            writer.write_table(table)
        if writer:
            writer.close()


def convert(log: Path, mapping: Path, out: Path) -> tuple[float, float, str]:
    """Run ``csc data convert`` in a child; its wall seconds, peak RSS (MiB) and last line."""
    code = "from csc.cli import main; main()"
    cmd = [sys.executable, "-c", code, "data", "convert", str(log), str(out)]
    cmd += ["--mapping", str(mapping), "--overwrite"]
    start = time.perf_counter()
    # A fresh child per run: RUSAGE_CHILDREN's peak is the largest child so far, so the
    # small run goes first and each figure is read right after its own child.
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f"convert failed: {result.stderr.strip()}")
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return seconds, peak_kib / 1024, result.stdout.strip().splitlines()[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--container", choices=["csv", "jsonl", "parquet"], default="csv")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", type=Path, help="write the files here and keep them")
    parser.add_argument(
        "--interleaved",
        action="store_true",
        help="mix neighbouring conversations' rows and read with grouped: false",
    )
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        folder = args.keep or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        mapping = folder / "flat_log.yaml"
        text = MAPPING + ("grouped: false\n" if args.interleaved else "")
        mapping.write_text(text, encoding="utf-8")
        print(f"load average: {os.getloadavg()[0]:.2f} (1 min), {os.cpu_count()} CPUs")
        results = []
        for n in (args.rows // 10, args.rows):
            log = folder / f"log_{n}.{args.container}"
            start = time.perf_counter()
            write_log(log, n, args.seed, args.interleaved)
            made = time.perf_counter() - start
            size = log.stat().st_size / 2**20
            print(f"{n:>9,} rows: wrote {log.name} ({size:.0f} MiB) in {made:.1f} s")
            seconds, peak, line = convert(log, mapping, folder / f"out_{n}.jsonl")
            results.append((n, seconds, peak))
            print(
                f"{n:>9,} rows: converted in {seconds:.1f} s ({n / seconds:,.0f} rows/s), "
                f"peak RSS {peak:.0f} MiB — {line}"
            )
        (small, _, small_peak), (big, _, big_peak) = results
        print(
            f"peak RSS {big:,} rows / {small:,} rows: {big_peak / small_peak:.2f}x (1.00x = flat)"
        )


if __name__ == "__main__":
    main()
