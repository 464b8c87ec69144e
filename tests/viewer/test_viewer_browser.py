"""The viewer in a real headless Chromium: loading, escaping, filters, review, scale.

Slow (a browser starts); CI runs them. They fail with an install hint when Chromium or
Playwright is missing (see conftest.py).
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest
from playwright.sync_api import expect
from typer.testing import CliRunner
from viewer_fixtures import (
    SCRIPT_TEXT,
    make_evaluation_folder,
    make_run_folder,
    make_showcase_run,
)

from csc.cli import app
from csc.data.io import read_dialogues, write_dialogues
from csc.dialogue import Dialogue, Speaker, Turn
from csc.eval.viewer import build_page, write_viewer

pytestmark = [pytest.mark.slow, pytest.mark.browser]
BATCH = 20  # cards the page renders at a time (viewer.js)
runner = CliRunner()
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def run_page(tmp_path: Path) -> Path:
    make_run_folder(tmp_path / "run")
    return write_viewer(build_page(tmp_path / "run"), tmp_path / "run" / "view.html")


def shown_ids(page) -> list[str]:
    return page.eval_on_selector_all(".card", "cards => cards.map(c => c.dataset.id)")


def test_run_page_loads_clean_counts_right_and_runs_no_data(open_page, run_page):
    page, errors = open_page(run_page)
    assert errors == []
    count = page.locator("#count")
    assert count.get_attribute("data-total") == "7" and count.get_attribute("data-shown") == "7"
    assert shown_ids(page) == ["d01", "d02", "d03", "d04", "d05", "d06", "d07"]
    # The dialogue's <script> and onerror handler are shown as text and did not run.
    assert page.evaluate("window.__pwned") is None
    assert SCRIPT_TEXT in page.locator('.card[data-id="d03"]').inner_text()
    assert page.locator("#cards img, #cards script").count() == 0
    assert "no fields </script> here" in page.locator('.card[data-id="d07"] .error').inner_text()
    # Tags carry the strategy's name; the judge's failed criterion and reason are there.
    assert page.locator('.card[data-id="d01"] .tag').first.inner_text() == "Greeting"
    d05 = page.locator('.card[data-id="d05"]')
    assert d05.locator(".verdict.fail").inner_text() == "✗ natural_replies"
    assert d05.locator(".stage-band").count() == 3  # GT IV | EM EM | AC: three stages


def test_filters_strategy_status_judge_search_and_links(open_page, run_page):
    page, errors = open_page(run_page)
    page.select_option("#filter-strategy", "EM")
    assert shown_ids(page) == ["d01", "d05"]
    for card in page.locator(".card").all():
        assert "EM" in card.locator(".turn.s .tag").evaluate_all("t => t.map(x => x.dataset.code)")
    assert page.locator("#count").get_attribute("data-shown") == "2"
    assert "strategy=EM" in page.evaluate("location.hash")
    page.select_option("#filter-strategy", "")
    page.select_option("#filter-status", "rejected")
    assert shown_ids(page) == ["d05", "d06"]
    page.select_option("#filter-status", "")
    page.select_option("#filter-judge", "fail:role_consistency")
    assert shown_ids(page) == ["d06"]
    page.select_option("#filter-judge", "")
    page.fill("#search", "D04 USING ps")  # case-insensitive full text
    expect(page.locator("#count")).to_have_attribute("data-shown", "1")
    assert shown_ids(page) == ["d04"] and page.locator(".card mark").count() == 1
    page.fill("#search", "")
    expect(page.locator("#count")).to_have_attribute("data-shown", "7")
    page.locator('#legend .entry[data-code="RI"]').click()  # the legend filters too
    assert shown_ids(page) == ["d03"]
    # Filters live in the URL: opening a link with them shows the same selection.
    page2, _ = open_page(f"{run_page}#topic=Product%20consultation&status=kept")
    assert shown_ids(page2) == ["d01", "d03"]
    assert errors == []


def test_review_marks_survive_reload_and_export_applies(open_page, run_page, tmp_path):
    page, errors = open_page(run_page)
    page.check("#review-toggle")
    page.fill("#reviewer", "ana")
    page.locator('.card[data-id="d01"] .accept-all').click()
    d05 = '.card[data-id="d05"]'
    page.locator(f"{d05} .accept-all").click()
    page.locator(f'{d05} .row[data-criterion="natural_replies"] .reject').click()
    page.locator(f"{d05} textarea").fill("stiff <b>replies</b>")
    page.locator('.card[data-id="d02"] .row[data-criterion="role_consistency"] .accept').click()

    page.reload()
    page.wait_for_selector("body[data-ready]")
    assert page.is_checked("#review-toggle")
    assert page.get_attribute('.card[data-id="d01"]', "data-review") == "accepted"
    assert page.get_attribute(d05, "data-review") == "rejected"
    assert page.get_attribute('.card[data-id="d02"]', "data-review") == "partial"
    assert page.input_value(f"{d05} textarea") == "stiff <b>replies</b>"
    assert page.input_value("#reviewer") == "ana"
    assert "on" in page.get_attribute(
        f'{d05} .row[data-criterion="natural_replies"] .reject', "class"
    )
    page.select_option("#filter-review", "rejected")
    assert shown_ids(page) == ["d05"]

    with page.expect_download() as download:
        page.click("#export-review")
    assert download.value.suggested_filename == "review.json"
    review = tmp_path / "review.json"
    download.value.save_as(review)
    doc = json.loads(review.read_text())
    assert doc["reviewer"] == "ana" and set(doc["marks"]) == {"d01", "d02", "d05"}
    assert doc["marks"]["d05"]["decision"] == "reject"
    assert errors == []

    res = runner.invoke(app, ["review", "apply", str(review), str(run_page.parent), "--json"])
    assert res.exit_code == 0, res.output
    outcome = json.loads(res.output)
    assert (outcome["accepted"], outcome["rejected"], outcome["undecided"]) == (1, 1, 1)
    assert [d.id for d in read_dialogues(run_page.parent / "reviewed.jsonl")] == ["d01"]
    natural = next(r for r in outcome["agreement"] if r["criterion"] == "natural_replies")
    assert natural["n"] == 2 and natural["agreement"] == 1.0  # d01 pass/accept, d05 fail/reject


def test_evaluation_page_side_by_side_and_right_wrong(open_page, tmp_path):
    make_run_folder(tmp_path / "run")
    ev = make_evaluation_folder(tmp_path / "ev", tmp_path / "run" / "dialogues.jsonl")
    html = write_viewer(build_page(ev), ev / "report.html")
    page, errors = open_page(html)
    assert errors == []
    d01 = page.locator('.card[data-id="d01"]')
    assert d01.locator(".pred").count() == 5  # one per scored supporter turn
    assert d01.locator(".pred.wrong").count() == 2 and d01.locator(".pred.right").count() == 3
    assert d01.locator(".pred.wrong .mark").first.inner_text() == "✗"
    page.select_option("#filter-result", "right")
    assert shown_ids(page) == []  # every dialogue has a wrong turn in this fixture
    page.select_option("#filter-result", "wrong")
    assert len(shown_ids(page)) == 4
    # A link in the report's table sets the filters.
    page.locator("#report a.filter-link", has_text="GT").first.click()
    assert page.input_value("#filter-strategy") == "GT" and page.input_value("#filter-result") == ""
    assert errors == []


def test_chinese_dialogues_show_chinese_strategy_names(open_page, tmp_path):
    html = write_viewer(
        build_page(ROOT / "data" / "samples" / "sample_zh.json"), tmp_path / "zh.html"
    )
    page, errors = open_page(html)
    assert errors == []
    names = page.eval_on_selector_all(".turn.s .tag", "t => t.map(x => x.textContent)")
    assert names and all(any("\u4e00" <= ch <= "\u9fff" for ch in n) for n in names)
    assert page.locator(".turn.s .who").first.inner_text() == "客服"


def _big_file(path: Path, n: int) -> None:
    rng = random.Random(0)
    codes = ["GT", "IV", "RP", "PR", "EM", "PS", "ID", "RI", "FR", "RC", "AC"]
    words = [
        "account",
        "card",
        "fee",
        "transfer",
        "refund",
        "order",
        "delivery",
        "password",
        "limit",
        "branch",
        "app",
    ]
    topics = ["Product consultation", "Account and transaction management", "Technical support"]

    def sentence() -> str:
        return " ".join(rng.choice(words) for _ in range(rng.randint(8, 22))).capitalize() + "."

    def dialogues():
        for i in range(n):
            turns = []
            for _ in range(rng.randint(4, 10)):
                turns.append(Turn(speaker=Speaker.CUSTOMER, text=sentence()))
                turns.append(
                    Turn(speaker=Speaker.SUPPORTER, text=sentence(), strategy=rng.choice(codes))
                )
            yield Dialogue(id=f"dlg-{i:05d}", topic=rng.choice(topics), turns=turns)

    write_dialogues(dialogues(), path)


def test_ten_thousand_dialogues_first_screen_and_size(open_page, browser, tmp_path):
    data = tmp_path / "big.jsonl"
    _big_file(data, 10_000)
    html = write_viewer(build_page(data), tmp_path / "big.html")
    ratio = html.stat().st_size / data.stat().st_size
    assert ratio <= 3.0, f"HTML is {ratio:.2f}x the JSONL"

    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.tracing.start(screenshots=False, snapshots=False)
    try:
        page, errors = open_page(html, context=context)
        first = page.evaluate(
            "performance.getEntriesByName('csc-first-screen')[0].startTime"
        )  # ms since navigation start, as the trace shows it
        assert errors == []
        assert page.locator("#count").get_attribute("data-total") == "10000"
        # The rest of the dialogues are read after the first screen; then filters cover all.
        expect(page.locator("body")).to_have_attribute("data-complete", "1", timeout=60_000)
        loaded = page.evaluate("performance.getEntriesByName('csc-all-loaded')[0]?.startTime ?? 0")
        before = page.locator(".card").count()
        assert before < 200  # rendered lazily
        page.mouse.move(700, 500)
        for _ in range(100):  # scrolling to the end renders the next batches
            page.mouse.wheel(0, 5000)
            page.wait_for_timeout(50)
            if page.locator(".card").count() > before:
                break
        assert page.locator(".card").count() >= before + BATCH
        page.select_option("#filter-strategy", "RC")
        shown = int(page.locator("#count").get_attribute("data-shown"))
        assert 0 < shown < 10_000
    finally:
        context.tracing.stop(path=tmp_path / "trace.zip")
        context.close()
    print(
        f"\n10,000 dialogues: first screen {first:.0f} ms, all loaded {loaded:.0f} ms, HTML {html.stat().st_size / 1e6:.1f} MB"
        f" = {ratio:.2f}x the JSONL ({data.stat().st_size / 1e6:.1f} MB); load {os.getloadavg()[0]:.1f}"
    )
    assert (tmp_path / "trace.zip").stat().st_size > 0
    assert first <= 2000, f"first screen took {first:.0f} ms"


def test_screenshot_for_the_readme(open_page, tmp_path):
    """Renders the screenshot in docs/; CSC_UPDATE_SCREENSHOT=1 writes it there."""
    run = make_showcase_run(tmp_path / "run")
    html = write_viewer(build_page(run), tmp_path / "view.html")
    page, errors = open_page(html, viewport=(1200, 800))
    page.select_option("#filter-status", "rejected")
    page.check("#review-toggle")
    first = page.locator(".card").first
    first.locator('.row[data-criterion="natural_replies"] .reject').click()
    first.locator('.row[data-criterion="strategy_adherence"] .accept').click()
    page.evaluate("window.scrollTo(0, 0)")
    shot = tmp_path / "viewer.png"
    page.screenshot(path=shot)
    assert errors == [] and shot.stat().st_size > 10_000
    if os.environ.get("CSC_UPDATE_SCREENSHOT"):
        from PIL import Image  # a matplotlib dependency

        # 256 colours keep the PNG small for the README without visible loss on a UI.
        Image.open(shot).convert("RGB").quantize(256).save(
            ROOT / "docs" / "viewer.png", optimize=True
        )


def test_compare_report_html_from_the_cli(open_page, tmp_path, monkeypatch):
    """``csc compare`` (scripted LM) writes report.html: the table, the chart, and both
    supporters' strategy and reply under every scored turn; the supporter filter works."""
    from test_review import _fake_lm

    monkeypatch.setattr("csc.lm.build_lm", _fake_lm)
    out = tmp_path / "cmp"
    sample = ROOT / "data" / "samples" / "sample_en.json"
    res = runner.invoke(
        app,
        [
            "compare", "--data", str(sample), "--lm", "fake/model", "--supporter", "zs=zero-shot",
            "--supporter", "direct=direct", "--context", "ref", "--limit", "1",
            "--no-bertscore", "--concurrency", "1", "--out", str(out),
        ],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    page, errors = open_page(out / "report.html")
    assert errors == []
    assert page.locator("#report table").count() == 1 and page.locator("#report img").count() == 1
    preds = page.locator(".preds")
    first = next(iter(read_dialogues(sample)))  # --limit 1: every supporter turn of one dialogue
    n = sum(t.speaker == Speaker.SUPPORTER for t in first.turns)
    assert preds.count() == n and page.locator(".pred").count() == 2 * n  # 2 supporters each
    names = preds.first.locator(".name").all_inner_texts()
    assert names == ["zs", "direct"]
    # The scripted LM always answers PS: a turn whose gold is PS is right, the others wrong.
    predicted = page.locator(".pred .tag").evaluate_all("t => t.map(x => x.dataset.code)")
    assert set(predicted) == {"PS"}
    pairs = preds.evaluate_all(
        "ps => ps.map(p => [p.previousElementSibling.querySelector('.tag').dataset.code,"
        " Array.from(p.querySelectorAll('.pred')).map(x => x.dataset.ok)])"
    )
    for gold, marks in pairs:
        assert marks == ["true" if gold == "PS" else "false"] * 2, (gold, marks)
    page.select_option("#filter-supporter", "1")
    page.select_option("#filter-result", "wrong")
    assert page.locator("#count").get_attribute("data-shown") != "0"
    page.locator("#report a.filter-link", has_text="zs").click()
    assert page.input_value("#filter-supporter") == "0"
    assert page.input_value("#filter-result") == "wrong"
