"""Expert review: apply a reviewer's marks (``review.json`` from the viewer) to a run or dataset.

The viewer's review mode marks each dialogue accept/reject per criterion, with a note, and
exports them as ``review.json``::

    {"format": "csc-review", "version": 1, "source": "runs/r1", "criteria": [...],
     "reviewer": "...", "marks": {"<dialogue id>": {"decision": "accept" | "reject" | null,
                                                   "criteria": {"<criterion>": "accept" | "reject"},
                                                   "note": "..."}}}

:func:`apply_review` writes the dialogues the reviewer accepted as a new dataset (each with its
marks in ``metadata.review``) and :func:`judge_agreement` measures how often the reviewer and the
LLM judge agree, per criterion, as Cohen's kappa.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from csc.dialogue import Dialogue

__all__ = [
    "AgreementRow",
    "Review",
    "ReviewError",
    "apply_review",
    "cohen_kappa",
    "judge_agreement",
    "load_review",
    "review_dialogues",
]

REVIEW_FORMAT = "csc-review"
ALL_CRITERIA = "all criteria"


class ReviewError(ValueError):
    """A review file that cannot be applied: the message names the file and the fix."""


@dataclass
class Review:
    """A reviewer's marks: dialogue id -> decision, per-criterion marks and a note."""

    path: str
    criteria: list[str]
    reviewer: str
    marks: dict[str, dict[str, Any]]
    source: str = ""

    def decision(self, dialogue_id: str) -> str | None:
        """``accept`` when every criterion is accepted, ``reject`` when any is rejected."""
        mark = self.marks.get(dialogue_id)
        if not mark:
            return None
        values = [mark["criteria"].get(c) for c in self.criteria]
        if "reject" in values:
            return "reject"
        if values and all(v == "accept" for v in values):
            return "accept"
        return None


def load_review(path: str | Path) -> Review:
    """Read and check a ``review.json`` exported by the viewer."""
    path = Path(path)
    fix = "export it again from the viewer (review mode → Export review.json)"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ReviewError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ReviewError(f"{path}: not valid JSON ({exc}) — {fix}") from None
    if not isinstance(data, dict) or data.get("format") != REVIEW_FORMAT:
        raise ReviewError(f'{path}: not a csc review file (no "format": "{REVIEW_FORMAT}") — {fix}')
    if data.get("version") != 1:
        raise ReviewError(f"{path}: review format version {data.get('version')!r} is not 1 — {fix}")
    criteria = data.get("criteria")
    marks = data.get("marks")
    if not isinstance(criteria, list) or not all(isinstance(c, str) for c in criteria):
        raise ReviewError(f"{path}, field 'criteria': expected a list of names — {fix}")
    if not isinstance(marks, dict):
        raise ReviewError(f"{path}, field 'marks': expected an object of dialogue ids — {fix}")
    clean: dict[str, dict[str, Any]] = {}
    for dialogue_id, mark in marks.items():
        where = f"{path}, marks[{dialogue_id!r}]"
        if not isinstance(mark, dict):
            raise ReviewError(f"{where}: expected an object — {fix}")
        crit = mark.get("criteria") or {}
        if not isinstance(crit, dict):
            raise ReviewError(f"{where}, field 'criteria': expected an object — {fix}")
        for name, value in crit.items():
            if value not in ("accept", "reject"):
                raise ReviewError(
                    f"{where}, criterion {name!r}: {value!r} is not accept or reject — {fix}"
                )
        note = mark.get("note") or ""
        if not isinstance(note, str):
            raise ReviewError(f"{where}, field 'note': expected text — {fix}")
        clean[str(dialogue_id)] = {"criteria": dict(crit), "note": note}
    return Review(
        path=str(path),
        criteria=list(criteria),
        reviewer=str(data.get("reviewer") or ""),
        marks=clean,
        source=str(data.get("source") or ""),
    )


def cohen_kappa(a: list[bool], b: list[bool]) -> float | None:
    """Cohen's kappa of two raters' binary labels; None when it is undefined (no items, or both
    raters gave every item the same single label, so chance agreement is 1)."""
    n = len(a)
    if n == 0 or n != len(b):
        return None
    observed = sum(x == y for x, y in zip(a, b)) / n
    pa, pb = sum(a) / n, sum(b) / n
    chance = pa * pb + (1 - pa) * (1 - pb)
    if chance >= 1.0:
        return None
    return (observed - chance) / (1 - chance)


@dataclass
class AgreementRow:
    """Reviewer vs LLM judge on one criterion, over dialogues both of them rated."""

    criterion: str
    n: int
    agreement: float | None
    kappa: float | None
    reviewer_accept_rate: float | None
    judge_pass_rate: float | None
    both_accept: int = 0
    both_reject: int = 0
    reviewer_only_accept: int = 0
    judge_only_accept: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


