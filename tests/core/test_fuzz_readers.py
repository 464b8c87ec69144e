"""Issue #8 acceptance: every reader gets 50 malformed variants of a valid file (truncations,
wrong types, bad bytes, huge fields). Each must end with exit 1, one line on stderr naming the
file, no traceback, and no output left behind.

The variants are seeded, so a failure names a reproducible case (reader and variant number).
"""

from __future__ import annotations

import copy
import json
import random
from collections.abc import Callable, Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from csc.cli import app

SAMPLES = Path(str(resources.files("csc.data") / "samples"))
FIXTURES = Path(__file__).parents[1] / "fixtures" / "data"
VARIANTS = 50
HUGE = 2_000_000  # characters in a "huge field"
runner = CliRunner()


# ------------------------------------------------------------------ mutations of parsed records
def _dianjin_records() -> list[dict]:
    return json.loads((SAMPLES / "sample_en.json").read_text("utf-8"))[:3]


def _our_records() -> list[dict]:
    from csc.data.io import read_dialogues

    return [d.model_dump(mode="json") for d in list(read_dialogues(SAMPLES / "sample_en.json"))[:3]]


def _esconv_records() -> list[dict]:
    return json.loads((FIXTURES / "esconv_tiny.json").read_text("utf-8"))


# (where, bad values) per format: each bad value makes the record invalid wherever it goes.
WRONG_TYPES: dict[str, list[tuple[str, list[Any]]]] = {
    "dianjin": [
        ("record", [None, 5, "x", [], True]),
        ("dialogue", [None, {}, "x", [], 3]),
        ("turn", [None, "x", 7, []]),
        ("speaker", [None, 5, "agent", [], {}]),
        ("text", [None, 5, [], {}, "", "   "]),
        ("strategy", [5, [], {}, "策略99", "Upselling", "策略5 礼貌问候"]),
        ("source", [5, [], {}, True]),
        ("id", [{}, [], 1.5]),
    ],
    "ours": [
        ("record", [None, 5, "x", []]),
        ("turns", [None, {}, "x", [], 3]),
        ("turn", [None, "x", 7, []]),
        ("speaker", [None, 5, "agent", "客服", {}]),
        ("text", [None, 5, [], {}, "", "  "]),
        ("strategy", [5, [], {}, "Upselling", "Strategy 5 Greeting"]),
        ("id", [None, {}, [], 1.5]),
        ("unknown", ["surprise"]),
    ],
    "esconv": [
        ("record", [None, 5, "x", []]),
        ("dialog", [None, {}, "x", [], 3]),
        ("turn", [None, "x", 7, []]),
        ("speaker", [None, 5, "agent", []]),
        ("content", [None, 5, [], {}, ""]),
        ("strategy", [5, [], "Upselling"]),
    ],
}
TURNS_KEY = {"dianjin": "dialogue", "ours": "turns", "esconv": "dialog"}


def _wrong_type(records: list[dict], kind: str, rng: random.Random) -> list:
    records = copy.deepcopy(records)
    where, values = rng.choice(WRONG_TYPES[kind])
    value = rng.choice(values)
    r = rng.randrange(len(records))
    turns_key = TURNS_KEY[kind]
    turns = records[r][turns_key]
    supporter = [i for i, t in enumerate(turns) if t["speaker"] in ("客服", "supporter")]
    t = rng.choice(supporter) if where == "strategy" else rng.randrange(len(turns))
    if where == "record":
        records[r] = value
    elif where in ("dialogue", "turns", "dialog"):
        records[r][turns_key] = value
    elif where == "turn":
        turns[t] = value
    elif where == "strategy" and kind == "esconv":
        turns[t]["annotation"] = {"strategy": value}
    elif where in ("speaker", "text", "strategy", "content"):
        turns[t][where] = value
    elif where == "unknown":
        records[r]["no_such_field"] = value
    else:
        records[r][where] = value
    return records


