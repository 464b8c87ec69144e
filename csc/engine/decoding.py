"""Per-request decoding: walking an :class:`~csc.engine.structure.OutputPlan` token by token.

A :class:`RowDecoder` owns one request inside a batch. Each step the engine gives it the
next-token logits of its row; the decoder masks them for the current segment, samples (greedy at
temperature 0, otherwise from the row's own ``torch.Generator``, so a row's sample does not depend
on which other requests share the batch), and returns the token to feed back. Forced text
(section headers) needs no logits at all.

Budgeting: free-text fields share what is left of ``max_tokens`` after everything the structure
still needs (headers, choices, JSON reserves) is set aside, so a structured answer always reaches
its closing marker before the limit.
"""

from __future__ import annotations

import math
import re
import threading
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from csc.engine.structure import Choice, Fixed, Grammar, OutputPlan, ReplyGuard, Segment, Text

_NEG_INF = float("-inf")
# How many times one free-text value may lose an opening label ("Supporter [IV]:", "My next
# response will be:") before the rest is kept as it is.
MAX_DROPPED_OPENINGS = 6
# Echo of the prompt in a reply (transcript requests only). Widths count a CJK character as 2,
# so one threshold fits English and Chinese. A value that opens with a copy of the prompt this
# wide (or with a whole line of it: an input value, a strategy definition) loses that opening; a
# copy this wide later on ends the value before it.
COPIED_OPENING_WIDTH = 24
COPIED_SPAN_WIDTH = 40
# A free-text value whose description gives a sentence count ends after this width per
# sentence even without a sentence end (a small model can run on without punctuation).
SENTENCE_WIDTH = 90
_SENTENCE_CLOSERS = "\"'”’)]」』）"
# A sentence ends at ., !, ?, … followed by whitespace, or at a full-width 。！？ (no space in
# Chinese). Closing quotes and brackets stay with their sentence.
_SENTENCE_END = re.compile(r"[.!?…]+[\"'”’)\]]*(?=\s)|[。！？]+[\"'”’」』)）]*")
_ENDS_SENTENCE = re.compile(r"(?:[.!?…]+|[。！？!?]+)[\"'”’)\]」』）]*$")
_ABBREVIATION = re.compile(
    r"(?:^|\s)(?:mr|mrs|ms|dr|st|no|vs|etc|e\.g|i\.e|approx)\.[\"'”’)\]]*\s?$", re.I
)


def text_width(text: str) -> int:
    """Display width of ``text``: a CJK character (or full-width sign) counts as 2."""
    return len(text) + sum(1 for c in text if c >= "\u2e80")


