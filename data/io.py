"""Reading and writing dialogues in every supported format, chosen from the path or by name.

Formats:
- ``dianjin``: the released DianJin-CSC-Data format (``.json`` list or ``.parquet``);
- ``jsonl``: ours, one ``Dialogue.model_dump_json()`` per line (``.jsonl``);
- ``hf``: a folder written by ``datasets.Dataset.save_to_disk``;
- ``generic``: another corpus read through a mapping (read only).

Everything streams: readers are generators and writers consume iterables one dialogue at a time.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from csc.data.dianjin import LabelStyle, read_dianjin, write_dianjin
from csc.data.errors import DataFormatError, Hint, file_location
from csc.data.generic import CorpusMapping, read_generic
from csc.data.hf import is_saved_dataset, read_hf, write_hf
from csc.data.jsonl import JsonlWriter, read_jsonl, write_jsonl
from csc.data.records import container_for
from csc.data.turns import as_framework
from csc.dialogue import Dialogue
from csc.framework import Framework

# Re-exported: what most callers need comes from this one module.
__all__ = ["DataFormatError", "JsonlWriter", "detect_format", "read_dialogues", "write_dialogues"]

READ_FORMATS: tuple[str, ...] = ("dianjin", "jsonl", "hf", "generic")
FORMATS: tuple[str, ...] = ("dianjin", "jsonl", "hf")  # the ones that can be written

FrameworkLike = Framework | str | Path
MappingLike = CorpusMapping | dict[str, Any] | str | Path


def detect_format(path: str | Path, *, for_writing: bool = False) -> str:
    """The format a path implies.

    ``.jsonl`` -> jsonl; ``.json``/``.parquet`` -> dianjin; a folder with ``dataset_info.json``
    -> hf. For writing, a path without a suffix (or an existing folder) -> hf.
    """
    path = Path(path)
    if is_saved_dataset(path):
        return "hf"
    container = container_for(path)
    if container == "jsonl":
        return "jsonl"
    if container in ("json", "parquet"):
        return "dianjin"
    if for_writing and (path.is_dir() or not path.suffix):
        return "hf"
    if not for_writing and not path.exists():
        raise file_location(path).error("no such file or folder", fix="check the path")
    raise file_location(path).error(
        "cannot tell the dialogue format from the path",
        fix="use .jsonl (ours), .json or .parquet (DianJin), a dataset folder (hf)",
        hints=[Hint("--to" if for_writing else "--from", ", or name the format", "format=...")],
    )


def _check_format(fmt: str, allowed: tuple[str, ...], path: str | Path) -> None:
    if fmt not in allowed:
        raise file_location(path).error(
            f"unknown format {fmt!r}", fix=f"use one of: {', '.join(allowed)}"
        )


def read_dialogues(
    path: str | Path,
    format: str | None = None,
    *,
    framework: FrameworkLike = "csc",
    mapping: MappingLike | None = None,
    allow_unlabelled: bool = False,
) -> Iterator[Dialogue]:
    """Stream checked dialogues from a file or dataset folder, one at a time.

    ``format`` defaults to :func:`detect_format`, or ``generic`` when a ``mapping`` is given.
    Supporter strategies come back as codes of ``framework`` (a Framework, ``csc``, ``esc`` or a
    YAML path). Raises :class:`DataFormatError` on the first malformed record.
    """
    fw = as_framework(framework)
    fmt = format or ("generic" if mapping is not None else detect_format(path))
    _check_format(fmt, READ_FORMATS, path)
    readers = {"dianjin": read_dianjin, "jsonl": read_jsonl, "hf": read_hf}
    if fmt in readers:
        return readers[fmt](path, framework=fw, allow_unlabelled=allow_unlabelled)
    if mapping is None:
        raise file_location(path).error(
            "the generic format needs a mapping",
            hints=[Hint("--mapping", "name the corpus's mapping", "mapping=...", " FILE")],
            fallback="convert the corpus first: csc data convert IN OUT.jsonl --mapping FILE",
        )
    return read_generic(path, mapping, framework=fw, allow_unlabelled=allow_unlabelled)


def write_dialogues(
    dialogues: Iterable[Dialogue],
    path: str | Path,
    format: str | None = None,
    *,
    framework: FrameworkLike = "csc",
    labels: LabelStyle = "official",
    include_ids: bool = False,
) -> int:
    """Write dialogues to ``path`` in ``format`` (default from the path); returns the count.

    ``labels`` and ``include_ids`` apply to dianjin output: strategy labels as ``official``
    (``策略5 情感管理``), English ``name`` or ``code``, and whether to add an ``id`` field.
    Files are replaced only once everything was written.
    """
    fmt = format or detect_format(path, for_writing=True)
    if fmt == "generic":
        raise file_location(path).error(
            "the generic format is read-only", fix="write jsonl, dianjin or hf instead"
        )
    _check_format(fmt, FORMATS, path)
    if fmt == "dianjin":
        return write_dianjin(
            dialogues, path, framework=framework, labels=labels, include_ids=include_ids
        )
    if fmt == "jsonl":
        return write_jsonl(dialogues, path)
    return write_hf(dialogues, path)