def _huge(records: list[dict], kind: str, rng: random.Random) -> list:
    """A huge value where it is also wrong: a 2 MB speaker or strategy label, a huge number as
    the text, or a deeply nested text."""
    records = copy.deepcopy(records)
    turns = records[rng.randrange(len(records))][TURNS_KEY[kind]]
    turn = turns[0]  # the supporter's greeting in every base file
    choice = rng.randrange(4)
    if choice == 0:
        turn["speaker"] = "x" * HUGE
    elif choice == 1:
        if kind == "esconv":
            turn["annotation"] = {"strategy": "y" * HUGE}
        else:
            turn["strategy"] = "y" * HUGE
    elif choice == 2:
        turn["content" if kind == "esconv" else "text"] = 10**400  # JSON number, not text
    else:
        turn["content" if kind == "esconv" else "text"] = DEEP  # see _deepen
    return records


DEEP = "@@deeply-nested@@"


def _deepen(data: bytes) -> bytes:
    """Replace the DEEP marker by a list nested 100,000 deep (json.dumps cannot write one)."""
    return data.replace(json.dumps(DEEP).encode(), b"[" * 100_000 + b"1" + b"]" * 100_000)


# ------------------------------------------------------------------ byte-level mutations
def _truncate(data: bytes, rng: random.Random, line_based: bool) -> bytes:
    while True:
        cut = rng.randrange(1, len(data) - 2)
        inside_a_line = data[cut - 1 : cut + 1].find(b"\n") < 0 and data[:cut].strip()
        if (not line_based or inside_a_line) and data[cut:].strip():  # really cut something
            return data[:cut]


def _bad_bytes(data: bytes, rng: random.Random) -> bytes:
    # Inside a string (after a quote) so the file stays JSON-shaped but is not UTF-8.
    quotes = [i for i, b in enumerate(data) if b == ord('"')]
    at = rng.choice(quotes) + 1
    return data[:at] + rng.choice([b"\xff", b"\xc3\x28", b"\xe9", b"\x80\x80"]) + data[at:]


def _json_list(records: list) -> bytes:
    return json.dumps(records, ensure_ascii=False, indent=2).encode()


def _json_lines(records: list) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode()


def _text_variants(
    records: list[dict], kind: str, encode: Callable[[list], bytes], line_based: bool
) -> Iterator[bytes]:
    rng = random.Random(f"{kind}-{line_based}")
    valid = encode(records)
    for i in range(VARIANTS):
        family = i % 4
        if family == 0:
            yield _truncate(valid, rng, line_based)
        elif family == 1:
            yield encode(_wrong_type(records, kind, rng))
        elif family == 2:
            yield _bad_bytes(valid, rng)
        else:
            yield _deepen(encode(_huge(records, kind, rng)))


# ------------------------------------------------------------------ the check
def _check(args: list[str], named: Path, out: Path | None, label: str) -> None:
    result = runner.invoke(app, args)
    assert result.exit_code == 1, f"{label}: exit {result.exit_code}: {result.output[-500:]}"
    exc = result.exception
    assert exc is None or isinstance(exc, SystemExit), f"{label}: {exc!r}"
    assert "Traceback" not in result.output, label
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, f"{label}: {len(lines)} lines: {result.stderr[:800]}"
    assert lines[0].startswith("error: ") and str(named) in lines[0], f"{label}: {lines[0][:300]}"
    assert "unexpected" not in lines[0], f"{label}: {lines[0][:300]}"  # handled, not the net
    assert len(lines[0]) < 2000, label
    if out is not None:
        left = [p.name for p in out.parent.iterdir()]
        assert left == [], f"{label}: left behind {left}"


def _convert(path: Path, tmp: Path, label: str, *extra: str, suffix: str = ".jsonl") -> None:
    out_dir = tmp / "out"
    out_dir.mkdir(exist_ok=True)
    out = out_dir / f"converted{suffix}"
    _check(["data", "convert", str(path), str(out), *extra], path, out, label)