class Vocabulary:
    """Token-level facts about one tokenizer, computed once per engine."""

    def __init__(self, tokenizer: Any, vocab_size: int, stop_ids: set[int]) -> None:
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size
        self.stop_ids = set(stop_ids)
        n = min(vocab_size, len(tokenizer))
        # Decoding every id once is fast with a Rust tokenizer and makes string checks O(1).
        self.texts: list[str] = tokenizer.batch_decode([[i] for i in range(n)])
        self.texts += [""] * (vocab_size - n)
        # Tokens a free-text value may not start with: small models like to echo the "{field}"
        # placeholder of DSPy's format block, or to start a "[[ ## header ## ]]" of their own
        # (which, with "[[" blocked, degenerates into "[##" noise), or to open with blank lines.
        self.opening_banned_ids = torch.tensor(
            sorted(
                {i for i, t in enumerate(self.texts) if t.lstrip()[:1] in ("{", "[", "#", "`")}
                | {i for i, t in enumerate(self.texts) if t and not t.strip()}
                | set(self.stop_ids)
            ),
            dtype=torch.long,
        )
        self._encode_cache: dict[str, list[int]] = {}
        self._tries: dict[tuple[str, ...], _Trie] = {}
        self._grammars: dict[tuple[str, str], Any] = {}
        self._compiler: Any = None
        self._lock = threading.Lock()

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` (no special tokens), memoised."""
        ids = self._encode_cache.get(text)
        if ids is None:
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            self._encode_cache[text] = ids
        return ids

    def trie(self, options: tuple[str, ...]) -> _Trie:
        """A trie over the token sequences of ``options``."""
        trie = self._tries.get(options)
        if trie is None:
            trie = _Trie()
            for option in options:
                trie.add(self.encode(option))
            self._tries[options] = trie
        return trie

    def compiled(self, kind: str, spec: str) -> Any:
        """An xgrammar CompiledGrammar for a Grammar segment (compiled once per engine)."""
        key = (kind, spec)
        with self._lock:
            if key in self._grammars:
                return self._grammars[key]
            import xgrammar as xgr

            if self._compiler is None:
                info = xgr.TokenizerInfo.from_huggingface(
                    self.tokenizer, vocab_size=self.vocab_size, stop_token_ids=sorted(self.stop_ids)
                )
                self._compiler = xgr.GrammarCompiler(info)
            if kind == "json_schema":
                grammar = self._compiler.compile_json_schema(spec, any_whitespace=False)
            elif kind == "json_object":
                grammar = self._compiler.compile_builtin_json_grammar()
            elif kind == "regex":
                grammar = self._compiler.compile_regex(spec)
            else:
                raise ValueError(f"unknown grammar kind {kind!r}")
            self._grammars[key] = grammar
            return grammar


@dataclass
class _Trie:
    children: dict[int, _Trie] = field(default_factory=dict)
    terminal: bool = False

    def add(self, ids: list[int]) -> None:
        node = self
        for i in ids:
            node = node.children.setdefault(i, _Trie())
        node.terminal = True


@dataclass
class Sampling:
    """Sampling options of one request."""

    max_tokens: int = 512
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    # HF-style penalty on tokens this row already generated (1.0 = off). Small models loop on
    # a phrase without it.
    repetition_penalty: float = 1.0
    # False: a free-text field is one paragraph (it ends at a blank line). Small models otherwise
    # pad a reply with repeated paragraphs until the budget runs out.
    multiline_text: bool = False


class RowDecoder:
    """Decoding state of one request: current segment, budget, generated ids, stop reason."""

    def __init__(
        self,
        vocab: Vocabulary,
        plan: OutputPlan | None,
        sampling: Sampling,
        device: str = "cpu",
        prompt_text: str = "",
    ) -> None:
        self.vocab = vocab
        # The rendered prompt: a reply to a transcript may not copy long stretches of it.
        self.prompt_text = prompt_text
        self.plan = plan
        self.sampling = sampling
        self.ids: list[int] = []
        # What the model should have read of the answer: ``ids`` plus dropped speaker labels
        # (a model that wrote "Supporter [IV]:" goes on with the reply itself), minus dropped
        # echoes and cut-off transcript, which the engine rewinds out of its KV cache.
        self.context: list[int] = []
        self.finish_reason: str | None = None
        self.paragraphs = not sampling.multiline_text
        self.generator: torch.Generator | None = None
        if sampling.temperature > 0:
            self.generator = torch.Generator(device="cpu")
            seed = sampling.seed
            if seed is None:
                seed = int(torch.randint(0, 2**62, (1,)).item())
            self.generator.manual_seed(seed)
        self._segments: list[Segment] = list(plan.segments) if plan else []
        if plan is not None:
            # A structure that cannot fit would be cut mid-header and fail to parse; a caller's
            # max_tokens below what the structure itself needs is raised to that minimum.
            hard, texts = self._reserve_after(-1)
            if sampling.max_tokens < hard + texts:
                self.sampling = replace(sampling, max_tokens=hard + texts)
        self._index = -1
        self._forced: list[int] = []
        self._trie: _Trie | None = None
        self._matcher: Any = None
        self._bitmask: torch.Tensor | None = None
        self._text_budget = 0
        self._text_used = 0
        self._text = ""  # text of the current free-text segment (decoded from _field_ids)
        self._field_ids: list[int] = []  # ids of the current free-text segment kept so far
        self._guard: ReplyGuard | None = None
        self._field_start = 0  # len(ids) when the current free-text value began
        self._copy_start = 0  # start of the value's longest suffix that is a copy of the prompt
        self._resampled = 0  # copies taken back inside the current value
        self._banned_next: list[int] = []  # banned at the next free-text step only
        self._dropped_openings = 0
        # First tokens of dropped openings: banned at the next opening, so the model (which
        # has read what was dropped) cannot start the same label or echo again.
        self._dropped_first: list[int] = []
        self._choice_ids: list[int] = []  # ids chosen so far inside the current Choice
        self._advance()

    # ------------------------------------------------------------------ segments
    @property
    def done(self) -> bool:
        """Whether the row needs no more tokens."""
        return self.finish_reason is not None

    def _remaining(self) -> int:
        return self.sampling.max_tokens - len(self.ids)

    def _reserve_after(self, index: int) -> tuple[int, int]:
        """Tokens later segments need for certain, and how many later free-text segments exist."""
        hard, texts = 0, 0
        for seg in self._segments[index + 1 :]:
            if isinstance(seg, Fixed):
                hard += len(self.vocab.encode(seg.text))
            elif isinstance(seg, Choice):
                hard += max((len(self.vocab.encode(o)) for o in seg.options), default=1)
            elif isinstance(seg, Grammar):
                hard += seg.reserve
            else:
                texts += 1
        return hard, texts

    def _advance(self) -> None:
        """Move to the next segment; mark the row finished after the last one."""
        self._index += 1
        if self.plan is None:
            return
        if self._index >= len(self._segments):
            self.finish_reason = "stop"
            return
        seg = self._segments[self._index]
        self._trie = None
        self._matcher = None
        self._guard = None
        self._choice_ids = []
        if isinstance(seg, Fixed):
            self._forced = list(self.vocab.encode(seg.text))
            if not self._forced:
                self._advance()
        elif isinstance(seg, Choice):
            self._trie = self.vocab.trie(seg.options)
        elif isinstance(seg, Grammar):
            import xgrammar as xgr

            self._matcher = xgr.GrammarMatcher(self.vocab.compiled(seg.kind, seg.spec))
            self._bitmask = xgr.allocate_token_bitmask(1, self.vocab.vocab_size)
        else:
            hard, later_texts = self._reserve_after(self._index)
            free = self._remaining() - hard
            # Later str fields keep a fair share so one long field cannot starve them.
            floor = min(64, max(0, free) // (later_texts + 1)) if later_texts else 0
            self._text_budget = max(0, free - later_texts * floor)
            self._text_used = 0
            self._text = ""
            self._field_ids = []
            self._field_start = len(self.ids)
            self._copy_start = 0
            self._resampled = 0
            self._banned_next = []
            self._dropped_openings = 0
            self._dropped_first = []
            speakers = seg.speakers if isinstance(seg, Text) else ()
            self._guard = ReplyGuard.build(speakers, seg.field) if speakers else None
            if self._text_budget == 0:
                self._advance()

    # ------------------------------------------------------------------ stepping
    def forced_token(self) -> int | None:
        """The next token if it is forced (no logits needed), else None."""
        if self.plan is not None and self._forced:
            return self._forced[0]
        return None

    def step(self, logits: torch.Tensor | None) -> int:
        """Choose the next token (``logits`` is this row's 1-D next-token scores; None if forced)."""
        token = self._choose(logits)
        self._accept(token)
        return token

    def _choose(self, logits: torch.Tensor | None) -> int:
        while True:
            forced = self.forced_token()
            if forced is not None:
                return forced
            if logits is None:
                raise RuntimeError("logits are needed for an unforced step")
            if self.plan is None:
                return self._sample(logits)
            seg = self._segments[self._index]
            if isinstance(seg, Choice):
                allowed = list(self._trie.children) if self._trie else []
                end = self._end_token() if self._trie and self._trie.terminal else None
                if not allowed:  # option complete: nothing more to choose
                    self._advance()
                    continue
                if end is not None and end not in allowed:
                    # One option is a prefix of another ("ID" / "IDX"): the model may stop here,
                    # which it signals by starting the next segment's text.
                    candidates = [*allowed, end]
                    token = self._sample(
                        logits, allowed=candidates, bias=self._prior_bias(seg, allowed, end)
                    )
                    if token == end:
                        self._advance()
                        continue
                    return token
                return self._sample(logits, allowed=allowed, bias=self._prior_bias(seg, allowed))
            if isinstance(seg, Grammar):
                token = self._sample_grammar(logits)
                if token in self.vocab.stop_ids:
                    # The grammar is complete and the model wants to stop: next segment.
                    self._advance()
                    if self.done:
                        return token
                    continue
                return token
            # Free text.
            if self._text_used >= self._text_budget:
                self._advance()
                continue
            if not self._field_ids:
                banned = self.vocab.opening_banned_ids
                if self._dropped_first:
                    banned = torch.cat([banned, torch.tensor(self._dropped_first)])
                token = self._sample(logits, banned=banned)
            elif self._banned_next:
                token = self._sample(logits, banned=torch.tensor(self._banned_next))
            else:
                token = self._sample(logits)
            self._banned_next = []
            piece = self.vocab.texts[token]
            if (
                token in self.vocab.stop_ids
                or self._sentences_complete(seg, piece)
                or self._too_wide(seg)
                or "[[" in piece
                or (self._text.endswith("[") and piece.startswith("["))
                or (self._text.endswith("\n") and piece.lstrip(" ")[:1] in ("[", "#"))
                or (self.paragraphs and self._text.endswith("\n") and piece.startswith("\n"))
                or (self.paragraphs and self._text.strip() and "\n\n" in piece)
                or (self._text.endswith("\n") and piece.startswith("\n["))
            ):
                # The model ends the field (or tries to write the next header itself).
                self._advance()
                if self.done:
                    return token
                continue
            return token

    def _end_token(self) -> int | None:
        nxt = self._segments[self._index + 1] if self._index + 1 < len(self._segments) else None
        if isinstance(nxt, Fixed):
            ids = self.vocab.encode(nxt.text)
            return ids[0] if ids else None
        return None

    def _accept(self, token: int) -> None:
        if self.done:
            return
        self.ids.append(token)
        self.context.append(token)
        if self.plan is None:
            if token in self.vocab.stop_ids:
                self.ids.pop()
                self.context.pop()
                self.finish_reason = "stop"
            elif self.sampling.stop and self._hit_stop():
                self.finish_reason = "stop"
        else:
            seg = self._segments[self._index]
            if isinstance(seg, Fixed):
                self._forced.pop(0)
                if not self._forced:
                    self._advance()
            elif isinstance(seg, Grammar):
                self._matcher.accept_token(token)
                if self._matcher.is_terminated():
                    self._advance()
            elif isinstance(seg, Choice):
                assert self._trie is not None
                self._choice_ids.append(token)
                self._trie = self._trie.children[token]
                if self._trie.terminal and not self._trie.children:
                    self._advance()
            else:
                self._text_used += 1
                self._field_ids.append(token)
                self._text = self.vocab.tokenizer.decode(self._field_ids, skip_special_tokens=True)
                if self._guard is not None:
                    self._police_transcript()
        if not self.done and len(self.ids) >= self.sampling.max_tokens:
            self.finish_reason = "length"

    # ------------------------------------------------------------------ reply shape
    def _sentences_complete(self, seg: Segment, piece: str) -> bool:
        """Whether the field already holds its ``max_sentences`` and ``piece`` starts another."""
        limit = seg.max_sentences if isinstance(seg, Text) else None
        if not limit:
            return False
        text = self._text.rstrip(" \t")
        match = _ENDS_SENTENCE.search(text)
        if match is None or _ABBREVIATION.search(text):
            return False
        if piece[:1] in _SENTENCE_CLOSERS or piece[:1] in ".!?…。！？":
            return False  # the same sentence end goes on ("..." or a closing quote)
        full_width = any(c in "。！？" for c in match.group())
        if not (full_width or text != self._text or piece[:1].isspace()):
            return False  # "3." followed by "5": not a sentence end
        padded = text + " "
        ends = [
            m for m in _SENTENCE_END.finditer(padded) if not _ABBREVIATION.search(padded[: m.end()])
        ]
        return len(ends) >= limit

    def _too_wide(self, seg: Segment) -> bool:
        """Whether a value with a sentence count has run past its width without ending."""
        limit = seg.max_sentences if isinstance(seg, Text) else None
        return bool(limit) and text_width(self._text) >= limit * SENTENCE_WIDTH

    def _police_copy(self) -> bool:
        """Keep a reply from echoing the prompt; True if the value was cut or lost its opening.

        Tracks the longest suffix of the value that occurs verbatim in the prompt. An opening
        that is such a copy, at least ``COPIED_OPENING_WIDTH`` wide or a whole prompt line
        (``(the conversation has not started yet)``, a strategy's definition), is dropped like
        a speaker label; a copy of ``COPIED_SPAN_WIDTH`` later in the value ends it before the
        copy.
        """
        prompt, text = self.prompt_text, self._text
        if not prompt or text.endswith("\ufffd"):  # wait for a whole character
            return False
        start = self._copy_start
        while start < len(text) and text[start:] not in prompt:
            start += 1
        self._copy_start = start
        copied = text[start:]
        if not copied.strip():
            return False
        if not text[:start].strip():  # the value so far is all copy
            stripped = copied.strip()
            whole_line = len(stripped) >= 4 and f"\n{stripped}\n" in prompt
            if self._dropped_openings < MAX_DROPPED_OPENINGS and (
                text_width(stripped) >= COPIED_OPENING_WIDTH or whole_line
            ):
                self._drop_opening()
                return True
            return False
        if text_width(copied) >= COPIED_SPAN_WIDTH:
            keep = self._tokens_within(start)
            if self._resampled < MAX_DROPPED_OPENINGS and keep < len(self._field_ids):
                # Take the copy back (out of the model's view too) and make the model write
                # something else from there: its first token is banned at that point.
                self._resampled += 1
                self._banned_next = [self._field_ids[keep]]
                self._drop_field_tokens(len(self._field_ids) - keep)
                self._copy_start = 0
            else:
                self._cut_at(start)
            return True
        return False

    def _tokens_within(self, chars: int) -> int:
        """How many of the value's tokens decode to at most its first ``chars`` characters."""
        keep = len(self._field_ids)
        while keep > 0 and len(self._decode(self._field_ids[:keep])) > chars:
            keep -= 1
        return keep

    def _drop_opening(self, forget: bool = True) -> None:
        """Drop the value so far and start it again; ``forget``: also out of the model's view."""
        self._dropped_openings += 1
        self._dropped_first.append(self._field_ids[0])
        self._drop_field_tokens(len(self._field_ids), forget)
        self._copy_start = 0

    def _cut_at(self, chars: int) -> None:
        """End the value before its character ``chars`` (dropping the tokens from there)."""
        self._drop_field_tokens(len(self._field_ids) - self._tokens_within(chars))
        self._advance()

    def _police_transcript(self) -> None:
        """Keep a free-text value from turning into transcript or meta-text (after each token).

        A value that so far is only a speaker label or meta-text ("Supporter [IV]:", "My next
        response will be:") loses it, and the model goes on to write the value itself; a later
        line or sentence in that format ends the value before it.
        """
        assert self._guard is not None
        if self._dropped_openings < MAX_DROPPED_OPENINGS and self._guard.opening.match(self._text):
            self._drop_opening(forget=False)
            return
        match = self._guard.line.search(self._text)
        if match is not None:
            self._cut_at(match.start())
            return
        talk = self._guard.task_talk.search(self._text)
        if talk is not None:
            if self._text[: talk.start()].strip():
                self._cut_at(talk.start())
            elif self._dropped_openings < MAX_DROPPED_OPENINGS:
                self._drop_opening()
            return
        self._police_copy()

    def _drop_field_tokens(self, count: int, forget: bool = True) -> None:
        """Remove the last ``count`` tokens of the current free-text value from the output.

        ``forget``: also from :attr:`context`, so the engine takes them out of the KV cache;
        otherwise the model keeps having read them (a dropped speaker label).
        """
        if count <= 0:
            return
        del self.ids[len(self.ids) - count :]
        if forget:
            del self.context[len(self.context) - count :]
        del self._field_ids[len(self._field_ids) - count :]
        self._text = self._decode(self._field_ids)

    def _decode(self, ids: list[int]) -> str:
        return self.vocab.tokenizer.decode(ids, skip_special_tokens=True)

    def _prior_bias(
        self, seg: Choice, allowed: list[int], end: int | None = None
    ) -> torch.Tensor | None:
        """Contextual calibration: ``-log prior`` of each candidate token at this trie node.

        The prior of a token is the content-free probability mass of the options it leads to,
        so adding it to the logits picks by ``p(option | input) / p(option | content-free)``
        (exactly for one-token options, node by node for longer ones).
        """
        if seg.prior is None:
            return None
        depth = len(self._choice_ids)
        mass: dict[int | None, float] = {}
        for option, prob in zip(seg.options, seg.prior):
            ids = self.vocab.encode(option)
            if ids[:depth] != self._choice_ids:
                continue
            key = ids[depth] if len(ids) > depth else None
            mass[key] = mass.get(key, 0.0) + prob
        keys: list[int | None] = [*allowed, None] if end is not None else list(allowed)
        return torch.tensor([-math.log(max(mass.get(k, 0.0), 1e-12)) for k in keys])

    def _hit_stop(self) -> bool:
        tail = self.vocab.tokenizer.decode(self.ids[-64:], skip_special_tokens=True)
        return any(s and s in tail for s in self.sampling.stop)

    # ------------------------------------------------------------------ sampling
    def _sample_grammar(self, logits: torch.Tensor) -> int:
        import xgrammar as xgr

        assert self._bitmask is not None
        self._matcher.fill_next_token_bitmask(self._bitmask, 0)
        row = logits[: self.vocab.vocab_size].float().unsqueeze(0).clone()
        xgr.apply_token_bitmask_inplace(row, self._bitmask.to(row.device))
        return self._sample(row[0])

    def _sample(
        self,
        logits: torch.Tensor,
        allowed: list[int] | None = None,
        banned: torch.Tensor | None = None,
        bias: torch.Tensor | None = None,
    ) -> int:
        logits = logits.float()
        if banned is not None and len(banned):
            logits = logits.clone()
            logits[banned] = _NEG_INF
        if allowed is not None:
            index = torch.tensor(allowed, device=logits.device)
            sub = self._penalize(logits.index_select(0, index), index)
            if bias is not None:
                sub = sub + bias.to(sub.device)
            return int(allowed[self._pick(sub)])
        return self._pick(self._penalize(logits))

    def _penalize(self, logits: torch.Tensor, index: torch.Tensor | None = None) -> torch.Tensor:
        """Apply the repetition penalty to tokens already generated (on a copy)."""
        penalty = self.sampling.repetition_penalty
        if penalty == 1.0 or not self.ids:
            return logits
        seen = torch.tensor(sorted(set(self.ids)), dtype=torch.long, device=logits.device)
        if index is not None:  # logits are a sub-vocabulary: map seen ids to positions
            mask = torch.isin(index, seen)
            if not bool(mask.any()):
                return logits
            logits = logits.clone()
            vals = logits[mask]
            logits[mask] = torch.where(vals > 0, vals / penalty, vals * penalty)
            return logits
        logits = logits.clone()
        vals = logits[seen]
        logits[seen] = torch.where(vals > 0, vals / penalty, vals * penalty)
        return logits

    def _pick(self, logits: torch.Tensor) -> int:
        if self.generator is None:
            return int(torch.argmax(logits).item())
        probs = torch.softmax(logits / self.sampling.temperature, dim=-1).cpu()
        if self.sampling.top_p < 1.0:
            sorted_probs, order = torch.sort(probs, descending=True)
            keep = torch.cumsum(sorted_probs, 0) - sorted_probs < self.sampling.top_p
            probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_probs[keep])
        # Inverse-CDF draw: one uniform number from the row's generator. torch.multinomial
        # draws an exponential variate per vocabulary entry (about 1.6 ms a row per step on
        # SmolLM2's 49,152 tokens, single-threaded); this takes a cumulative sum.
        cdf = torch.cumsum(probs.double(), 0)
        u = torch.rand((), generator=self.generator, dtype=torch.float64) * cdf[-1]
        index = int(torch.searchsorted(cdf, u, right=True))
        if index >= len(probs):  # u rounded up to the total: the last token that can be drawn
            index = int(probs.nonzero()[-1])
        return index

    def settled_text(self) -> str:
        """The part of :meth:`text` that can no longer change: all of it, except a guarded
        free-text value still being written (the guard may yet take some of it back)."""
        if self.done or self._guard is None:
            return self.text()
        return self.vocab.tokenizer.decode(self.ids[: self._field_start], skip_special_tokens=True)

    def text(self) -> str:
        """The generated text (special tokens removed; stop strings cut off)."""
        out = self.vocab.tokenizer.decode(self.ids, skip_special_tokens=True)
        if self.plan is None:
            for s in self.sampling.stop:
                if s and s in out:
                    out = out[: out.index(s)]
        return out
