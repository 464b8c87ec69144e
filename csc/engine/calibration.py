"""Contextual calibration of constrained choices (Zhao et al., 2021, "Calibrate Before Use").

A small model's choice among a ``Literal``'s options is dominated by a prior that does not depend
on the input: SmolLM2-135M answers ``ID`` to almost every strategy-prediction prompt. Contextual
calibration estimates that prior by asking the same prompt with the input replaced by
content-free text (``N/A``, an empty value, ``[MASK]``), averages the option probabilities over
those inputs, and then picks by ``p(option | input) / p(option | content-free)``.

Here the prior is computed once per prompt template (everything but the input values, so demos
and instructions count) and cached for the engine's lifetime. It is attached to the plan's
first calibratable :class:`~csc.engine.structure.Choice` (a Literal / Enum field whose value is
the first thing the answer decides: only forced headers come before it); the decoder applies it
token by token (:meth:`csc.engine.decoding.RowDecoder._prior_bias`).

Only the embedded engine does this: a remote LM never sees it.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import torch

from csc.engine.structure import Choice, Fixed, OutputPlan, message_text

# Zhao et al. average over several content-free inputs; these three are theirs.
CONTENT_FREE_INPUTS: tuple[str, ...] = ("N/A", "", "[MASK]")

_SECTION = re.compile(
    r"(\[\[ ## \w+ ## \]\]\n)(.*?)(?=\n\n\[\[ ## \w+ ## \]\]|\n\nRespond with |\Z)", re.S
)

_PRIORS: dict[tuple[Any, ...], tuple[float, ...]] = {}
_PRIORS_LOCK = threading.Lock()


def content_free_messages(
    messages: Sequence[Mapping[str, Any]], placeholder: str
) -> list[dict[str, Any]]:
    """``messages`` with every input value of the last user message replaced by ``placeholder``.

    Earlier messages (system prompt, few-shot demos) are kept: the prior belongs to the prompt.
    """
    out = [{"role": m.get("role", "user"), "content": message_text(m)} for m in messages]
    for message in reversed(out):
        if message["role"] == "user":
            message["content"] = _SECTION.sub(
                lambda m: m.group(1) + placeholder, message["content"]
            )
            break
    return out


def calibrate_plan(
    engine: Any, messages: Sequence[Mapping[str, Any]], plan: OutputPlan
) -> OutputPlan:
    """``plan`` with a content-free prior on its first calibratable choice (unchanged if none).

    ``engine`` is a loaded :class:`~csc.engine.engine.Engine` (model, tokenizer, vocabulary).
    """
    prefix = ""
    for index, segment in enumerate(plan.segments):
        if isinstance(segment, Fixed):
            prefix += segment.text
            continue
        if not isinstance(segment, Choice) or not segment.calibratable or segment.prior:
            return plan
        prior = content_free_prior(engine, messages, prefix, segment.options)
        segments = list(plan.segments)
        segments[index] = replace(segment, prior=prior)
        return replace(plan, segments=tuple(segments))
    return plan


def content_free_prior(
    engine: Any, messages: Sequence[Mapping[str, Any]], prefix: str, options: Sequence[str]
) -> tuple[float, ...]:
    """Mean probability of each option on the content-free versions of ``messages`` (cached).

    Each option's probability is that of its whole token sequence after the prompt and the
    forced ``prefix`` (the section header), renormalised over the options.
    """
    variants = [
        engine.encode_messages(content_free_messages(messages, text))
        for text in CONTENT_FREE_INPUTS
    ]
    key = (id(engine), tuple(tuple(v) for v in variants), prefix, tuple(options))
    with _PRIORS_LOCK:  # concurrent callers of one template compute it once
        cached = _PRIORS.get(key)
        if cached is not None:
            return cached
        totals = [0.0] * len(options)
        for prompt_ids in variants:
            probs = option_probabilities(engine, prompt_ids, prefix, options)
            totals = [t + p / len(variants) for t, p in zip(totals, probs)]
        prior = tuple(totals)
        _PRIORS[key] = prior
        return prior


@torch.inference_mode()
def option_probabilities(
    engine: Any, prompt_ids: Sequence[int], prefix: str, options: Sequence[str]
) -> list[float]:
    """``p(option | prompt + prefix)`` for each option (whole token sequence), renormalised.

    One pass over the prompt; options longer than one token share its KV cache in one more
    batched pass.
    """
    vocab = engine.vocab
    model = engine.model
    ids = list(prompt_ids) + list(vocab.encode(prefix))
    cache = engine.new_cache()
    out = model(
        input_ids=torch.tensor([ids], device=engine.device),
        past_key_values=cache,
        use_cache=True,
        logits_to_keep=1,
    )
    root = torch.log_softmax(out.logits[0, -1].float(), -1).cpu()
    sequences = [list(vocab.encode(o)) for o in options]
    scores = [float(root[s[0]]) if s else float("-inf") for s in sequences]
    longer = [i for i, s in enumerate(sequences) if len(s) > 1]
    if longer:
        width = max(len(sequences[i]) for i in longer) - 1
        rows = len(longer)
        cache.batch_repeat_interleave(rows)
        input_ids = torch.full((rows, width), engine.pad_id, dtype=torch.long)
        mask = torch.zeros((rows, width), dtype=torch.long)
        for r, i in enumerate(longer):
            head = sequences[i][:-1]
            input_ids[r, : len(head)] = torch.tensor(head)
            mask[r, : len(head)] = 1  # right padding: real tokens never attend to it
        attention = torch.cat([torch.ones((rows, len(ids)), dtype=torch.long), mask], 1)
        positions = torch.arange(len(ids), len(ids) + width).unsqueeze(0).expand(rows, -1)
        out = model(
            input_ids=input_ids.to(engine.device),
            attention_mask=attention.to(engine.device),
            position_ids=positions.to(engine.device),
            past_key_values=cache,
            use_cache=True,
        )
        logp = torch.log_softmax(out.logits.float(), -1).cpu()
        for r, i in enumerate(longer):
            seq = sequences[i]
            scores[i] += sum(float(logp[r, j - 1, seq[j]]) for j in range(1, len(seq)))
    probs = torch.softmax(torch.tensor(scores), 0)
    return [float(p) for p in probs]


def clear_priors() -> None:
    """Forget cached priors (tests; a new engine gets new keys anyway)."""
    with _PRIORS_LOCK:
        _PRIORS.clear()
