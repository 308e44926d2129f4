"""Shared kernels: oneDNN linear and the small-query attention against torch's reference ops."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from inference import ops
from inference.kv_cache import BLOCK, LAYOUTS, KVCache, kv_cache_dtype, kv_cache_nbytes

ONEDNN = pytest.mark.skipif(not ops.USE_ONEDNN, reason="this torch build has no oneDNN")


U32 = 2.0**-24  # unit roundoff of float32


def gamma(n: int) -> float:
    """Higham's gamma_n = n*u / (1 - n*u): a float32 sum of n products, in any order, is off by at most
    gamma_n * (the same sum of absolute values)."""
    return n * U32 / (1 - n * U32)


def linear_bound(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    """How far two float32 evaluations of x @ w.T + b (each in its own order) can be apart, elementwise.

    Each sums K products plus the bias (K + 1 terms) and is within gamma_{K+1} * (|x| @ |w|.T + |b|) of the
    exact value (float64 below), so the two are within twice that of each other.
    """
    mag = x.double().abs() @ w.double().abs().T + (b.double().abs() if b is not None else 0)
    return 2 * gamma(w.shape[1] + 1) * mag


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
    assert ((got.double() - expected.double()).abs() <= linear_bound(x, w, b)).all()


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


def attention_bound(q, k, v) -> float:
    """How far two float32 evaluations of softmax(q k^T / sqrt(D)) v (in their own orders) can be apart.

    Scores: D products each, so each evaluation is within E = gamma_D * max|q|.|k| / sqrt(D) of exact
    (a power-of-two scale is exact; sqrt(D) for D = 16 is one). Shifting score s by d_s scales p_s by
    exp(d_s - mean): |dp_s| <= p_s * (exp(2E) - 1) from the scores, plus exp, the sum of S terms and the
    division: gamma_{S + 3} * p_s. The output sums S terms p_s v_s: another gamma_S * max|v|. Both
    evaluations are off by at most that, so twice it, times max|v| (sum of p_s is 1).
    """
    D, S = q.shape[-1], k.shape[2]
    dots = (q.double().abs() @ k.double().abs().transpose(-1, -2)).max().item()
    e = gamma(D) * dots / D**0.5
    per_eval = (math.exp(2 * e) - 1) + gamma(S + 3) + gamma(S)
    return 2 * per_eval * v.abs().max().item()


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("T", [1, 3, ops.SMALL_ATTENTION_MAX_T, ops.SMALL_ATTENTION_MAX_T + 1], ids=str)
def test_attention_over_the_cache_matches_sdpa(layout, T):
    B, H, D, S = 2, 4, 16, 37
    g = torch.Generator().manual_seed(T)
    cache = KVCache(1, H, D, 64, batch=B, layout=layout)
    k_old, v_old = torch.randn(B, H, S - T, D, generator=g), torch.randn(B, H, S - T, D, generator=g)
    cache.update(0, 0, k_old, v_old)
    q, k_new, v_new = (torch.randn(B, H, T, D, generator=g) for _ in range(3))
    k, v = cache.update(0, S - T, k_new, v_new)
    assert torch.equal(k, torch.cat((k_old, k_new), dim=2)) and torch.equal(
        v, torch.cat((v_old, v_new), dim=2)
    )
    with torch.inference_mode():
        got = ops.attention(q, k, v, S - T)
    want = reference_attention(q, k, v)
    assert ((got.double() - want.double()).abs() <= attention_bound(q, k, v)).all()


def exact_attention(q, k, v):
    """Causal attention of the last T of S positions in float64 (the exact value, for float32 inputs)."""
    T, S, D = q.shape[2], k.shape[2], q.shape[3]
    scores = q.double() @ k.double().transpose(-1, -2) / D**0.5
    scores = scores.masked_fill(~torch.ones(T, S, dtype=torch.bool).tril(diagonal=S - T), float("-inf"))
    return scores.softmax(dim=-1) @ v.double()


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("T", [1, 3, ops.SMALL_ATTENTION_MAX_T, ops.SMALL_ATTENTION_MAX_T + 1], ids=str)
def test_cached_attention_matches_float64(monkeypatch, layout, T):
    """Write, then attend, chunk by chunk across key blocks (S = 130 of capacity 160: the blocked layout's
    last block is padded); the blocked layout goes through embedding_bag (bag_attention)."""
    B, H, D, S = 2, 4, 16, 130  # D 16: the scale 1/sqrt(D) = 1/4 is exact, as attention_bound assumes
    assert T == 1 or (S - T) // BLOCK < (S - 1) // BLOCK  # the queries' positions span two key blocks
    g = torch.Generator().manual_seed(T)
    cache = KVCache(1, H, D, 160, batch=B, layout=layout)
    q, k, v = (torch.randn(B, H, S, D, generator=g) for _ in range(3))
    bags = []
    real = torch.embedding_bag
    monkeypatch.setattr(ops.torch, "embedding_bag", lambda *a: bags.append(1) or real(*a))
    with torch.inference_mode():
        for a, b in [(0, 70), (70, S - T), (S - T, S)]:
            got = ops.cached_attention(q[:, :, a:b], k[:, :, a:b], v[:, :, a:b], a, cache, 0)
    assert bool(bags) == (layout == "blocked" and T <= ops.SMALL_ATTENTION_MAX_T)
    want = exact_attention(q[:, :, S - T :], k, v)
    # attention_bound is for two float32 evaluations; one against the exact value is within half of it.
    assert ((got.double() - want).abs() <= attention_bound(q[:, :, S - T :], k, v) / 2).all()


U16 = 2.0**-11  # unit roundoff of float16
TINY16 = 2.0**-25  # half the smallest float16 subnormal: the absolute rounding error near zero


def float16_cache_bound(q, k, v) -> torch.Tensor:
    """Elementwise bound on |attention over a float16 cache - exact| for q [B, H, T, D], k, v [B, H, S, D].

    Rounding to float16 is within U16 |x| + TINY16. bag_attention rounds the keys and values (stored),
    the query's weights q / sqrt(D) (D = 16: the scale is exact), each score and each probability once,
    and the output once; fbgemm sums in float32 and the softmax runs in float32. A score
    s = sum_d (q_d / 4) k_d, with A = sum_d |q_d / 4| |k_d|, is then off by at most
        E = (2 U16 + gamma_D) A + U16 |s| + TINY16 (sum_d |q_d| / 4 + sum_d |k_d| + D + 1).
    Shifting each score by at most E_max scales each p_s by at most exp(2 E_max) (the normalisation moves
    the other way), the float32 softmax adds gamma_{S+3} and the rounding of p U16, so
    |p~_s - p_s| <= r p_s + TINY16, r = exp(2 E_max) - 1 + gamma_{S+3} + U16. The output sums S terms
    p~_s v~_s: |y~ - y| <= (r + U16 + gamma_S) M + 2 TINY16 sum_s |v_s| + U16 |y| + TINY16, with
    M = sum_s p_s |v_s|. Products of two of these relative terms (below 1e-3 of their sum here) are
    covered by the factor 1.01.
    """
    T, S, D = q.shape[2], k.shape[2], q.shape[3]
    qd, kd, vd = q.double() / D**0.5, k.double(), v.double()
    visible = torch.ones(T, S, dtype=torch.bool).tril(diagonal=S - T)
    A = qd.abs() @ kd.abs().transpose(-1, -2)  # [B, H, T, S]
    s = qd @ kd.transpose(-1, -2)
    tiny = TINY16 * (qd.abs().sum(-1, keepdim=True) + kd.abs().sum(-1)[..., None, :] + D + 1)
    E = (2 * U16 + gamma(D)) * A + U16 * s.abs() + tiny
    E_max = E.masked_fill(~visible, 0).amax(-1, keepdim=True)  # [B, H, T, 1]
    r = torch.expm1(2 * E_max) + gamma(S + 3) + U16
    p = s.masked_fill(~visible, float("-inf")).softmax(-1)
    M, y = p @ vd.abs(), p @ vd  # [B, H, T, D]
    v_sum = vd.abs().sum(2, keepdim=True)  # [B, H, 1, D]
    return 1.01 * ((r + U16 + gamma(S)) * M + 2 * TINY16 * v_sum + U16 * y.abs() + TINY16)


@pytest.mark.skipif(not ops.USE_BAG_GEMV, reason="no fbgemm (so no int8 and no blocked cache) on this CPU")
@pytest.mark.parametrize("T", [1, 3, ops.SMALL_ATTENTION_MAX_T, ops.SMALL_ATTENTION_MAX_T + 1], ids=str)
def test_float16_cache_attention_within_its_rounding_bound(monkeypatch, T):
    """int8 models' cache: written chunk by chunk across key blocks, read back by embedding_bag in
    float16 (a few queries) or cast to float32 for scaled_dot_product_attention (more)."""
    B, H, D, S = 2, 4, 16, 130
    g = torch.Generator().manual_seed(100 + T)
    cache = KVCache(1, H, D, 160, batch=B, dtype=kv_cache_dtype("int8", "cpu"))
    assert cache.k.dtype == cache.v.dtype == torch.float16 and cache.layout == "blocked"
    q, k, v = (torch.randn(B, H, S, D, generator=g) for _ in range(3))
    bags = []
    real = torch.embedding_bag
    monkeypatch.setattr(ops.torch, "embedding_bag", lambda *a: bags.append(a[0].dtype) or real(*a))
    with torch.inference_mode():
        for a, b in [(0, 70), (70, S - T), (S - T, S)]:
            got = ops.cached_attention(q[:, :, a:b], k[:, :, a:b], v[:, :, a:b], a, cache, 0)
    assert got.dtype == torch.float32
    assert bags == ([torch.float16] * 2 if T <= ops.SMALL_ATTENTION_MAX_T else [])
    want = exact_attention(q[:, :, S - T :], k, v)
    err, bound = (got.double() - want).abs(), float16_cache_bound(q[:, :, S - T :], k, v)
    assert (err <= bound).all(), f"error {(err / bound).max():.3g} of its bound"
    f32 = KVCache(1, H, D, 160, batch=B)
    with torch.inference_mode():
        for a, b in [(0, S - T), (S - T, S)]:
            got32 = ops.cached_attention(q[:, :, a:b], k[:, :, a:b], v[:, :, a:b], a, f32, 0)
    # float16's unit roundoff is 2^13 float32's: its error is far above a float32 cache's
    assert err.max() > 16 * (got32.double() - want).abs().max()


@pytest.mark.parametrize("capacity", [64, 150])
def test_kv_cache_nbytes_matches_the_cache(capacity):
    """Blocked keys are padded to whole blocks; the engine's byte budget counts what is allocated."""
    cache = KVCache(3, 4, 16, capacity, batch=2)
    assert cache.nbytes == kv_cache_nbytes(3, 4, 16, capacity, batch=2)
    assert cache.nbytes >= 2 * 3 * 2 * 4 * 16 * capacity * 4


