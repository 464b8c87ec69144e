"""Raw support logs through the generic mapping: list-valued text, empty messages, dropped
speakers, merged same-speaker runs and flat logs (one row per message) in CSV, JSONL and parquet."""

from __future__ import annotations

import csv
import datetime as dt
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from csc.cli import app
from csc.data.errors import RecordLocation
from csc.data.generic import _contiguous_groups, load_mapping, read_generic
from csc.data.io import DataFormatError, read_dialogues
from csc.dialogue import Speaker

FIXTURES = Path(__file__).parents[1] / "fixtures" / "data"
NESTED = FIXTURES / "helpdesk_nested.json"
NESTED_MAPPING = FIXTURES / "helpdesk_nested.yaml"
FLAT = FIXTURES / "helpdesk_flat.csv"
FLAT_MAPPING = FIXTURES / "helpdesk_flat.yaml"
runner = CliRunner()

FLAT_LOG = {
    "group_by": "cid",
    "order_by": "t",
    "supporter": ["agent"],
    "customer": ["user"],
    "strategy_field": None,
}


def _flat_rows() -> list[dict[str, str]]:
    with FLAT.open(encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), "utf-8")
    return path


# --- acceptance: the same conversations, nested and flat, read into identical dialogues ---


def test_nested_corpus_and_flat_csv_log_read_into_identical_dialogues():
    nested = read_dialogues(NESTED, mapping=NESTED_MAPPING)
    flat = read_dialogues(FLAT, mapping=FLAT_MAPPING)
    nested_dialogues, flat_dialogues = list(nested), list(flat)
    assert nested_dialogues == flat_dialogues
    # c-1003 holds only a system line and an empty message: dropped, and counted.
    assert [d.id for d in flat_dialogues] == ["c-1001", "c-1002", "c-1004"]
    first = flat_dialogues[0]
    assert first.topic == "账户和交易管理"
    assert first.alternates() and first.turns[0].speaker is Speaker.SUPPORTER
    assert first.turns[0].text == "您好，这里是在线客服，请问有什么可以帮您？"  # "" dropped
    assert first.turns[1].text == "我的银行卡被冻结了\n今天早上刚发现的\n能帮我看看吗？"
    assert first.turns[1].metadata == {"time": "2024-03-01T09:00:20"}  # the run's first message
    assert "客服 小王 已接入" not in " ".join(t.text for t in first.turns)
    assert flat_dialogues[1].turns[2].text == 'yes\nand can I pay "yearly"?'
    assert (
        flat_dialogues[2].turns[1].text
        == "非常抱歉给您带来不便\n您好，我是投诉组的客服，请提供订单号"
    )
    assert all(d.metadata == {} and d.alternates() for d in flat_dialogues)
    # The counts say what was dropped and merged.
    for counts in (nested.counts, flat.counts):
        assert dict(counts.dropped_speakers) == {"system": 3, "bot": 1, "transfer": 1}
        assert counts.empty_messages == 6 and counts.empty_dialogues == 1
    assert (nested.counts.empty_turns, nested.counts.merged_turns, nested.counts.rows) == (3, 3, 0)
    # In a flat log every message is a turn of its own until merged.
    assert (flat.counts.empty_turns, flat.counts.merged_turns, flat.counts.rows) == (6, 4, 28)


