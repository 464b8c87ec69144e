"""The dialogue viewer: one self-contained HTML page for dialogues, run folders and evaluations.

:func:`build_page` reads what a path holds and :func:`render_html` turns it into a single HTML
file (CSS, JavaScript and data inlined; no network access), which ``csc view`` writes:

- a dialogue file or dataset folder that ``csc data`` reads (same readers, same errors);
- a synthesis (``csc synthesize``) or rewrite (``csc rewrite``) run folder: kept, rejected,
  dropped and failed dialogues with the judge's verdicts and reasons, policy corrections,
  scenario, profile and goal;
- an evaluation folder (``csc evaluate``: ``predictions.jsonl`` + ``metrics.json``) or a
  comparison folder (``csc compare``: ``compare.json`` + ``supporters/NAME/``): every scored
  supporter turn with the gold strategy and reply beside each supporter's, right or wrong marked,
  and the report's tables and plots.

Data enters the page only as JSON inside a ``<script type="application/json">`` element (with
``<``, ``>`` and ``&`` escaped) and the page's script puts it into the document as text nodes,
never as markup, so text from a dialogue cannot run code.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import resources
from itertools import islice
from pathlib import Path
from typing import Any

from csc.choices import CONTEXT_NAMES
from csc.data.errors import DataFormatError
from csc.data.turns import as_framework
from csc.dialogue import Dialogue
from csc.eval.report import HEADLINE_METRICS, format_value
from csc.eval.review import judge_verdicts
from csc.framework import LANGUAGES, Framework, FrameworkError
from csc.programs.run_folder import read_json_object

__all__ = [
    "VIEWER_FILE",
    "ViewerError",
    "ViewerPage",
    "build_page",
    "detect_kind",
    "render_html",
    "write_report_html",
    "write_viewer",
]

VIEWER_FILE = "view.html"
FIRST_CHUNK = 100  # dialogues embedded before the page's script: enough for the first screen
REPORT_FILE = "report.html"

# Files of a synthesis / rewrite run folder (programs/synthesis.py, programs/rewrite_run.py).
RUN_FILES = {
    "kept": "dialogues.jsonl",
    "rejected": "rejected.jsonl",
    "dropped": "dropped.jsonl",
    "failed": "failures.jsonl",
}
# Files that stand for their folder when given as PATH.
_FOLDER_FILES = {"predictions.jsonl", "metrics.json", "compare.json", "run.json", "summary.json"}
# When the data carries no judge verdicts, a reviewer still marks each dialogue as a whole.
OVERALL_CRITERION = "overall"

# Colour-blind-friendly qualitative palettes (Tableau 10 / 20 order); strategies beyond the
# palette get evenly spaced hues.
_STRATEGY_COLOURS = [
    "#4e79a7",
    "#f28e2b",
    "#e15759",
    "#76b7b2",
    "#59a14f",
    "#edc948",
    "#b07aa1",
    "#ff9da7",
    "#9c755f",
    "#86bcb6",
    "#d37295",
    "#bab0ac",
]
_STAGE_COLOURS = ["#3b75af", "#ef8636", "#519e3e", "#c53a32", "#8d69b8", "#84584e", "#d57dbe"]


class ViewerError(ValueError):
    """A path the viewer cannot show: the message names the path and what to do."""


@dataclass
class ViewerPage:
    """Everything one viewer page shows, as plain data ready for JSON.

    ``items`` are compact dialogue records (see :func:`dialogue_item`); ``report`` holds the
    tables and plots of an evaluation or comparison.
    """

    kind: str  # dialogues | run | evaluation | compare
    source: str
    framework: Framework
    language: str
    items: list[dict[str, Any]]
    title: str = ""
    criteria: list[str] = field(default_factory=list)
    supporters: list[str] = field(default_factory=list)
    contexts: list[str] = field(default_factory=list)
    report: dict[str, Any] | None = None
    info: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def storage_key(self) -> str:
        """Key of the page's review marks in the browser: the kind and the dialogue ids, so
        re-generating the page of the same data keeps the marks."""
        digest = hashlib.sha256(self.kind.encode())
        for item in self.items:
            digest.update(b"\n" + str(item["id"]).encode())
        return digest.hexdigest()[:16]

    def payload(self) -> dict[str, Any]:
        """The JSON the page's script reads."""
        return {
            "meta": {
                "kind": self.kind,
                "title": self.title or Path(self.source).name,
                "source": self.source,
                "language": self.language,
                "generated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "key": self.storage_key(),
                "info": self.info,
                "notes": self.notes,
            },
            "framework": framework_legend(self.framework, self.language),
            "criteria": self.criteria,
            "supporters": self.supporters,
            "contexts": self.contexts,
            "report": self.report,
            "items": self.items,
        }


