"""Speed and size of the dialogue viewer (``csc view``) on a large file, in headless Chromium.

Writes N synthetic dialogues (default 10,000; 4-10 exchanges each, English or Chinese) as JSONL,
builds the viewer page, opens it in the system Chromium through Playwright and prints:

- page build time (read + validate + write) and the HTML size against the JSONL size
  (target: at most 3x);
- first screen: the page's ``csc-first-screen`` performance mark, ms after navigation start
  (target: at most 2 s);
- all loaded: the ``csc-all-loaded`` mark (every dialogue parsed and indexed; filters cover all);
- a strategy filter and a full-text search (every turn's text, ids, topics) over all dialogues,
  ms until the count updates.

    python benchmarks/viewer.py [--dialogues 10000] [--lang en|zh] [--runs 3] [--chromium PATH]

Needs Chromium (``apt-get install chromium``) and Playwright (``pip install -e ".[viewer]"``).
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from csc.data.io import write_dialogues
from csc.dialogue import Dialogue, Speaker, Turn
from csc.eval.viewer import build_page, write_viewer

CODES = ["GT", "IV", "RP", "PR", "EM", "PS", "ID", "RI", "FR", "RC", "AC", "OT"]
EN = "account card fee transfer refund order delivery password limit branch app".split()  # noqa: SIM905
ZH = list("您好请问账户转账退款密码额度网点订单快递银行卡手续费查询办理已经为您核实")


def dialogues(n: int, lang: str, seed: int = 0):
    """N seeded dialogues with sentences of 8-22 words (12-40 characters in Chinese)."""
    rng = random.Random(seed)

    def sentence() -> str:
        if lang == "zh":
            return "".join(rng.choice(ZH) for _ in range(rng.randint(12, 40))) + "。"
        return " ".join(rng.choice(EN) for _ in range(rng.randint(8, 22))).capitalize() + "."

    for i in range(n):
        turns = []
        for _ in range(rng.randint(4, 10)):
            turns.append(Turn(speaker=Speaker.CUSTOMER, text=sentence()))
            turns.append(
                Turn(speaker=Speaker.SUPPORTER, text=sentence(), strategy=rng.choice(CODES))
            )
        yield Dialogue(id=f"dlg-{i:05d}", topic=f"topic {i % 7}", turns=turns)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dialogues", type=int, default=10_000)
    parser.add_argument("--lang", choices=["en", "zh"], default="en")
    parser.add_argument("--runs", type=int, default=3, help="page loads (median reported)")
    parser.add_argument(
        "--chromium", default=os.environ.get("CSC_CHROMIUM") or shutil.which("chromium")
    )
    args = parser.parse_args()
    if not args.chromium:
        raise SystemExit("no Chromium found: apt-get install chromium, or pass --chromium PATH")
    from playwright.sync_api import expect, sync_playwright

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "dialogues.jsonl"
        write_dialogues(dialogues(args.dialogues, args.lang), data)
        start = time.perf_counter()
        html = write_viewer(build_page(data), Path(tmp) / "view.html")
        build_s = time.perf_counter() - start
        jsonl_mb, html_mb = data.stat().st_size / 1e6, html.stat().st_size / 1e6
        print(f"{args.dialogues} dialogues ({args.lang}); load average {os.getloadavg()[0]:.1f}")
        print(
            f"page build: {build_s:.1f} s; HTML {html_mb:.1f} MB = {html_mb / jsonl_mb:.2f}x "
            f"the JSONL ({jsonl_mb:.1f} MB)"
        )
        first, loaded, filtering, searching = [], [], [], []
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=args.chromium, args=["--no-sandbox"])
            for _ in range(args.runs):
                page = browser.new_page(viewport={"width": 1280, "height": 900})
                page.goto(f"file://{html}")
                page.wait_for_selector("body[data-ready]")
                expect(page.locator("body")).to_have_attribute(
                    "data-complete", "1", timeout=120_000
                )
                marks = page.evaluate(
                    "Object.fromEntries(performance.getEntriesByType('mark')"
                    ".map(m => [m.name, m.startTime]))"
                )
                first.append(marks["csc-first-screen"])
                loaded.append(marks.get("csc-all-loaded", marks["csc-first-screen"]))
                count = page.locator("#count")
                start = time.perf_counter()
                page.select_option("#filter-strategy", "RC")
                expect(count).not_to_have_attribute("data-shown", str(args.dialogues))
                filtering.append((time.perf_counter() - start) * 1000)
                page.select_option("#filter-strategy", "")
                word = "dlg-0123"  # every text is searched; ten ids match
                start = time.perf_counter()
                page.fill("#search", word)  # the search box waits 150 ms for more typing
                expect(count).not_to_have_attribute("data-shown", str(args.dialogues))
                searching.append((time.perf_counter() - start) * 1000 - 150)
                page.close()
            browser.close()
        med = statistics.median
        print(f"first screen: {med(first):.0f} ms (median of {args.runs}; target <= 2000 ms)")
        print(f"all loaded:   {med(loaded):.0f} ms")
        print(f"strategy filter over all: {med(filtering):.0f} ms; search: {med(searching):.0f} ms")


if __name__ == "__main__":
    main()
