"""Structure extraction and constrained decoding, without a model (fast)."""

from __future__ import annotations

import json
from typing import Literal

import dspy
import pydantic
import pytest
import torch

from csc.engine.decoding import RowDecoder, Sampling, Vocabulary
from csc.engine.structure import (
    Choice,
    Fixed,
    Grammar,
    Text,
    bound_strings,
    chat_adapter_fields,
    plan_for_request,
    response_format_plan,
)
from csc.framework import Framework


def _messages(signature: type[dspy.Signature], **inputs: str) -> list[dict]:
    return dspy.ChatAdapter().format(signature, demos=[], inputs=inputs)


class Answer(pydantic.BaseModel):
    label: str
    score: int


def _mixed_signature() -> type[dspy.Signature]:
    codes = Framework.load("csc").strategy_literal
    return dspy.Signature(
        {
            "history": (str, dspy.InputField()),
            "strategy": (codes, dspy.OutputField(desc="code")),
            "ok": (bool, dspy.OutputField()),
            "count": (int, dspy.OutputField()),
            "weight": (float, dspy.OutputField()),
            "items": (list[str], dspy.OutputField()),
            "reply": (str, dspy.OutputField()),
        },
        "Predict the next strategy.",
    )


def test_chat_adapter_fields_follow_dspy_rendering() -> None:
    fields = chat_adapter_fields(_messages(_mixed_signature(), history="Customer: hi"))
    assert fields is not None
    assert [f.name for f in fields] == ["strategy", "ok", "count", "weight", "items", "reply"]
    kinds = {f.name: f.kind for f in fields}
    assert kinds == {
        "strategy": "choice",
        "ok": "bool",
        "count": "int",
        "weight": "float",
        "items": "json",
        "reply": "str",
    }
    assert fields[0].options == Framework.load("csc").codes
    assert fields[4].schema == {"type": "array", "items": {"type": "string"}}


def test_other_frameworks_give_their_own_codes() -> None:
    esc = Framework.load("esc")
    sig = dspy.Signature(
        {
            "history": (str, dspy.InputField()),
            "strategy": (esc.strategy_literal, dspy.OutputField()),
        }
    )
    fields = chat_adapter_fields(_messages(sig, history="x"))
    assert fields is not None and fields[0].options == esc.codes


def test_chat_adapter_plan_segments() -> None:
    plan = plan_for_request(_messages(_mixed_signature(), history="Customer: hi"))
    assert plan is not None and plan.kind == "chat_adapter"
    segs = plan.segments
    assert segs[0] == Fixed("[[ ## strategy ## ]]\n")
    assert isinstance(segs[1], Choice)
    assert segs[2] == Fixed("\n\n[[ ## ok ## ]]\n")
    assert segs[3] == Choice(("True", "False"))
    assert isinstance(segs[5], Grammar) and segs[5].kind == "regex"
    assert isinstance(segs[9], Grammar) and json.loads(segs[9].spec)["items"]["maxLength"] == 400
    # A history input: the reply may not continue its transcript.
    assert isinstance(segs[11], Text) and segs[11].field == "reply"
    assert "Customer" in segs[11].speakers and segs[11].max_sentences is None
    assert segs[-1] == Fixed("\n\n[[ ## completed ## ]]")


def test_plain_chat_has_no_plan() -> None:
    assert plan_for_request([{"role": "user", "content": "Hello there"}]) is None
    # An Enum-free, marker-free system prompt is still plain chat.
    assert plan_for_request([{"role": "system", "content": "Be kind."}]) is None


def test_response_format_variants() -> None:
    plan = response_format_plan(Answer)
    assert plan is not None and plan.kind == "json"
    schema = json.loads(plan.segments[0].spec)
    assert schema["properties"]["label"]["maxLength"] == 400
    assert response_format_plan({"type": "json_object"}).segments[0].kind == "json_object"
    wrapped = {
        "type": "json_schema",
        "json_schema": {"name": "A", "schema": Answer.model_json_schema()},
    }
    assert json.loads(response_format_plan(wrapped).segments[0].spec)["required"] == [
        "label",
        "score",
    ]
    assert response_format_plan({"type": "text"}) is None
    with pytest.raises(ValueError, match="pydantic model"):
        response_format_plan({"type": "xml"})


def test_bound_strings_keeps_existing_limits_and_enums() -> None:
    schema = {
        "type": "object",
        "properties": {
            "a": {"type": "string", "maxLength": 5},
            "b": {"type": "string", "enum": ["x", "y"]},
            "c": {"type": "array", "items": {"type": "string"}},
        },
    }
    out = bound_strings(schema, 50)
    assert out["properties"]["a"]["maxLength"] == 5
    assert "maxLength" not in out["properties"]["b"]
    assert out["properties"]["c"]["items"]["maxLength"] == 50


# --------------------------------------------------------------------------- decoding
class CharTokenizer:
    """A tiny tokenizer: one token per character plus a few multi-character tokens."""

    eos_token_id = 0

    def __init__(self) -> None:
        self.vocab = ["<eos>", "[[", " ## ", "GT", "ID", "IDX", "\n\n"]
        self.vocab += [chr(c) for c in range(32, 127)] + ["\n"]
        self.index = {t: i for i, t in enumerate(self.vocab)}

    def __len__(self) -> int:
        return len(self.vocab)

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict:
        ids, i = [], 0
        while i < len(text):
            for size in (4, 3, 2, 1):
                piece = text[i : i + size]
                if len(piece) == size and piece in self.index:
                    ids.append(self.index[piece])
                    i += size
                    break
            else:
                raise ValueError(text[i])
        return {"input_ids": ids}

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return "".join(self.vocab[i] for i in ids if not (skip_special_tokens and i == 0))

    def batch_decode(self, seqs: list[list[int]]) -> list[str]:
        return [self.decode(s, skip_special_tokens=False) for s in seqs]


