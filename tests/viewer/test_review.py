"""``csc review apply``: accepted dialogues become a dataset; agreement with the judge."""

from __future__ import annotations

import json
from pathlib import Path

import dspy
import pytest
from typer.testing import CliRunner
from viewer_fixtures import CRITERIA, make_run_folder

from csc.cli import app
from csc.data.io import read_dialogues
from csc.dialogue import Speaker
from csc.eval.review import ReviewError, cohen_kappa, load_review

runner = CliRunner()
SAMPLE = Path(__file__).resolve().parents[2] / "data" / "samples" / "sample_en.json"


def review_doc(marks: dict, criteria=CRITERIA) -> dict:
    return {
        "format": "csc-review",
        "version": 1,
        "source": "run",
        "criteria": list(criteria),
        "reviewer": "ana",
        "marks": marks,
    }


def all_(value: str, **overrides: str) -> dict:
    return {"criteria": {c: overrides.get(c, value) for c in CRITERIA}, "note": ""}


def test_cohen_kappa_matches_the_textbook_example():
    # Two raters, 50 items: 20 yes/yes, 5 yes/no, 10 no/yes, 15 no/no -> kappa 0.4.
    a = [True] * 25 + [False] * 25
    b = [True] * 20 + [False] * 5 + [True] * 10 + [False] * 15
    assert cohen_kappa(a, b) == pytest.approx(0.4)
    assert cohen_kappa([True, False], [True, False]) == pytest.approx(1.0)
    assert cohen_kappa([True, True], [True, True]) is None  # chance agreement is 1
    assert cohen_kappa([], []) is None


def test_apply_writes_accepted_dialogues_and_reports_agreement(tmp_path):
    make_run_folder(tmp_path / "run")
    marks = {
        "d01": all_("accept"),  # judge: all pass -> agree
        "d02": all_("accept", natural_replies="reject"),  # judge passes natural_replies
        "d05": all_("accept", natural_replies="reject"),  # judge fails natural_replies
        "d06": {"criteria": {"role_consistency": "reject"}, "note": "robotic"},  # partial
        "d03": {"criteria": {}, "note": "look again"},
    }
    marks["d01"]["note"] = "fine <b>really</b>"
    (tmp_path / "review.json").write_text(json.dumps(review_doc(marks)))
    res = runner.invoke(
        app, ["review", "apply", str(tmp_path / "review.json"), str(tmp_path / "run"), "--json"]
    )
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert (out["accepted"], out["rejected"], out["undecided"]) == (1, 3, 1)
    written = list(read_dialogues(tmp_path / "run" / "reviewed.jsonl"))
    assert [d.id for d in written] == ["d01"]
    assert written[0].metadata["review"]["note"] == "fine <b>really</b>"
    assert written[0].metadata["review"]["reviewer"] == "ana"
    rows = {r["criterion"]: r for r in out["agreement"]}
    nat = rows["natural_replies"]
    # reviewer accept/reject vs judge pass on d01, d02, d05: (T,T), (F,T), (F,F).
    assert nat["n"] == 3 and nat["agreement"] == pytest.approx(2 / 3, abs=1e-4)
    assert nat["kappa"] == pytest.approx(
        cohen_kappa([True, False, False], [True, True, False]), abs=1e-4
    )
    assert rows["role_consistency"]["n"] == 4  # d06's single mark counts for its criterion
    assert rows["all criteria"]["n"] == 4  # decided dialogues only (d01, d02, d05, d06)
    # The table form and refusing to overwrite.
    res = runner.invoke(
        app, ["review", "apply", str(tmp_path / "review.json"), str(tmp_path / "run")]
    )
    assert res.exit_code == 1 and "--overwrite" in res.output
    res = runner.invoke(
        app,
        ["review", "apply", str(tmp_path / "review.json"), str(tmp_path / "run"), "--overwrite"],
    )
    assert res.exit_code == 0 and "kappa" in res.output and "natural_replies" in res.output