# ---------------------------------------------------------------------------- framework
def framework_legend(framework: Framework, language: str) -> dict[str, Any]:
    """Stages and strategies with colours and names in ``language`` (``en`` or ``zh``)."""
    lang = "zh" if language == "zh" else "en"
    stages = [
        {
            "code": st.code,
            "name": st.display_name(lang),
            "colour": _STAGE_COLOURS[i % len(_STAGE_COLOURS)],
        }
        for i, st in enumerate(framework.stages)
    ]
    n = len(framework.strategies)
    palette = _STRATEGY_COLOURS if n <= len(_STRATEGY_COLOURS) else None
    strategies = [
        {
            "code": s.code,
            "name": s.display_name(lang),
            "stage": s.stage,
            "colour": palette[i] if palette else f"hsl({i * 360 // n},55%,50%)",
            "definition": s.definition_zh if lang == "zh" else s.definition,
        }
        for i, s in enumerate(framework.strategies)
    ]
    return {
        "name": framework.name,
        "title": framework.title_zh if lang == "zh" else framework.title,
        "stages": stages,
        "strategies": strategies,
    }


def _load_framework(name: str | Path | Framework) -> Framework:
    try:
        return as_framework(name)
    except FrameworkError as exc:
        raise ViewerError(str(exc)) from None


# ---------------------------------------------------------------------------- items
def _text(value: Any) -> str | None:
    if value is None or value == "" or value == {}:
        return None
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, indent=1, default=str)


def _policy_note(policy: Any) -> str | None:
    """One line about a policy re-ask or correction recorded on a supporter turn."""
    if not isinstance(policy, dict):
        return None
    rule = policy.get("violation", "?")
    first, second = policy.get("first_choice"), policy.get("second_choice")
    if policy.get("action") == "corrected":
        return (
            f"policy ({rule}): chose {first}, asked again: {second}; corrected to "
            f"{policy.get('corrected_to')}"
        )
    if policy.get("action") == "reasked":
        return f"policy ({rule}): chose {first}, asked again: {second}"
    return None


def dialogue_item(dialogue: Dialogue, status: str | None = None) -> dict[str, Any]:
    """A dialogue as the page's compact record.

    Keys: ``id``, ``t`` topic, ``s`` status, ``u`` turns as ``[speaker "s"|"c", text, strategy,
    note]``, ``x`` details (scenario, goal, profile, ...), ``j`` judge verdicts, ``pc`` policy
    corrections. Empty parts are left out to keep the page small.
    """
    meta = dialogue.metadata or {}
    turns = []
    for turn in dialogue.turns:
        note = _policy_note(turn.metadata.get("policy")) if turn.metadata else None
        row: list[Any] = ["s" if turn.is_supporter else "c", turn.text, turn.strategy]
        if note:
            row.append(note)
        turns.append(row)
    details = {
        "scenario": _text(dialogue.scenario),
        "goal": _text(meta.get("goal")),
        "profile": _text(
            dialogue.profile.get("description") or dialogue.profile
            if isinstance(dialogue.profile, dict)
            else dialogue.profile
        ),
        "end reason": _text(meta.get("end_reason")),
        "post-filter problems": _text((meta.get("postfilter") or {}).get("problems"))
        if isinstance(meta.get("postfilter"), dict)
        else None,
        "policy re-asks": _text({k: v for k, v in (meta.get("policy_reasks") or {}).items() if v}),
    }
    optional = {
        "t": dialogue.topic,
        "s": status,
        "x": {k: v for k, v in details.items() if v},
        "j": judge_verdicts(meta),
        "pc": {k: v for k, v in (meta.get("policy_corrections") or {}).items() if v},
    }
    return {"id": dialogue.id, "u": turns, **{k: v for k, v in optional.items() if v}}


