"""Round trips between the released DianJin format, our JSONL, parquet and Hugging Face datasets."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import pytest

from csc.data.hf import from_dataset, to_dataset
from csc.data.io import detect_format, read_dialogues, write_dialogues
from csc.dialogue import Speaker
from csc.framework import Framework

SAMPLES = Path(str(resources.files("csc.data") / "samples"))
FIXTURES = Path(__file__).parents[1] / "fixtures" / "data"


def _content(path: Path) -> list[dict]:
    """The DianJin file's records with labels normalized to codes (the content we must keep)."""
    fw = Framework.load("csc")
    records = json.loads(path.read_text(encoding="utf-8"))
    for r in records:
        for t in r["dialogue"]:
            t["strategy"] = fw.normalize(t["strategy"]) if t["strategy"] else ""
    return records


def _turns(dialogues):
    return [
        (d.topic, [(t.speaker, t.text, t.strategy, t.metadata) for t in d.turns]) for d in dialogues
    ]


@pytest.mark.parametrize("name", ["sample_zh.json", "sample_en.json"])
def test_official_jsonl_parquet_dataset_round_trip(name, tmp_path):
    source = SAMPLES / name
    original = list(read_dialogues(source))
    assert original and all(d.id == f"{source.stem}-{i}" for i, d in enumerate(original))

    write_dialogues(original, tmp_path / "a.jsonl")
    from_jsonl = list(read_dialogues(tmp_path / "a.jsonl"))
    assert from_jsonl == original  # ids included

    write_dialogues(from_jsonl, tmp_path / "b.parquet")
    from_parquet = list(read_dialogues(tmp_path / "b.parquet"))
    assert _turns(from_parquet) == _turns(original)

    dataset = to_dataset(from_parquet, cache_dir=tmp_path / "cache")
    assert len(dataset) == len(original)
    from_ds = list(from_dataset(dataset))
    assert _turns(from_ds) == _turns(original)

    write_dialogues(from_ds, tmp_path / "c_hf")
    assert detect_format(tmp_path / "c_hf") == "hf"
    from_hf = list(read_dialogues(tmp_path / "c_hf"))
    assert from_hf == from_ds

    write_dialogues(from_hf, tmp_path / "d.json")
    assert _content(tmp_path / "d.json") == _content(source)


def test_chinese_official_file_round_trips_byte_for_byte(tmp_path):
    source = SAMPLES / "sample_zh.json"
    write_dialogues(read_dialogues(source), tmp_path / "a.jsonl")
    write_dialogues(read_dialogues(tmp_path / "a.jsonl"), tmp_path / "b.json")
    assert (tmp_path / "b.json").read_bytes() == source.read_bytes()


def test_english_names_written_back_with_labels_name(tmp_path):
    source = SAMPLES / "sample_en.json"
    write_dialogues(read_dialogues(source), tmp_path / "en.json", labels="name")
    assert (tmp_path / "en.json").read_bytes() == source.read_bytes()
    write_dialogues(read_dialogues(source), tmp_path / "official.json")
    first = json.loads((tmp_path / "official.json").read_text(encoding="utf-8"))[0]
    assert first["dialogue"][0] == {
        "speaker": "客服",
        "strategy": "策略1 礼貌问候",
        "text": json.loads(source.read_text(encoding="utf-8"))[0]["dialogue"][0]["text"],
    }
    assert first["dialogue"][1]["speaker"] == "客户" and first["dialogue"][1]["strategy"] == ""


def test_parquet_has_the_released_columns(tmp_path):
    import pyarrow.parquet as pq

    write_dialogues(read_dialogues(SAMPLES / "sample_zh.json"), tmp_path / "x.parquet")
    table = pq.read_table(tmp_path / "x.parquet")
    assert table.column_names == ["dialogue", "source"]
    row = table.slice(0, 1).to_pylist()[0]
    assert row["source"] == "账户和交易管理"
    assert row["dialogue"][0]["strategy"] == "策略1 礼貌问候"


def test_dataset_with_released_columns_reads_as_dianjin(tmp_path):
    from datasets import Dataset

    records = json.loads((SAMPLES / "sample_zh.json").read_text(encoding="utf-8"))
    dataset = Dataset.from_list(records[:2])
    dialogues = list(from_dataset(dataset, name="csconv"))
    assert [d.id for d in dialogues] == ["csconv-0", "csconv-1"]
    assert dialogues[0].turns[0].strategy == "GT"


def test_label_forms_normalized_and_extra_fields_kept():
    dialogues = list(read_dialogues(FIXTURES / "dianjin_label_forms.json"))
    assert [d.strategies() for d in dialogues] == [["GT", "EM", "RI", "AC"], ["GT", "ID", "OT"]]
    assert dialogues[0].id == "dianjin_label_forms-0"
    assert dialogues[1].id == "custom-7"  # an id in the record wins
    assert dialogues[1].metadata == {"rewritten": True}
    assert dialogues[1].turns[2].metadata == {"emotion": "neutral"}
    assert all(
        t.strategy is None for d in dialogues for t in d.turns if t.speaker is Speaker.CUSTOMER
    )


def test_jsonl_keeps_scenario_profile_and_metadata(tmp_path):
    from csc.dialogue import Dialogue, Turn

    dialogue = Dialogue(
        id="rolecs-1",
        topic="产品咨询",
        scenario="A customer asks about fees.",
        profile={"age": 34, "style": "brief"},
        metadata={"model": "local", "temperature": 0.7},
        turns=[
            Turn(speaker=Speaker.SUPPORTER, text="Hello!", strategy="GT", metadata={"rollout": 1}),
            Turn(speaker=Speaker.CUSTOMER, text="Hi, what are the fees?"),
        ],
    )
    write_dialogues([dialogue], tmp_path / "x.jsonl")
    assert (tmp_path / "x.jsonl").read_text(encoding="utf-8") == dialogue.model_dump_json() + "\n"
    assert list(read_dialogues(tmp_path / "x.jsonl")) == [dialogue]
    write_dialogues([dialogue], tmp_path / "hf")
    assert list(read_dialogues(tmp_path / "hf")) == [dialogue]
    with_ids = tmp_path / "ids.json"
    write_dialogues([dialogue], with_ids, include_ids=True)
    assert next(iter(read_dialogues(with_ids))).id == "rolecs-1"


def test_esc_framework_round_trip(tmp_path):
    from csc.dialogue import Dialogue, Turn

    dialogue = Dialogue(
        id="e-0",
        turns=[
            Turn(speaker=Speaker.SUPPORTER, text="How are you feeling?", strategy="QU"),
            Turn(speaker=Speaker.CUSTOMER, text="Tired."),
            Turn(speaker=Speaker.SUPPORTER, text="That sounds exhausting.", strategy="RF"),
        ],
    )
    write_dialogues([dialogue], tmp_path / "e.json", framework="esc")
    text = (tmp_path / "e.json").read_text(encoding="utf-8")
    assert "策略1 提问" in text and "策略3 情感反映" in text
    back = list(read_dialogues(tmp_path / "e.json", framework="esc"))
    assert back[0].strategies() == ["QU", "RF"]
    with pytest.raises(Exception, match="unknown strategy label"):
        list(read_dialogues(tmp_path / "e.json", framework="csc"))