def test_review_of_a_plain_file_to_dianjin(tmp_path):
    first = next(iter(read_dialogues(SAMPLE)))
    doc = review_doc({first.id: {"criteria": {"overall": "accept"}, "note": ""}}, ["overall"])
    (tmp_path / "r.json").write_text(json.dumps(doc))
    out = tmp_path / "accepted.json"
    res = runner.invoke(
        app, ["review", "apply", str(tmp_path / "r.json"), str(SAMPLE), "--out", str(out)]
    )
    assert res.exit_code == 0, res.output
    assert len(json.loads(out.read_text())) == 1  # the DianJin list format
    assert [t.text for t in next(iter(read_dialogues(out))).turns] == [t.text for t in first.turns]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("not json", "not valid JSON"),
        ('{"format": "other"}', "not a csc review file"),
        ('{"format": "csc-review", "version": 2}', "version 2"),
        ('{"format": "csc-review", "version": 1, "criteria": [], "marks": []}', "'marks'"),
        (
            '{"format": "csc-review", "version": 1, "criteria": ["a"], '
            '"marks": {"d1": {"criteria": {"a": "maybe"}}}}',
            "criterion 'a'",
        ),
    ],
)
def test_bad_review_files_name_the_problem(tmp_path, content, message):
    path = tmp_path / "review.json"
    path.write_text(content)
    with pytest.raises(ReviewError, match=message):
        load_review(path)
    make_run_folder(tmp_path / "run")
    res = runner.invoke(app, ["review", "apply", str(path), str(tmp_path / "run")])
    assert res.exit_code == 1 and message.split("'")[0] in res.output
    assert "Traceback" not in res.output


def test_a_review_of_another_run_is_refused(tmp_path):
    make_run_folder(tmp_path / "run")
    (tmp_path / "r.json").write_text(json.dumps(review_doc({"zzz": all_("accept")})))
    res = runner.invoke(app, ["review", "apply", str(tmp_path / "r.json"), str(tmp_path / "run")])
    assert res.exit_code == 1 and "'zzz'" in res.output and "another run" in res.output
    assert not (tmp_path / "run" / "reviewed.jsonl").exists()


def _fake_lm(spec: object, **_: object) -> dspy.BaseLM:
    return dspy.utils.DummyLM(
        {
            "`[[ ## strategy ## ]]`": {"strategy": "PS"},
            "`[[ ## response ## ]]`": {"response": "Let me check <that> for you."},
        }
    )


def test_evaluate_and_compare_write_report_html(tmp_path, monkeypatch):
    from test_viewer_page import page_data

    monkeypatch.setattr("csc.lm.build_lm", _fake_lm)
    first = next(iter(read_dialogues(SAMPLE)))
    n_turns = sum(t.speaker == Speaker.SUPPORTER for t in first.turns)  # --limit 1 = one dialogue
    out = tmp_path / "cmp"
    res = runner.invoke(
        app,
        [
            "compare", "--data", str(SAMPLE), "--lm", "fake/model", "--supporter", "zs=zero-shot",
            "--supporter", "direct=direct", "--context", "both", "--limit", "1",
            "--no-bertscore", "--num-threads", "1", "--out", str(out),
        ],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    data = page_data((out / "report.html").read_text())
    assert data["meta"]["kind"] == "compare" and data["supporters"] == ["zs", "direct"]
    assert data["contexts"] == ["reference", "generated"]
    scored = [rows for item in data["items"] for rows in item["p"]["reference"].values()]
    # --limit counts dialogues: every supporter turn of the first one, 2 supporters side by side
    assert sum(len(r) for r in scored) == 2 * n_turns
    assert all(len(item["u"]) > 1 for item in data["items"])  # histories from the data file
    assert data["report"]["tables"][0]["rows"] and data["report"]["images"]
    assert (out / "supporters" / "zs" / "report.html").is_file()

    res = runner.invoke(
        app,
        [
            "evaluate", "--data", str(SAMPLE), "--lm", "fake/model", "--context", "ref",
            "--limit", "1", "--no-bertscore", "--num-threads", "1", "--out", str(tmp_path / "ev"),
        ],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    data = page_data((tmp_path / "ev" / "report.html").read_text())
    assert data["meta"]["kind"] == "evaluation" and len(data["report"]["images"]) == 3
    marks = [
        r[3] for item in data["items"] for rows in item["p"]["reference"].values() for r in rows
    ]
    assert len(marks) == n_turns and all(m in (True, False) for m in marks)
