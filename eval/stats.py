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
  pooled) and self-BLEU (mean sacrebleu sentence BLEU of a turn against all other supporter turns;
  beyond 200 turns, of 200 sampled turns against each other; lower is more diverse);
* filter pass rate: per judge criterion, the share of judged dialogues that passed it.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

from csc.dialogue import Dialogue
from csc.framework import Framework

_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")
_CJK = re.compile(r"[\u4e00-\u9fff]")
_STOPWORDS = frozenset(
    re.findall(
        r"\S+",
        """a an the and or but if of to in on at for with by from as is are was were be been am i you
    your yours my me we our it its this that these those he she they them his her their there here
    have has had do does did not no yes so can could would should will just very too also about
    what when where who how why which than then now any some all up out into over more most""",
    )
)
SELF_BLEU_SAMPLE = 200


def tokens(text: str) -> list[str]:
    """Word tokens for English and single characters for Chinese (so n-gram metrics work for both)."""
    text = text.lower()
    out: list[str] = []
    for piece in re.split(r"([\u4e00-\u9fff])", text):
        if _CJK.fullmatch(piece or " "):
            out.append(piece)
        else:
            out.extend(_WORD.findall(piece))
    return out


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
    """Mean sentence BLEU (0-100) of each text against all others; None for fewer than two."""
    import sacrebleu

    texts = [t for t in texts if t.strip()]
    if len(texts) < 2:
        return None
    idx = list(range(len(texts)))
    if len(idx) > sample:
        idx = random.Random(seed).sample(idx, sample)
    # Beyond the sample, each sampled text is scored against the other sampled ones: against
    # every text the cost grows with n x sample (hours for 10,000 dialogues), for the same mean.
    pool = idx if len(texts) > sample else list(range(len(texts)))
    zh = any(_CJK.search(texts[i]) for i in pool)
    scores = []
    for i in idx:
        refs = [texts[j] for j in pool if j != i]
        bleu = sacrebleu.sentence_bleu(texts[i], refs, tokenize="zh" if zh else "13a")
        scores.append(bleu.score)
    return sum(scores) / len(scores)


def _profile_text(profile: Any) -> str | None:
    if isinstance(profile, dict):
        return profile.get("description") or None
    return profile or None


def _overlap(utterances: list[str], profile: str) -> float:
    said = set().union(*(content_units(u) for u in utterances)) if utterances else set()
    if not said:
        return 0.0
    return len(said & content_units(profile)) / len(said)


def persona_fidelity(dialogues: Sequence[Dialogue], seed: int = 0) -> dict[str, Any] | None:
    """Own-profile vs random-other-profile lexical overlap of customer utterances (see module)."""
    rows = [
        (d, _profile_text(d.profile)) for d in dialogues if _profile_text(d.profile) is not None
    ]
    distinct = sorted({text for _, text in rows})
    if len(distinct) < 2:
        return None
    rng = random.Random(seed)
    own, other, wins = [], [], 0
    for d, text in rows:
        utterances = [t.text for t in d.customer_turns]
        candidates = [p for p in distinct if p != text]
        o = _overlap(utterances, text)
        r = _overlap(utterances, rng.choice(candidates))
        own.append(o)
        other.append(r)
        wins += o > r
    return {
        "dialogues": len(rows),
        "own_profile_overlap": sum(own) / len(own),
        "other_profile_overlap": sum(other) / len(other),
        "own_higher_share": wins / len(rows),
    }


def stage_order_violations(dialogue: Dialogue, framework: Framework) -> int:
    """Backward stage steps between consecutive stage-bound supporter turns (see module)."""
    count, last = 0, None
    for code in dialogue.strategies():
        if code not in framework.codes:
            continue
        idx = framework.stage_index(code)
        if idx is None:
            continue
        if last is not None and idx < last:
            count += 1
        last = idx
    return count


def dialogue_stats(
    dialogues: Sequence[Dialogue],
    framework: Framework | str = "csc",
    *,
    judged: Sequence[Dialogue] | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """All statistics of a dialogue set as a JSON-ready dict.

    ``judged``: the dialogues the filter's pass rates are computed over (default: ``dialogues``;
    the runner passes kept + rejected, since kept ones all passed).
    """
    fw = framework if isinstance(framework, Framework) else Framework.load(framework)
    lengths = [len(d.turns) for d in dialogues]
    supporter_turns = [t for d in dialogues for t in d.supporter_turns]
    labelled = [t.strategy for t in supporter_turns if t.strategy]
    counts = Counter(labelled)
    fallback = fw.fallback.code if fw.fallback else None
    using = sum(1 for c in labelled if c != fallback)
    violations = [stage_order_violations(d, fw) for d in dialogues]
    corrections: Counter[str] = Counter()
    reasks: Counter[str] = Counter()
    corrected_dialogues = 0
    for d in dialogues:
        c = d.metadata.get("policy_corrections") or {}
        corrections.update(c)
        reasks.update(d.metadata.get("policy_reasks") or {})
        corrected_dialogues += bool(sum(c.values()))
    texts = [t.text for t in supporter_turns]

    judged = dialogues if judged is None else judged
    with_judge = [d for d in judged if isinstance(d.metadata.get("judge"), dict)]
    pass_rate: dict[str, float] = {}
    if with_judge:
        criteria = list(with_judge[0].metadata["judge"])
        for c in criteria:
            passed = sum(bool(d.metadata["judge"].get(c, {}).get("pass")) for d in with_judge)
            pass_rate[c] = passed / len(with_judge)
        pass_rate["all"] = sum(
            all(v.get("pass") for v in d.metadata["judge"].values()) for d in with_judge
        ) / len(with_judge)

    return {
        "framework": fw.name,
        "dialogues": len(dialogues),
        "utterances": {
            "total": sum(lengths),
            "mean": sum(lengths) / len(lengths) if lengths else 0.0,
            "min": min(lengths) if lengths else 0,
            "max": max(lengths) if lengths else 0,
        },
        "supporter_turns": len(supporter_turns),
        "unlabelled_supporter_turns": len(supporter_turns) - len(labelled),
        "strategy_distribution": {
            code: {
                "count": counts[code],
                "share": counts[code] / len(labelled) if labelled else 0.0,
            }
            for code in fw.codes
        },
        "strategy_utilization": using / len(supporter_turns) if supporter_turns else 0.0,
        "stage_order_violations": {
            "total": sum(violations),
            "per_dialogue": sum(violations) / len(dialogues) if dialogues else 0.0,
            "dialogues_with_any": sum(1 for v in violations if v),
        },
        "policy": {
            "corrections": dict(sorted(corrections.items())),
            "reasks": dict(sorted(reasks.items())),
            "dialogues_corrected": corrected_dialogues,
        },
        "persona_fidelity": persona_fidelity(dialogues, seed=seed),
        "diversity": {
            "distinct_1": distinct_n(texts, 1),
            "distinct_2": distinct_n(texts, 2),
            "self_bleu": self_bleu(texts, seed=seed),
        },
        "filter_pass_rate": {"judged": len(with_judge), **pass_rate} if with_judge else None,
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