@pytest.mark.skipif(not ops.USE_BAG_GEMV, reason="torch has no fbgemm kernels on this CPU")
@pytest.mark.parametrize("out", [512, 448, 1000], ids=lambda o: f"out{o}")  # bag rows 256, 224, 250
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
def test_one_row_product_reads_a_transposed_weight_as_rows(monkeypatch, out, bias):
    g = torch.Generator().manual_seed(out)
    w, x = torch.randn(out, 96, generator=g), torch.randn(1, 1, 96, generator=g)
    b = torch.randn(out, generator=g) if bias else None
    w_t = w.t().contiguous().t()  # what store_transposed makes of it: the same values, stored [in, out]
    assert ops.is_transposed(w_t) and not ops.is_transposed(w)
    bags = []
    real = torch.embedding_bag
    monkeypatch.setattr(ops.torch, "embedding_bag", lambda *a: bags.append(1) or real(*a))
    monkeypatch.setattr(ops.F, "linear", None)  # neither F.linear nor oneDNN's kernel may be called
    monkeypatch.setattr(ops, "USE_ONEDNN", False)
    with torch.inference_mode():
        got = ops.linear(x, w_t, b)
    assert bags and got.shape == (1, 1, out)
    want = x.double() @ w.double().T + (b.double() if bias else 0)
    # linear_bound is for two float32 evaluations; one against the exact value is within half of it.
    assert ((got.double() - want).abs() <= linear_bound(x, w, b) / 2).all()


def test_loader_stores_linear_weights_transposed_except_tied(tmp_path):
    from inference.loader import load_model
    from tests.checkpoints import make_neox_japanese_checkpoint

    lm = load_model(str(make_neox_japanese_checkpoint(tmp_path, n_layer=2, hidden_size=64, n_head=4)))
    model = lm.model
    assert model.embed_out.weight is model.embed_in.weight  # tied: shared with the embedding, left as is
    assert not ops.is_transposed(model.embed_out.weight)
    qkv = model.layers[0].attention.query_key_value.weight
    assert ops.is_transposed(qkv) == ops.USE_BAG_GEMV  # the loader stored it for one-row products
    before = qkv.detach().clone()
    assert ops.store_transposed(model) == 0 and torch.equal(qkv, before)  # nothing left to move
    assert ops.bag_row(257) is None and ops.bag_row(7168) == 256 and ops.bag_row(64) == 64
