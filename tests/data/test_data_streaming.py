"""Readers stream: they are generators and never materialise a whole file."""

from __future__ import annotations

import inspect
import json
import tracemalloc
from pathlib import Path

import pytest

from csc.data.io import DataFormatError, JsonlWriter, read_dialogues, write_dialogues
from csc.dialogue import Dialogue, Speaker, Turn

N = 2000


def _record(i: int) -> dict:
    turns = []
    for j in range(12):
        supporter = j % 2 == 0
        turns.append(
            {
                "speaker": "客服" if supporter else "客户",
                "strategy": f"策略{j % 11 + 1}" if supporter else "",
                "text": f"第{i}段对话的第{j}句话，内容是关于账户的一些问题。" * 2,
            }
        )
    return {"dialogue": turns, "source": "账户和交易管理"}


@pytest.fixture(scope="module")
def big_json(tmp_path_factory) -> Path:
    """2,000 records, then a corrupt tail that a whole-file parser would reject up front."""
    path = tmp_path_factory.mktemp("stream") / "big.json"
    with path.open("w", encoding="utf-8") as f:
        f.write("[")
        for i in range(N):
            f.write(("," if i else "") + json.dumps(_record(i), ensure_ascii=False))
        f.write(', {"dialogue": [ this is not json')
    return path


def test_json_list_reader_is_incremental(big_json):
    reader = read_dialogues(big_json)
    assert inspect.isgenerator(reader)
    first = next(reader)  # works although the file's end is corrupt: nothing read ahead
    assert first.id == "big-0" and first.turns[2].strategy == "RP"
    count = 1
    with pytest.raises(DataFormatError) as info:
        for _ in reader:
            count += 1
    assert count == N
    assert info.value.record == N + 1


def test_json_list_reading_keeps_memory_flat(big_json):
    size = big_json.stat().st_size
    tracemalloc.start()
    try:
        seen = 0
        with pytest.raises(DataFormatError):
            for _ in read_dialogues(big_json):
                seen += 1
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert seen == N
    # A materialising reader holds the whole parsed list (several times the file size).
    assert peak < size / 4, (peak, size)


def test_jsonl_reader_is_incremental(tmp_path):
    path = tmp_path / "big.jsonl"
    dialogue = Dialogue(
        id="x", turns=[Turn(speaker=Speaker.SUPPORTER, text="hello", strategy="GT")]
    )
    path.write_text((dialogue.model_dump_json() + "\n") * 50 + "{broken\n", encoding="utf-8")
    reader = read_dialogues(path)
    assert inspect.isgenerator(reader)
    assert next(reader) == dialogue
    with pytest.raises(DataFormatError, match=r"record 51 \(line 51\)"):
        list(reader)


def test_parquet_reader_reads_record_batches(tmp_path, big_json, monkeypatch):
    import pyarrow.parquet as pq

    import csc.data.records as records

    dialogues = read_dialogues(big_json)
    out = tmp_path / "big.parquet"
    with pytest.raises(DataFormatError):  # the corrupt tail stops the copy: nothing written
        write_dialogues(dialogues, out)
    assert not out.exists()
    good = [_record(i) for i in range(N)]
    small = tmp_path / "good.json"
    small.write_text(json.dumps(good, ensure_ascii=False), encoding="utf-8")
    assert write_dialogues(read_dialogues(small), out) == N

    batches = []
    original = pq.ParquetFile.iter_batches

    def spy(self, *args, **kwargs):
        for batch in original(self, *args, **kwargs):
            batches.append(batch.num_rows)
            yield batch

    monkeypatch.setattr(pq.ParquetFile, "iter_batches", spy)
    reader = read_dialogues(out)
    assert next(reader).id == "big-0"  # ids come from the parquet file name
    assert batches == [records.PARQUET_BATCH_ROWS]  # one batch in memory, not the table
    assert sum(1 for _ in reader) == N - 1


def _dialogue(i: int) -> Dialogue:
    return Dialogue(
        id=f"d{i}",
        topic="产品咨询",
        turns=[Turn(speaker=Speaker.SUPPORTER, text=f"您好 {i}", strategy="GT")],
    )


def test_jsonl_writer_appends_and_resumes(tmp_path):
    path = tmp_path / "run" / "out.jsonl"
    with JsonlWriter(path) as out:
        out.write(_dialogue(0))
        out.write(_dialogue(1))
        assert out.written == 2
        # Each line is on disk as soon as write returns.
        assert path.read_text(encoding="utf-8").count("\n") == 2
    with JsonlWriter(path) as out:
        out.write(_dialogue(2))
    assert [d.id for d in read_dialogues(path)] == ["d0", "d1", "d2"]
    with JsonlWriter(path, append=False) as out:
        out.write(_dialogue(9))
    assert [d.id for d in read_dialogues(path)] == ["d9"]


def test_jsonl_writer_repairs_an_interrupted_line(tmp_path):
    path = tmp_path / "out.jsonl"
    path.write_text(_dialogue(0).model_dump_json() + "\n" + '{"id": "d1", "tur', encoding="utf-8")
    with pytest.warns(UserWarning, match="incomplete last line"), JsonlWriter(path) as out:
        out.write(_dialogue(1))
    assert [d.id for d in read_dialogues(path)] == ["d0", "d1"]


def test_jsonl_writer_must_be_open(tmp_path):
    with pytest.raises(RuntimeError, match="not open"):
        JsonlWriter(tmp_path / "x.jsonl").write(_dialogue(0))


def test_one_append_only_jsonl_for_records_too(tmp_path):
    """Run files, failure logs, resume caches and training logs all append through JsonlWriter."""

    from csc.data.jsonl import drop_torn_line

    path = tmp_path / "failures.jsonl"
    path.write_text('{"id": "a"}\n{"id": "b", "err', encoding="utf-8")
    with pytest.warns(UserWarning, match="incomplete last line"), JsonlWriter(path) as out:
        out.write({"id": "c", "note": "退款"})
    text = path.read_text(encoding="utf-8")
    assert [json.loads(line)["id"] for line in text.splitlines()] == ["a", "c"]
    assert "退款" in text  # written as UTF-8, not \u escapes
    assert drop_torn_line(path) == 0 and drop_torn_line(tmp_path / "missing.jsonl") == 0