def test_flat_log_as_jsonl_and_parquet_reads_like_the_csv(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    expected = list(read_dialogues(FLAT, mapping=FLAT_MAPPING))
    rows = [{**r, "message": r["message"] or None} for r in _flat_rows()]
    jsonl = _write_jsonl(tmp_path / "log.jsonl", rows)
    assert list(read_dialogues(jsonl, mapping=FLAT_MAPPING)) == expected
    # Parquet exports carry real timestamps; they come back as ISO text, ordered as times.
    table = pa.Table.from_pylist(
        [{**r, "time": dt.datetime.fromisoformat(r["time"])} for r in rows]
    )
    pq.write_table(table, tmp_path / "log.parquet", row_group_size=5)
    assert list(read_dialogues(tmp_path / "log.parquet", mapping=FLAT_MAPPING)) == expected


def test_interleaved_rows_need_grouped_false(tmp_path):
    rows = _flat_rows()
    interleaved = sorted(rows, key=lambda r: (r["time"][-5:], r["session_id"]))
    path = tmp_path / "interleaved.csv"
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(interleaved)
    with pytest.raises(DataFormatError) as info:
        list(read_dialogues(path, mapping=FLAT_MAPPING))
    message = str(info.value)
    assert message.startswith(f"{path}: record ") and "field 'session_id'" in message
    assert "not contiguous" in message and "grouped: false" in message
    mapping = {**load_mapping(FLAT_MAPPING).model_dump(), "grouped": False}
    gathered = list(read_dialogues(path, mapping=mapping))
    expected = {d.id: d for d in read_dialogues(FLAT, mapping=FLAT_MAPPING)}
    assert {d.id: d for d in gathered} == expected


def test_grouped_rows_stream_one_conversation_at_a_time():
    consumed = []

    def rows():
        for i, cid in enumerate(["a", "a", "b", "b", "c"]):
            consumed.append(i)
            yield RecordLocation("log.jsonl", i + 1), {"cid": cid}

    groups = _contiguous_groups(rows(), load_mapping(FLAT_LOG))
    key, members = next(groups)
    assert key == "a" and len(members) == 2
    assert consumed == [0, 1, 2]  # only the first row of the next conversation was read
    assert [k for k, _ in groups] == ["b", "c"]


def test_order_by_compares_numbers_as_numbers(tmp_path):
    rows = [
        {"cid": 1, "t": "10", "who": "agent", "text": "third"},
        {"cid": 1, "t": "9", "who": "user", "text": "second"},
        {"cid": 1, "t": "1", "who": "agent", "text": "first"},
    ]
    mapping = {**FLAT_LOG, "speaker_field": "who"}
    (dialogue,) = read_dialogues(_write_jsonl(tmp_path / "log.jsonl", rows), mapping=mapping)
    assert [t.text for t in dialogue.turns] == ["first", "second", "third"]
    assert dialogue.id == "1"
    assert dialogue.turns[0].metadata == {"t": "1"}  # the ordering field stays in metadata


def test_flat_log_errors_name_the_row_and_field(tmp_path):
    path = _write_jsonl(tmp_path / "log.jsonl", [{"cid": 1, "t": 1, "speaker": "x", "text": "a"}])
    with pytest.raises(DataFormatError) as info:
        list(read_dialogues(path, mapping=FLAT_LOG))
    assert str(info.value).startswith(f"{path}: record 1 (line 1), field 'speaker': unknown")
    path = _write_jsonl(tmp_path / "log.jsonl", [{"conv": 1, "t": 1, "speaker": "user"}])
    with pytest.raises(DataFormatError, match=r"field 'cid': missing field \(row keys"):
        list(read_dialogues(path, mapping=FLAT_LOG))
    path = _write_jsonl(tmp_path / "log.jsonl", [{"cid": 1, "speaker": "user", "text": "a"}])
    with pytest.raises(DataFormatError, match=r"field 't': missing value to order"):
        list(read_dialogues(path, mapping=FLAT_LOG))


def test_flat_log_with_strategy_labels(tmp_path):
    rows = [
        {"cid": "a", "t": 1, "speaker": "agent", "text": "Hello!", "label": "策略1 礼貌问候"},
        {"cid": "a", "t": 2, "speaker": "user", "text": "Hi", "label": ""},
        {"cid": "a", "t": 3, "speaker": "agent", "text": "Name?", "label": "Identity Verification"},
    ]
    mapping = {**FLAT_LOG, "strategy_field": "label"}
    (dialogue,) = read_dialogues(_write_jsonl(tmp_path / "log.jsonl", rows), mapping=mapping)
    assert dialogue.strategies() == ["GT", "IV"]
    rows[2]["label"] = "wave"
    with pytest.raises(DataFormatError) as info:
        list(read_dialogues(_write_jsonl(tmp_path / "log.jsonl", rows), mapping=mapping))
    assert str(info.value).startswith(f"{tmp_path / 'log.jsonl'}: record 3 (line 3), field 'label'")


# --- the rules one by one, on nested records ---

NESTED_LOG = {
    "turns_field": "turns",
    "speaker_field": "who",
    "text_field": "msgs",
    "strategy_field": None,
    "supporter": ["agent"],
    "customer": ["user"],
}


def _read_one(tmp_path, turns, **mapping):
    path = _write_jsonl(tmp_path / "c.jsonl", [{"turns": turns}])
    reader = read_generic(path, {**NESTED_LOG, **mapping})
    return list(reader), reader.counts


def test_list_text_needs_text_join(tmp_path):
    with pytest.raises(DataFormatError) as info:
        _read_one(tmp_path, [{"who": "user", "msgs": ["a", "b"]}])
    assert "field 'turns[0].msgs': text is a list of 2 messages" in str(info.value)
    assert 'text_join: "\\n"' in str(info.value)


def test_text_join_drops_empty_messages_and_empty_turns(tmp_path):
    turns = [
        {"who": "user", "msgs": ["", "a", "  ", "b"]},
        {"who": "agent", "msgs": ["", " \n"]},
        {"who": "agent", "msgs": []},
        {"who": "agent", "msgs": None},
        {"who": "agent", "msgs": "c"},
    ]
    (dialogue,), counts = _read_one(tmp_path, turns, text_join=" / ")
    assert [t.text for t in dialogue.turns] == ["a / b", "c"]
    assert (counts.empty_messages, counts.empty_turns) == (5, 3)


def test_empty_text_is_an_error_unless_drop_empty(tmp_path):
    turns = [{"who": "user", "msgs": "hi"}, {"who": "agent", "msgs": " "}]
    with pytest.raises(DataFormatError, match=r"'turns\[1\].msgs': empty text .*drop_empty: true"):
        _read_one(tmp_path, turns)
    (dialogue,), counts = _read_one(tmp_path, turns, drop_empty=True)
    assert len(dialogue.turns) == 1 and counts.empty_turns == 1
    with pytest.raises(DataFormatError, match="no non-empty message"):
        _read_one(tmp_path, [{"who": "user", "msgs": [""]}], text_join="\n", drop_empty=False)


def test_a_message_must_be_text(tmp_path):
    with pytest.raises(DataFormatError, match=r"'turns\[0\].msgs\[1\]': a message must be a str"):
        _read_one(tmp_path, [{"who": "user", "msgs": ["a", {"img": 1}]}], text_join="\n")


def test_drop_speakers_are_counted_and_named_in_errors(tmp_path):
    turns = [
        {"who": "system", "msgs": "joined"},
        {"who": "user", "msgs": "hi"},
        {"who": 0, "msgs": "bot line"},
        {"who": "system"},  # a dropped speaker needs no text
    ]
    (dialogue,), counts = _read_one(tmp_path, turns, drop=["system", 0])
    assert [t.text for t in dialogue.turns] == ["hi"]
    assert counts.dropped_speakers == {"system": 2, "0": 1}
    with pytest.raises(DataFormatError) as info:
        _read_one(tmp_path, [{"who": "bot", "msgs": "x"}], drop=["system"])
    assert "drop: ['system']" in str(info.value) and "supporter:, customer: or drop:" in str(
        info.value
    )


def test_merge_consecutive_after_drops(tmp_path):
    turns = [
        {"who": "user", "msgs": "a", "at": 1},
        {"who": "system", "msgs": "transfer"},
        {"who": "user", "msgs": "b", "at": 2, "channel": "web"},
        {"who": "agent", "msgs": ""},
        {"who": "user", "msgs": "c", "at": 3},
        {"who": "agent", "msgs": "ok"},
    ]
    (dialogue,), counts = _read_one(
        tmp_path, turns, drop=["system"], drop_empty=True, merge_consecutive=True
    )
    assert [t.text for t in dialogue.turns] == ["a\nb\nc", "ok"]  # "\n" without text_join
    assert dialogue.turns[0].metadata == {"at": 1, "channel": "web"}  # the first turn's wins
    assert counts.merged_turns == 2
    (dialogue,), counts = _read_one(tmp_path, turns, drop=["system"], drop_empty=True)
    assert len(dialogue.turns) == 4 and counts.merged_turns == 0


def test_merge_keeps_a_label_but_refuses_two_different_ones(tmp_path):
    mapping = {"strategy_field": "s", "merge_consecutive": True}
    turns = [
        {"who": "agent", "msgs": "Hello", "s": "GT"},
        {"who": "agent", "msgs": "Hi", "s": "GT"},
    ]
    (dialogue,), _ = _read_one(tmp_path, turns, **mapping)
    assert dialogue.turns[0].text == "Hello\nHi" and dialogue.strategies() == ["GT"]
    turns[1]["s"] = "EM"
    with pytest.raises(DataFormatError, match=r"'turns\[1\].s': merge_consecutive would merge"):
        _read_one(tmp_path, turns, **mapping)


def test_a_dialogue_left_without_turns_is_dropped_and_counted(tmp_path):
    path = _write_jsonl(
        tmp_path / "c.jsonl",
        [{"turns": [{"who": "system", "msgs": "x"}]}, {"turns": [{"who": "user", "msgs": "y"}]}],
    )
    reader = read_generic(path, {**NESTED_LOG, "drop": ["system"]})
    assert [d.id for d in reader] == ["c-1"]  # default ids still count the dropped record
    assert reader.counts.empty_dialogues == 1


# --- mapping checks (#8 item 3) ---


def test_misspelt_strategy_field_lists_the_turn_keys(tmp_path):
    mapping = {**NESTED_LOG, "strategy_field": "lable"}
    path = _write_jsonl(
        tmp_path / "c.jsonl", [{"turns": [{"who": "agent", "msgs": "Hi", "label": "GT"}]}]
    )
    with pytest.raises(DataFormatError) as info:
        list(read_dialogues(path, mapping=mapping))
    message = str(info.value)
    assert "field 'turns[0].lable': missing field (turn keys: ['label', 'msgs', 'who'])" in message
    assert "strategy_field" in message
    # A corpus that really is unlabelled still reads with --allow-unlabelled.
    (dialogue,) = read_dialogues(path, mapping=mapping, allow_unlabelled=True)
    assert dialogue.turns[0].strategy is None and dialogue.turns[0].metadata == {"label": "GT"}


@pytest.mark.parametrize(
    ("key", "words"),
    [
        ("turn_field", "unknown mapping key 'turn_field' — did you mean 'turns_field'?"),
        ("text_joiner", "did you mean 'text_join'?"),
        ("colour", "unknown mapping key 'colour' — known keys: name, "),
    ],
)
def test_unknown_mapping_keys_are_named(tmp_path, key, words):
    path = tmp_path / "m.yaml"
    path.write_text(f"{key}: x\nturns_field: t\nsupporter: [a]\ncustomer: [b]\n", "utf-8")
    with pytest.raises(DataFormatError) as info:
        load_mapping(path)
    assert str(info.value).startswith(f"{path}: ") and words in str(info.value)


@pytest.mark.parametrize(
    ("mapping", "words"),
    [
        ({**FLAT_LOG, "turns_field": "t"}, "either turns_field"),
        ({"supporter": ["a"], "customer": ["b"]}, "either turns_field"),
        ({**NESTED_LOG, "order_by": "t"}, "needs group_by"),
        ({**FLAT_LOG, "id_field": "x"}, "group_by value is the dialogue id"),
        ({**FLAT_LOG, "drop": ["agent"]}, "both supporter and drop"),
    ],
)
def test_inconsistent_mappings(mapping, words):
    with pytest.raises(DataFormatError, match=words):
        load_mapping(mapping)


# --- CSV ---


def test_csv_errors_name_the_row(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text("cid,t,speaker,text\n1,1,user,hi\n1,2,agent,a,b\n", "utf-8")
    with pytest.raises(DataFormatError) as info:
        list(read_dialogues(path, mapping=FLAT_LOG))
    assert str(info.value).startswith(f"{path}: record 2 (line 3): 5 cells, but the header has 4")
    path.write_bytes(b"cid,t,speaker,text\n1,1,user,caf\xe9\n")
    with pytest.raises(DataFormatError, match=r"not UTF-8 \(byte b.\\xe9. on line 2\)"):
        list(read_dialogues(path, mapping=FLAT_LOG))
    path.write_text("cid,t,t,text\n", "utf-8")
    with pytest.raises(DataFormatError, match="distinct, non-empty column names"):
        list(read_dialogues(path, mapping=FLAT_LOG))
    with pytest.raises(DataFormatError, match="one row per message"):
        list(read_dialogues(path, mapping=NESTED_LOG))


def test_tsv_and_multiline_cells(tmp_path):
    path = tmp_path / "log.tsv"
    path.write_text('cid\tt\tspeaker\ttext\n7\t2\tagent\t"two\nlines"\n7\t1\tuser\thi\n', "utf-8")
    (dialogue,) = read_dialogues(path, mapping=FLAT_LOG)
    assert [t.text for t in dialogue.turns] == ["hi", "two\nlines"]


# --- the command line ---


def test_validate_prints_the_mapping_counts():
    args = ["data", "validate", str(FLAT), "--mapping", str(FLAT_MAPPING)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "dialogues                   3" in result.output
    assert "rows (flat log)           28" in result.output
    assert "speaker turns dropped     5 (system 3, bot 1, transfer 1)" in result.output
    assert "same-speaker turns merged 4" in result.output
    assert "empty dialogues dropped   1" in result.output
    report = json.loads(runner.invoke(app, [*args, "--json"]).stdout)
    assert report["mapping"]["empty_turns_dropped"] == 6
    assert report["mapping"]["dropped_speakers"] == {"system": 3, "bot": 1, "transfer": 1}
    # Formats without a mapping have nothing to report.
    sample = FIXTURES / "sys_usr.jsonl"
    result = runner.invoke(app, ["data", "validate", str(sample), "--json"])
    assert "mapping" not in result.stdout


def test_convert_a_flat_log_says_what_it_dropped(tmp_path):
    out = tmp_path / "out.jsonl"
    args = ["data", "convert", str(FLAT), str(out), "--mapping", str(FLAT_MAPPING)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert f"wrote 3 dialogues to {out} (6 empty messages dropped, 6 empty turns dropped, " in (
        result.output
    )
    assert "5 speaker turns dropped, 4 turns merged, 1 empty dialogues dropped)" in result.output
    assert len(out.read_text("utf-8").splitlines()) == 3


def test_the_mappings_in_the_docs_read_the_fixtures():
    import re

    import yaml

    docs = (Path(__file__).parents[2] / "docs" / "data-formats.md").read_text("utf-8")
    section = docs.split("### Raw support logs", 1)[1].split("\n## ", 1)[0]
    blocks = [yaml.safe_load(b) for b in re.findall(r"```yaml\n(.*?)```", section, re.S)]
    nested, flat = (next(b for b in blocks if key in b) for key in ("turns_field", "group_by"))
    expected = list(read_dialogues(FLAT, mapping=FLAT_MAPPING))
    assert len(expected) == 3
    assert list(read_dialogues(NESTED, mapping=nested)) == expected
    assert list(read_dialogues(FLAT, mapping=flat)) == expected


def test_ungrouped_rows_spill_to_a_temporary_file_removed_afterwards(tmp_path, monkeypatch):
    import tempfile

    spill = tmp_path / "tmp"
    spill.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(spill))
    rows = [
        {"cid": cid, "t": t, "speaker": who, "text": f"{cid}{t}"}
        for t, (cid, who) in enumerate([("b", "user"), ("a", "agent"), ("b", "agent")])
    ]
    mapping = {**FLAT_LOG, "grouped": False}
    reader = read_generic(_write_jsonl(tmp_path / "log.jsonl", rows), mapping)
    first = next(reader)
    assert list(spill.glob("csc-flat-log-*/rows.sqlite"))  # rows wait on disk, not in memory
    assert (first.id, [t.text for t in first.turns]) == ("b", ["b0", "b2"])
    assert [d.id for d in reader] == ["a"]
    assert list(spill.iterdir()) == []
    reader = read_generic(tmp_path / "log.jsonl", mapping)
    next(reader)
    reader.close()  # stopping early cleans up too
    assert list(spill.iterdir()) == []
