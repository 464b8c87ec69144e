"""Load benchmark of ``csc synthesize`` against a fake OpenAI-compatible LM server.

The fake server (benchmarks/fake_openai_server.py, started and stopped here) answers every RoleCS
role after a fixed latency, and every dialogue makes the same number of LM calls, so the ideal
rate is known: ``concurrency / (LM calls per dialogue x latency)``. For each concurrency and
dialogue count this runs the real command (``csc synthesize --lm openai/fake --api-base
http://127.0.0.1:PORT/v1``, the LiteLLM path) in a fresh folder and prints:

* dialogues/min, measured inside the run (summary.json's ``wall_seconds``, startup excluded);
* efficiency = measured / ideal (the issue's formula), and ``eff_waves``, against the ideal of
  ``ceil(n / concurrency)`` back-to-back waves (what a run of n dialogues can reach at best);
* CPU seconds of the csc process per LM call during the run (DSPy + LiteLLM + csc), and in total;
* peak RSS of the csc process: during the synthesis (``rss run``, from summary.json) and over the
  whole command (``rss MB``, which includes the statistics computed over every dialogue at the
  end, and so grows with the run's size).

With ``--errors`` the server also varies latency (+-50%) and answers 2% of calls with 500/429;
the check is then that every dialogue is in dialogues.jsonl, rejected.jsonl or failures.jsonl.

Quick run: ``python benchmarks/synthesis_scale.py --concurrency 16 --dialogues 32 --latency 0.5``.
Full run (slow, ~15 min at 1 s latency): ``python benchmarks/synthesis_scale.py``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent


def start_server(
    latency: float, jitter: float, error_rate: float, turns: int
) -> tuple[subprocess.Popen, int]:
    """The fake server in its own process (its CPU is not counted as ours); returns it and its port."""
    flags = {"--latency": latency, "--jitter": jitter, "--error-rate": error_rate, "--turns": turns}
    cmd = [sys.executable, str(HERE / "fake_openai_server.py"), "--idle-exit", "600"]
    cmd += [*(str(x) for pair in flags.items() for x in pair), "--stop-on-stdin-eof"]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    if not line.startswith("PORT "):
        proc.kill()
        raise SystemExit(f"the fake server did not start: {line!r}")
    return proc, int(line.split()[1])


def server_stats(port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/stats", timeout=10) as resp:
        return json.loads(resp.read())


def run_once(
    port: int, n: int, concurrency: int, out: Path, extra: list[str], baseline: bool = False
) -> dict:
    """One ``csc synthesize`` process; returns its summary, CPU and peak RSS."""
    env = {
        **os.environ,
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # no network fetch of the price list
        "OPENAI_API_KEY": "EMPTY",
        "PYTHONWARNINGS": "ignore",
        "CSC_THROUGHPUT_FIXES": "0" if baseline else "1",
    }
    cmd = [sys.executable, "-m", "csc", "synthesize", "--out", str(out), "--dialogues", str(n)]
    cmd += ["--concurrency", str(concurrency), "--lm", "openai/fake", "--show", "0"]
    cmd += ["--api-base", f"http://127.0.0.1:{port}/v1"]
    cmd += ["--seed", str(time.time_ns() % 1_000_000)]  # no response-cache hits from earlier runs
    cmd += [*(["--lm-cache"] if baseline else []), *extra]
    start = time.perf_counter()
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True
    )
    # wait4 gives this child's own rusage: CPU seconds and peak RSS (KiB on Linux).
    output = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"csc synthesize failed ({proc.returncode}):\n{output[-3000:]}")
    summary = json.loads((out / "summary.json").read_text())
    return {
        "summary": summary,
        "process_wall": wall,
        "process_cpu": usage.ru_utime + usage.ru_stime,
        "peak_rss_mb": usage.ru_maxrss / 1024,
    }


def count_lines(path: Path) -> int:
    return sum(1 for line in path.open() if line.strip()) if path.exists() else 0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--concurrency", type=int, nargs="+", default=[16, 64, 256])
    p.add_argument("--dialogues", type=int, nargs="+", default=[200, 2000])
    p.add_argument("--latency", type=float, default=1.0, help="seconds per LM answer")
    p.add_argument("--turns", type=int, default=4, help="supporter turns per dialogue")
    p.add_argument("--errors", action="store_true", help="random latency and 2%% 500/429 errors")
    p.add_argument(
        "--baseline",
        action="store_true",
        help="also run each size without csc.throughput's fixes (response cache on, "
        "no model-metadata memo), for a before/after within one run",
    )
    p.add_argument("--keep", type=Path, default=None, help="keep the run folders under this path")
    p.add_argument("--json", type=Path, default=None, help="also write the rows as JSON here")
    p.add_argument("extra", nargs="*", help="extra csc synthesize flags, after --")
    args = p.parse_args()

    jitter = args.latency * 0.5 if args.errors else 0.0
    error_rate = 0.02 if args.errors else 0.0
    server, port = start_server(args.latency, jitter, error_rate, args.turns)
    base = args.keep or Path(tempfile.mkdtemp(prefix="csc-scale-"))
    load = os.getloadavg()
    print(
        f"fake LM server on port {port}: latency {args.latency}s"
        + (f" +-{jitter}s, {error_rate:.0%} errors" if args.errors else "")
        + f"; load average {load[0]:.1f} on {os.cpu_count()} CPUs"
    )
    header = (
        f"{'variant':>8} {'conc':>5} {'dlg':>6} {'calls/dlg':>9} {'wall s':>8} {'dlg/min':>8} {'ideal':>8} "
        f"{'eff':>5} {'eff_waves':>9} {'cpu ms/call':>11} {'cpu s':>7} {'rss run':>7} {'rss MB':>7} {'kept':>5} "
        f"{'rej':>4} {'fail':>4} {'lost':>4}"
    )
    print(header)
    rows = []
    try:
        variants = [True, False] if args.baseline else [False]
        for conc, n, baseline in itertools.product(args.concurrency, args.dialogues, variants):
            out = base / f"c{conc}-n{n}{'-baseline' if baseline else ''}"
            before = server_stats(port)
            res = run_once(port, n, conc, out, args.extra, baseline)
            after = server_stats(port)
            calls = sum(after["calls"].values()) - sum(before["calls"].values())
            this = res["summary"]["this_run"]
            finished = this["kept"] + this["rejected"]
            per_dlg = calls / max(1, finished + this["failed"])
            wall = this["wall_seconds"]
            measured = finished / (wall / 60)
            ideal = conc * 60 / (per_dlg * args.latency)
            ideal_waves_wall = math.ceil(n / conc) * per_dlg * args.latency
            cpu_run = this.get("cpu_seconds")
            kept = count_lines(out / "dialogues.jsonl")
            rej = count_lines(out / "rejected.jsonl")
            failed_ids = (
                {json.loads(x)["id"] for x in (out / "failures.jsonl").open() if x.strip()}
                if (out / "failures.jsonl").exists()
                else set()
            )
            lost = n - kept - rej - len(failed_ids)
            row = {
                "variant": "baseline" if baseline else "csc",
                "concurrency": conc,
                "dialogues": n,
                "calls_per_dialogue": round(per_dlg, 2),
                "wall_seconds": wall,
                "dialogues_per_minute": round(measured, 1),
                "ideal_per_minute": round(ideal, 1),
                "efficiency": round(measured / ideal, 3),
                "efficiency_waves": round(ideal_waves_wall / wall, 3),
                "cpu_ms_per_call": round(1000 * cpu_run / calls, 2) if cpu_run and calls else None,
                "cpu_seconds_process": round(res["process_cpu"], 1),
                "peak_rss_mb": round(res["peak_rss_mb"], 1),
                "peak_rss_mb_run": this.get("peak_rss_mb"),
                "kept": kept,
                "rejected": rej,
                "failed": len(failed_ids),
                "lost": lost,
                "load_average": round(os.getloadavg()[0], 1),
                # The most requests the server held at once so far (all runs of this process).
                "server_peak_in_flight": after.get("peak_in_flight"),
            }
            rows.append(row)
            print(
                f"{row['variant']:>8} {conc:>5} {n:>6} {per_dlg:>9.1f} {wall:>8.1f} {measured:>8.1f} {ideal:>8.1f} "
                f"{row['efficiency']:>5.2f} {row['efficiency_waves']:>9.2f} "
                f"{row['cpu_ms_per_call'] or float('nan'):>11.2f} {res['process_cpu']:>7.1f} "
                f"{row['peak_rss_mb_run'] or float('nan'):>7.1f} {row['peak_rss_mb']:>7.1f} {kept:>5} {rej:>4} {len(failed_ids):>4} {lost:>4}",
                flush=True,
            )
    finally:
        server.stdin.close()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
    peaks = ", ".join(str(r["server_peak_in_flight"]) for r in rows)
    print(f"server peak requests in flight (cumulative max): {peaks}")
    print(f"load average after: {os.getloadavg()[0]:.1f}; run folders in {base}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    if any(r["lost"] for r in rows):
        raise SystemExit("some dialogues are neither written nor in failures.jsonl")


if __name__ == "__main__":
    main()