def _failure_item(record: dict[str, Any], status: str) -> dict[str, Any]:
    """A failed (or dropped) run record: its error and, when recorded, the partial dialogue."""
    partial = record.get("partial")
    item: dict[str, Any] | None = None
    if isinstance(partial, dict):
        try:
            item = dialogue_item(Dialogue.model_validate(partial), status)
        except ValueError:
            item = None
    if item is None:
        item = {"id": str(record.get("id") or record.get("key") or "?"), "u": [], "s": status}
        if record.get("topic"):
            item["t"] = str(record["topic"])
    error = {
        "stage": record.get("stage"),
        "role": record.get("role"),
        "type": record.get("error_type"),
        "error": record.get("error") or record.get("reason") or record.get("rule"),
        "raw output": record.get("raw_output"),
    }
    item["e"] = {k: _text(v) for k, v in error.items() if _text(v)}
    return item


# ---------------------------------------------------------------------------- kinds
def detect_kind(path: str | Path) -> str:
    """``dialogues``, ``run``, ``evaluation`` or ``compare`` for what ``path`` holds."""
    path = Path(path)
    if not path.exists():
        raise ViewerError(f"{path}: no such file or folder")
    if not path.is_dir():
        return "dialogues"
    if (path / "compare.json").is_file():
        return "compare"
    if (path / "predictions.jsonl").is_file():
        return "evaluation"
    if (path / "run.json").is_file() or any((path / f).is_file() for f in RUN_FILES.values()):
        return "run"
    from csc.data.hf import is_saved_dataset

    if is_saved_dataset(path):
        return "dialogues"
    raise ViewerError(
        f"{path}: neither a dataset folder nor a run, evaluation or comparison folder — give a "
        "dialogue file or a folder written by csc synthesize, rewrite, evaluate or compare"
    )


def build_page(
    path: str | Path,
    *,
    format: str | None = None,
    framework: str | Path | Framework | None = None,
    mapping: Any = None,
    language: str | None = None,
    limit: int | None = None,
    data: str | Path | None = None,
    allow_unlabelled: bool = False,
) -> ViewerPage:
    """Read ``path`` (a dialogue file, run folder, evaluation or comparison folder) into a page.

    ``limit`` caps the dialogues read (per file of a run folder). ``data`` is the dialogue file
    of an evaluation or comparison when the path recorded in it has moved. Raises
    :class:`DataFormatError` (malformed dialogues, as ``csc data``) or :class:`ViewerError`.
    """
    path = Path(path)
    if path.is_file() and path.name in _FOLDER_FILES:  # e.g. runs/eval/predictions.jsonl
        path = path.parent
    kind = "dialogues" if format or mapping is not None else detect_kind(path)
    if kind == "run":
        page = _run_page(path, framework, language, limit)
    elif kind in ("evaluation", "compare"):
        page = _evaluation_page(path, kind, framework, language, limit, data)
    else:
        fw = _load_framework(framework or "csc")
        from csc.data.io import read_dialogues

        dialogues = _take(
            read_dialogues(
                path, format, framework=fw, mapping=mapping, allow_unlabelled=allow_unlabelled
            ),
            limit,
        )
        if not dialogues:
            raise ViewerError(f"{path}: no dialogues found; is it empty?")
        page = ViewerPage(
            kind="dialogues",
            source=str(path),
            framework=fw,
            language=language or _language(dialogues),
            items=[dialogue_item(d) for d in dialogues],
        )
    page.criteria = _criteria(page.items)
    return page


def _take(dialogues: Iterable[Dialogue], limit: int | None) -> list[Dialogue]:
    return list(islice(dialogues, limit)) if limit else list(dialogues)


def _language(dialogues: Iterable[Dialogue]) -> str:
    dialogues = list(dialogues)
    for d in dialogues:
        lang = (d.metadata or {}).get("language")
        if lang in LANGUAGES:
            return lang
    from csc.eval.metrics import detect_language

    return detect_language(t.text for d in dialogues for t in d.turns)


def _criteria(items: list[dict[str, Any]]) -> list[str]:
    names: dict[str, None] = {}
    for item in items:
        for name in item.get("j", {}):
            names.setdefault(name, None)
    return list(names) or [OVERALL_CRITERION]


def _read_records(path: Path, limit: int | None) -> Iterator[dict[str, Any]]:
    """JSON objects of a run's log file (failures / dropped), naming a bad line."""
    from csc.data.records import iter_jsonl

    for n, (_loc, obj) in enumerate(islice(iter_jsonl(path), limit)):
        if not isinstance(obj, dict):
            raise DataFormatError(
                f"{path}: record {n + 1}: a record must be a JSON object — was the file edited?",
                path=str(path),
                record=n + 1,
            )
        yield obj