def judge_verdicts(metadata: dict[str, Any]) -> dict[str, list[Any]]:
    """Judge verdicts ``{criterion: [passed, reason]}`` of a RoleCS dialogue (``metadata.judge``)
    or a rewritten one (``metadata.postfilter.judge``)."""
    judge = metadata.get("judge")
    if not isinstance(judge, dict):
        post = metadata.get("postfilter")
        judge = post.get("judge") if isinstance(post, dict) else None
    out: dict[str, list[Any]] = {}
    for name, verdict in (judge or {}).items():
        if isinstance(verdict, dict) and "pass" in verdict:
            out[str(name)] = [bool(verdict["pass"]), str(verdict.get("reason") or "")]
        elif isinstance(verdict, bool):
            out[str(name)] = [verdict, ""]
    return out


def _row(criterion: str, pairs: list[tuple[bool, bool]]) -> AgreementRow:
    reviewer = [r for r, _ in pairs]
    judge = [j for _, j in pairs]
    n = len(pairs)
    return AgreementRow(
        criterion=criterion,
        n=n,
        agreement=sum(r == j for r, j in pairs) / n if n else None,
        kappa=cohen_kappa(reviewer, judge),
        reviewer_accept_rate=sum(reviewer) / n if n else None,
        judge_pass_rate=sum(judge) / n if n else None,
        both_accept=sum(r and j for r, j in pairs),
        both_reject=sum((not r) and (not j) for r, j in pairs),
        reviewer_only_accept=sum(r and not j for r, j in pairs),
        judge_only_accept=sum(j and not r for r, j in pairs),
    )


def judge_agreement(review: Review, dialogues: list[Dialogue]) -> list[AgreementRow]:
    """Per criterion (and for the whole dialogue: every criterion accepted vs the judge passing
    all), reviewer accept vs judge pass over the dialogues both rated."""
    pairs: dict[str, list[tuple[bool, bool]]] = {c: [] for c in review.criteria}
    overall: list[tuple[bool, bool]] = []
    for dialogue in dialogues:
        mark = review.marks.get(dialogue.id)
        verdicts = {k: v[0] for k, v in judge_verdicts(dialogue.metadata or {}).items()}
        if not mark or not verdicts:
            continue
        for criterion, value in mark["criteria"].items():
            if criterion in verdicts:
                pairs.setdefault(criterion, []).append((value == "accept", verdicts[criterion]))
        decided = review.decision(dialogue.id)
        if decided is not None:
            overall.append((decided == "accept", all(verdicts.values())))
    rows = [_row(c, p) for c, p in pairs.items()]
    if len(pairs) > 1 or not rows:
        rows.append(_row(ALL_CRITERIA, overall))
    return rows


def review_dialogues(run: str | Path, framework: Any = "csc") -> list[Dialogue]:
    """The dialogues a review can refer to: kept and rejected ones of a run folder, or every
    dialogue of a file ``csc data`` reads."""
    from csc.data.io import read_dialogues
    from csc.eval.viewer import RUN_FILES, detect_kind

    run = Path(run)
    kind = detect_kind(run)
    if kind == "run":
        dialogues: list[Dialogue] = []
        for status in ("kept", "rejected"):
            path = run / RUN_FILES[status]
            if path.is_file():
                dialogues.extend(
                    read_dialogues(path, "jsonl", framework=framework, allow_unlabelled=True)
                )
        return dialogues
    if kind != "dialogues":
        raise ReviewError(
            f"{run}: an {kind} folder; apply a review to the run folder or dialogue file it shows"
        )
    return list(read_dialogues(run, framework=framework, allow_unlabelled=True))


@dataclass
class ReviewOutcome:
    """What :func:`apply_review` did."""

    accepted: int
    rejected: int
    undecided: int
    unreviewed: int
    out: Path
    agreement: list[AgreementRow] = field(default_factory=list)


def apply_review(
    review: Review,
    dialogues: list[Dialogue],
    out: str | Path,
    *,
    format: str | None = None,
    framework: Any = "csc",
) -> ReviewOutcome:
    """Write the accepted dialogues to ``out`` (any writable format) with their marks in
    ``metadata.review``; every id in the review must be one of ``dialogues``."""
    from csc.data.io import write_dialogues

    ids = {d.id for d in dialogues}
    unknown = [i for i in review.marks if i not in ids]
    if unknown:
        raise ReviewError(
            f"{review.path}: {len(unknown)} reviewed dialogue(s) are not in the run, e.g. "
            f"{unknown[0]!r} — was the review made on another run or file?"
        )
    accepted: list[Dialogue] = []
    counts = {"accept": 0, "reject": 0, None: 0}
    for dialogue in dialogues:
        if dialogue.id not in review.marks:
            continue
        decision = review.decision(dialogue.id)
        counts[decision] += 1
        if decision == "accept":
            copy = dialogue.model_copy(deep=True)
            mark = review.marks[dialogue.id]  # its criteria and note
            copy.metadata["review"] = {"decision": "accept", **mark, "reviewer": review.reviewer}
            accepted.append(copy)
    out = Path(out)
    write_dialogues(accepted, out, format, framework=framework)
    return ReviewOutcome(
        accepted=counts["accept"],
        rejected=counts["reject"],
        undecided=counts[None],
        unreviewed=len(dialogues) - len(review.marks),
        out=out,
        agreement=judge_agreement(review, dialogues),
    )
