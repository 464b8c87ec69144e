"""Run folders: what `csc synthesize`, `csc rewrite` and `csc evaluate` share to run many items
concurrently, resumably, into a folder.

A run folder holds ``run.json`` (the configuration and its hash, the run key), append-only JSONL
result files (one line per finished item, flushed and fsynced), a failures file and
``summary.json``. A kill loses at most the line being written (cut off on the next open); a
re-run skips the keys already in the result files and redoes the rest.

:func:`run_concurrently` is the runner: worker threads call the program (each in a copy of the
caller's context, so ``dspy.context`` settings reach them), and the calling thread alone writes
the results as they finish, so the files need no lock and a write never waits on a slow item.
"""

from __future__ import annotations

import contextvars
import hashlib
import json
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

from csc.data.jsonl import JsonlWriter, drop_torn_line

RUN_FILE = "run.json"
SUMMARY_FILE = "summary.json"
# Result files of synthesis and rewrite runs (csc.programs.synthesis, csc.programs.rewrite_run).
KEPT_FILE = "dialogues.jsonl"
REJECTED_FILE = "rejected.jsonl"
FAILURES_FILE = "failures.jsonl"
DIANJIN_FILE = "dialogues.dianjin.json"

T = TypeVar("T")
R = TypeVar("R")


class RunConfigError(ValueError):
    """The output folder belongs to a run with a different configuration, or is unreadable."""


