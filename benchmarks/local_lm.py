"""Benchmark of the embedded local LM engine (csc.engine.LocalLM on SmolLM2-135M-Instruct).

Run:  python benchmarks/local_lm.py [--quick] [--only SCENARIOS] [--baseline-rev REV]

Scenarios (``--only``, comma-separated; default all but ``readme``):

* ``load``: load time cold (GGUF conversion into a fresh temporary cache) and warm (target
  <= 10 s), each in a fresh subprocess;
* ``throughput``: aggregate completion tokens/s at 1, 4 and 16 concurrent requests and the
  16:1 ratio (target >= 6);
* ``parse``: parse success of a strategy-prediction signature (dspy.Predict, ChatAdapter,
  varied histories; target >= 99 % over 100 calls), with the entropy of the predicted-label
  distribution (0 bits = the same strategy for every history);
* ``raw``: the raw forward limit, a plain ``model(input_ids)`` prefill with 1 and 2 threads;
* ``kernels``: the engine's CPU kernels on the loaded model's own layers: every linear layer
  through ``F.linear`` and through the packed weights at 1, 3, 16 and 48 rows, and one-query
  attention against PyTorch's SDPA for 3 rows over 1,300 cached tokens (best of 5, interleaved);
* ``native``: the native Llama forward against transformers' on the same weights, in this
  process, alternating (6 trials, min and median): a prefill of 3 rows x 150 tokens over
  1,000 cached ones, decode steps of 3 rows over 1,300 cached tokens; and warm load in fresh
  processes with ``CSC_NATIVE_MODEL`` 1 and 0, alternating;
* ``quantized``: decode steps through the GGUF blocks (``csc.engine.quantized``) against the
  same steps through the float32 weights, on the loaded model, alternating (5 trials,
  median): 1, 3, 8 and 16 rows x 1 token and 3 rows x 8 forced tokens over 1,300 cached tokens;
* ``prefix``: 32 strategy predictions of the CSC supporter program (StrategyPredictor) over
  growing dialogue histories, 8 in flight: effective prompt tokens/s, and the rate of the
  uncached part as a ratio to the raw 2-thread forward (target >= 0.8); with
  ``--baseline-rev`` also the same run on that revision (target >= 3x its effective rate);
* ``threads``: the same DSPy workload with 1 thread and with every core, interleaved, in
  fresh processes, and what ``default_threads()`` picks now;
* ``serve``: 32 concurrent clients over HTTP to ``csc serve`` vs the same requests in-process
  (target: within 15 %, no errors);
* ``readme``: the README's main command end to end with a fresh DSPy cache; with
  ``--baseline-rev`` also on that revision (target <= 40 % of its wall time).

A revision is run from a staged copy of its tree (``git archive``), so the comparison needs no
second install. All measurements use cache=False. The machine's load average is printed at the
start and the end: compare ratios measured within one run.
"""

# No `from __future__ import annotations`: the signature below is built from runtime types.
import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

TOPICS = [
    "a blocked bank card",
    "a delayed refund",
    "a password reset that does not arrive",
    "a double charge on a credit card",
    "an app that crashes at login",
    "a loan interest question",
    "a missing loyalty bonus",
    "a suspicious transaction",
]

LOAD_SNIPPET = """
import json, time
start = time.perf_counter()
from csc.engine import LocalLM
lm = LocalLM(cache=False)
engine = lm.batch_engine
print(json.dumps({"seconds": time.perf_counter() - start, "engine_seconds": engine.load_seconds}))
"""


