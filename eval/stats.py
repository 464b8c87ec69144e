"""Dataset statistics of strategy-labelled dialogues (``csc stats``, and the end of every
``csc synthesize`` run).

Definitions (also in docs/synthesis.md):

* utterances per dialogue: number of turns;
* strategy distribution: count and share of each code over labelled supporter turns;
* strategy utilization rate: supporter turns labelled with a strategy other than the framework's
  fallback, divided by all supporter turns (unlabelled turns count as not using one);
* stage-order violations: a labelled supporter turn whose strategy's stage comes *before* the
  stage of the previous stage-bound supporter turn of the same dialogue (a backward step);
  strategies usable in any stage (the fallback) are skipped;
* policy corrections / re-asks: summed by kind from ``metadata.policy_corrections`` and
  ``metadata.policy_reasks`` (written by RoleCS);
* persona fidelity: for each dialogue with a profile, the share of the customer's distinct content
  words (or, in Chinese, character bigrams) that also occur in the customer's own profile
  description, against the same share for another dialogue's profile drawn at random (seeded);
  the own share should be higher;
* diversity over supporter turns: distinct-1 and distinct-2 (distinct n-grams / all n-grams,
  pooled) and self-BLEU (mean sacrebleu sentence BLEU of a turn against the other supporter turns;
  lower is more diverse);
* sampling, so that statistics of any number of dialogues take bounded time and memory (one
  streaming pass): distinct-n is computed over a uniform sample of up to 5,000 supporter turns;
  self-BLEU samples both sides, up to 200 of those turns each scored against all the other
  sampled turns; persona fidelity uses up to 2,000 sampled dialogues with a profile. Below those sizes
  every value is exact. The output's ``sampling`` entry says what was sampled (seeded by
  ``--seed``);
* filter pass rate: per judge criterion, the share of judged dialogues that passed it.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

from csc.data.turns import as_framework
from csc.dialogue import Dialogue
from csc.framework import Framework

_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")
_CJK = re.compile(r"[\u4e00-\u9fff]")
_TOKEN = re.compile(rf"{_CJK.pattern}|{_WORD.pattern}")  # a Chinese character or a word
_STOPWORDS = frozenset(
    re.findall(
        r"\S+",
        """a an the and or but if of to in on at for with by from as is are was were be been am i you
    your yours my me we our it its this that these those he she they them his her their there here
    have has had do does did not no yes so can could would should will just very too also about
    what when where who how why which than then now any some all up out into over more most""",
    )
)
SELF_BLEU_SAMPLE = 200  # hypotheses scored in self-BLEU
DIVERSITY_SAMPLE = 5000  # supporter turns kept for distinct-n and self-BLEU (its references)
PERSONA_SAMPLE = 2000  # dialogues with a profile kept for persona fidelity


class Reservoir:
    """A uniform random sample of at most ``size`` items of a stream (Algorithm R), seeded."""

    def __init__(self, size: int, seed: int = 0):
        self.size = size
        self.seen = 0
        self.items: list[Any] = []
        self._rng = random.Random(seed)

    def add(self, item: Any) -> None:
        """Offer one item of the stream."""
        self.seen += 1
        if len(self.items) < self.size:
            self.items.append(item)
            return
        j = self._rng.randrange(self.seen)
        if j < self.size:
            self.items[j] = item


def tokens(text: str) -> list[str]:
    """Word tokens for English and single characters for Chinese (so n-gram metrics work for both)."""
    return _TOKEN.findall(text.lower())


def content_units(text: str) -> set[str]:
    """Content words (no stopwords, 3+ letters) plus Chinese character bigrams: the units persona
    fidelity compares."""
    units = {w for w in _WORD.findall(text.lower()) if len(w) >= 3 and w not in _STOPWORDS}
    for run in re.findall(r"[\u4e00-\u9fff]+", text):
        units.update(run[i : i + 2] for i in range(len(run) - 1))
    return units


def distinct_n(texts: Iterable[str], n: int) -> float:
    """Distinct n-grams divided by all n-grams, pooled over texts (0.0 when there are none)."""
    total, seen = 0, set()
    for text in texts:
        toks = tokens(text)
        grams = [tuple(toks[i : i + n]) for i in range(len(toks) - n + 1)]
        total += len(grams)
        seen.update(grams)
    return len(seen) / total if total else 0.0


def self_bleu(texts: Sequence[str], sample: int = SELF_BLEU_SAMPLE, seed: int = 0) -> float | None:
    """Mean sentence BLEU (0-100) of up to ``sample`` seeded texts, each against all the other
    texts; None for fewer than two. Equal to sacrebleu's ``sentence_bleu(text, others)``.

    The references' n-gram counts are gathered once (with, per n-gram, the largest count, how
    many texts reach it and the runner-up), so leaving a hypothesis out of its own references
    costs nothing and the whole computation is linear in the texts, not quadratic.
    """
    from sacrebleu.metrics import BLEU
    from sacrebleu.metrics.helpers import extract_all_word_ngrams

    texts = [t for t in texts if t.strip()]
    if len(texts) < 2:
        return None
    idx = list(range(len(texts)))
    if len(idx) > sample:
        idx = random.Random(seed).sample(idx, sample)
    zh = any(_CJK.search(t) for t in texts)
    metric = BLEU(tokenize="zh" if zh else "13a", effective_order=True)
    grams: list[Counter] = []
    sizes: list[int] = []
    lengths: Counter[int] = Counter()
    best: dict[tuple[str, ...], list[int]] = {}  # n-gram -> [max count, texts at max, runner-up]
    for text in texts:
        counts, length = extract_all_word_ngrams(metric._preprocess_segment(text), 1, 4)
        grams.append(counts)
        sizes.append(length)
        lengths[length] += 1
        for gram, c in counts.items():
            b = best.get(gram)
            if b is None:
                best[gram] = [c, 1, 0]
            elif c > b[0]:
                best[gram] = [c, 1, b[0]]
            elif c == b[0]:
                b[1] += 1
            elif c > b[2]:
                b[2] = c
    scores = []
    for i in idx:
        hyp_len = sizes[i]
        correct, total = [0] * 4, [0] * 4
        for gram, c in grams[i].items():
            top, at_top, runner_up = best[gram]
            # The largest count among the *other* texts.
            ref_count = runner_up if c == top and at_top == 1 else top
            total[len(gram) - 1] += c
            correct[len(gram) - 1] += min(c, ref_count)
        lengths[hyp_len] -= 1
        ref_len = min((n for n, k in lengths.items() if k > 0), key=lambda n: (abs(hyp_len - n), n))
        lengths[hyp_len] += 1
        scores.append(metric._compute_score_from_stats([hyp_len, ref_len, *correct, *total]).score)
    return sum(scores) / len(scores)


def _profile_text(profile: Any) -> str | None:
    if isinstance(profile, dict):
        return profile.get("description") or None
    return profile or None


def _overlap(utterances: list[str], profile: str) -> float:
    said = set().union(*map(content_units, utterances))
    return len(said & content_units(profile)) / len(said) if said else 0.0


def persona_fidelity(
    dialogues: Iterable[Dialogue], seed: int = 0, sample: int | None = None
) -> dict[str, Any] | None:
    """Own-profile vs random-other-profile lexical overlap of customer utterances (see module).

    ``sample``: use a seeded uniform sample of at most this many dialogues with a profile.
    """
    rows = [_persona_row(d) for d in dialogues if _profile_text(d.profile) is not None]
    if sample is not None and len(rows) > sample:
        rows = random.Random(seed).sample(rows, sample)
    return _fidelity(rows, seed)


def _persona_row(d: Dialogue) -> tuple[str, list[str]]:
    """What persona fidelity reads of a dialogue: its profile text and customer utterances."""
    return _profile_text(d.profile), [t.text for t in d.customer_turns]  # type: ignore[return-value]


def _fidelity(rows: Sequence[tuple[str, list[str]]], seed: int) -> dict[str, Any] | None:
    distinct = sorted({text for text, _ in rows})
    if len(distinct) < 2:
        return None
    rng = random.Random(seed)
    own, other = [], []
    for text, utterances in rows:
        own.append(_overlap(utterances, text))
        other.append(_overlap(utterances, rng.choice([p for p in distinct if p != text])))
    return {
        "dialogues": len(rows),
        "own_profile_overlap": sum(own) / len(own),
        "other_profile_overlap": sum(other) / len(other),
        "own_higher_share": sum(o > r for o, r in zip(own, other)) / len(rows),
    }


def stage_order_violations(dialogue: Dialogue, framework: Framework) -> int:
    """Backward stage steps between consecutive stage-bound supporter turns (see module)."""
    count, last = 0, None
    for code in dialogue.strategies():
        idx = framework.stage_index(code) if code in framework.codes else None
        if idx is not None:
            count += last is not None and idx < last
            last = idx
    return count


def dialogue_stats(
    dialogues: Iterable[Dialogue],
    framework: Framework | str = "csc",
    *,
    judged: Iterable[Dialogue] | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """All statistics of a dialogue set as a JSON-ready dict, in one streaming pass.

    ``dialogues`` may be any iterable (a reader's generator): only counters and bounded samples
    are kept (see the module docstring), so memory does not grow with the number of dialogues.
    ``judged``: the dialogues the filter's pass rates are computed over (default: ``dialogues``;
    the runner passes kept + rejected, since kept ones all passed).
    """
    fw = as_framework(framework)
    fallback = fw.fallback.code if fw.fallback else None
    lengths: Counter[int] = Counter()  # dialogues per number of turns
    supporter_turns = labelled_turns = using = 0
    counts: Counter[str] = Counter()
    violation_total = violation_dialogues = 0
    corrections: Counter[str] = Counter()
    reasks: Counter[str] = Counter()
    corrected_dialogues = 0
    texts = Reservoir(DIVERSITY_SAMPLE, seed)
    personas = Reservoir(PERSONA_SAMPLE, seed)
    judge = _JudgeTally()
    for d in dialogues:
        lengths[len(d.turns)] += 1
        for t in d.supporter_turns:
            supporter_turns += 1
            texts.add(t.text)
            if t.strategy:
                labelled_turns += 1
                counts[t.strategy] += 1
                using += t.strategy != fallback
        v = stage_order_violations(d, fw)
        violation_total += v
        violation_dialogues += bool(v)
        c = d.metadata.get("policy_corrections") or {}
        corrections.update(c)
        reasks.update(d.metadata.get("policy_reasks") or {})
        corrected_dialogues += bool(sum(c.values()))
        if _profile_text(d.profile) is not None:
            personas.add(_persona_row(d))  # only what persona fidelity needs
        if judged is None:
            judge.add(d)
    if judged is not None:
        for d in judged:
            judge.add(d)

    n_dialogues = sum(lengths.values())
    total_turns = sum(n * k for n, k in lengths.items())
    sampled_texts = texts.items
    return {
        "framework": fw.name,
        "dialogues": n_dialogues,
        "utterances": {
            "total": total_turns,
            "mean": total_turns / n_dialogues if n_dialogues else 0.0,
            "min": min(lengths, default=0),
            "max": max(lengths, default=0),
        },
        "supporter_turns": supporter_turns,
        "unlabelled_supporter_turns": supporter_turns - labelled_turns,
        "strategy_distribution": {
            code: {
                "count": counts[code],
                "share": counts[code] / labelled_turns if labelled_turns else 0.0,
            }
            for code in fw.codes
        },
        "strategy_utilization": using / supporter_turns if supporter_turns else 0.0,
        "stage_order_violations": {
            "total": violation_total,
            "per_dialogue": violation_total / n_dialogues if n_dialogues else 0.0,
            "dialogues_with_any": violation_dialogues,
        },
        "policy": {
            "corrections": dict(sorted(corrections.items())),
            "reasks": dict(sorted(reasks.items())),
            "dialogues_corrected": corrected_dialogues,
        },
        "persona_fidelity": _fidelity(personas.items, seed),
        "diversity": {
            "distinct_1": distinct_n(sampled_texts, 1),
            "distinct_2": distinct_n(sampled_texts, 2),
            "self_bleu": self_bleu(sampled_texts, seed=seed),
        },
        "sampling": _sampling(texts, personas),
        "filter_pass_rate": judge.rates(),
    }


class _JudgeTally:
    """Per-criterion pass counts of the judge verdicts in ``metadata.judge``."""

    def __init__(self) -> None:
        self.judged = 0
        self.criteria: list[str] = []
        self.passed: Counter[str] = Counter()
        self.all_passed = 0

    def add(self, d: Dialogue) -> None:
        verdict = d.metadata.get("judge")
        if not isinstance(verdict, dict):
            return
        if not self.criteria:
            self.criteria = list(verdict)
        self.judged += 1
        for c in self.criteria:
            self.passed[c] += bool(verdict.get(c, {}).get("pass"))
        self.all_passed += all(v.get("pass") for v in verdict.values())

    def rates(self) -> dict[str, Any] | None:
        if not self.judged:
            return None
        rates = {c: self.passed[c] / self.judged for c in self.criteria}
        return {"judged": self.judged, **rates, "all": self.all_passed / self.judged}


def _sampling(texts: Reservoir, personas: Reservoir) -> dict[str, Any]:
    """What the diversity and persona figures were computed on (exact when nothing was cut)."""
    kept = len(texts.items)
    hypotheses = min(SELF_BLEU_SAMPLE, kept)
    return {
        "sampled": texts.seen > kept
        or kept > SELF_BLEU_SAMPLE
        or personas.seen > len(personas.items),
        "distinct_n_turns": kept,
        "supporter_turns": texts.seen,
        "self_bleu_hypotheses": hypotheses,
        "self_bleu_references": max(0, kept - 1),
        "persona_dialogues": len(personas.items),
        "dialogues_with_profile": personas.seen,
    }


def render_stats(stats: dict[str, Any], title: str = "Dataset statistics") -> Any:
    """A rich table of :func:`dialogue_stats` output, for printing."""
    from rich.table import Table

    table = Table(title=title, show_header=True, header_style="bold")
    table.add_column("statistic")
    table.add_column("value", justify="right")
    u = stats["utterances"]
    table.add_row("dialogues", str(stats["dialogues"]))
    table.add_row(
        "utterances per dialogue (mean / min / max)", f"{u['mean']:.1f} / {u['min']} / {u['max']}"
    )
    table.add_row("supporter turns", str(stats["supporter_turns"]))
    table.add_row("strategy utilization", f"{stats['strategy_utilization']:.1%}")
    so = stats["stage_order_violations"]
    table.add_row(
        "stage-order violations (total / per dialogue)", f"{so['total']} / {so['per_dialogue']:.2f}"
    )
    pol = stats["policy"]
    fmt = lambda d: ", ".join(f"{k} {v}" for k, v in d.items()) or "none"  # noqa: E731
    table.add_row("policy corrections", fmt(pol["corrections"]))
    table.add_row("policy re-asks", fmt(pol["reasks"]))
    pf = stats["persona_fidelity"]
    if pf:
        table.add_row(
            "persona overlap (own / other profile)",
            f"{pf['own_profile_overlap']:.3f} / {pf['other_profile_overlap']:.3f}",
        )
    dv = stats["diversity"]
    sb = "n/a" if dv["self_bleu"] is None else f"{dv['self_bleu']:.1f}"
    table.add_row(
        "distinct-1 / distinct-2 / self-BLEU",
        f"{dv['distinct_1']:.3f} / {dv['distinct_2']:.3f} / {sb}",
    )
    sm = stats.get("sampling")
    if sm and sm["sampled"]:
        table.add_row(
            "sampled (seeded)",
            f"distinct-n on {sm['distinct_n_turns']} of {sm['supporter_turns']} supporter turns; "
            f"self-BLEU {sm['self_bleu_hypotheses']} turns x {sm['self_bleu_references']} "
            f"references; persona on {sm['persona_dialogues']} of "
            f"{sm['dialogues_with_profile']} dialogues",
        )
    shares = [
        f"{code} {v['share']:.0%}"
        for code, v in stats["strategy_distribution"].items()
        if v["count"]
    ]
    table.add_row("strategy distribution", ", ".join(shares) or "none")
    fr = stats["filter_pass_rate"]
    if fr:
        rates = ", ".join(f"{k} {v:.0%}" for k, v in fr.items() if k != "judged")
        table.add_row(f"filter pass rate ({fr['judged']} judged)", rates)
    return table
