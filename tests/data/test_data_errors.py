"""Malformed input: every problem raises DataFormatError naming the file, record and field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from csc.data.io import DataFormatError, read_dialogues, write_dialogues

GOOD_TURNS = [
    {"speaker": "客服", "strategy": "策略1 礼貌问候", "text": "您好！"},
    {"speaker": "客户", "strategy": "", "text": "我想查账单。"},
]


def _dianjin(tmp_path: Path, bad_record, name="bad.json") -> Path:
    path = tmp_path / name
    records = [{"dialogue": GOOD_TURNS, "source": "产品咨询"}, bad_record]
    path.write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    return path


def _turn(**changes):
    turn = {"speaker": "客服", "strategy": "策略7 信息传达", "text": "账单在APP里查看。"}
    turn.update(changes)
    return {k: v for k, v in turn.items() if v is not ...}


def _error(path: Path, **kwargs) -> DataFormatError:
    with pytest.raises(DataFormatError) as info:
        list(read_dialogues(path, **kwargs))
    return info.value


@pytest.mark.parametrize(
    ("bad", "field", "words"),
    [
        ("not a record", None, "must be a JSON object"),
        ({"source": "产品咨询"}, "dialogue", "missing field"),
        ({"dialogue": []}, "dialogue", "non-empty list"),
        ({"dialogue": "hello"}, "dialogue", "non-empty list"),
        ({"dialogue": [*GOOD_TURNS, "oops"]}, "dialogue[2]", "must be an object"),
        ({"dialogue": [*GOOD_TURNS, _turn(text=...)]}, "dialogue[2].text", "missing field"),
        ({"dialogue": [*GOOD_TURNS, _turn(speaker=...)]}, "dialogue[2].speaker", "missing field"),
        ({"dialogue": [*GOOD_TURNS, _turn(text="  ")]}, "dialogue[2].text", "empty text"),
        ({"dialogue": [*GOOD_TURNS, _turn(text=5)]}, "dialogue[2].text", "must be a string"),
        (
            {"dialogue": [*GOOD_TURNS, _turn(speaker="坐席")]},
            "dialogue[2].speaker",
            "unknown speaker",
        ),
        (
            {"dialogue": [*GOOD_TURNS, _turn(strategy="策略99 飞翔")]},
            "dialogue[2].strategy",
            "unknown strategy label",
        ),
        (
            {"dialogue": [*GOOD_TURNS, _turn(strategy="")]},
            "dialogue[2].strategy",
            "supporter turn without a strategy",
        ),
        (
            {"dialogue": [*GOOD_TURNS, _turn(strategy=3)]},
            "dialogue[2].strategy",
            "must be a string",
        ),
        (
            {"dialogue": [GOOD_TURNS[0], {**GOOD_TURNS[1], "strategy": "策略5 情感管理"}]},
            "dialogue[1].strategy",
            "customer turn carries no strategy",
        ),
        ({"dialogue": GOOD_TURNS, "source": ["a"]}, "source", "must be a string"),
    ],
)
def test_dianjin_record_errors(tmp_path, bad, field, words):
    path = _dianjin(tmp_path, bad)
    err = _error(path)
    message = str(err)
    assert message.startswith(f"{path}: record 2")
    assert words in message
    assert " — " in message  # every message says what to do
    assert err.record == 2 and err.path == str(path) and err.field == field
    if field:
        assert f"field '{field}'" in message


def test_supporter_turn_without_strategy_allowed_on_request(tmp_path):
    path = _dianjin(tmp_path, {"dialogue": [*GOOD_TURNS, _turn(strategy=...)]})
    dialogues = list(read_dialogues(path, allow_unlabelled=True))
    assert dialogues[1].turns[2].strategy is None
    assert "allow_unlabelled" in str(_error(path))


def test_valid_records_before_an_error_are_yielded(tmp_path):
    path = _dianjin(tmp_path, {"dialogue": [_turn(speaker="bot")]})
    reader = read_dialogues(path)
    assert next(reader).turns[0].strategy == "GT"
    with pytest.raises(DataFormatError, match="record 2"):
        next(reader)


def test_truncated_json_list(tmp_path):
    path = tmp_path / "cut.json"
    text = json.dumps([{"dialogue": GOOD_TURNS}] * 3, ensure_ascii=False)
    path.write_text(text[: len(text) - 40], encoding="utf-8")
    err = _error(path)
    assert err.record == 3
    assert str(err).startswith(f"{path}: record 3: not valid JSON")


@pytest.mark.parametrize(("content", "found"), [('{"dialogue": []}', "'{'"), ("", "an empty file")])
def test_json_file_that_is_not_a_list(tmp_path, content, found):
    path = tmp_path / "obj.json"
    path.write_text(content, encoding="utf-8")
    message = str(_error(path))
    assert "expected a JSON list" in message and found in message and ".jsonl" in message


def test_jsonl_bad_line_names_record_and_line(tmp_path):
    from csc.dialogue import Dialogue, Speaker, Turn

    good = Dialogue(id="a", turns=[Turn(speaker=Speaker.SUPPORTER, text="Hi", strategy="GT")])
    path = tmp_path / "x.jsonl"
    path.write_text(good.model_dump_json() + "\n\n" + '{"id": "b", "turns": [\n', encoding="utf-8")
    err = _error(path)
    assert (err.record, err.line) == (2, 3)
    assert str(err).startswith(f"{path}: record 2 (line 3): not valid JSON")


@pytest.mark.parametrize(
    ("obj", "field", "words"),
    [
        ([1, 2], None, "must be a JSON object"),
        ({"turns": []}, "id", "missing field"),
        ({"id": "x", "turns": [{"speaker": "sys", "text": "hi"}]}, "turns[0].speaker", "supporter"),
        (
            {"id": "x", "turns": [{"speaker": "supporter", "text": "hi", "mood": 1}]},
            "turns[0].mood",
            "unknown field",
        ),
        ({"id": "x", "turns": []}, "turns", "at least one turn"),
        (
            {"id": "x", "turns": [{"speaker": "supporter", "text": ""}]},
            "turns[0].text",
            "empty text",
        ),
        (
            {"id": "x", "turns": [{"speaker": "supporter", "text": "hi", "strategy": "XX"}]},
            "turns[0].strategy",
            "unknown strategy label",
        ),
        (
            {"id": "x", "turns": [{"speaker": "supporter", "text": "hi"}]},
            "turns[0].strategy",
            "without a strategy",
        ),
        (
            {"id": "x", "turns": [{"speaker": "customer", "text": "hi", "strategy": "GT"}]},
            "turns[0].strategy",
            "customer turn carries no strategy",
        ),
    ],
)
def test_jsonl_record_errors(tmp_path, obj, field, words):
    path = tmp_path / "x.jsonl"
    path.write_text("\n" + json.dumps(obj) + "\n", encoding="utf-8")
    err = _error(path)
    assert str(err).startswith(f"{path}: record 1 (line 2)")
    assert words in str(err) and err.field == field


def test_jsonl_strategy_names_become_codes(tmp_path):
    path = tmp_path / "x.jsonl"
    turn = {"speaker": "supporter", "text": "您好", "strategy": "策略1 礼貌问候"}
    path.write_text(json.dumps({"id": "x", "turns": [turn]}), encoding="utf-8")
    assert next(iter(read_dialogues(path))).turns[0].strategy == "GT"


def test_parquet_without_dialogue_column(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "other.parquet"
    pq.write_table(pa.table({"text": ["a"]}), path)
    assert "no 'dialogue' column" in str(_error(path))


def test_parquet_bad_row_names_record(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from csc.data.dianjin import parquet_schema

    rows = [{"dialogue": GOOD_TURNS, "source": "x"}] * 600 + [
        {"dialogue": [{"speaker": "客服", "strategy": "", "text": "hi"}], "source": "x"}
    ]
    path = tmp_path / "x.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=parquet_schema()), path)
    err = _error(path)
    assert err.record == 601 and err.field == "dialogue[0].strategy"


def test_format_detection_errors(tmp_path):
    (tmp_path / "x.csv").write_text("a,b\n", encoding="utf-8")
    with pytest.raises(DataFormatError, match="cannot tell the dialogue format"):
        read_dialogues(tmp_path / "x.csv")
    # A missing path is named as missing, whatever its suffix (issue #8 item 7).
    for missing in ("missing.csv", "missing"):
        with pytest.raises(DataFormatError, match="no such file"):
            read_dialogues(tmp_path / missing)
    with pytest.raises(DataFormatError, match="unknown format 'csv'"):
        read_dialogues(tmp_path / "x.json", "csv")
    with pytest.raises(DataFormatError, match="no such file"):
        list(read_dialogues(tmp_path / "missing.json"))
    with pytest.raises(DataFormatError, match="not a saved Hugging Face dataset"):
        list(read_dialogues(tmp_path, "hf"))
    with pytest.raises(DataFormatError, match="read-only"):
        write_dialogues([], tmp_path / "x.jsonl", "generic")


def test_dataset_dict_folder_asks_for_a_split(tmp_path):
    from datasets import Dataset, DatasetDict

    DatasetDict({"train": Dataset.from_list([{"a": 1}])}).save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(DataFormatError, match=r"DatasetDict \(splits: \['train'\]\)"):
        list(read_dialogues(tmp_path / "dd", "hf"))


def test_failed_write_leaves_no_partial_output(tmp_path):
    bad = _dianjin(tmp_path, {"dialogue": [_turn(speaker="bot")]})
    for name in ("out.jsonl", "out.json", "out.parquet", "out_hf"):
        with pytest.raises(DataFormatError):
            write_dialogues(read_dialogues(bad), tmp_path / name)
        assert not (tmp_path / name).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.json"]


def test_hf_writer_refuses_to_replace_unrelated_folder(tmp_path):
    (tmp_path / "keep").mkdir()
    (tmp_path / "keep" / "notes.txt").write_text("mine")
    dialogues = read_dialogues(_dianjin(tmp_path, {"dialogue": GOOD_TURNS}))
    with pytest.raises(FileExistsError):
        write_dialogues(dialogues, tmp_path / "keep", "hf")
    assert (tmp_path / "keep" / "notes.txt").read_text() == "mine"


def test_writing_with_the_wrong_framework_names_the_dialogue(tmp_path):
    from csc.dialogue import Dialogue, Speaker, Turn

    dialogue = Dialogue(
        id="e-1", turns=[Turn(speaker=Speaker.SUPPORTER, text="Hm?", strategy="QU")]
    )
    with pytest.raises(DataFormatError, match=r"dialogue 'e-1', turns\[0\].strategy"):
        write_dialogues([dialogue], tmp_path / "x.json")
    assert write_dialogues([dialogue], tmp_path / "x.json", framework="esc") == 1
