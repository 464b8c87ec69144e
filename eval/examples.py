"""Turn dialogues into supporter examples, and split datasets by dialogue.

Every supporter turn of a dialogue becomes one ``dspy.Example``:

* ``history`` — a :class:`~csc.signatures.types.DialogueHistory` of the turns before it (the input);
* ``strategy`` — the gold strategy code (``None`` for an unlabelled turn);
* ``response`` — the gold reply;
* ``dialogue_id``, ``turn_index`` (position in ``dialogue.turns``), ``topic``.

Splits are by dialogue, seeded and stable, so no dialogue contributes to two splits.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import dspy

from csc.dialogue import Dialogue
from csc.eval.text_metrics import detect_language
from csc.signatures.types import DialogueHistory

__all__ = [
    "DatasetSplit",
    "dialogue_language",
    "split_dialogues",
    "supporter_examples",
]


def dialogue_language(dialogues: Sequence[Dialogue]) -> str:
    """``"zh"`` or ``"en"``, detected from the dialogues' text (CJK share)."""
    return detect_language(t.text for d in dialogues for t in d.turns)


def supporter_examples(
    dialogues: Iterable[Dialogue],
    *,
    language: str | None = None,
    show_strategies: bool = True,
) -> list[dspy.Example]:
    """One example per supporter turn, in dialogue order; inputs: ``history``.

    ``language`` sets how histories render (``Supporter``/``客服``); detected when omitted.
    """
    dialogues = list(dialogues)
    language = language or dialogue_language(dialogues)
    examples: list[dspy.Example] = []
    for dialogue in dialogues:
        for index, turn in enumerate(dialogue.turns):
            if not turn.is_supporter:
                continue
            history = DialogueHistory.of(
                dialogue.turns[:index], language=language, show_strategies=show_strategies
            )
            examples.append(
                dspy.Example(
                    history=history,
                    strategy=turn.strategy,
                    response=turn.text,
                    dialogue_id=dialogue.id,
                    turn_index=index,
                    topic=dialogue.topic,
                ).with_inputs("history")
            )
    return examples


@dataclass
class DatasetSplit:
    """Dialogues split into train, dev and test (by dialogue)."""

    train: list[Dialogue]
    dev: list[Dialogue]
    test: list[Dialogue]


def split_dialogues(
    dialogues: Sequence[Dialogue],
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
    seed: int = 0,
) -> DatasetSplit:
    """Shuffle dialogues with ``seed`` and cut them into train/dev/test by ``fractions``.

    Each part keeps the original dialogue order; with at least three dialogues, dev and test
    get at least one each when their fraction is above zero.
    """
    if len(fractions) != 3 or any(f < 0 for f in fractions) or sum(fractions) <= 0:
        raise ValueError(f"fractions must be three non-negative numbers, got {fractions}")
    total = sum(fractions)
    n = len(dialogues)
    order = list(range(n))
    random.Random(seed).shuffle(order)
    n_test = round(n * fractions[2] / total)
    n_dev = round(n * fractions[1] / total)
    if n >= 3:
        n_test = max(n_test, 1 if fractions[2] > 0 else 0)
        n_dev = max(n_dev, 1 if fractions[1] > 0 else 0)
    test = set(order[:n_test])
    dev = set(order[n_test : n_test + n_dev])
    return DatasetSplit(
        train=[d for i, d in enumerate(dialogues) if i not in test and i not in dev],
        dev=[d for i, d in enumerate(dialogues) if i in dev],
        test=[d for i, d in enumerate(dialogues) if i in test],
    )
