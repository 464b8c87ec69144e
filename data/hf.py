"""Hugging Face ``datasets``: dialogues as a :class:`datasets.Dataset`, and folders saved with
``Dataset.save_to_disk`` as a file format.

Columns: ``id``, ``topic``, ``scenario`` (strings), ``turns`` (a list of ``{speaker, text,
strategy, metadata}``, speaker ``supporter``/``customer``, strategy a code or null), and
``profile``, ``metadata`` and each turn's ``metadata`` as JSON text, because free-form values do
not fit one arrow schema. A dataset with the released columns ``dialogue`` and ``source`` (for
example the DianJin parquet loaded with ``load_dataset``) is read as DianJin records.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from csc.data.dianjin import parse_record
from csc.data.errors import DataFormatError, RecordLocation, file_location
from csc.data.jsonl import parse_dialogue
from csc.data.records import one_line as _one_line
from csc.data.turns import as_framework
from csc.dialogue import Dialogue
from csc.framework import Framework


def features() -> Any:
    """The ``datasets.Features`` of a dialogue dataset."""
    from datasets import Features, List, Value

    def text(*names: str) -> dict[str, Any]:
        return dict.fromkeys(names, Value("string"))

    turn = text("speaker", "text", "strategy", "metadata")
    return Features(
        {**text("id", "topic"), "turns": List(turn), **text("scenario", "profile", "metadata")}
    )


def dialogue_row(dialogue: Dialogue) -> dict[str, Any]:
    """One dialogue as a dataset row."""
    return {
        "id": dialogue.id,
        "topic": dialogue.topic,
        "turns": [
            {
                "speaker": t.speaker.value,
                "text": t.text,
                "strategy": t.strategy,
                "metadata": json.dumps(t.metadata, ensure_ascii=False),
            }
            for t in dialogue.turns
        ],
        "scenario": dialogue.scenario,
        "profile": json.dumps(dialogue.profile, ensure_ascii=False),
        "metadata": json.dumps(dialogue.metadata, ensure_ascii=False),
    }


def to_dataset(dialogues: Iterable[Dialogue], *, cache_dir: str | Path | None = None) -> Any:
    """A :class:`datasets.Dataset` of dialogues, built without holding them all in memory.

    Rows are streamed into an arrow file under ``cache_dir`` (default: the ``datasets`` cache,
    ``$HF_DATASETS_CACHE``), which the dataset memory-maps.
    """
    from datasets import Dataset
    from datasets.exceptions import DatasetGenerationError

    iterator = iter(dialogues)

    def rows() -> Iterator[dict[str, Any]]:
        yield from map(dialogue_row, iterator)

    # A fresh fingerprint: the generator cannot be hashed by content, and a fixed one would make
    # datasets return the cached rows of an earlier call.
    try:
        return Dataset.from_generator(
            rows,
            features=features(),
            cache_dir=None if cache_dir is None else str(cache_dir),
            fingerprint=uuid.uuid4().hex,
        )
    except DatasetGenerationError as exc:
        # datasets wraps errors of the generator; surface our own so the user sees the record.
        if isinstance(exc.__cause__, DataFormatError):
            raise exc.__cause__ from None
        raise


def from_dataset(
    dataset: Any,
    *,
    framework: Framework | str = "csc",
    allow_unlabelled: bool = False,
    name: str | None = None,
    where: str | None = None,
) -> Iterator[Dialogue]:
    """Stream checked dialogues from a ``Dataset`` or ``IterableDataset``.

    Accepts our columns (``id``, ``turns``, ...) or the released DianJin columns (``dialogue``,
    ``source``); DianJin rows get ids ``<name>-<index>`` (0-based). Errors name ``where``
    (default ``name``) and the 1-based row.
    """
    fw = as_framework(framework)
    columns = list(dataset.column_names or [])
    name = name or getattr(getattr(dataset, "info", None), "dataset_name", None) or "dataset"
    label = where or name
    ours = "turns" in columns and "id" in columns
    if not ours and "dialogue" not in columns:
        raise file_location(label).error(
            f"dataset columns {columns} are neither ours (id, turns, ...) nor DianJin's "
            "(dialogue, source)",
            fix="build it with csc.data.hf.to_dataset, or rename the columns",
        )
    for index, row in enumerate(dataset):
        loc = RecordLocation(label, index + 1)
        if ours:
            yield _parse_row(row, loc, fw, allow_unlabelled)
        else:
            yield parse_record(
                row, loc, fw, default_id=f"{name}-{index}", allow_unlabelled=allow_unlabelled
            )


def _parse_row(
    row: dict[str, Any], loc: RecordLocation, framework: Framework, allow_unlabelled: bool
) -> Dialogue:
    obj = dict(row)
    for key in ("profile", "metadata"):
        obj[key] = _decode(obj.get(key), loc, key, {} if key == "metadata" else None)
    turns = obj.get("turns")
    if isinstance(turns, list):
        obj["turns"] = [
            {**t, "metadata": _decode(t.get("metadata"), loc, f"turns[{i}].metadata", {})}
            if isinstance(t, dict)
            else t
            for i, t in enumerate(turns)
        ]
    return parse_dialogue(obj, loc, framework, allow_unlabelled=allow_unlabelled)


def _decode(value: Any, loc: RecordLocation, field: str, default: Any) -> Any:
    if value is None:
        return default
    if not isinstance(value, str):
        return value  # a dataset made by hand may hold the object itself
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        raise loc.error(
            "not valid JSON text",
            field=field,
            fix="this column holds JSON text; write it with json.dumps or csc.data.hf.to_dataset",
        ) from None


def is_saved_dataset(path: str | Path) -> bool:
    """True for a folder written by ``Dataset.save_to_disk``."""
    path = Path(path)
    return path.is_dir() and (path / "dataset_info.json").is_file()


def read_hf(
    path: str | Path, *, framework: Framework | str = "csc", allow_unlabelled: bool = False
) -> Iterator[Dialogue]:
    """Stream dialogues from a folder saved with ``Dataset.save_to_disk`` (memory-mapped)."""
    from datasets import load_from_disk

    path = Path(path)
    if path.is_dir() and (path / "dataset_dict.json").is_file():
        splits = sorted(p.name for p in path.iterdir() if (p / "dataset_info.json").is_file())
        raise file_location(path).error(
            f"this folder holds a DatasetDict (splits: {splits})",
            fix=f"read one split, e.g. {path / (splits[0] if splits else 'train')}",
        )
    if not is_saved_dataset(path):
        raise file_location(path).error(
            "not a saved Hugging Face dataset (no dataset_info.json)",
            fix="give a folder written by Dataset.save_to_disk, or choose another format",
        )
    fix = (
        "the folder is damaged or incomplete; write it again (e.g. csc data convert IN OUT --to hf)"
    )
    # A damaged folder fails inside datasets/arrow in many ways (JSON, arrow, missing files);
    # each becomes one error naming the folder. Our own DataFormatError passes through.
    try:
        dataset = load_from_disk(str(path))
    except Exception as exc:
        raise file_location(path).error(
            f"cannot load the saved dataset ({type(exc).__name__}: {_one_line(exc)})", fix=fix
        ) from None
    rows = from_dataset(
        dataset,
        framework=framework,
        allow_unlabelled=allow_unlabelled,
        name=path.name,
        where=str(path),
    )
    try:
        yield from rows
    except DataFormatError:
        raise
    except Exception as exc:
        raise file_location(path).error(
            f"unreadable dataset rows ({type(exc).__name__}: {_one_line(exc)})", fix=fix
        ) from None


def write_hf(dialogues: Iterable[Dialogue], path: str | Path) -> int:
    """Save dialogues as a Hugging Face dataset folder (``Dataset.save_to_disk``); returns the count.

    An existing saved dataset at ``path`` is replaced; any other existing file or non-empty
    folder is refused, so a mistyped path never deletes unrelated files.
    """
    import shutil
    import tempfile

    path = Path(path)
    replace = is_saved_dataset(path)
    if not replace and path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise FileExistsError(
            f"{path}: exists and is not a saved dataset; give a new or empty folder"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    # Build in a private cache next to the output, removed afterwards, so only the folder remains.
    with tempfile.TemporaryDirectory(prefix=".csc-hf-", dir=path.parent) as cache:
        dataset = to_dataset(dialogues, cache_dir=cache)
        count = len(dataset)
        staged = Path(cache) / "saved"
        dataset.save_to_disk(str(staged))
        del dataset
        if replace:
            shutil.rmtree(path)
        elif path.exists():
            path.rmdir()
        shutil.move(str(staged), str(path))
    return count
