"""Peak memory of ``csc finetune export`` as the data grows (issue #8 item 10).

Writes N dialogues (default 10,000) as JSONL — the eight English sample dialogues repeated with
new ids and numbered customer turns, so every row is distinct — then runs
``csc finetune export --task joint`` on them in a child process and prints its peak resident
memory (``ru_maxrss`` of the child), its wall time and the number of rows written. Target:
at most 300 MB for 10,000 dialogues, and flat in N (the export streams: ids first, then rows
straight to Arrow files).

    python benchmarks/export_memory.py [--dialogues 10000] [--dialogues 1000 ...] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "samples" / "sample_en.json"


def write_data(n: int, path: Path) -> None:
    """N dialogues in csc JSONL, built from the English samples."""
    from csc.data.io import read_dialogues, write_dialogues

    base = list(read_dialogues(SAMPLE))

    def dialogues():
        for i in range(n):
            d = base[i % len(base)]
            turns = [
                t.model_copy(update={"text": f"{t.text} (case {i})"}) if not t.is_supporter else t
                for t in d.turns
            ]
            yield d.model_copy(update={"id": f"bench-{i}", "turns": turns})

    write_dialogues(dialogues(), path)


def measure(n: int, work: Path) -> dict:
    """Export N dialogues in a child process; its peak RSS, time and row count."""
    data = work / f"dialogues-{n}.jsonl"
    write_data(n, data)
    out = work / f"sft-{n}"
    log = work / f"export-{n}.log"
    start = time.perf_counter()
    with log.open("w") as fh:
        cmd = [sys.executable, "-m", "csc", "finetune", "export", "--data", str(data)]
        proc = subprocess.Popen([*cmd, "--out", str(out)], stdout=fh, stderr=subprocess.STDOUT)
        # wait4 gives this child's own rusage: ru_maxrss is its peak resident set (KiB).
        _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"export failed:\n{log.read_text()[-3000:]}")
    peak_kib = usage.ru_maxrss
    meta = json.loads((out / "export.json").read_text())
    rows = sum(c["rows"] for c in meta["counts"].values())
    disk = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    return {
        "dialogues": n,
        "rows": rows,
        "peak_rss_mb": round(peak_kib / 1024, 1),
        "seconds": round(seconds, 1),
        "data_mb": round(data.stat().st_size / 2**20, 1),
        "export_mb": round(disk / 2**20, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dialogues", type=int, action="append", help="sizes (repeatable)")
    parser.add_argument("--keep", type=Path, help="keep data and exports in this folder")
    args = parser.parse_args()
    sizes = sorted(args.dialogues or [10_000])
    with tempfile.TemporaryDirectory() as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        print("dialogues\trows\tpeak RSS (MB)\ttime (s)\tdata (MB)\texport (MB)")
        for n in sizes:
            r = measure(n, work)
            print(
                f"{r['dialogues']}\t{r['rows']}\t{r['peak_rss_mb']}\t{r['seconds']}\t"
                f"{r['data_mb']}\t{r['export_mb']}",
                flush=True,
            )


if __name__ == "__main__":
    main()