def _run_page(folder: Path, framework: Any, language: str | None, limit: int | None) -> ViewerPage:
    from csc.data.io import read_dialogues

    config: dict[str, Any] = {}
    run_file = folder / "run.json"
    if run_file.is_file():
        try:
            config = json.loads(run_file.read_text(encoding="utf-8")).get("config") or {}
        except (json.JSONDecodeError, AttributeError):
            raise ViewerError(
                f"{run_file}: not valid JSON; restore it or delete it to view the dialogues"
            ) from None
    fw = _load_framework(framework or _run_framework(config, folder))
    items: list[dict[str, Any]] = []
    counts: dict[str, int] = {}
    for status in ("kept", "rejected"):
        path = folder / RUN_FILES[status]
        if not path.is_file():
            continue
        # Run files are our JSONL; a rejected rewrite may hold unlabelled supporter turns.
        dialogues = _take(read_dialogues(path, "jsonl", framework=fw, allow_unlabelled=True), limit)
        items.extend(dialogue_item(d, status) for d in dialogues)
        counts[status] = len(dialogues)
    for status in ("dropped", "failed"):
        path = folder / RUN_FILES[status]
        if path.is_file():
            records = [_failure_item(r, status) for r in _read_records(path, limit)]
            items.extend(records)
            counts[status] = len(records)
    if not items:
        raise ViewerError(f"{folder}: the run folder holds no dialogues yet")
    summary = read_json_object(folder / "summary.json")
    lang = language or config.get("language")
    if lang not in LANGUAGES:
        lang = next((lg for lg in map(_item_language, items[:50]) if lg in LANGUAGES), "en")
    info = {"counts": counts}
    for key in ("framework", "language", "seed", "lms", "filter", "max_utterances"):
        if key in config:
            info[key] = config[key]
    if summary.get("config_hash"):
        info["run"] = summary["config_hash"]
    return ViewerPage(
        kind="run", source=str(folder), framework=fw, language=lang, items=items, info=info
    )


def _item_language(item: dict[str, Any]) -> str:
    from csc.eval.metrics import detect_language

    return detect_language(row[1] for row in item.get("u", []))


def _run_framework(config: dict[str, Any], folder: Path) -> str:
    name = config.get("framework") or "csc"
    try:
        Framework.load(name)
    except FrameworkError:
        raise ViewerError(
            f"{folder}: the run used framework {name!r}, which is not built in; pass "
            "--framework PATH.yaml"
        ) from None
    return name


