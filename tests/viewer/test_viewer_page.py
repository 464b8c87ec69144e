"""The viewer page's data: what each kind of path becomes, escaping, errors, size."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner
from viewer_fixtures import SCRIPT_TEXT, make_evaluation_folder, make_run_folder, rolecs_dialogue

from csc.cli import app
from csc.data.errors import DataFormatError
from csc.data.io import write_dialogues
from csc.eval.viewer import ViewerError, build_page, detect_kind, render_html, write_viewer

runner = CliRunner()
SAMPLES = Path(__file__).resolve().parents[2] / "data" / "samples"


def page_data(html: str) -> dict:
    """The JSON payload embedded in a viewer page."""
    match = re.search(r'<script type="application/json" id="csc-data">(.*?)</script>', html, re.S)
    assert match, "no data element"
    return json.loads(match.group(1))


def test_run_folder_shows_kept_rejected_and_failed_with_verdicts(tmp_path):
    ids = make_run_folder(tmp_path / "run")
    page = build_page(tmp_path / "run")
    assert page.kind == "run" and detect_kind(tmp_path / "run") == "run"
    by_id = {item["id"]: item for item in page.items}
    assert [i["id"] for i in page.items] == ids["kept"] + ids["rejected"] + ids["failed"]
    assert {by_id[i]["s"] for i in ids["kept"]} == {"kept"}
    assert by_id["d05"]["j"]["natural_replies"] == [False, "natural_replies: fails"]
    assert by_id["d01"]["pc"] == {"opening": 1}
    assert "corrected to GT" in by_id["d01"]["u"][0][3]  # the turn's policy note
    assert by_id["d01"]["x"]["goal"] == "understand the fee"
    assert by_id["d01"]["x"]["profile"] == "You are a calm nurse."
    assert by_id["d01"]["x"]["scenario"].startswith("A customer asks")
    failed = by_id["d07"]
    assert failed["s"] == "failed" and failed["e"]["type"] == "AdapterParseError"
    assert failed["e"]["role"] == "customer" and len(failed["u"]) == 1  # the partial dialogue
    assert page.criteria[:2] == ["strategy_adherence", "unreasonable_demands"]
    assert page.info["counts"] == {"kept": 4, "rejected": 2, "failed": 1}


def test_rewrite_run_layout_with_dropped_records_and_postfilter_judge(tmp_path):
    """A ``csc rewrite`` folder: the judge sits under metadata.postfilter, dropped.jsonl holds
    records without text, and unknown fields are ignored."""
    out = tmp_path / "rw"
    dialogue = rolecs_dialogue("r1", ["GT", "IV", "AC"])
    judge = dialogue.metadata.pop("judge")
    dialogue.metadata["postfilter"] = {"passed": False, "problems": ["no ending"], "judge": judge}
    write_dialogues([dialogue], out / "rejected.jsonl")
    (out / "dropped.jsonl").write_text(
        json.dumps({"key": "k2", "id": "raw-2", "index": 1, "stage": "rules", "rule": "too_short",
                    "cleaning": {}, "new_field": 1}) + "\n"
    )  # fmt: skip
    page = build_page(out)
    r1, dropped = page.items
    assert r1["s"] == "rejected" and r1["j"]["natural_replies"][0] is True
    assert "no ending" in r1["x"]["post-filter problems"]
    assert dropped == {
        "id": "raw-2",
        "u": [],
        "s": "dropped",
        "e": {"stage": "rules", "error": "too_short"},
    }


def test_data_text_is_escaped_in_the_html(tmp_path):
    make_run_folder(tmp_path / "run")
    html = render_html(build_page(tmp_path / "run"))
    assert SCRIPT_TEXT not in html and "</script> here" not in html
    # Only the page's own three script elements open, and each closes once.
    assert html.count("<script") == 2 and html.count("</script>") == 2
    data = page_data(html)
    d03 = next(i for i in data["items"] if i["id"] == "d03")
    assert d03["u"][2][1] == SCRIPT_TEXT  # the text itself survives intact
    assert "default-src 'none'" in html  # the page may not load anything
    assert not re.search(r"""(?:src|href)\s*=\s*["']?(?:https?:)?//""", html)  # nor link out


