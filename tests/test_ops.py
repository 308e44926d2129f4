"""Shared kernels: oneDNN linear and the small-query attention against torch's reference ops."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from inference import ops
from inference.kv_cache import KVCache

ONEDNN = pytest.mark.skipif(not ops.USE_ONEDNN, reason="this torch build has no oneDNN")


def rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


@ONEDNN
@pytest.mark.parametrize("rows", [1, 2, 7, ops.ONEDNN_MAX_ROWS], ids=lambda r: f"{r}-rows")
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
def test_linear_takes_onednn_for_few_rows(monkeypatch, rows, bias):
    g = torch.Generator().manual_seed(rows)
    x, w = torch.randn(1, rows, 512, generator=g), torch.randn(ops.ONEDNN_MIN_WEIGHT // 512, 512, generator=g)
    b = torch.randn(w.shape[0], generator=g) if bias else None
    expected = F.linear(x, w, b)

    def not_here(*args):
        raise AssertionError("F.linear called for a few-row float32 product")

    monkeypatch.setattr(ops.F, "linear", not_here)
    with torch.inference_mode():
        got = ops.linear(x, w, b)
    assert got.shape == expected.shape
    assert rel_diff(got, expected) < 1e-6


@pytest.mark.parametrize(
    "case",
    ["many-rows", "small-weight", "autograd-on", "bfloat16"],
)
def test_linear_takes_torch_otherwise(monkeypatch, case):
    rows = ops.ONEDNN_MAX_ROWS + 1 if case == "many-rows" else 1
    dtype = torch.bfloat16 if case == "bfloat16" else torch.float32
    out = 32 if case == "small-weight" else ops.ONEDNN_MIN_WEIGHT // 64
    x, w = torch.randn(rows, 64, dtype=dtype), torch.randn(out, 64, dtype=dtype)
    calls = []
    real = F.linear
    monkeypatch.setattr(ops.F, "linear", lambda *a: calls.append(1) or real(*a))
    with torch.set_grad_enabled(case == "autograd-on"):
        got = ops.linear(x, w)
    assert calls and torch.equal(got, real(x, w))


def reference_attention(q, k, v):
    """Causal attention of the last T of S positions, by scaled_dot_product_attention with a mask."""
    T, S = q.shape[2], k.shape[2]
    mask = torch.ones(T, S, dtype=torch.bool).tril(diagonal=S - T)
    return F.scaled_dot_product_attention(q, k.contiguous(), v.contiguous(), attn_mask=mask)


@pytest.mark.parametrize("positions_last", [True, False], ids=["positions-last", "positions-first"])
@pytest.mark.parametrize("T", [1, 3, ops.SMALL_ATTENTION_MAX_T, ops.SMALL_ATTENTION_MAX_T + 1], ids=str)
def test_attention_over_the_cache_matches_sdpa(positions_last, T):
    B, H, D, S = 2, 4, 16, 37
    g = torch.Generator().manual_seed(T)
    cache = KVCache(1, H, D, 64, batch=B, positions_last=positions_last)
    k_old, v_old = torch.randn(B, H, S - T, D, generator=g), torch.randn(B, H, S - T, D, generator=g)
    cache.update(0, 0, k_old, v_old)
    q, k_new, v_new = (torch.randn(B, H, T, D, generator=g) for _ in range(3))
    k, v = cache.update(0, S - T, k_new, v_new)
    assert torch.equal(k, torch.cat((k_old, k_new), dim=2)) and torch.equal(
        v, torch.cat((v_old, v_new), dim=2)
    )
    with torch.inference_mode():
        got = ops.attention(q, k, v, S - T)
    assert rel_diff(got, reference_attention(q, k, v)) < 1e-5
