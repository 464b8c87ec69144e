"""Other corpora through a mapping: the shipped ESConv mapping with the esc framework, and inline ones."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from csc.data.generic import CorpusMapping, load_mapping
from csc.data.io import DataFormatError, read_dialogues, write_dialogues
from csc.dialogue import Speaker

FIXTURES = Path(__file__).parents[1] / "fixtures" / "data"
SYS_USR = {
    "turns_field": "dialog",
    "supporter": ["sys"],
    "customer": ["usr"],
    "id_field": "dialogue_id",
    "topic_field": "domain",
    "labels": {"greeting": "GT", "verify": "Identity Verification"},
}


def test_esconv_mapping_with_esc_framework():
    dialogues = list(
        read_dialogues(FIXTURES / "esconv_tiny.json", mapping="esconv", framework="esc")
    )
    assert [d.id for d in dialogues] == ["esconv_tiny-0", "esconv_tiny-1"]
    first, second = dialogues
    assert first.topic == "job crisis"
    assert first.scenario.startswith("I might lose my job")
    assert first.strategies() == ["QU", "RF", "SD", "PS", "OT"]
    assert second.strategies() == ["AR", "RS", "IN"]  # "Affirmation" via the labels: table
    assert second.turns[0].speaker is Speaker.CUSTOMER
    # Unused fields are kept, not dropped; the consumed strategy leaves no empty annotation.
    assert first.metadata["emotion_type"] == "anxiety"
    assert first.metadata["survey_score"] == {"seeker": {"initial_emotion_intensity": "4"}}
    assert first.turns[3].metadata == {"annotation": {"feedback": "4"}}
    assert first.turns[0].metadata == {}


def test_esconv_mapping_with_wrong_framework_says_which_to_use():
    with pytest.raises(DataFormatError) as info:
        list(read_dialogues(FIXTURES / "esconv_tiny.json", mapping="esconv", framework="csc"))
    assert "--framework esc" in str(info.value)


def test_sys_usr_jsonl_with_inline_mapping(tmp_path):
    dialogues = list(read_dialogues(FIXTURES / "sys_usr.jsonl", mapping=SYS_USR))
    assert [(d.id, d.topic) for d in dialogues] == [("d-001", "banking"), ("d-002", "shopping")]
    assert dialogues[0].strategies() == ["GT", "IV", "RI"]
    assert dialogues[1].strategies() == ["GT", "ID"]
    # And on to the released format.
    write_dialogues(dialogues, tmp_path / "out.json")
    records = json.loads((tmp_path / "out.json").read_text(encoding="utf-8"))
    assert records[0]["dialogue"][2] == {
        "speaker": "客服",
        "strategy": "策略2 确认身份",
        "text": "I'm sorry to hear that. Could you tell me your name?",
    }


def test_mapping_from_yaml_file(tmp_path):
    path = tmp_path / "m.yaml"
    path.write_text(
        "turns_field: conv.turns\nspeaker_field: role\ntext_field: utterance\n"
        "strategy_field: null\nsupporter: [0]\ncustomer: [1]\n",
        encoding="utf-8",
    )
    data = tmp_path / "c.jsonl"
    turns = [{"role": 0, "utterance": "Hello"}, {"role": 1, "utterance": "Hi"}]
    data.write_text(json.dumps({"conv": {"turns": turns, "lang": "en"}}) + "\n", encoding="utf-8")
    (dialogue,) = read_dialogues(data, mapping=path)
    assert [t.speaker for t in dialogue.turns] == [Speaker.SUPPORTER, Speaker.CUSTOMER]
    assert dialogue.turns[0].strategy is None  # strategy_field: null means an unlabelled corpus
    assert dialogue.metadata == {"conv": {"lang": "en"}}


@pytest.mark.parametrize(
    ("turn", "field", "words"),
    [
        ({"speaker": "bot", "text": "x", "strategy": "GT"}, "dialog[0].speaker", "unknown speaker"),
        ({"speaker": "sys", "strategy": "GT"}, "dialog[0].text", "missing field"),
        (
            {"speaker": "sys", "text": "x", "strategy": "wave"},
            "dialog[0].strategy",
            "labels: table",
        ),
        (
            {"speaker": "sys", "text": "x", "strategy": ""},
            "dialog[0].strategy",
            "without a strategy",
        ),
        (
            {"speaker": "sys", "text": "x", "lable": "GT"},
            "dialog[0].strategy",
            "missing field (turn keys: ['lable', 'speaker', 'text'])",
        ),
        ({"speaker": "usr", "text": "x", "strategy": "GT"}, "dialog[0].strategy", "customer"),
    ],
)
def test_generic_errors(tmp_path, turn, field, words):
    path = tmp_path / "g.jsonl"
    path.write_text(json.dumps({"dialog": [turn]}) + "\n", encoding="utf-8")
    with pytest.raises(DataFormatError) as info:
        list(read_dialogues(path, mapping=SYS_USR))
    assert str(info.value).startswith(f"{path}: record 1 (line 1), field '{field}'")
    assert words in str(info.value)


def test_generic_missing_turns_field(tmp_path):
    path = tmp_path / "g.json"
    path.write_text(json.dumps([{"turns": []}]), encoding="utf-8")
    with pytest.raises(DataFormatError, match=r"record 1, field 'dialog': missing field"):
        list(read_dialogues(path, mapping=SYS_USR))


@pytest.mark.parametrize(
    ("mapping", "words"),
    [
        ({"supporter": ["a"], "customer": ["b"]}, "turns_field"),
        (
            {"turns_field": "t", "supporter": ["a"], "customer": ["a"]},
            "both supporter and customer",
        ),
        ({"turns_field": "t", "supporter": ["a"], "customer": ["b"], "speakers": 1}, "speakers"),
    ],
)
def test_bad_mappings(mapping, words):
    with pytest.raises(DataFormatError, match=words):
        load_mapping(mapping)


def test_mapping_label_table_checked_against_framework(tmp_path):
    mapping = {**SYS_USR, "labels": {"hello": "Flying"}}
    with pytest.raises(DataFormatError, match=r"field 'labels.hello'"):
        list(read_dialogues(FIXTURES / "sys_usr.jsonl", mapping=mapping))


def test_builtin_mapping_loads():
    mapping = load_mapping("esconv")
    assert isinstance(mapping, CorpusMapping)
    assert mapping.framework == "esc" and mapping.strategy_field == "annotation.strategy"