def test_dialogue_files_chinese_and_framework_names(tmp_path):
    page = build_page(SAMPLES / "sample_zh.json")
    assert page.kind == "dialogues" and page.language == "zh"
    legend = page.payload()["framework"]
    assert legend["strategies"][4]["name"] == "情感管理"
    assert legend["stages"][0]["name"] == "欢迎和建立联系阶段"
    english = build_page(SAMPLES / "sample_zh.json", language="en")
    assert english.payload()["framework"]["strategies"][4]["name"] == "Emotion Management"
    assert len(build_page(SAMPLES / "sample_en.json", limit=3).items) == 3


def test_any_framework_yaml_gives_the_legend(tmp_path):
    esconv = Path(__file__).resolve().parents[1] / "fixtures" / "data" / "esconv_tiny.json"
    page = build_page(esconv, mapping="esconv", framework="esc")
    legend = page.payload()["framework"]
    assert legend["name"] == "esc" and [s["code"] for s in legend["stages"]] == [
        "exploration",
        "comforting",
        "action",
    ]
    assert len({s["colour"] for s in legend["strategies"]}) == len(legend["strategies"])
    assert page.items and all(row[2] in {s["code"] for s in legend["strategies"]}
                              for it in page.items for row in it["u"] if row[0] == "s")  # fmt: skip


def test_malformed_input_gets_the_same_error_as_csc_data(tmp_path):
    bad = tmp_path / "bad.jsonl"
    good = rolecs_dialogue("ok", ["GT", "AC"]).model_dump_json()
    bad.write_text(good + "\n" + '{"id": "x", "turns": [{"speaker": "agent", "text": "hi"}]}\n')
    data = runner.invoke(app, ["data", "validate", str(bad)])
    view = runner.invoke(app, ["view", str(bad)])
    assert data.exit_code == view.exit_code == 1
    first = data.output.strip().splitlines()[-1]
    assert "record 2" in first and first == view.output.strip().splitlines()[-1]
    assert "Traceback" not in view.output
    with pytest.raises(DataFormatError):
        build_page(bad)
    assert runner.invoke(app, ["view", str(tmp_path / "missing.jsonl")]).exit_code == 1
    (tmp_path / "empty").mkdir()
    res = runner.invoke(app, ["view", str(tmp_path / "empty")])
    assert res.exit_code == 1 and "neither a dataset folder" in res.output
    assert "Traceback" not in res.output


def test_evaluation_folder_puts_predictions_beside_gold(tmp_path):
    make_run_folder(tmp_path / "run")
    data = tmp_path / "run" / "dialogues.jsonl"
    ev = make_evaluation_folder(tmp_path / "ev", data)
    page = build_page(ev)
    assert page.kind == "evaluation" and page.contexts == ["reference", "generated"]
    assert page.supporters == ["zero-shot"]
    d01 = next(i for i in page.items if i["id"] == "d01")
    assert len(d01["u"]) == 9  # the whole dialogue: the history of every scored turn
    ref = d01["p"]["reference"]
    assert set(ref) == {"0", "2", "4", "6", "8"}
    assert ref["0"] == [[0, "GT", "zero-shot says hello at 0", True]]
    assert ref["2"][0][3] is False and ref["2"][0][1] == "OT"
    assert page.report["tables"][0]["columns"][0] == "context"
    # Without the dialogue file, the scored turns alone, with a note saying how to get the rest.
    data.rename(tmp_path / "moved.jsonl")
    page = build_page(ev)
    assert page.notes and "--data" in page.notes[0]
    d01 = next(i for i in page.items if i["id"] == "d01")
    assert d01["u"][1] is None and d01["u"][0][0] == "s"
    page = build_page(ev, data=tmp_path / "moved.jsonl")
    assert not page.notes
    assert build_page(ev / "predictions.jsonl").kind == "evaluation"  # the file names its folder


