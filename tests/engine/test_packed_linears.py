"""Packed MKL matmuls give ``nn.Linear``'s numbers for every input size, within a memory budget."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from csc.engine.kernels import (  # noqa: E402
    PACKED_BUCKETS,
    PackedLinear,
    packed_linears_available,
    use_packed_linears,
)

pytestmark = pytest.mark.skipif(
    not packed_linears_available(), reason="this PyTorch build has no MKL packed GEMM"
)


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(48, 96), torch.nn.SiLU(), torch.nn.Linear(96, 48, bias=False)
    ).eval()


@pytest.mark.parametrize("rows", [1, 3, 4, 5, 8, 16, 17, 33, 64, 65, 200])
@torch.inference_mode()
def test_packed_linears_match_linear_for_any_row_count(rows: int) -> None:
    plain = _model()
    packed = _model()
    assert use_packed_linears(packed) == 2
    assert all(type(m) is PackedLinear for m in packed if isinstance(m, torch.nn.Linear))
    x = torch.randn(1, rows, 48)  # [batch, tokens, features], as a transformers layer feeds it
    expected, got = plain(x), packed(x)
    assert got.shape == expected.shape
    assert torch.allclose(got, expected, atol=1e-5), (got - expected).abs().max()
    first = packed[0]
    if 4 <= rows <= PACKED_BUCKETS[-1]:  # served from exactly one pack, of the smallest bucket
        bucket = min(b for b in PACKED_BUCKETS if b >= rows)
        assert list(first._packs) == [bucket]
    else:
        assert first._packs == {}


@torch.inference_mode()
def test_packs_stay_within_the_memory_budget() -> None:
    model = _model()
    one_weight = 48 * 96 * 4
    use_packed_linears(model, max_bytes=one_weight)  # room for a single pack
    x = torch.randn(10, 48)
    model(x)
    model(torch.randn(20, 48))  # another bucket: no room left, F.linear serves it
    assert sum(len(m._packs) for m in model if isinstance(m, PackedLinear)) == 1
    assert torch.allclose(model(x), _model()(x), atol=1e-5)


def test_training_and_other_dtypes_keep_plain_linear() -> None:
    model = _model()
    use_packed_linears(model)
    x = torch.randn(10, 48, requires_grad=True)
    model(x).sum().backward()  # gradients flow through F.linear, no pack is made
    assert x.grad is not None
    assert all(m._packs == {} for m in model if isinstance(m, PackedLinear))
    half = _model().to(torch.bfloat16)
    assert use_packed_linears(half) == 0