# ------------------------------------------------------------------ one test per reader
def test_fuzz_dianjin_json(tmp_path) -> None:
    for i, data in enumerate(_text_variants(_dianjin_records(), "dianjin", _json_list, False)):
        path = tmp_path / f"v{i}.json"
        path.write_bytes(data)
        _convert(path, tmp_path, f"dianjin json variant {i}")


def test_fuzz_our_jsonl(tmp_path) -> None:
    for i, data in enumerate(_text_variants(_our_records(), "ours", _json_lines, True)):
        path = tmp_path / f"v{i}.jsonl"
        path.write_bytes(data)
        _convert(path, tmp_path, f"jsonl variant {i}", suffix=".json")


def test_fuzz_generic_mapping(tmp_path) -> None:
    for i, data in enumerate(_text_variants(_esconv_records(), "esconv", _json_list, False)):
        path = tmp_path / f"v{i}.json"
        path.write_bytes(data)
        args = ("--mapping", "esconv", "--framework", "esc")
        _convert(path, tmp_path, f"generic variant {i}", *args)


def _parquet_variants(tmp: Path) -> Iterator[Path]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from csc.data.io import read_dialogues, write_dialogues

    valid = tmp / "valid.parquet"
    write_dialogues(list(read_dialogues(SAMPLES / "sample_en.json"))[:3], valid)
    data = valid.read_bytes()
    rng = random.Random("parquet")
    records = _dianjin_records()
    made = 0
    while made < VARIANTS:
        family = made % 4
        path = tmp / f"v{made}.parquet"
        if family == 0:
            path.write_bytes(data[: rng.randrange(0, len(data) - 1)])
        elif family == 2:  # garbage over the footer, or a file that is not parquet at all
            at = rng.randrange(len(data) - 12, len(data) - 4)
            path.write_bytes(data[:at] + bytes(rng.randrange(256) for _ in range(8)))
        else:
            bad = _wrong_type(records, "dianjin", rng) if family == 1 else None
            bad = bad or _huge(records, "dianjin", rng)
            if DEEP in json.dumps(bad):
                continue  # arrow cannot store a nesting this deep either
            try:
                table = pa.Table.from_pylist([r if isinstance(r, dict) else {"x": r} for r in bad])
                pq.write_table(table, path)
            except (pa.ArrowException, TypeError, ValueError, OverflowError):
                continue  # arrow cannot store this one; draw another
        made += 1
        yield path


def test_fuzz_dianjin_parquet(tmp_path) -> None:
    for i, path in enumerate(_parquet_variants(tmp_path)):
        _convert(path, tmp_path, f"parquet variant {i}")


@pytest.mark.slow  # 50 saved datasets
def test_fuzz_hf_folder(tmp_path) -> None:
    import shutil

    from csc.data.io import read_dialogues, write_dialogues

    valid = tmp_path / "valid_ds"
    write_dialogues(list(read_dialogues(SAMPLES / "sample_en.json"))[:3], valid, "hf")
    rng = random.Random("hf")
    files = sorted(p.name for p in valid.iterdir())
    for i in range(VARIANTS):
        path = tmp_path / f"v{i}"
        shutil.copytree(valid, path)
        name = files[i % len(files)]
        target = path / name
        data = target.read_bytes()
        family = i % 3
        if family == 0:
            target.write_bytes(data[: rng.randrange(0, max(1, len(data) - 1))])
        elif family == 1:
            target.write_bytes(_bad_bytes(data, rng) if b'"' in data else b"\xff" + data)
        else:
            target.unlink()
        _convert(path, tmp_path, f"hf variant {i} ({name}, family {family})")