def test_cli_writes_beside_the_input(tmp_path):
    make_run_folder(tmp_path / "run")
    res = runner.invoke(app, ["view", str(tmp_path / "run")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "run" / "view.html").is_file() and "7 dialogues" in res.output
    res = runner.invoke(
        app, ["view", str(tmp_path / "run" / "dialogues.jsonl"), "--out", str(tmp_path / "k.html")]
    )
    assert res.exit_code == 0 and len(page_data((tmp_path / "k.html").read_text())["items"]) == 4
    assert runner.invoke(app, ["view", str(tmp_path / "run"), "--lang", "fr"]).exit_code == 2


def test_page_is_smaller_than_three_times_the_jsonl(tmp_path):
    dialogues = [
        rolecs_dialogue(f"s{i:04d}", ["GT", "IV", "EM", "PS", "ID", "AC"]) for i in range(300)
    ]
    write_dialogues(dialogues, tmp_path / "d.jsonl")
    out = write_viewer(build_page(tmp_path / "d.jsonl"), tmp_path / "d.html")
    ratio = out.stat().st_size / (tmp_path / "d.jsonl").stat().st_size
    assert ratio <= 3.0, ratio


def test_unknown_run_framework_asks_for_the_yaml(tmp_path):
    make_run_folder(tmp_path / "run")
    (tmp_path / "run" / "run.json").write_text(json.dumps({"config": {"framework": "mine"}}))
    with pytest.raises(ViewerError, match="--framework"):
        build_page(tmp_path / "run")
    assert build_page(tmp_path / "run", framework="csc").kind == "run"


def test_a_real_synthesis_run_folder(tmp_path):
    """The files ``SynthesisRun`` itself writes (scripted LM): kept, rejected, failed, the
    judge's verdicts and a policy correction on the turn where it happened."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "programs"))
    from rolecs_fakes import Script
    from test_synthesis import make_run

    verdicts = iter([True, False] * 3)

    def judge(history):
        return {"natural_replies": next(verdicts)}

    def fail(role, messages):
        if role == "customer" and "customer number 1" in messages[-1]["content"]:
            raise RuntimeError("upstream 503")
        return None

    # The first choice breaks the opening rule twice, so the program corrects it to GT.
    script = Script(strategies=["PS", "IV", "PR", "PS", "AC"], judge=judge, fail=fail)
    make_run(tmp_path, script).run(6, concurrency=1, progress=False)
    page = build_page(tmp_path)
    statuses = [item.get("s") for item in page.items]
    assert sorted(statuses) == ["failed", "failed", "kept", "kept", "rejected", "rejected"]
    done = [item for item in page.items if item["s"] != "failed"]
    assert all(item["x"]["goal"] == "get help" for item in done)
    assert [item["j"]["natural_replies"][0] for item in done] == [True, True, False, False]
    first = done[0]["u"][0]
    assert first[2] == "GT" and "corrected to GT" in first[3]
    assert all(item["pc"]["opening"] >= 1 for item in done)
    failed = next(item for item in page.items if item["s"] == "failed")
    assert "upstream 503" in failed["e"]["error"] and failed["e"]["role"] == "customer"


def test_a_missing_browser_fails_with_how_to_install_it(tmp_path, monkeypatch):
    from chromium import chromium_path

    monkeypatch.delenv("CSC_CHROMIUM", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))  # no chromium anywhere
    with pytest.raises(pytest.fail.Exception, match=r"apt-get install -y chromium"):
        chromium_path()
    monkeypatch.setenv("CSC_CHROMIUM", str(tmp_path / "nope"))
    with pytest.raises(pytest.fail.Exception, match="is not an executable"):
        chromium_path()


def test_the_page_script_never_parses_markup():
    """Data reaches the document only as text nodes: the script has no way to parse HTML."""
    from importlib import resources

    script = (resources.files("csc.eval") / "viewer_assets" / "viewer.js").read_text()
    for sink in (
        "innerHTML",
        "outerHTML",
        "insertAdjacentHTML",
        "document.write",
        "eval(",
        "Function(",
    ):
        assert sink not in script, sink
