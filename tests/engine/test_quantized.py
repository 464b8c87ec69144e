"""Decode steps through GGUF blocks: the kernel's sums, batch invariance, the packed file, the
ways out when there is no compiler."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from csc.engine import quantized  # noqa: E402
from csc.engine.quantized import (  # noqa: E402
    BLOCK_BYTES,
    QUANTIZED_STEP,
    QuantizedWeight,
    kernel_library,
)

local_lm = pytest.mark.local_lm


def _kernel():
    lib, why = kernel_library()
    if lib is None:
        pytest.skip(f"no kernel on this machine: {why}")
    return lib


def q4_1_blocks(weight: torch.Tensor) -> QuantizedWeight:
    """Quantise a float matrix to Q4_1 blocks in the kernel's layout (as llama.cpp does)."""
    rows, width = weight.shape
    blocks = weight.reshape(rows, width // 32, 32)
    low, high = blocks.amin(-1), blocks.amax(-1)
    d = ((high - low) / 15).half().float()
    m = low.half().float()
    q = (
        ((blocks - m[..., None]) / d.clamp(min=1e-8)[..., None])
        .round()
        .clamp(0, 15)
        .to(torch.uint8)
    )
    nibbles = q[..., :16] | (q[..., 16:] << 4)
    packed = torch.cat(
        [d[..., None].view(torch.uint8), m[..., None].view(torch.uint8), nibbles], dim=-1
    )
    return QuantizedWeight(packed.reshape(rows, -1), "Q4_1", width)


def q8_0_blocks(weight: torch.Tensor) -> QuantizedWeight:
    rows, width = weight.shape
    blocks = weight.reshape(rows, width // 32, 32)
    d = (blocks.abs().amax(-1) / 127).half().float()
    q = (blocks / d.clamp(min=1e-8)[..., None]).round().clamp(-127, 127).to(torch.int8)
    packed = torch.cat([d[..., None].view(torch.uint8), q.view(torch.uint8)], dim=-1)
    return QuantizedWeight(packed.reshape(rows, -1), "Q8_0", width)


@pytest.mark.parametrize("make", [q4_1_blocks, q8_0_blocks])
def test_kernel_gives_the_float_product_of_the_same_weights(make) -> None:
    lib = _kernel()
    torch.manual_seed(0)
    weight = make(torch.randn(200, 96)).bind(lib)
    dense = weight.dequantize()
    for rows in (1, 2, 3, 4, 5, 8, 9, 14):
        x = torch.randn(rows, 96)
        torch.testing.assert_close(weight.matmul(x), x @ dense.T, rtol=1e-5, atol=1e-5)
    # Leading dimensions are kept, as nn.Linear keeps them.
    assert weight.matmul(torch.randn(2, 3, 96)).shape == (2, 3, 200)


@pytest.mark.parametrize("int8", [False, True])
@pytest.mark.parametrize("make", [q4_1_blocks, q8_0_blocks])
def test_a_rows_result_does_not_depend_on_the_batch_or_threads(make, int8: bool) -> None:
    """Every tile shape (1-8 rows; 1-4 outputs, or 16 with int8 activations) adds in the same
    order: bit-identical rows."""
    lib = _vnni() if int8 else _kernel()
    torch.manual_seed(1)
    # float: 67 outputs, tiles and a remainder; int8: groups of 16 outputs
    weight = make(torch.randn(48 if int8 else 67, 64)).bind(lib, prefill=int8)
    assert (weight.i8 is not None) == int8
    x = torch.randn(19, 64)
    alone = torch.cat([weight.matmul(x[i : i + 1]) for i in range(19)])
    threads = torch.get_num_threads()
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            for rows in (2, 3, 4, 5, 7, 8, 9, 11, 16, 17, 19):
                assert torch.equal(weight.matmul(x[:rows]), alone[:rows]), (rows, n)
    finally:
        torch.set_num_threads(threads)


def test_dequantize_reads_the_kernels_layout() -> None:
    weight = torch.tensor([[float(i % 16) * 0.5 - 1.0 for i in range(32)]])
    blocks = q4_1_blocks(weight)
    assert blocks.blocks.shape == (1, BLOCK_BYTES["Q4_1"])
    assert torch.equal(blocks.dequantize(), weight)  # exactly representable: d=0.5, m=-1


def test_bad_block_shapes_are_refused() -> None:
    with pytest.raises(ValueError, match="Q4_1 blocks of shape"):
        QuantizedWeight(torch.zeros(4, 23, dtype=torch.uint8), "Q4_1", 32)
    with pytest.raises(ValueError, match="unsupported block type"):
        QuantizedWeight(torch.zeros(4, 18, dtype=torch.uint8), "Q4_K", 32)


@pytest.mark.parametrize(
    ("cc", "reason"), [("/nonexistent/cc", "no C compiler"), ("false", "does not run|failed")]
)
def test_without_a_working_compiler_the_engine_says_why(
    monkeypatch, tmp_path: Path, cc: str, reason: str
) -> None:
    monkeypatch.setenv("CC", cc)
    monkeypatch.setenv("CSC_CACHE_DIR", str(tmp_path))
    lib, why = quantized._load_library()
    assert lib is None
    assert re.search(reason, why), why
    assert not list(tmp_path.rglob("*.so"))  # no half-built library left behind


def test_turned_off_by_environment(monkeypatch) -> None:
    monkeypatch.setenv("CSC_QUANTIZED", "0")
    assert quantized.attach(object(), Path("x.gguf"), Path(".")) == "CSC_QUANTIZED=0"


@torch.inference_mode()
def test_native_forward_on_blocks_matches_its_float_weights(tmp_path: Path) -> None:
    """A tiny Llama whose float weights are its blocks de-quantised: a decode step through the
    blocks gives the float forward's logits (to float32 rounding)."""
    from test_native_llama import _load, _save_tiny_llama

    lib = _kernel()
    _save_tiny_llama(tmp_path)
    model = _load(tmp_path)
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            blocks = (q8_0_blocks if name == "lm_head" else q4_1_blocks)(module.weight)
            module.weight.copy_(blocks.dequantize())  # the same model, as in the GGUF file
            module.quantized = blocks.bind(lib)
    ids = torch.randint(3, 97, (3, 10))
    mask = torch.ones(3, 10, dtype=torch.long)
    outs = {}
    for on in (False, True):
        cache = model(input_ids=ids[:, :9], attention_mask=mask[:, :9]).past_key_values
        outs[on] = model(
            input_ids=ids[:, 9:],
            attention_mask=mask,
            past_key_values=cache,
            **{QUANTIZED_STEP: on},
        ).logits
    torch.testing.assert_close(outs[True], outs[False], rtol=1e-4, atol=1e-4)


@local_lm
def test_embedded_engine_decodes_through_blocks_and_reuses_the_packed_file(monkeypatch) -> None:
    from csc.engine.decoding import Sampling
    from csc.engine.engine import Engine
    from csc.engine.model_store import ModelSource, embedded_model_dir

    _kernel()  # a machine without a compiler or AVX-512 decodes in float32 (tested above)
    engine = Engine(ModelSource(None), "cpu", torch.float32).load()
    assert engine.quantized, engine.quantized_note
    packed = embedded_model_dir() / quantized.PACKED_FILE
    assert packed.exists()
    before = packed.stat().st_mtime_ns
    again = Engine(ModelSource(None), "cpu", torch.float32).load()
    assert again.quantized and packed.stat().st_mtime_ns == before  # read, not rebuilt
    prompts = [
        [{"role": "user", "content": "Say hello to a customer."}],
        [{"role": "user", "content": "The package arrived damaged. I want a refund now!"}],
        [{"role": "user", "content": "What is the capital of France?"}],
    ]
    sampling = Sampling(max_tokens=32, temperature=0.7, seed=7)
    batched = [engine.submit(engine.encode_messages(m), None, sampling) for m in prompts]
    batched_text = [f.result(timeout=300).text for f in batched]
    alone = [
        again.submit(again.encode_messages(m), None, sampling).result(timeout=300).text
        for m in prompts
    ]
    assert batched_text == alone  # int8 activations where the CPU has VNNI, or float32
    monkeypatch.setenv("CSC_QUANTIZED", "float")
    floats = Engine(ModelSource(None), "cpu", torch.float32).load()
    assert floats.quantized and not floats.int8
    monkeypatch.setenv("CSC_QUANTIZED", "0")
    dense = Engine(ModelSource(None), "cpu", torch.float32).load()
    assert not dense.quantized and dense.quantized_note == "CSC_QUANTIZED=0"
    greedy = Sampling(max_tokens=32, temperature=0.0)
    for prompt in prompts:  # float activations on the blocks: the float32 model's answers
        ids = engine.encode_messages(prompt)
        on_blocks = floats.submit(ids, None, greedy).result(timeout=300).text
        assert on_blocks == dense.submit(ids, None, greedy).result(timeout=300).text
    for engine_ in (engine, again, floats, dense):
        engine_.close()


@local_lm
@torch.inference_mode()
def test_embedded_model_with_int8_activations_stays_the_float32_model() -> None:
    """Teacher-forced over a text, int8 activations move the next-token distribution by a few
    thousandths of a nat (llama.cpp's arithmetic for this file), not to another model."""
    from csc.engine.engine import Engine
    from csc.engine.model_store import ModelSource

    lib = _kernel()
    if not lib.csc_kernel_vnni():
        pytest.skip("no AVX-512 VNNI: int8 activations are not used here")
    engine = Engine(ModelSource(None), "cpu", torch.float32).load()
    assert engine.int8
    text = (Path(__file__).parents[2] / "README.md").read_text(encoding="utf-8")[:3000]
    ids = torch.tensor([engine.tokenizer(text)["input_ids"][:300]])

    def log_probs() -> torch.Tensor:
        out = engine.model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0]
        return torch.log_softmax(out.double(), -1)

    int8 = log_probs()
    weights = [m.quantized for m in engine.model.modules() if hasattr(m, "quantized")]
    try:
        for weight in weights:
            weight.prefill = False
        floats = log_probs()
    finally:
        for weight in weights:
            weight.prefill = True
    kl = (floats.exp() * (floats - int8)).sum(-1)
    assert float(kl.mean()) < 0.02, float(kl.mean())
    assert float((floats.argmax(-1) == int8.argmax(-1)).double().mean()) > 0.9
    engine.close()


def _vnni():
    lib = _kernel()
    if not lib.csc_kernel_vnni():
        pytest.skip("this CPU has no AVX-512 VNNI (int8 activations)")
    return lib


def _exact_activations(rows: int, width: int) -> torch.Tensor:
    """Activations that quantise exactly: per block of 32, multiples of 1/64 with one of
    magnitude 127/64 (so the block's scale is 1/64 and every value is a whole step)."""
    x = torch.randint(-127, 128, (rows, width // 32, 32)).float()
    x[..., 5] = 127.0 * torch.where(torch.rand(rows, width // 32) < 0.5, -1.0, 1.0)
    return (x / 64).reshape(rows, width)


@pytest.mark.parametrize("make", [q4_1_blocks, q8_0_blocks])
def test_int8_kernel_gives_the_exact_product_of_quantised_activations(make) -> None:
    lib = _vnni()
    torch.manual_seed(5)
    weight = make(torch.randn(64, 96)).bind(lib, prefill=True)
    assert weight.i8 is not None and weight.prefill
    dense = weight.dequantize().double()
    for rows in (1, 3, 8, 9, 30):
        x = _exact_activations(rows, 96)
        expected = (x.double() @ dense.T).float()
        torch.testing.assert_close(weight.matmul(x), expected, rtol=1e-5, atol=1e-4)
    assert torch.equal(weight.matmul(torch.zeros(2, 96)), torch.zeros(2, 64))
    # Not a multiple of 16 outputs: float32 activations on the blocks instead.
    odd = make(torch.randn(20, 96)).bind(lib, prefill=True)
    assert odd.i8 is None and not odd.prefill


def test_quantized_mode_reads_the_environment(monkeypatch) -> None:
    for value, mode in (("", "int8"), ("1", "int8"), ("float", "float"), ("off", "off")):
        monkeypatch.setenv("CSC_QUANTIZED", value)
        assert quantized.quantized_mode() == mode
    monkeypatch.setenv("CSC_QUANTIZED", "fp8")
    with pytest.raises(ValueError, match="CSC_QUANTIZED='fp8': use 1"):
        quantized.quantized_mode()


@torch.inference_mode()
def test_int8_forward_is_batch_invariant_and_close_to_the_float_forward(tmp_path: Path) -> None:
    """On int8 activations, prompt tokens (each row attending over only its own columns) and
    decode steps give a row the same numbers alone and in a left-padded batch, and logits near
    the float forward's."""
    lib = _vnni()
    model = _tiny_on_blocks(tmp_path, lib, prefill=True)
    assert all(layer.mlp.down_proj.quantized.i8 is not None for layer in model.model.layers)
    torch.manual_seed(7)
    ids = torch.randint(3, 97, (3, 12))
    lengths = (12, 7, 10)
    mask = torch.zeros(3, 12, dtype=torch.long)
    for b, n in enumerate(lengths):
        mask[b, 12 - n :] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)

    def run(rows: slice, on: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        out = model(
            input_ids=ids[rows, :11],
            attention_mask=mask[rows, :11],
            position_ids=positions[rows, :11],
        )
        step = model(
            input_ids=ids[rows, 11:],
            attention_mask=mask[rows],
            position_ids=positions[rows, 11:],
            past_key_values=out.past_key_values,
            **{QUANTIZED_STEP: on},
        )
        return out.logits, step.logits

    prefill, decode = run(slice(0, 3))
    for b, n in enumerate(lengths):
        alone_prefill, alone_decode = run(slice(b, b + 1))
        real = slice(12 - n, 11)  # the row's real prompt columns
        assert torch.equal(alone_prefill[0, real], prefill[b, real]), b
        assert torch.equal(alone_decode[0], decode[b]), b
    for weight in (m.quantized for m in model.modules() if hasattr(m, "quantized")):
        weight.prefill, weight.i8 = False, None  # float32 activations on the same blocks
    floats = run(slice(0, 3), on=False)[1]
    scale = float(floats.abs().max())
    torch.testing.assert_close(decode, floats, rtol=0, atol=0.05 * scale)


def _tiny_on_blocks(tmp_path: Path, lib, prefill: bool = False):
    """A tiny Llama (head dim 16, grouped heads) whose float weights are its blocks
    de-quantised, with the blocks attached as the engine attaches them."""
    from test_native_llama import _load, _save_tiny_llama

    _save_tiny_llama(tmp_path, hidden_size=64, num_attention_heads=4, num_key_value_heads=2)
    model = _load(tmp_path)
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.Linear):
                blocks = (q8_0_blocks if name == "lm_head" else q4_1_blocks)(module.weight)
                module.weight.copy_(blocks.dequantize())
                module.quantized = blocks.bind(lib, prefill=prefill)
    return model


@torch.inference_mode()
def test_kernel_attention_matches_the_float_forward_on_ragged_steps(
    tmp_path: Path, monkeypatch
) -> None:
    """Decode steps through the kernel attention (rows of one token, and rows feeding a run of
    forced tokens, left padding, a forgotten column) give the float path's logits and keys."""
    lib = _kernel()
    model = _tiny_on_blocks(tmp_path, lib)
    calls = []
    attend = quantized.DecodeStep.attend
    monkeypatch.setattr(
        quantized.DecodeStep,
        "attend",
        lambda self, *a: calls.append(len(self.runs)) or attend(self, *a),
    )
    torch.manual_seed(3)
    ids = torch.randint(3, 97, (3, 20))
    prompt_mask = torch.ones(3, 12, dtype=torch.long)
    prompt_mask[1, :5] = 0  # left padding
    prompt_mask[2, 7] = 0  # a column the engine forgot (a rewound echo)
    positions = (prompt_mask.cumsum(-1) - 1).clamp(min=0)
    for lengths in ([1, 1, 1], [3, 1, 2]):
        width = max(lengths)
        step_mask = torch.zeros(3, width, dtype=torch.long)
        for b, n in enumerate(lengths):
            step_mask[b, width - n :] = 1
        mask = torch.cat([prompt_mask, step_mask], 1)
        step_positions = positions[:, -1:] + step_mask.cumsum(-1).clamp(min=1)
        results = {}
        for on in (False, True):
            cache = model(
                input_ids=ids[:, :12],
                attention_mask=prompt_mask,
                position_ids=positions,
                use_cache=True,
            ).past_key_values
            extra = {"csc_query_lengths": lengths} if width > 1 else {}
            logits = model(
                input_ids=ids[:, 12 : 12 + width],
                attention_mask=mask,
                position_ids=step_positions,
                past_key_values=cache,
                **extra,
                **{QUANTIZED_STEP: on},
            ).logits
            keys = cache.layers[1].keys
            results[on] = (logits * step_mask[..., None], keys * mask[:, None, :, None])
        assert calls == [sum(n > 1 for n in lengths)] * 2  # both layers; runs of forced tokens
        calls.clear()
        torch.testing.assert_close(results[True][0], results[False][0], rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(results[True][1], results[False][1], rtol=1e-5, atol=1e-5)


@torch.inference_mode()
def test_a_rows_decode_step_is_bit_identical_alone_and_in_a_batch(tmp_path: Path) -> None:
    lib = _kernel()
    model = _tiny_on_blocks(tmp_path, lib)
    torch.manual_seed(4)
    ids = torch.randint(3, 97, (3, 11))
    mask = torch.ones(3, 11, dtype=torch.long)

    def step(rows: slice) -> torch.Tensor:
        cache = model(input_ids=ids[rows, :10], attention_mask=mask[rows, :10]).past_key_values
        return model(
            input_ids=ids[rows, 10:],
            attention_mask=mask[rows],
            past_key_values=cache,
            **{QUANTIZED_STEP: True},
        ).logits

    batched = step(slice(0, 3))
    for row in range(3):
        assert torch.equal(step(slice(row, row + 1))[0], batched[row])


@torch.inference_mode()
def test_int8_prompt_split_over_a_cached_prefix_gives_the_same_numbers(tmp_path: Path) -> None:
    """A prompt computed whole, or as a cached prefix plus its tail (several tokens, or the one
    last token the engine recomputes for logits), gives bit-identical logits and keys: each
    query's attention depends only on its own keys (csc_prompt_attention)."""
    lib = _vnni()
    model = _tiny_on_blocks(tmp_path, lib, prefill=True)
    torch.manual_seed(8)
    ids = torch.randint(3, 97, (2, 14))
    ones = torch.ones(2, 14, dtype=torch.long)
    whole = model(input_ids=ids, attention_mask=ones, logits_to_keep=1)
    for cut in (9, 13):
        prefix = model(input_ids=ids[:, :cut], attention_mask=ones[:, :cut]).past_key_values
        tail = model(
            input_ids=ids[:, cut:],
            attention_mask=ones,
            past_key_values=prefix,
            logits_to_keep=1,
        )
        assert torch.equal(tail.logits, whole.logits), cut
        for layer, again in zip(whole.past_key_values.layers, tail.past_key_values.layers):
            assert torch.equal(layer.keys, again.keys) and torch.equal(layer.values, again.values)