def digest(data: Any) -> str:
    """SHA-256 of ``data`` as canonical JSON (sorted keys): configuration and item keys."""
    text = json.dumps(data, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# ----------------------------------------------------------------------------- shards


class ShardError(ValueError):
    """A ``--shard`` value that is not ``I/N`` with ``0 <= I < N``."""


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """``"1/3"`` -> ``(1, 3)``; None stays None; anything else is a :class:`ShardError`."""
    if text is None:
        return None
    index, sep, count = str(text).partition("/")
    try:
        i, n = int(index), int(count)
    except ValueError:
        i, n = -1, 0
    if not sep or n < 1 or not 0 <= i < n:
        raise ShardError(
            f"--shard must be I/N with 0 <= I < N (e.g. 0/4 for the first of four), got {text!r}"
        )
    return i, n


def shard_label(shard: tuple[int, int] | None) -> str | None:
    """``(1, 3)`` -> ``"1/3"``."""
    return None if shard is None else f"{shard[0]}/{shard[1]}"


def in_shard(position: int, shard: tuple[int, int] | None) -> bool:
    """Whether the item at ``position`` of the planned order belongs to ``shard`` = (I, N).

    Round-robin (every N-th item from I) keeps shards equal in size and stable when the run
    grows, and item keys never depend on the shard, so shards 0..N-1 together are the
    unsharded run.
    """
    return shard is None or position % shard[1] == shard[0]


# ----------------------------------------------------------------------------- files


def read_records(path: Path) -> Iterator[dict[str, Any]]:
    """JSON objects of a JSONL file; a line that cannot be parsed is an error naming it."""
    if not path.exists():
        return
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError as exc:
                raise RunConfigError(
                    f"{path}:{lineno}: not valid JSON ({exc.msg}); the file was edited or "
                    "corrupted: remove that line and re-run to redo its item"
                ) from None


def read_json_object(path: Path) -> dict[str, Any]:
    """The JSON object in ``path``; empty when the file is missing, unreadable or not an object
    (for derived data and metadata that only adds detail)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def read_run_dialogues(out_dir: str | Path, which: str = "kept") -> list[Any]:
    """The dialogues of a synthesis or rewrite run folder: ``kept``, ``rejected`` or ``all``."""
    from csc.dialogue import Dialogue

    names = {"kept": [KEPT_FILE], "rejected": [REJECTED_FILE], "all": [KEPT_FILE, REJECTED_FILE]}
    return [
        Dialogue.model_validate(o) for n in names[which] for o in read_records(Path(out_dir) / n)
    ]


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` as indented UTF-8 JSON."""
    path.write_text(json.dumps(data, ensure_ascii=False, indent=2), encoding="utf-8")


def failure_fields(role: str, cause: BaseException, raw_output: str | None) -> dict[str, Any]:
    """The part of a failure record every run writes: who failed, how, and the raw LM output
    (secrets redacted from the message)."""
    from csc.lm import redact_secrets

    return {
        "role": role,
        "error_type": type(cause).__name__,
        "error": redact_secrets(str(cause))[:4000],
        "raw_output": raw_output,
        "time": now(),
    }


def now() -> str:
    """The current UTC time, to the second, for run records."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass
class RunFolder:
    """The folder of one run: its ``run.json`` and result files.

    Args:
        out: the folder.
        key: the run key (the configuration's hash).
        config: the configuration as JSON-ready data (written to ``run.json``).
        shard: the shard this folder holds, if any (a shard folder resumes only as that shard).
    """

    out: Path
    key: str
    config: dict[str, Any]
    shard: tuple[int, int] | None = None

    def prepare(self) -> None:
        """Create the folder and write ``run.json``, or check that it holds this run."""
        self.out.mkdir(parents=True, exist_ok=True)
        run_file = self.out / RUN_FILE
        if run_file.exists():
            try:
                existing = json.loads(run_file.read_text(encoding="utf-8"))
            except json.JSONDecodeError:
                raise RunConfigError(
                    f"{run_file} is not valid JSON; restore it or use a new --out folder"
                ) from None
            if existing.get("config_hash") != self.key:
                old = existing.get("config", {})
                diff = sorted(
                    k for k in set(old) | set(self.config) if old.get(k) != self.config.get(k)
                )
                raise RunConfigError(
                    f"{self.out} holds run {existing.get('config_hash')} made with a different "
                    f"configuration (differs in: {', '.join(diff) or 'unknown'}); use another "
                    "--out folder, or delete this one to start over"
                )
            if existing.get("shard") != shard_label(self.shard):
                was = existing.get("shard")
                this = f"shard {shard_label(self.shard)}" if self.shard else "an unsharded run"
                raise RunConfigError(
                    f"{self.out} holds {'shard ' + was if was else 'an unsharded run'}, not "
                    f"{this}; re-run with {'--shard ' + was if was else 'no --shard'} or use "
                    "another --out folder (combine shards with the command's `merge`)"
                )
            return
        if any(self.out.glob("*.jsonl")):
            raise RunConfigError(
                f"{self.out} already holds .jsonl files but no {RUN_FILE}; use an empty --out folder"
            )
        info = {"config_hash": self.key, "created": now(), "shard": shard_label(self.shard)}
        write_json(run_file, {**info, "config": self.config})

    def done_keys(
        self, files: Sequence[str], key_of: Callable[[dict[str, Any]], str | None]
    ) -> set[str]:
        """Keys of the records in ``files`` (after repairing torn last lines left by a kill)."""
        keys: set[str] = set()
        for name in files:
            path = self.out / name
            drop_torn_line(path)
            keys.update(k for k in map(key_of, read_records(path)) if k)
        return keys


def previous_invocations(out: str | Path) -> list[dict[str, Any]]:
    """The invocations recorded in ``out/summary.json`` (an older summary without the list
    counts as its one ``this_run``)."""
    # A summary is derived data: a damaged one is rebuilt from the next run.
    old = read_json_object(Path(out) / SUMMARY_FILE)
    if isinstance(old.get("invocations"), list):
        return list(old["invocations"])
    return [old["this_run"]] if isinstance(old.get("this_run"), dict) else []


# ----------------------------------------------------------------------------- the runner


@contextmanager
def result_logs(
    out: Path, files: Mapping[str, str], bar: Any = None
) -> Iterator[dict[str, JsonlWriter]]:
    """Open one :class:`~csc.data.jsonl.JsonlWriter` per outcome (``{"kept": "dialogues.jsonl", ...}``) for the
    length of an invocation; closes them, and the progress ``bar``, however it ends."""
    logs = {outcome: JsonlWriter(out / name).open() for outcome, name in files.items()}
    try:
        yield logs
    finally:
        if bar is not None:
            bar.close()
        for log in logs.values():
            log.close()


def progress_bar(enabled: bool, total: int | None, unit: str = "dlg", desc: str = "dialogues"):
    """A tqdm bar (a silent one when ``enabled`` is False)."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True, disable=not enabled)


def run_concurrently(
    items: Iterable[T],
    work: Callable[[T], R],
    done: Callable[[T, R | BaseException], None],
    *,
    concurrency: int = 1,
    bar: Any = None,
) -> None:
    """Call ``work(item)`` on worker threads, at most ``concurrency`` at a time, and
    ``done(item, result)`` on the calling thread as each finishes (the exception it raised in
    place of a result when it failed), then advance the progress ``bar``.

    ``items`` is consumed lazily (only as many as are running), so a stream of millions of
    records stays flat in memory. Each call runs in a copy of the caller's ``contextvars``
    context: ``dspy.context(...)`` settings made around this call apply in the workers too.
    """
    limit = max(1, concurrency)
    source = iter(items)
    pending: dict[Future[R], T] = {}

    def submit(pool: ThreadPoolExecutor) -> bool:
        item = next(source, _END)
        if item is _END:
            return False
        context = contextvars.copy_context()
        pending[pool.submit(context.run, work, item)] = item  # type: ignore[arg-type]
        return True

    pool = ThreadPoolExecutor(max_workers=limit, thread_name_prefix="csc-run")
    try:
        more = True
        while more and len(pending) < limit:
            more = submit(pool)
        while pending:
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in finished:
                item = pending.pop(future)
                exc = future.exception()
                done(item, exc if exc is not None else future.result())
                if bar is not None:
                    bar.update(1)
                if more:
                    more = submit(pool)
    finally:
        # On Ctrl-C (or a failed write) queued items are dropped, not run: what finished is on
        # disk and a re-run resumes.
        pool.shutdown(wait=True, cancel_futures=True)


_END: Any = object()


# ----------------------------------------------------------------------------- merging


def merge_folders(
    out_dir: str | Path,
    sources: Sequence[str | Path],
    result_files: Sequence[str],
    failures_file: str,
    key_of: Callable[[dict[str, Any]], str | None],
    kind: str = "run",
) -> dict[str, Any]:
    """Combine ``kind`` run folders of one configuration (typically shards ``0/N`` .. ``N-1/N``) into
    ``out_dir``, an unsharded run folder that a later run with the same flags resumes.

    Each item of ``result_files`` appears once (the first folder holding its key wins); a
    failure is kept only when no folder finished its item. Returns the parts of a merged
    summary: ``config_hash``, ``merged`` (shards, sources, whether all shards are present),
    ``invocations`` of every source, ``missing`` and ``base`` (the first source summary).
    """
    out = Path(out_dir)
    runs = []
    for src in map(Path, sources):
        run_file = src / RUN_FILE
        if not run_file.exists():
            raise RunConfigError(f"{src} is not a {kind} folder (no {RUN_FILE})")
        try:
            runs.append((src, json.loads(run_file.read_text(encoding="utf-8"))))
        except json.JSONDecodeError:
            raise RunConfigError(f"{run_file} is not valid JSON; restore it") from None
    if not runs:
        raise RunConfigError("give at least one run folder to merge")
    key = runs[0][1].get("config_hash")
    for src, info in runs[1:]:
        if info.get("config_hash") != key:
            raise RunConfigError(
                f"{src} holds run {info.get('config_hash')}, {runs[0][0]} holds run {key}: only "
                "folders of the same configuration (same flags and seed) can be merged"
            )
    if (out / RUN_FILE).exists():
        existing = json.loads((out / RUN_FILE).read_text(encoding="utf-8"))
        if existing.get("config_hash") != key or existing.get("shard"):
            raise RunConfigError(
                f"{out} holds another run ({existing.get('config_hash')}, shard "
                f"{existing.get('shard') or 'none'}); merge into a new folder"
            )
        runs.insert(0, (out, existing))
    elif out.exists() and any(out.iterdir()):
        raise RunConfigError(f"{out} is not empty and not a run folder; merge into a new folder")

    seen: set[str] = set()
    contents: dict[str, list[str]] = {name: [] for name in result_files}
    failures: dict[str, str] = {}
    shards: dict[str, list[str]] = {}
    for src, info in runs:
        for name in result_files:
            drop_torn_line(src / name)
            for record in read_records(src / name):
                key_value = key_of(record)
                if not key_value:
                    raise RunConfigError(
                        f"{src / name}: a record without its key; remove that line and re-run"
                    )
                if key_value not in seen:
                    seen.add(key_value)
                    line = json.dumps(record, ensure_ascii=False, separators=(",", ":"))
                    contents[name].append(line + "\n")
        for record in read_records(src / failures_file):
            failures[key_of(record) or ""] = json.dumps(record, ensure_ascii=False) + "\n"
        if src != out:
            shards.setdefault(info.get("shard") or "unsharded", []).append(str(src))

    out.mkdir(parents=True, exist_ok=True)
    contents[failures_file] = [line for k, line in failures.items() if k not in seen]
    for name, lines in contents.items():
        tmp = out / (name + ".tmp")
        with tmp.open("w", encoding="utf-8") as fh:
            fh.writelines(lines)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, out / name)  # atomic: a kill leaves the old file or the new one
    first = runs[0][1]
    write_json(
        out / RUN_FILE,
        {
            "config_hash": key,
            "created": first.get("created"),
            "shard": None,
            "merged_from": sorted({str(src) for src, _ in runs if src != out}),
            "config": first.get("config"),
        },
    )
    invocations: list[dict[str, Any]] = []
    missing = 0
    base: dict[str, Any] = {}
    for src, _ in runs:
        old = read_json_object(src / SUMMARY_FILE)
        base = base or old
        for inv in previous_invocations(src):
            if inv not in invocations:
                invocations.append(inv)
        if src != out:
            missing += int((old.get("totals") or {}).get("missing") or 0)
    labels = sorted(shards)
    counts = [int(label.split("/")[1]) for label in labels if "/" in label]
    return {
        "config_hash": key,
        "merged": {
            "shards": labels,
            "sources": {label: shards[label] for label in labels},
            # True when shards 0..N-1 of one N are all present: the union is the whole run.
            "all_shards": bool(counts) and len(set(counts)) == 1 and len(labels) == counts[0],
        },
        "invocations": invocations,
        "missing": missing,
        "base": base,
    }