# ---------------------------------------------------------------------------- evaluations
def _evaluation_page(
    folder: Path,
    kind: str,
    framework: Any,
    language: str | None,
    limit: int | None,
    data: str | Path | None,
) -> ViewerPage:
    from csc.eval.harness import PredictionRecord

    compare: dict[str, Any] = {}
    if kind == "compare":
        compare = _read_json(folder / "compare.json")
        info = compare.get("info") or {}
        names = list((info.get("supporters") or {}).keys())
        if not names and (folder / "supporters").is_dir():
            names = sorted(p.name for p in (folder / "supporters").iterdir() if p.is_dir())
        prediction_files = {n: folder / "supporters" / n / "predictions.jsonl" for n in names}
        prediction_files = {n: p for n, p in prediction_files.items() if p.is_file()}
        if not prediction_files:
            raise ViewerError(
                f"{folder}: compare.json names no supporter with supporters/NAME/predictions.jsonl"
            )
    else:
        info = _read_json(folder / "metrics.json") if (folder / "metrics.json").is_file() else {}
        prediction_files = {str(info.get("supporter") or "supporter"): folder / "predictions.jsonl"}
    supporters = list(prediction_files)
    fw = _load_framework(framework or info.get("framework") or "csc")

    # predictions[dialogue_id][context][turn_index] = [[supporter, strategy, reply, ok, error]]
    predictions: dict[str, dict[str, dict[int, list[list[Any]]]]] = {}
    gold: dict[str, dict[int, tuple[str | None, str]]] = {}
    contexts: dict[str, None] = {}
    for s_index, (_name, path) in enumerate(prediction_files.items()):
        for obj in _read_records(path, None):
            rec = PredictionRecord.from_dict(obj)
            contexts.setdefault(rec.context, None)
            ok = None if not rec.gold_strategy else rec.predicted_strategy == rec.gold_strategy
            row = [s_index, rec.predicted_strategy, rec.generated_response, ok]
            if rec.error:
                row.append(rec.error)
            by_ctx = predictions.setdefault(rec.dialogue_id, {}).setdefault(rec.context, {})
            by_ctx.setdefault(rec.turn_index, []).append(row)
            gold.setdefault(rec.dialogue_id, {})[rec.turn_index] = (
                rec.gold_strategy,
                rec.gold_response,
            )
    if not predictions:
        raise ViewerError(f"{folder}: no predictions to show (empty predictions.jsonl)")

    notes: list[str] = []
    dialogues = _evaluation_dialogues(folder, info, data, fw, set(predictions), notes)
    order = [d.id for d in dialogues if d.id in predictions]
    order += [i for i in predictions if i not in set(order)]
    order = order[: limit or None]
    by_id = {d.id: d for d in dialogues}
    items = []
    for dialogue_id in order:
        if dialogue_id in by_id:
            item = dialogue_item(by_id[dialogue_id])
        else:  # the dialogue file is unavailable: show the scored turns alone
            turns = gold[dialogue_id]
            item = {"id": dialogue_id, "u": [None] * (max(turns) + 1)}
            for index, (strategy, text) in turns.items():
                item["u"][index] = ["s", text, strategy]
        item["p"] = {
            ctx: {str(k): v for k, v in sorted(rows.items())}
            for ctx, rows in predictions[dialogue_id].items()
        }
        items.append(item)
    lang = language or info.get("language")
    if lang not in LANGUAGES:
        lang = _language(dialogues) if dialogues else "en"
    if kind == "compare":
        report = _comparison_report(folder, compare, supporters)
    else:
        report = _evaluation_report(folder, info)
    shown = {k: info[k] for k in ("supporter", "lm", "data", "framework", "date") if info.get(k)}
    return ViewerPage(
        kind=kind,
        source=str(folder),
        framework=fw,
        language=lang,
        items=items,
        supporters=supporters,
        contexts=list(contexts),
        report=report,
        info=shown,
        notes=notes,
    )


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ViewerError(f"{path}: cannot read it ({exc}); was it written completely?") from None
    if not isinstance(data, dict):
        raise ViewerError(f"{path}: expected a JSON object")
    return data


def _evaluation_dialogues(
    folder: Path,
    info: dict[str, Any],
    data: str | Path | None,
    fw: Framework,
    wanted: set[str],
    notes: list[str],
) -> list[Dialogue]:
    """The evaluated dialogues (for the history of each turn), from ``data`` or the path the
    evaluation recorded; only those with predictions."""
    from csc.data.io import read_dialogues

    candidates = [Path(data)] if data else []
    if info.get("data") and not data:
        recorded = Path(str(info["data"]))
        candidates += [recorded, folder / recorded, folder.parent / recorded]
    for candidate in candidates:
        if candidate.exists():
            return [d for d in read_dialogues(candidate, framework=fw) if d.id in wanted]
    if data:
        raise ViewerError(f"{data}: no such file or folder")
    notes.append(
        f"The dialogues ({info.get('data') or 'file not recorded'}) were not found, so only the "
        "scored supporter turns are shown; pass --data FILE to see every turn."
    )
    return []


def _image(path: Path) -> dict[str, str] | None:
    if not path.is_file():
        return None
    return {
        "title": path.stem.replace("_", " "),
        "src": "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii"),
    }


def _evaluation_report(folder: Path, info: dict[str, Any]) -> dict[str, Any]:
    """Tables and plots of ``csc evaluate``: metrics per context, per-strategy scores (each
    strategy links to its turns in the viewer)."""
    contexts = info.get("contexts") or {}
    tables = [
        {
            "title": "Metrics (%)",
            "columns": ["context", *(label for _, label in HEADLINE_METRICS), "n", "errors"],
            "rows": [
                [
                    {"text": name, "filter": {"context": name}},
                    *(format_value(m.get(key)) for key, _ in HEADLINE_METRICS),
                    format_value(m.get("n_examples")),
                    {"text": format_value(m.get("n_errors")), "filter": {"context": name}},
                ]
                for name, m in contexts.items()
            ],
        }
    ]
    images = []
    for name, m in contexts.items():
        per = (m.get("strategy") or {}).get("per_strategy") or {}
        tables.append(
            {
                "title": f"Strategies — {name} context",
                "columns": ["strategy", "precision", "recall", "F1", "gold", "predicted", "wrong"],
                "rows": [
                    [
                        {"text": code, "filter": {"context": name, "strategy": code}},
                        *(format_value(v.get(k), 1) for k in ("precision", "recall", "f1")),
                        *(format_value(v.get(k)) for k in ("support", "predicted")),
                        {
                            "text": "show",
                            "filter": {"context": name, "strategy": code, "result": "wrong"},
                        },
                    ]
                    for code, v in per.items()
                ],
            }
        )
        stems = ("confusion", "strategy_f1", "strategy_distribution")
        images += filter(None, (_image(folder / f"{stem}_{name}.png") for stem in stems))
    return {"tables": tables, "images": images}