@pytest.fixture(scope="module")
def vocab() -> Vocabulary:
    tok = CharTokenizer()
    return Vocabulary(tok, len(tok), {0})


def _run(decoder: RowDecoder, scores) -> str:
    """Drive a decoder with a scoring function of the step number (a fake model)."""
    step = 0
    while not decoder.done:
        decoder.step(scores(step))
        step += 1
    return decoder.text()


def _prefer(vocab: Vocabulary, *tokens: str, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)

    def scores(step: int) -> torch.Tensor:
        logits = torch.randn(vocab.vocab_size, generator=gen)
        for t in tokens:
            logits[vocab.tokenizer.index[t]] += 50
        return logits

    return scores


def _plan(*fields: tuple[str, object]):
    sig = dspy.Signature(
        {"history": (str, dspy.InputField()), **{n: (t, dspy.OutputField()) for n, t in fields}}
    )
    return plan_for_request(_messages(sig, history="x"))


def test_choice_field_only_yields_allowed_values(vocab: Vocabulary) -> None:
    plan = _plan(("strategy", Literal["GT", "ID", "IDX"]))
    seen = set()
    for seed in range(20):
        decoder = RowDecoder(vocab, plan, Sampling(max_tokens=64, temperature=1.0, seed=seed))
        text = _run(decoder, _prefer(vocab, seed=seed))
        parsed = dspy.ChatAdapter().parse(
            dspy.Signature({"strategy": (Literal["GT", "ID", "IDX"], dspy.OutputField())}), text
        )
        seen.add(parsed["strategy"])
        assert decoder.finish_reason == "stop"
    assert seen <= {"GT", "ID", "IDX"} and len(seen) >= 2


def test_free_text_cannot_open_a_header_and_stays_in_budget(vocab: Vocabulary) -> None:
    plan = _plan(("reply", str), ("ok", bool))
    # A model that wants to write "[[" as soon as it can: the field ends instead.
    decoder = RowDecoder(vocab, plan, Sampling(max_tokens=200))
    text = _run(decoder, _prefer(vocab, "[["))
    assert text.count("[[") == 3  # reply header, ok header, completed marker
    # A model that never stops talking: the budget still leaves room for the rest.
    decoder = RowDecoder(vocab, plan, Sampling(max_tokens=60))
    text = _run(decoder, _prefer(vocab, "a"))
    assert decoder.finish_reason == "stop" and len(decoder.ids) <= 60
    assert text.endswith("[[ ## completed ## ]]")
    sig = dspy.Signature({"reply": (str, dspy.OutputField()), "ok": (bool, dspy.OutputField())})
    parsed = dspy.ChatAdapter().parse(sig, text)
    assert parsed["reply"].startswith("aaa") and parsed["ok"] in (True, False)


def test_free_text_request_stops_at_eos_and_stop_strings(vocab: Vocabulary) -> None:
    decoder = RowDecoder(vocab, None, Sampling(max_tokens=50))
    order = iter(["h", "i", "<eos>"])
    assert _run(decoder, lambda _: _one_hot(vocab, next(order))) == "hi"
    assert decoder.finish_reason == "stop"
    decoder = RowDecoder(vocab, None, Sampling(max_tokens=50, stop=("x",)))
    order = iter(["a", "x", "b"])
    assert _run(decoder, lambda _: _one_hot(vocab, next(order))) == "a"
    decoder = RowDecoder(vocab, None, Sampling(max_tokens=3))
    assert _run(decoder, lambda _: _one_hot(vocab, "z")) == "zzz"
    assert decoder.finish_reason == "length"


def test_same_seed_same_sample_other_seed_differs(vocab: Vocabulary) -> None:
    def sample(seed: int) -> str:
        decoder = RowDecoder(vocab, None, Sampling(max_tokens=20, temperature=1.0, seed=seed))
        return _run(decoder, lambda _: torch.zeros(vocab.vocab_size))

    assert sample(1) == sample(1)
    assert sample(1) != sample(2)


def _one_hot(vocab: Vocabulary, token: str) -> torch.Tensor:
    logits = torch.zeros(vocab.vocab_size)
    logits[vocab.tokenizer.index[token]] = 10.0
    return logits


def test_default_threads_counts_the_cores_other_processes_leave_free(monkeypatch) -> None:
    from csc.engine import engine

    monkeypatch.setattr(engine.os, "cpu_count", lambda: 2)
    for busy, threads in ((0.0, 2), (0.4, 2), (0.6, 1), (1.0, 1), (5.0, 1)):
        monkeypatch.setattr(engine, "busy_cores", lambda busy=busy: busy)
        assert engine.default_threads() == threads
    # Without /proc/stat it falls back to the 1-minute load average.
    monkeypatch.setattr(engine, "busy_cores", lambda: None)
    monkeypatch.setattr(engine.os, "getloadavg", lambda: (0.5, 0.0, 0.0))
    assert engine.default_threads() == 2


def test_busy_cores_is_a_share_of_the_machine() -> None:
    import os

    from csc.engine.engine import busy_cores

    busy = busy_cores(0.05)
    if busy is None:
        pytest.skip("no /proc/stat on this platform")
    assert 0.0 <= busy <= (os.cpu_count() or 1)