def measure_load(cache_dir: str, native: bool = True) -> dict[str, float]:
    """Time ``LocalLM().batch_engine`` (imports included) in a fresh process with ``cache_dir``
    (``native=False``: with ``CSC_NATIVE_MODEL=0``, the model loaded through transformers)."""
    env = child_env(CSC_CACHE_DIR=cache_dir, CSC_NATIVE_MODEL="1" if native else "0")
    out = subprocess.run(
        [sys.executable, "-c", LOAD_SNIPPET],
        env=env,
        cwd=NEUTRAL_CWD,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def throughput(lm: Any, concurrency: int, rounds: int, max_tokens: int) -> dict[str, float]:
    """Aggregate completion tokens/s with ``concurrency`` requests in flight."""
    prompts = [
        f"Write a friendly, detailed paragraph a support agent could send about {TOPICS[i % len(TOPICS)]}."
        for i in range(concurrency * rounds)
    ]

    def call(prompt: str) -> None:
        lm(prompt, max_tokens=max_tokens)

    tokens_before = _completion_tokens(lm)
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        list(pool.map(call, prompts))
    elapsed = time.perf_counter() - start
    tokens = _completion_tokens(lm) - tokens_before
    return {"requests": len(prompts), "tokens": tokens, "seconds": elapsed, "tps": tokens / elapsed}


def _completion_tokens(lm: Any) -> int:
    return sum((entry.get("usage") or {}).get("completion_tokens", 0) for entry in lm.history)


def histories(n: int) -> list[Any]:
    """``n`` varied dialogue histories (1 to 4 turns, different topics and moods)."""
    from csc.dialogue import Speaker, Turn
    from csc.signatures.types import DialogueHistory

    openers = ["Hello.", "Hi, I need help.", "Good morning!", "Hey, anyone there?"]
    moods = ["", " This is really annoying!", " I am quite worried.", " Thanks in advance."]
    replies = [
        ("GT", "Hello, thank you for contacting us. How can I help you today?"),
        ("IV", "Could you please confirm your account number and full name?"),
        ("RP", "So the problem is that {topic}, is that right?"),
        ("PR", "When did you first notice {topic}?"),
    ]
    out = []
    for i in range(n):
        topic = TOPICS[i % len(TOPICS)]
        turns = [Turn(speaker=Speaker.CUSTOMER, text=openers[i % 4])]
        depth = i % 4
        for d in range(depth):
            code, text = replies[d]
            turns.append(
                Turn(speaker=Speaker.SUPPORTER, text=text.format(topic=topic), strategy=code)
            )
            turns.append(
                Turn(
                    speaker=Speaker.CUSTOMER,
                    text=f"It is about {topic}.{moods[(i // 4) % 4]}",
                )
            )
        out.append(DialogueHistory.of(turns))
    return out


def label_entropy(counts: dict[str, int]) -> float:
    """Entropy (bits) of a predicted-label distribution: 0 = one label for every request."""
    total = sum(counts.values())
    if not total:
        return 0.0
    return max(0.0, -sum(c / total * math.log2(c / total) for c in counts.values() if c))


def parse_success(lm: Any, calls: int, threads: int) -> dict[str, Any]:
    """Parse success of ``dspy.Predict`` on a strategy-prediction signature over ``calls`` calls."""
    import dspy

    from csc.framework import Framework
    from csc.signatures.types import DialogueHistory

    framework = Framework.load("csc")
    codes = set(framework.codes)

    class NextStrategy(dspy.Signature):
        """Choose the support strategy the supporter should use in the next turn."""

        history: DialogueHistory = dspy.InputField(desc="the conversation so far")
        strategy: framework.strategy_literal = dspy.OutputField(desc="one strategy code")

    predict = dspy.Predict(NextStrategy)
    examples = [dspy.Example(history=h).with_inputs("history") for h in histories(calls)]
    start = time.perf_counter()
    with dspy.context(lm=lm, adapter=dspy.ChatAdapter(use_json_adapter_fallback=False)):
        results, _failed, errors = predict.batch(
            examples,
            num_threads=threads,
            max_errors=calls,
            return_failed_examples=True,
            disable_progress_bar=True,
            timeout=3600,
        )
    elapsed = time.perf_counter() - start
    ok = sum(1 for r in results if r is not None and getattr(r, "strategy", None) in codes)
    counts: dict[str, int] = {}
    for r in results:
        if r is not None:
            counts[r.strategy] = counts.get(r.strategy, 0) + 1
    return {
        "calls": calls,
        "ok": ok,
        "rate": ok / calls,
        "errors": [repr(e)[:200] for e in errors[:3]],
        "seconds": elapsed,
        "distribution": counts,
        "entropy": label_entropy(counts),
    }


# --------------------------------------------------------------------------- native vs transformers
def native_vs_transformers(trials: int = 6) -> dict[str, Any]:
    """Interleaved A/B of the native Llama forward and transformers' on the same weights."""
    import torch

    from csc.engine.engine import Engine
    from csc.engine.model_store import ModelSource

    engines = {}
    before = os.environ.get("CSC_NATIVE_MODEL")
    try:
        for name, flag in (("native", "1"), ("transformers", "0")):
            os.environ["CSC_NATIVE_MODEL"] = flag
            engines[name] = Engine(ModelSource(None), "cpu", torch.float32).load()
    finally:
        if before is None:
            os.environ.pop("CSC_NATIVE_MODEL", None)
        else:
            os.environ["CSC_NATIVE_MODEL"] = before
    layers = engines["native"].model.config.num_hidden_layers
    rows, new, cached, width, steps = 3, 150, 1000, 1300, 10
    gen = torch.Generator().manual_seed(0)
    prefix = [(torch.randn(rows, 3, cached + new, 64, generator=gen),) * 2 for _ in range(layers)]
    ids = torch.randint(100, 40000, (rows, new), generator=gen)
    mask = torch.ones(rows, cached + new, dtype=torch.long)
    positions = torch.arange(cached, cached + new).expand(rows, -1)
    history = [torch.randn(rows, 3, width, 64, generator=gen) for _ in range(layers)]

    def prefill(engine: Any) -> float:
        cache = engine.new_cache([(k, v) for k, v in prefix], cached)
        start = time.perf_counter()
        engine.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            past_key_values=cache,
            logits_to_keep=1,
        )
        return time.perf_counter() - start

    def decode(engine: Any) -> float:
        cache = engine._batch_cache([[h] for h in history], [[h] for h in history])
        step_mask = torch.ones(rows, width, dtype=torch.long)
        step_mask[0, :300] = 0  # a left-padded row
        start = time.perf_counter()
        for i in range(steps):
            step_mask = torch.cat([step_mask, torch.ones(rows, 1, dtype=torch.long)], 1)
            engine.model(
                input_ids=ids[:, i : i + 1],
                attention_mask=step_mask,
                position_ids=torch.full((rows, 1), width + i),
                past_key_values=cache,
                logits_to_keep=1,
            )
        return (time.perf_counter() - start) / steps

    times: dict[str, dict[str, list[float]]] = {n: {"prefill": [], "decode": []} for n in engines}
    with torch.inference_mode():
        for _ in range(trials):
            for name, engine in engines.items():
                times[name]["prefill"].append(prefill(engine))
                times[name]["decode"].append(decode(engine))
    out: dict[str, Any] = {}
    for name in engines:
        for kind in ("prefill", "decode"):
            values = sorted(times[name][kind])
            out[f"{name}_{kind}"] = {"min": values[0], "median": values[len(values) // 2]}
    for kind, label in (
        ("prefill", f"prefill {rows} rows x {new} tokens over {cached} cached"),
        ("decode", f"decode step, {rows} rows over {width} cached"),
    ):
        a, b = out[f"native_{kind}"], out[f"transformers_{kind}"]
        print(
            f"native: {label}: min {1000 * a['min']:.0f} / median {1000 * a['median']:.0f} ms; "
            f"transformers {1000 * b['min']:.0f} / {1000 * b['median']:.0f} ms "
            f"(median ratio {a['median'] / b['median']:.2f})"
        )
    cache = str(_default_cache())
    loads: dict[str, list[float]] = {"native": [], "transformers": []}
    for _ in range(2):
        loads["native"].append(measure_load(cache, native=True)["seconds"])
        loads["transformers"].append(measure_load(cache, native=False)["seconds"])
    out["load"] = loads
    print(
        "native: warm load, fresh processes, alternating: "
        f"{' / '.join(f'{x:.1f}' for x in loads['native'])} s native, "
        f"{' / '.join(f'{x:.1f}' for x in loads['transformers'])} s transformers"
    )
    return out


def quantized_vs_float(engine: Any, trials: int = 5) -> dict[str, Any]:
    """Interleaved A/B of decode steps through the GGUF blocks and through the float32 weights,
    on the same loaded model (the step's ``csc_quantized`` flag is the only difference)."""
    import torch

    from csc.engine.quantized import QUANTIZED_STEP

    if not engine.quantized:
        print(f"quantized: not available ({engine.quantized_note})")
        return {"available": False, "why": engine.quantized_note}
    layers = engine.model.config.num_hidden_layers
    width, steps = 1300, 10
    gen = torch.Generator().manual_seed(0)
    history = [torch.randn(16, 3, width, 64, generator=gen) for _ in range(layers)]
    ids = torch.randint(100, 40000, (16, steps + 8), generator=gen)

    weights = [m.quantized for m in engine.model.modules() if hasattr(m, "quantized")]
    int8 = [w for w in weights if w.prefill]  # prompt tokens on the blocks (int8 activations)

    def step(rows: int, fed: int, quantized: bool) -> float:
        for weight in int8:  # the float32 side multiplies by the float32 weights throughout
            weight.prefill = quantized
        part = [h[:rows] for h in history]
        cache = engine._batch_cache([[h] for h in part], [[h] for h in part])
        mask = torch.ones(rows, width, dtype=torch.long)
        start = time.perf_counter()
        for i in range(steps):
            mask = torch.cat([mask, torch.ones(rows, fed, dtype=torch.long)], 1)
            engine.model(
                input_ids=ids[:rows, i : i + fed],
                attention_mask=mask,
                position_ids=torch.arange(width + i * fed, width + (i + 1) * fed).expand(rows, -1),
                past_key_values=cache,
                logits_to_keep=1,
                **{QUANTIZED_STEP: quantized},
            )
        return (time.perf_counter() - start) / steps

    shapes = [(1, 1), (3, 1), (8, 1), (16, 1), (3, 8)]
    times: dict[tuple[int, int, bool], list[float]] = {}
    with torch.inference_mode():
        for _ in range(trials):
            for rows, fed in shapes:
                for quantized in (True, False):
                    times.setdefault((rows, fed, quantized), []).append(step(rows, fed, quantized))
    for weight in int8:
        weight.prefill = True
    out: dict[str, Any] = {"available": True, "int8": engine.int8}
    for rows, fed in shapes:
        q = sorted(times[(rows, fed, True)])[trials // 2]
        f = sorted(times[(rows, fed, False)])[trials // 2]
        out[f"{rows}x{fed}"] = {"blocks_ms": 1000 * q, "float_ms": 1000 * f}
        print(
            f"quantized: decode step, {rows} rows x {fed} token(s) over {width} cached: "
            f"median {1000 * q:.0f} ms through blocks ({'int8' if engine.int8 else 'float32'} "
            f"activations), {1000 * f:.0f} ms float32 "
            f"({f / q:.2f}x)"
        )
    return out


# --------------------------------------------------------------------------- raw forward limit
def raw_prefill(engine: Any, threads: int, tokens: int = 512, trials: int = 3) -> float:
    """Prompt tokens/s of a plain ``model(input_ids)`` forward (batch 1) with ``threads``."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        ids = torch.randint(100, 40000, (1, tokens))
        best = float("inf")
        with torch.inference_mode():
            engine.model(input_ids=ids[:, :32])  # warm-up
            for _ in range(trials):
                start = time.perf_counter()
                engine.model(input_ids=ids)
                best = min(best, time.perf_counter() - start)
        return tokens / best
    finally:
        torch.set_num_threads(before)


def kernels(engine: Any) -> dict[str, Any]:
    """Packed vs plain matmuls over the model's linear layers, and one-query attention vs SDPA."""
    import torch
    import torch.nn.functional as F

    from csc.engine.kernels import PackedLinear, _one_query_attention

    def best_ms(fn: Any, trials: int = 5) -> float:
        fn()
        times = []
        for _ in range(trials):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return min(times) * 1000

    layers = [m for m in engine.model.modules() if isinstance(m, PackedLinear)]
    out: dict[str, Any] = {"linear_layers": len(layers), "rows": {}}
    with torch.inference_mode():
        for rows in (1, 3, 16, 48):
            inputs = {n: torch.randn(1, rows, n) for n in {m.in_features for m in layers}}

            def plain(inputs: dict = inputs) -> None:
                for m in layers:
                    F.linear(inputs[m.in_features], m.weight, m.bias)

            def packed(inputs: dict = inputs) -> None:
                for m in layers:
                    m(inputs[m.in_features])

            result = {"linear_ms": 1e9, "packed_ms": 1e9}
            for _ in range(5):  # interleaved, best of each
                result["linear_ms"] = min(result["linear_ms"], best_ms(plain, 1))
                result["packed_ms"] = min(result["packed_ms"], best_ms(packed, 1))
            out["rows"][rows] = result
            print(
                f"kernels: {len(layers)} linear layers at {rows:2d} rows: F.linear "
                f"{result['linear_ms']:.1f} ms, packed {result['packed_ms']:.1f} ms"
            )
        config = engine.model.config
        heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
        dim = config.hidden_size // heads
        keys = torch.randn(3, kv_heads, 1300 + 64, dim)[:, :, :1300]  # a strided cache view
        values = torch.randn(3, kv_heads, 1300 + 64, dim)[:, :, :1300]
        query = torch.randn(3, 1, heads, dim).transpose(1, 2)
        mask = torch.ones(3, 1, 1, 1300, dtype=torch.bool)
        mask[0, ..., :300] = False  # a left-padded row
        sdpa = lambda: F.scaled_dot_product_attention(  # noqa: E731
            query, keys, values, attn_mask=mask, enable_gqa=kv_heads != heads
        )
        mine = lambda: _one_query_attention(query, keys, values, mask, None)  # noqa: E731
        sdpa_ms = min(best_ms(lambda: [sdpa() for _ in range(50)]) for _ in range(3)) / 50
        mine_ms = min(best_ms(lambda: [mine() for _ in range(50)]) for _ in range(3)) / 50
        out["attention"] = {"sdpa_ms": sdpa_ms, "one_query_ms": mine_ms}
        print(
            f"kernels: one-query attention, 3 rows x 1,300 cached tokens, per layer: SDPA "
            f"{sdpa_ms:.2f} ms, two matmuls {mine_ms:.2f} ms"
        )
    return out


# --------------------------------------------------------------------------- prefix-heavy
# Runs in this process, or (for --baseline-rev) in a subprocess on another revision's code: it
# uses only what both the old and the new LocalLM offer.
PREFIX_SNIPPET = r"""
import json, sys, time
import dspy
from csc.dialogue import Speaker, Turn
from csc.engine import LocalLM
from csc.programs.supporter import StrategyPredictor
from csc.signatures.types import DialogueHistory

requests, concurrency = int(sys.argv[1]), int(sys.argv[2])
topics = ["a blocked bank card", "a delayed refund", "a password reset that does not arrive",
          "a double charge on a credit card", "an app that crashes at login",
          "a loan interest question", "a missing loyalty bonus", "a suspicious transaction"]
replies = ["Hello, thank you for contacting us. How can I help you today?",
           "Could you please confirm your account number and full name?",
           "So the problem is that {t}, is that right?",
           "I understand how frustrating this is. Let me check it for you.",
           "When did you first notice {t}?",
           "Thank you. I can see the case in our system now."]
customer = ["Hi, I need help with {t}.", "Sure, it is 4411-2290, Maria Lopez.",
            "Yes, exactly. It has been going on for days!", "Please hurry, I need it today.",
            "Since Monday morning.", "Great, what happens next?"]

def history(dialogue, turns):
    # Each dialogue's histories grow turn by turn, as in a synthesis run.
    t = topics[dialogue % len(topics)]
    out = [Turn(speaker=Speaker.CUSTOMER, text=customer[0].format(t=t))]
    for k in range(turns):
        out.append(Turn(speaker=Speaker.SUPPORTER, text=replies[k].format(t=t)))
        out.append(Turn(speaker=Speaker.CUSTOMER, text=customer[k + 1].format(t=t)))
    return DialogueHistory.of(out)

per = max(1, requests // 8)
examples = [dspy.Example(history=history(d, k)).with_inputs("history")
            for d in range(8) for k in range(per)][:requests]
lm = LocalLM(cache=False, max_tokens=32)
program = StrategyPredictor("csc")
adapter = dspy.ChatAdapter(use_json_adapter_fallback=False)
with dspy.context(lm=lm, adapter=adapter):
    program(history=history(99, 0))  # load and warm up (a history of no dialogue below)
engine = getattr(lm, "batch_engine", None)
before = {k: getattr(engine, k, 0) for k in ("prefill_tokens", "prefill_seconds", "cached_tokens")}
lm.history.clear()
start = time.perf_counter()
with dspy.context(lm=lm, adapter=adapter):
    results = program.batch(examples, num_threads=concurrency, disable_progress_bar=True,
                            max_errors=requests, timeout=3600)
seconds = time.perf_counter() - start
usage = [e.get("usage") or {} for e in lm.history]
out = {"requests": requests, "concurrency": concurrency, "seconds": seconds,
       "ok": sum(1 for r in results if r is not None),
       "prompt_tokens": sum(u.get("prompt_tokens", 0) for u in usage),
       "completion_tokens": sum(u.get("completion_tokens", 0) for u in usage)}
if engine is not None:
    out.update({k: getattr(engine, k) - v for k, v in before.items()})
    import torch
    out["threads"] = torch.get_num_threads()
else:
    import torch
    out["threads"] = torch.get_num_threads()
print("RESULT " + json.dumps(out), flush=True)
import os
os._exit(0)  # skip interpreter teardown: an engine worker thread may still hold torch
"""


# Child processes run from a neutral folder: ``python -c`` and ``python -m`` put the current
# folder first on sys.path, so run from the repository root they would import its ``csc``
# whatever PYTHONPATH says, and a --baseline-rev run would measure the working tree again.
# (Before this was fixed, every --baseline-rev comparison run from the repository root did.)
NEUTRAL_CWD = tempfile.gettempdir()
REPO_ROOT = Path(__file__).resolve().parents[1]


def child_env(stage: str | None = None, **extra: str) -> dict[str, str]:
    """The environment of a child process that imports the staged revision ``stage`` (or, with
    None, this working tree through its editable install); checked, not assumed."""
    env = {**os.environ, **extra}
    if stage:
        env["PYTHONPATH"] = stage
    where = subprocess.run(
        [sys.executable, "-c", "import csc; print(csc.__file__)"],
        env=env,
        cwd=NEUTRAL_CWD,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    expected = Path(stage).resolve() if stage else REPO_ROOT
    if not Path(where).resolve().is_relative_to(expected):
        raise RuntimeError(
            f"a benchmark child process imports csc from {where}, not {expected}: "
            + (
                f"the staged revision in {stage} is not first on its path"
                if stage
                else "install this working tree with `pip install -e .`"
            )
        )
    return env


def run_snippet(snippet: str, args: list[str], env: dict[str, str] | None = None) -> dict:
    """Run a benchmark snippet in a fresh process (from a neutral folder, with ``env`` from
    :func:`child_env`); its last ``RESULT {...}`` line."""
    out = subprocess.run(
        [sys.executable, "-c", snippet, *args],
        env=env if env is not None else child_env(),
        cwd=NEUTRAL_CWD,
        capture_output=True,
        text=True,
    )
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
    if out.returncode != 0 or not lines:
        raise RuntimeError(f"benchmark subprocess failed: {out.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT ") :])


def stage_revision(rev: str, into: str) -> str:
    """A PYTHONPATH folder holding the ``csc`` package of git revision ``rev``.

    The repository maps top-level folders into ``csc`` (``programs`` -> ``csc.programs``...,
    see pyproject's package-dir); the staged copy is laid out as installed.
    """
    import re
    import shutil

    repo = subprocess.run(
        ["git", "rev-parse", "--show-toplevel"], capture_output=True, text=True, check=True
    ).stdout.strip()
    src = os.path.join(into, "src")
    os.makedirs(src)
    archive = subprocess.run(["git", "-C", repo, "archive", rev], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", src], input=archive.stdout, check=True)
    stage = os.path.join(into, "stage")
    shutil.copytree(os.path.join(src, "csc"), os.path.join(stage, "csc"))
    with open(os.path.join(src, "pyproject.toml"), encoding="utf-8") as f:
        pyproject = f.read()
    section = pyproject.split("[tool.setuptools.package-dir]", 1)[-1].split("\n[", 1)[0]
    for package, folder in re.findall(r'^"(csc\.[\w.]+)"\s*=\s*"([^"]+)"', section, re.M):
        target = os.path.join(stage, *package.split("."))
        shutil.copytree(os.path.join(src, folder), target, dirs_exist_ok=True)
    return stage


def prefix_heavy(
    args: Any, report: dict[str, Any], raw2: float | None, raws: dict[str, float] | None = None
) -> None:
    """32 strategy predictions over growing histories, 8 in flight, prompt tokens/s."""
    here = run_snippet(PREFIX_SNIPPET, [str(args.requests), str(args.concurrency)])
    report["prefix"] = here
    eff = here["prompt_tokens"] / here["seconds"]
    print(
        f"prefix-heavy      : {here['requests']} StrategyPredictor calls, {here['concurrency']} "
        f"in flight, {here['ok']} ok, {here['seconds']:.1f} s, threads {here['threads']}"
    )
    print(
        f"  prompt tokens   : {here['prompt_tokens']} ({here.get('cached_tokens', 0)} from the "
        f"prefix cache, {here.get('prefill_tokens', 0)} computed)"
    )
    print(f"  effective       : {eff:.0f} prompt tokens/s")
    if here.get("prefill_seconds"):
        uncached = here["prefill_tokens"] / here["prefill_seconds"]
        line = f"  uncached part   : {uncached:.0f} tokens/s prefilled"
        if raw2:
            line += f" = {uncached / raw2:.2f} of the raw 2-thread forward (target >= 0.8)"
        same = (raws or {}).get(str(here["threads"]))
        if same and here["threads"] != 2:
            line += f", {uncached / same:.2f} of the raw forward at {here['threads']} thread(s)"
        print(line)
    if args.baseline_rev:
        with tempfile.TemporaryDirectory(prefix="csc-bench-rev-") as tmp:
            stage = stage_revision(args.baseline_rev, tmp)
            base = run_snippet(
                PREFIX_SNIPPET,
                [str(args.requests), str(args.concurrency)],
                env=child_env(stage),
            )
        report["prefix_baseline"] = base
        base_eff = base["prompt_tokens"] / base["seconds"]
        print(
            f"  baseline {args.baseline_rev}: {base['seconds']:.1f} s, {base_eff:.0f} prompt "
            f"tokens/s, threads {base['threads']} -> {eff / base_eff:.2f}x (target >= 3x)"
        )


def threads_comparison(args: Any, report: dict[str, Any]) -> None:
    """The same DSPy workload with 1 and with all cores' threads, interleaved, fresh processes."""
    cores = os.cpu_count() or 1
    results: dict[int, list[float]] = {1: [], cores: []}
    for _ in range(args.thread_trials):
        for threads in (1, cores):
            snippet = PREFIX_SNIPPET.replace(
                "LocalLM(cache=False, max_tokens=32)",
                f"LocalLM(cache=False, max_tokens=32, num_threads={threads})",
            )
            r = run_snippet(snippet, [str(args.thread_requests), str(args.concurrency)])
            results[threads].append(r["seconds"])
    best = {t: min(v) for t, v in results.items()}
    report["threads"] = results
    from csc.engine.engine import default_threads

    faster = min(best, key=best.get)  # type: ignore[arg-type]
    print(
        f"threads (DSPy)    : {args.thread_requests} StrategyPredictor calls: 1 thread "
        f"{best[1]:.1f} s, {cores} threads {best[cores]:.1f} s (best of {args.thread_trials}) "
        f"-> {faster} faster; default_threads() now picks {default_threads()} "
        f"(load average {os.getloadavg()[0]:.1f})"
    )


# --------------------------------------------------------------------------- csc serve
def serve_vs_in_process(args: Any, report: dict[str, Any]) -> None:
    """Completion tokens/s of 32 concurrent clients: over HTTP to ``csc serve`` vs in-process."""
    import socket
    import urllib.request

    from csc.engine import LocalLM

    clients = args.serve_clients
    prompts = [
        f"Write a friendly, detailed paragraph a support agent could send about "
        f"{TOPICS[i % len(TOPICS)]} (case {i})."
        for i in range(clients)
    ]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "csc",
            "serve",
            "--port",
            str(port),
            "--quiet",
            "--max-batch-size",
            "32",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    try:
        for _ in range(600):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except OSError:
                time.sleep(0.5)

        def http_call(prompt: str) -> int:
            body = json.dumps(
                {
                    "model": "local/smollm2-135m-instruct",
                    "messages": [{"role": "user", "content": prompt}],
                    "max_tokens": args.max_tokens,
                }
            ).encode()
            req = urllib.request.Request(url, data=body, method="POST")
            with urllib.request.urlopen(req, timeout=3600) as r:
                return json.loads(r.read())["usage"]["completion_tokens"]

        http_call("Hello")  # warm-up
        errors = 0
        start = time.perf_counter()
        with ThreadPoolExecutor(max_workers=clients) as pool:
            futures = [pool.submit(http_call, p) for p in prompts]
        tokens = 0
        first_error = ""
        for f in futures:
            try:
                tokens += f.result()
            except Exception as exc:
                errors += 1
                first_error = first_error or repr(exc)[:200]
        served = tokens / (time.perf_counter() - start)
    finally:
        server.terminate()
        server.wait(timeout=60)
    lm = LocalLM(cache=False)  # the engine main() loaded: same options as the server's
    lm("Hello", max_tokens=4)
    lm.history.clear()
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=clients) as pool:
        list(pool.map(lambda p: lm(p, max_tokens=args.max_tokens), prompts))
    local = _completion_tokens(lm) / (time.perf_counter() - start)
    report["serve"] = {"served_tps": served, "in_process_tps": local, "errors": errors}
    print(
        f"csc serve         : {clients} concurrent clients {served:.1f} tokens/s over HTTP, "
        f"{local:.1f} in-process -> {served / local:.2f} (target >= 0.85), {errors} errors"
        + (f" (first: {first_error})" if errors else "")
    )


# --------------------------------------------------------------------------- README command
README_COMMAND = [
    "synthesize",
    "--dialogues",
    "3",
    "--concurrency",
    "3",
    "--max-utterances",
    "12",
    "--lm",
    "local",
]


def readme_command(args: Any, report: dict[str, Any]) -> None:
    """Wall time of the README's main command with a fresh DSPy cache (and on a baseline rev)."""

    def run(pythonpath: str | None) -> float:
        with tempfile.TemporaryDirectory(prefix="csc-bench-readme-") as tmp:
            env = child_env(pythonpath, DSPY_CACHEDIR=os.path.join(tmp, "dspy-cache"))
            command = [sys.executable, "-m", "csc", *README_COMMAND, "--out", f"{tmp}/out"]
            start = time.perf_counter()
            subprocess.run(command, env=env, cwd=NEUTRAL_CWD, check=True, capture_output=True)
            return time.perf_counter() - start

    runs: dict[str, float] = {}
    for _ in range(args.readme_trials):
        runs.setdefault("this", float("inf"))
        runs["this"] = min(runs["this"], run(None))
        if args.baseline_rev:
            with tempfile.TemporaryDirectory(prefix="csc-bench-rev-") as tmp:
                stage = stage_revision(args.baseline_rev, tmp)
                runs.setdefault("baseline", float("inf"))
                runs["baseline"] = min(runs["baseline"], run(stage))
    report["readme"] = runs
    line = f"README command    : csc {' '.join(README_COMMAND)}: {runs['this']:.0f} s"
    if "baseline" in runs:
        line += (
            f"; {args.baseline_rev}: {runs['baseline']:.0f} s -> "
            f"{runs['this'] / runs['baseline']:.0%} of its time (target <= 40%)"
        )
    print(line)


SCENARIOS = (
    "load",
    "throughput",
    "parse",
    "raw",
    "kernels",
    "native",
    "quantized",
    "prefix",
    "threads",
    "serve",
    "readme",
)


def main() -> None:
    """Run the benchmark and print a report."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer requests, no cold load")
    parser.add_argument("--max-tokens", type=int, default=64, help="completion length (throughput)")
    parser.add_argument(
        "--only",
        default=None,
        help=f"comma-separated scenarios among {', '.join(SCENARIOS)} (default: all; readme "
        "only with --baseline-rev)",
    )
    parser.add_argument(
        "--baseline-rev",
        default=None,
        help="git revision to compare with (prefix and readme scenarios), e.g. HEAD~3",
    )
    parser.add_argument("--requests", type=int, default=32, help="prefix-heavy requests")
    parser.add_argument("--concurrency", type=int, default=8, help="prefix-heavy concurrency")
    parser.add_argument("--thread-requests", type=int, default=16, help="threads scenario size")
    parser.add_argument("--thread-trials", type=int, default=2, help="threads scenario trials")
    parser.add_argument("--serve-clients", type=int, default=32, help="serve scenario clients")
    parser.add_argument("--readme-trials", type=int, default=1, help="README command trials")
    args = parser.parse_args()
    if args.only is None:
        chosen = [s for s in SCENARIOS if s != "readme" or args.baseline_rev]
    else:
        chosen = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(chosen) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenarios {sorted(unknown)}; choose among {', '.join(SCENARIOS)}")

    import logging

    import torch

    from csc.engine import LocalLM

    # DSPy logs every completion cut at max_tokens; the throughput runs cut all of them.
    logging.getLogger("dspy.clients.lm").setLevel(logging.ERROR)
    print(
        f"cpu cores: {os.cpu_count()}, load average at start: "
        f"{', '.join(f'{x:.1f}' for x in os.getloadavg())}"
    )
    report: dict[str, Any] = {}
    if "load" in chosen:
        if not args.quick:
            with tempfile.TemporaryDirectory(prefix="csc-bench-cache-") as tmp:
                report["load_cold"] = measure_load(tmp)
                report["load_warm"] = measure_load(tmp)
        else:
            report["load_warm"] = measure_load(str(_default_cache()))

    lm = LocalLM(cache=False)
    engine = lm.batch_engine  # load before timing anything
    print(f"torch threads: {torch.get_num_threads()} (engine default)")
    raw2 = None
    if "raw" in chosen or "prefix" in chosen:
        raw1 = raw_prefill(engine, 1)
        raw2 = raw_prefill(engine, 2)
        report["raw"] = {"1": raw1, "2": raw2}
        print(f"raw forward       : {raw1:.0f} prompt tokens/s with 1 thread, {raw2:.0f} with 2")
    if "kernels" in chosen:
        report["kernels"] = kernels(engine)
    if "native" in chosen:
        report["native"] = native_vs_transformers()
    if "quantized" in chosen:
        report["quantized"] = quantized_vs_float(engine)
    if "throughput" in chosen:
        lm("Hello", max_tokens=4)  # warm-up
        # The machine may be shared: run the levels interleaved, several times, and keep each
        # level's best trial (the least disturbed one).
        trials = 2 if args.quick else 3
        best: dict[int, dict[str, float]] = {}
        for _ in range(trials):
            for c in (1, 4, 16):
                lm.history.clear()
                r = throughput(lm, c, 2 if c == 1 else 1, args.max_tokens)
                if c not in best or r["tps"] > best[c]["tps"]:
                    best[c] = r
        for c, r in best.items():
            report[f"tps_{c}"] = r
            print(
                f"concurrency {c:>2}: {r['tps']:7.1f} tokens/s "
                f"({r['tokens']} tokens, {r['requests']} requests, {r['seconds']:.1f} s; "
                f"best of {trials})"
            )
        print(
            f"batches           : {engine.batches_run} admissions for {engine.requests_served} "
            f"requests (largest batch {engine.largest_batch}, {engine.joined_running} joined "
            "a running batch)"
        )
        ratio = report["tps_16"]["tps"] / report["tps_1"]["tps"]
        print(f"ratio 16:1        : {ratio:.2f}x (target >= 6)")
    if "parse" in chosen:
        lm.history.clear()
        parse_lm = LocalLM(cache=False, max_tokens=32)
        calls = 20 if args.quick else 100
        p = parse_success(parse_lm, calls, threads=16)
        print(
            f"parse success     : {p['ok']}/{p['calls']} = {100 * p['rate']:.1f}% "
            f"(target >= 99%) in {p['seconds']:.1f} s; strategies {p['distribution']}, "
            f"entropy {p['entropy']:.2f} bits (max {math.log2(12):.2f} for 12 labels)"
        )
        if p["errors"]:
            print(f"  first errors: {p['errors']}")
    if "load" in chosen:
        if "load_cold" in report:
            print(
                f"load cold         : {report['load_cold']['seconds']:.1f} s "
                f"(GGUF conversion into a fresh cache, imports included; engine "
                f"{report['load_cold']['engine_seconds']:.1f} s)"
            )
        warm = report["load_warm"]
        print(
            f"load warm         : {warm['seconds']:.1f} s (target <= 10 s; of which weights "
            f"{warm['engine_seconds']:.1f} s, the rest imports)"
        )
    if "prefix" in chosen:
        prefix_heavy(args, report, raw2, report.get("raw"))
    if "threads" in chosen:
        threads_comparison(args, report)
    if "serve" in chosen:
        serve_vs_in_process(args, report)
    if "readme" in chosen:
        readme_command(args, report)
    if "readme" not in chosen:
        print("README command    : not run; add --baseline-rev REV (or --only readme) to time it")
    print(f"load average at end: {', '.join(f'{x:.1f}' for x in os.getloadavg())}")


def _default_cache() -> Any:
    from csc.engine import cache_dir

    return cache_dir()


if __name__ == "__main__":
    main()