def test_fuzz_profiles(tmp_path) -> None:
    from csc.data.profiles import default_profiles

    base = [p.model_dump(mode="json") for p in default_profiles("en")[:3]]
    rng = random.Random("profiles")
    encoded = _json_lines(base)
    for i in range(VARIANTS):
        family = i % 4
        if family == 0:
            data = _truncate(encoded, rng, True)
        elif family == 1:
            bad = copy.deepcopy(base)
            bad[rng.randrange(3)]["description"] = rng.choice([None, 5, [], {}, "", "  "])
            data = _json_lines(bad)
        elif family == 2:
            data = _bad_bytes(encoded, rng)
        else:
            data = encoded + _deepen(json.dumps({"description": DEEP}).encode()) + b"\n"
        path = tmp_path / f"v{i}.jsonl"
        path.write_bytes(data)
        _check(["profiles", "show", str(path)], path, None, f"profiles variant {i}")


@pytest.mark.slow  # PyYAML takes ~40 s over the deeply nested variants
def test_fuzz_config_files(tmp_path) -> None:
    rng = random.Random("config")
    toml = '[lm]\nmodel = "openai/x"\ntemperature = 0.2\n[lm.roles]\njudge = "local"\n'
    yaml_text = "lm:\n  model: openai/x\n  temperature: 0.2\n  roles:\n    judge: local\n"
    wrong = [
        '[lm]\nmodel = 5\n', '[lm]\ntemperature = "hot"\n', '[lm]\nmax_tokens = 1.5\n',
        "lm = 3\n", '[lm]\nroles = "x"\n', '[lm.roles]\njudge = 5\n', '[lm.roles]\nnarrator = "x"\n',
        '[lm]\noptions = "x"\n', '[llm]\nmodel = "x"\n', '[lm]\ntemprature = 1\n',
        "lm:\n- a\n", "- lm\n", "lm: [1, 2]\n", "lm:\n  roles: [judge]\n", "just text\n",
    ]  # fmt: skip
    for i in range(VARIANTS):
        family = i % 4
        suffix = ".toml" if i % 2 == 0 else ".yaml"
        text = (toml if suffix == ".toml" else yaml_text).encode()
        if family == 0:
            # A cut-off config can still parse ('temperature = 0.2' -> '= 0'); what follows
            # the cut is an unclosed '[', broken in TOML and YAML alike.
            data = _truncate(text, rng, True) + b"\n[lm\n"
        elif family == 1:
            body = rng.choice(wrong)
            suffix = ".yaml" if body.startswith(("lm:", "- ", "just")) else ".toml"
            data = body.encode()
        elif family == 2:
            data = _bad_bytes(text, rng)
        else:
            data = (
                ("[lm]\nmodel = " + "[" * rng.choice([300, 1500]) + "\n").encode()
                if suffix == ".toml"
                else ("lm:\n  model: " + "[" * rng.choice([300, 1500]) + "\n").encode()
            )
        path = tmp_path / f"v{i}{suffix}"
        path.write_bytes(data)
        _check(["lm", "show", "--config", str(path)], path, None, f"config variant {i}")


@pytest.mark.slow  # 50 framework YAML parses, some of 200 kB
def test_fuzz_framework_yaml(tmp_path) -> None:
    import yaml

    from csc.framework import builtin_framework_path

    base = yaml.safe_load(builtin_framework_path("csc").read_text("utf-8"))
    text = builtin_framework_path("csc").read_bytes()
    rng = random.Random("framework")
    for i in range(VARIANTS):
        family = i % 4
        if family == 0:
            data = _truncate(text, rng, True) + b"\n  - : [\n"
        elif family == 1:
            bad = copy.deepcopy(base)
            key = rng.choice(["stages", "strategies", "name", "policy"])
            bad[key] = rng.choice([None, 5, "x", [], {"a": 1}])
            if key == "name" and isinstance(bad[key], str):
                bad["strategies"] = []
            data = yaml.safe_dump(bad, allow_unicode=True).encode()
        elif family == 2:
            data = _bad_bytes(text, rng)
        else:
            bad = copy.deepcopy(base)
            bad["strategies"][rng.randrange(12)]["code"] = "z" * 200_000 + " not a code"
            data = yaml.safe_dump(bad, allow_unicode=True).encode()
        path = tmp_path / f"v{i}.yaml"
        path.write_bytes(data)
        _check(["framework", "show", str(path)], path, None, f"framework variant {i}")