def _comparison_report(
    folder: Path, compare: dict[str, Any], supporters: list[str]
) -> dict[str, Any]:
    """The comparison table of ``csc compare`` (each supporter links to its wrong turns) and
    its chart."""
    rows = compare.get("rows") or []
    metric_names = list(dict.fromkeys(name for row in rows for name in row.get("metrics") or {}))
    table = {
        "title": "Supporter comparison",
        "columns": ["supporter", "context", "turns", *metric_names, "latency (s)"],
        "rows": [
            [
                {
                    "text": str(row.get("supporter")),
                    "filter": {
                        "context": _full_context(row.get("context")),
                        # the page's supporter filter takes the supporter's position
                        "supporter": str(supporters.index(row["supporter"]))
                        if row.get("supporter") in supporters
                        else "",
                        "result": "wrong",
                    },
                },
                _full_context(row.get("context")),
                format_value(row.get("turns")),
                *(format_value((row.get("metrics") or {}).get(m)) for m in metric_names),
                format_value(row.get("latency_s")),
            ]
            for row in rows
        ],
    }
    image = _image(folder / "compare.png")
    return {"tables": [table], "images": [image] if image else []}


def _full_context(name: Any) -> str:
    return CONTEXT_NAMES.get(str(name), str(name))


# ---------------------------------------------------------------------------- HTML
def _asset(name: str) -> str:
    return (resources.files("csc.eval") / "viewer_assets" / name).read_text(encoding="utf-8")


def _script_json(data: Any) -> str:
    """JSON safe inside a ``<script>`` element: no ``</script>``, no ``<!--``, no entities."""
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")


def render_html(page: ViewerPage) -> str:
    """The page as one self-contained HTML document."""
    payload = page.payload()
    # The first dialogues travel with the page's head and render at once; the rest follow at
    # the end of the file, so a large page shows its first screen before it is fully read.
    rest = payload["items"][FIRST_CHUNK:]
    payload["items"] = payload["items"][:FIRST_CHUNK]
    payload["meta"]["total"] = len(page.items)
    title = f"{payload['meta']['title']} — csc viewer"
    parts = [
        '<!DOCTYPE html>\n<html lang="',
        "zh" if page.language == "zh" else "en",
        '">\n<head>\n<meta charset="utf-8">\n<meta name="viewport" '
        'content="width=device-width, initial-scale=1">\n'
        # No network: the page may not load anything from anywhere.
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
        "style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:\">\n<title>",
        html.escape(title),
        "</title>\n<style>\n",
        _asset("viewer.css"),
        '</style>\n</head>\n<body>\n<script type="application/json" id="csc-data">',
        _script_json(payload),
        "</script>\n",
        _asset("viewer.html"),
        "<script>\n",
        _asset("viewer.js"),
        "</script>\n",
    ]
    if rest:
        parts += [
            '<script type="application/json" id="csc-rest">',
            _script_json(rest),
            "</script>\n<script>window.cscViewer.loadRest();</script>\n",
        ]
    parts.append("</body>\n</html>\n")
    return "".join(parts)


def write_viewer(page: ViewerPage, out: str | Path) -> Path:
    """Write the page to ``out`` (replacing it only once it is complete)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(render_html(page), encoding="utf-8")
    tmp.replace(out)
    return out


def write_report_html(out_dir: str | Path) -> Path | None:
    """``report.html`` of an evaluation or comparison folder (tables, plots, every turn).

    Called by ``csc evaluate`` / ``csc compare`` after their other files; returns None (writing
    nothing) when the folder holds no predictions yet. A dialogue file that cannot be found only
    leaves the history out.
    """
    out_dir = Path(out_dir)
    try:
        page = build_page(out_dir)
    except (ViewerError, DataFormatError):
        return None
    return write_viewer(page, out_dir / REPORT_FILE)
