"""csc.throughput: the per-call savings give the same answers as DSPy's own functions."""

from __future__ import annotations

import dspy

from csc import throughput


def test_memoized_model_metadata_answers_like_the_original():
    from dspy.clients import costs, model_metadata

    assert throughput.memoize_model_metadata() is True
    assert throughput.memoize_model_metadata() is True  # idempotent
    memo = model_metadata.model_info
    original = memo.__wrapped__
    assert costs.model_info is memo
    for provider, model in [("openai", "gpt-4o-mini"), ("openai", "my-served-model")]:
        assert memo(provider, model) == original(provider, model)
    first = memo("openai", "gpt-4o-mini")
    first["mutated"] = True  # callers get copies: the memo is not changed through them
    assert "mutated" not in memo("openai", "gpt-4o-mini")


def test_type_adapters_are_reused_and_serialize_the_same():
    from dspy.adapters import utils

    assert throughput.reuse_type_adapters() is True
    assert utils.TypeAdapter(str) is utils.TypeAdapter(str)
    assert utils.serialize_for_json({"a": [1, 2]}) == {"a": [1, 2]}
    assert utils.serialize_for_json("x") == "x"


def test_response_cache_is_turned_off_for_remote_lms_only():
    lm = dspy.LM("openai/x", api_base="http://127.0.0.1:9/v1", api_key="EMPTY")
    assert lm.cache is True
    assert throughput.without_response_cache(lm) is True and lm.cache is False
    assert throughput.without_response_cache(lm) is False
    from dspy.utils.dummies import DummyLM

    dummy = DummyLM([{"answer": "a"}])
    before = dummy.cache
    throughput.without_response_cache(dummy)
    assert dummy.cache == before
