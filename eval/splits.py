"""One train/validation/test split of a dialogue file, written once and read by every command.

``csc finetune export`` writes ``splits.json`` next to its SFT data; ``csc evaluate``,
``csc compare`` and ``csc optimize`` read it with ``--splits FILE``, so all of them use the very
same dialogues in each part, whatever ``--limit`` or ``--seed`` they were given. The file holds
the dialogue ids of each part and the SHA-256 of the data they came from::

    {
      "format": "csc-splits/1",
      "data_file": "/abs/path/dialogues.jsonl",
      "data_sha256": "…",
      "limit": null,                       # dialogues read from the file (null: all)
      "seed": 0,
      "fractions": {"train": 0.8, "validation": 0.1, "test": 0.1},
      "counts": {"train": 80, "validation": 10, "test": 10},
      "parts": {"train": ["id", …], "validation": […], "test": […]}
    }

A command given ``--splits`` refuses data whose hash differs (the ids would name other
dialogues) and ids the data does not hold.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

__all__ = [
    "PARTS",
    "SPLITS_FILE",
    "DatasetSplits",
    "SplitsError",
    "data_sha256",
]

SPLITS_FILE = "splits.json"
PARTS: tuple[str, ...] = ("train", "validation", "test")
_FORMAT = "csc-splits/1"
_T = TypeVar("_T")


class SplitsError(ValueError):
    """A splits file is missing, malformed, or does not belong to the data it is used with."""


def data_sha256(path: str | Path) -> str:
    """SHA-256 of a data file, or of every file of a dataset folder (relative names included,
    sorted), read in 1 MiB blocks."""
    path = Path(path)
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        if path.is_dir():
            digest.update(file.relative_to(path).as_posix().encode())
        with file.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


@dataclass
class DatasetSplits:
    """The dialogue ids of each part of one data file, and where they came from."""

    data_file: str
    data_sha256: str
    parts: dict[str, list[str]]
    seed: int = 0
    fractions: dict[str, float] = field(
        default_factory=lambda: {"train": 0.8, "validation": 0.1, "test": 0.1}
    )
    limit: int | None = None
    source: str | None = None  # the splits file this was read from

    # ------------------------------------------------------------------ making
    @classmethod
    def make(
        cls,
        ids: Sequence[str],
        *,
        data_file: str | Path,
        data_sha256: str,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        seed: int = 0,
        limit: int | None = None,
    ) -> DatasetSplits:
        """Split dialogue ids with the seeded shuffle of :func:`csc.eval.examples.split_dialogues`.

        Raises :class:`SplitsError` on repeated ids (they would leak across parts).
        """
        from csc.eval.examples import split_dialogues

        ids = list(ids)
        repeated = sorted(i for i, n in Counter(ids).items() if n > 1)
        if repeated:
            raise SplitsError(
                f"{data_file}: dialogue ids must be unique to split without leakage; repeated: "
                f"{repeated[:5]}"
            )
        train_fraction = 1.0 - val_fraction - test_fraction
        parts = split_dialogues(ids, (train_fraction, val_fraction, test_fraction), seed=seed)
        return cls(
            data_file=str(Path(data_file).resolve()),
            data_sha256=data_sha256,
            parts={"train": parts.train, "validation": parts.dev, "test": parts.test},
            seed=seed,
            fractions={
                "train": round(train_fraction, 6),
                "validation": val_fraction,
                "test": test_fraction,
            },
            limit=limit,
        )

    # ------------------------------------------------------------------ files
    def to_dict(self) -> dict[str, Any]:
        """The JSON form (see the module docstring)."""
        return {
            "format": _FORMAT,
            "data_file": self.data_file,
            "data_sha256": self.data_sha256,
            "limit": self.limit,
            "seed": self.seed,
            "fractions": self.fractions,
            "counts": {name: len(self.parts.get(name, [])) for name in PARTS},
            "parts": {name: list(self.parts.get(name, [])) for name in PARTS},
        }

    def write(self, path: str | Path) -> Path:
        """Write the file atomically (a crash leaves the old file or none, never half of one)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps(self.to_dict(), ensure_ascii=False, indent=1) + "\n", "utf-8")
        os.replace(tmp, path)
        return path

    @classmethod
    def read(cls, path: str | Path) -> DatasetSplits:
        """Read a splits file; a clear :class:`SplitsError` if it is missing or malformed."""
        path = Path(path)
        if path.is_dir() and (path / SPLITS_FILE).is_file():
            path = path / SPLITS_FILE  # an export folder names its splits file
        if not path.is_file():
            raise SplitsError(
                f"{path}: no such splits file; `csc finetune export` writes OUT/{SPLITS_FILE}"
            )
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise SplitsError(f"{path}: not a splits file (invalid JSON: {exc})") from None
        parts = data.get("parts") if isinstance(data, dict) else None
        if (
            not isinstance(data, dict)
            or data.get("format") != _FORMAT
            or not isinstance(parts, dict)
            or not all(
                isinstance(parts.get(name), list)
                and all(isinstance(i, str) for i in parts.get(name, []))
                for name in PARTS
            )
            or not isinstance(data.get("data_sha256"), str)
        ):
            raise SplitsError(
                f"{path}: not a {_FORMAT} splits file (needs 'format', 'data_sha256' and "
                f"'parts' with lists of ids for {', '.join(PARTS)})"
            )
        all_ids = [i for name in PARTS for i in parts[name]]
        if len(set(all_ids)) != len(all_ids):
            raise SplitsError(f"{path}: a dialogue id is in more than one part")
        return cls(
            data_file=str(data.get("data_file", "")),
            data_sha256=data["data_sha256"],
            parts={name: list(parts[name]) for name in PARTS},
            seed=int(data.get("seed") or 0),
            fractions=dict(data.get("fractions") or {}),
            limit=data.get("limit"),
            source=str(path),
        )

    # ------------------------------------------------------------------ using
    def check_data(self, data: str | Path, sha256: str | None = None) -> None:
        """Refuse data that is not the file these splits were made from."""
        sha256 = sha256 or data_sha256(data)
        if sha256 != self.data_sha256:
            raise SplitsError(
                f"{self.source or 'the splits'} was made from {self.data_file} "
                f"(sha256 {self.data_sha256[:12]}…), but {data} has sha256 {sha256[:12]}…; "
                "use the same data file, or make new splits with `csc finetune export`"
            )

    def select(
        self, items: Iterable[_T], part: str, *, id_of: Any = None, complete: bool = True
    ) -> list[_T]:
        """The items (dialogues, by default keyed by ``.id``) of one part, in data order.

        With ``complete`` every id of the part must be among ``items`` (pass False when only a
        prefix of the data was read, e.g. with ``--limit``).
        """
        if part not in PARTS:
            raise SplitsError(f"unknown part {part!r}; choose one of {', '.join(PARTS)}")
        id_of = id_of or (lambda item: item.id)
        wanted = set(self.parts[part])
        chosen = [item for item in items if id_of(item) in wanted]
        if complete and len(chosen) != len(wanted):
            missing = sorted(wanted - {id_of(item) for item in chosen})
            raise SplitsError(
                f"{self.source or 'the splits'}: {len(missing)} {part} dialogue id(s) are not "
                f"in the data, e.g. {missing[:3]}; use the data file the splits were made from"
            )
        return chosen
