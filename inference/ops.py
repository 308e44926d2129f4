"""Shared kernels: linear (oneDNN for few-row float32 on CPU) and causal attention over the KV cache."""

from __future__ import annotations

import collections
import contextlib
import functools

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from inference.kv_cache import KVCache
from inference.quant import Int8Weight, fbgemm_cpu

# Below this many rows (tokens), a float32 CPU matmul is a matrix-vector product bound by memory bandwidth.
# torch's MKL path runs it on one core (and is 2-4x slower still for 2..32 rows on AMD CPUs); oneDNN's uses
# every core. Above it, MKL's GEMM is as fast or faster (bench/bench_keystroke.py measures the gap).
ONEDNN_MAX_ROWS = 32
# oneDNN costs ~30 us a call more than MKL: worth it from weights of about 4 MB (float32) up.
ONEDNN_MIN_WEIGHT = 1 << 20
USE_ONEDNN = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")

# Up to this many queries, a CPU attention reads the cache with row kernels (bag_attention, or batched
# matrix-vector products: small_attention); longer prefills use scaled_dot_product_attention.
SMALL_ATTENTION_MAX_T = 16


# One-row float32 products where torch has fbgemm (x86 with AVX2): a weight stored transposed (its .t() is
# contiguous [in, out]; store_transposed) is read as embedding_bag rows, y = sum_i x_i * W^T[i], with the
# outputs cut into bags of BAG_ROW (a 1 KiB row; bags are what embedding_bag spreads over threads). fbgemm
# reads those rows at about a plain read's speed, where MKL's and oneDNN's matrix-vector kernels do not on
# every x86 CPU (bench/bench_kernels.py prints both). Outputs that no divisor >= MIN_BAG_ROW cuts evenly
# keep the plain layout.
USE_BAG_GEMV = fbgemm_cpu()
BAG_ROW, MIN_BAG_ROW = 256, 64


@functools.cache  # called by every one-row product
def bag_row(out: int) -> int | None:
    """The bag row length for `out` outputs: its largest divisor <= BAG_ROW, None below MIN_BAG_ROW."""
    r = next(d for d in range(min(out, BAG_ROW), 0, -1) if out % d == 0)
    return r if r >= MIN_BAG_ROW else None


@functools.cache
def _bag_plan(n_in: int, bags: int, device: torch.device, R: int = 1) -> tuple[Tensor, Tensor]:
    """Indices and offsets: bag (c, r) sums rows i*bags + c, i < n_in (W^T viewed as [n_in*bags, out/bags]),
    for each of R input rows."""
    i32 = torch.int32
    rows = (
        torch.arange(n_in, dtype=i32, device=device) * bags
        + torch.arange(bags, dtype=i32, device=device)[:, None]
    )
    rows = rows[:, None].expand(bags, R, n_in)
    return rows.reshape(-1), torch.arange(0, bags * R * n_in, n_in, dtype=i32, device=device)


def bag_linear(x: Tensor, w: Tensor, b: Tensor | None) -> Tensor:
    """x [..., in] @ w.T + b for w stored transposed, by embedding_bag: [..., out].

    Each input row's output is its own bags, summed as for that row alone (bit for bit): R rows read the
    weights once (the bags of one output chunk are next to each other, so R rows re-read it from cache).
    """
    out, n_in = w.shape
    r = bag_row(out)
    bags = out // r
    R = x.numel() // n_in  # rows
    idx, offsets = _bag_plan(n_in, bags, x.device, R)
    weights = x.reshape(1, R, n_in).expand(bags, R, n_in).reshape(-1)  # bag (c, row): that row's x
    y = bag_sums(w.t().view(n_in * bags, r), idx, offsets, weights)  # [bags * R, r]
    y = (y.view(bags, R, r).transpose(0, 1) if R > 1 else y).reshape(*x.shape[:-1], out)
    return y if b is None else y.add_(b)


def is_transposed(w: Tensor) -> bool:
    """Whether w [out, in] is stored as contiguous [in, out] (store_transposed)."""
    return w.dim() == 2 and w.stride() == (1, w.shape[0]) and w.shape[0] > 1


def store_transposed(model: nn.Module) -> int:
    """Store every float32 linear weight (int8_weights) of a prepared CPU model transposed, for bag_linear.

    Weights shared with another module (a tied embedding) stay as they are. Returns how many moved.
    """
    if not USE_BAG_GEMV:
        return 0
    uses = collections.Counter(id(p) for m in model.modules() for p in m._parameters.values())
    moved = 0
    for module in model.modules():
        for name, _ in getattr(module, "int8_weights", ()):
            w = module._parameters.get(name)
            ok = w is not None and w.dtype == torch.float32 and w.device.type == "cpu" and w.dim() == 2
            if ok and uses[id(w)] == 1 and bag_row(w.shape[0]) and not is_transposed(w):
                w.data = w.data.t().contiguous().t()
                moved += 1
    return moved


# Up to this many rows, `exact_rows()` makes every product give each row what it gives that row alone (the
# verification of several proposed tokens then decides as one-token steps would: inference/lookup.py).
EXACT_MAX_ROWS = 16
_exact_rows = False


@contextlib.contextmanager
def exact_rows():
    """Within it, linear() computes each of a few rows exactly as a one-row call would (bit for bit)."""
    global _exact_rows
    prev, _exact_rows = _exact_rows, True
    try:
        yield
    finally:
        _exact_rows = prev


def linear(x: Tensor, w: Tensor | Int8Weight, b: Tensor | None = None) -> Tensor:
    """x: [..., in] @ w.T [in, out] + b -> [..., out], F.linear's arithmetic (int8: fbgemm, bias inside)."""
    rows = x.numel() // x.shape[-1]
    if _exact_rows and 1 < rows <= EXACT_MAX_ROWS:
        return rows_linear(x, w, b)
    if isinstance(w, Int8Weight):
        assert b is None, "an Int8Weight holds its bias"
        return w(x)
    if (
        rows == 1
        and is_transposed(w)
        and x.dtype == w.dtype == torch.float32
        and x.device.type == "cpu"
        and not torch.is_grad_enabled()
    ):
        return bag_linear(x, w, b)
    if (
        USE_ONEDNN
        and x.device.type == "cpu"
        and x.dtype == w.dtype == torch.float32
        and not torch.is_grad_enabled()
        and x.numel() <= ONEDNN_MAX_ROWS * x.shape[-1]
        and w.numel() >= ONEDNN_MIN_WEIGHT
    ):
        return torch.ops.mkldnn._linear_pointwise(x, w, b, "none", [], "")
    return F.linear(x, w, b)


def rows_linear(x: Tensor, w: Tensor | Int8Weight, b: Tensor | None) -> Tensor:
    """linear() of a few rows, each row's output bit-identical to a one-row call's.

    Float32 weights stored transposed: embedding_bag bags per row (one read of the weights). Otherwise one
    call per row (int8: fbgemm quantizes a call's input with one scale, so each row gets its own call).
    """
    if isinstance(w, Tensor) and is_transposed(w) and x.dtype == w.dtype == torch.float32 and x.is_cpu:
        return bag_linear(x, w, b)
    flat = x.reshape(-1, 1, x.shape[-1])
    out = torch.cat([linear(flat[r], w, b) for r in range(flat.shape[0])])
    return out.view(*x.shape[:-1], -1)


class Linear(nn.Linear):
    """nn.Linear (same parameters and state_dict names) computed by `linear`."""

    int8_weights = (("weight", "bias"),)  # what quant.quantize_model replaces

    def forward(self, x: Tensor) -> Tensor:
        return linear(x, self.weight, self.bias)


def cached_attention(
    q: Tensor, k: Tensor, v: Tensor, start: int, cache: KVCache | None, layer: int
) -> Tensor:
    """Write k, v [B, K, T, D] at start.. of `cache` (if any); attend q [B, H, T, D] over 0..start+T-1.

    K may divide H (grouped-query attention): query head h reads key/value head h // (H / K).
    """
    assert q.shape[1] % k.shape[1] == 0, "query heads must be a multiple of key/value heads"
    if cache is None:
        return attention(q, k, v, start)
    if cache.layout == "blocked" and q.shape[2] <= SMALL_ATTENTION_MAX_T:
        cache.write(layer, start, k, v)
        return bag_attention(q, cache, layer, start + q.shape[2])
    if start == 0:  # nothing cached before: the new keys and values are all there is
        cache.write(layer, 0, k, v)
        return attention(q, k, v, 0)
    k, v = cache.update(layer, start, k, v)  # k, v: [B, K, start+T, D], the cache's dtype
    return attention(q, k.to(q.dtype), v.to(q.dtype), start)


def grouped(q: Tensor, n_kv: int) -> Tensor:
    """q [B, H, T, D] -> [B, K, G*T, D]: each key/value head's G = H / K query heads as rows (g, t)."""
    B, H, T, D = q.shape
    return q.reshape(B, n_kv, (H // n_kv) * T, D)


def grouped_mask(T: int, S: int, G: int, device) -> Tensor:
    """[G*T, S] bool: causal_mask(T, S) for each of the G query heads of a group (rows (g, t))."""
    mask = causal_mask(T, S, device)
    return mask.repeat(G, 1) if G > 1 else mask


def bag_attention(q: Tensor, cache: KVCache, layer: int, S: int) -> Tensor:
    """Causal attention of q [B, H, T, D] (the last T of S positions) over a blocked cache: y [B, H, T, D].

    Both products are embedding_bag sums of cache rows weighted per bag (fbgemm's kernels): the scores of
    block j are sum_d q_d * K[d, j*BLOCK:(j+1)*BLOCK], the output sum_s p_s * V[s]. Both read each row once,
    contiguously (torch's batched matmuls read these shapes at about half the memory's speed: see
    docs/PERFORMANCE.md). Under grouped-query attention a key/value head's query heads are its rows.
    """
    B, H, T, D = q.shape
    K = cache.v.shape[2]  # key/value heads
    G = H // K
    qg = grouped(q, K)  # [B, K, G*T, D]
    k_rows, v_rows = cache.bag_weights(layer)
    (k_idx, k_off), (v_idx, v_off) = cache.bag_indices(G * T, S)  # bags: B*K*GT*n of D rows, B*K*GT of S
    n = k_off.shape[0] // (B * K * G * T)
    qw = q.new_empty(B, K, G * T, n, D, dtype=k_rows.dtype)  # each bag's row weights, the cache's dtype
    torch.mul(qg.unsqueeze(3).expand(B, K, G * T, n, D), D**-0.5, out=qw)
    scores = bag_sums(k_rows, k_idx, k_off, qw.view(-1)).view(B, K, G * T, -1)[..., :S]  # [B, K, GT, S]
    if T > 1:
        scores = scores.masked_fill(~grouped_mask(T, S, G, q.device), float("-inf"))
    p = scores.softmax(dim=-1, dtype=torch.float32).to(v_rows.dtype).view(-1)  # [B*K*GT*S]
    return bag_sums(v_rows, v_idx, v_off, p).view(B, H, T, D).to(q.dtype)


def bag_sums(rows: Tensor, idx: Tensor, offsets: Tensor, weights: Tensor) -> Tensor:
    """[bags, row length]: bag i is sum_j weights[j] * rows[idx[j]] over j in offsets[i]..offsets[i+1]-1.

    torch.embedding_bag in "sum" mode (fbgemm's kernel on x86), called without F.embedding_bag's checks.
    """
    return torch.embedding_bag(rows, idx, offsets, False, 0, False, weights, False, None)[0]


class Embedding(nn.Embedding):
    """nn.Embedding that skips its random init on the meta device (the loader fills it next).

    On meta, nn.Embedding's normal_ runs through torch._refs, whose first use imports torch._dynamo and
    sympy: about a second of every process's first model load, for no data.
    """

    def reset_parameters(self) -> None:
        if not self.weight.is_meta:
            super().reset_parameters()


def attention(q: Tensor, k: Tensor, v: Tensor, start: int) -> Tensor:
    """Causal attention of q [B, H, T, D] at positions start.. over k, v [B, K, S, D] (S = start + T)."""
    B, H, T, D = q.shape
    K, S = k.shape[1], k.shape[2]
    if T <= SMALL_ATTENTION_MAX_T and q.device.type == "cpu":
        return small_attention(q, k, v)
    if K != H:  # grouped-query attention: each key/value head repeated for its query heads (as the reference)
        k = k[:, :, None].expand(B, K, H // K, S, D).reshape(B, H, S, D)
        v = v[:, :, None].expand(B, K, H // K, S, D).reshape(B, H, S, D)
    k, v = k.contiguous(), v.contiguous()  # no-ops unless they are views of a positions-last cache
    if T == 1:
        return F.scaled_dot_product_attention(q, k, v)
    if start == 0:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=causal_mask(T, S, q.device))


def small_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Causal attention for a few queries (the last T of S positions) as batched matmuls: y [B, H, T, D].

    k, v: [B, K, S, D]; a key/value head's G = H / K query heads are its rows (grouped-query attention).
    """
    B, H, T, D = q.shape
    K, S = k.shape[1], k.shape[2]
    G = H // K
    q3, v3 = grouped(q, K).reshape(B * K, G * T, D), v.reshape(B * K, S, D)
    kt = k.transpose(-1, -2).reshape(B * K, D, S)  # a view for the positions-last cache
    scores = torch.baddbmm(q3.new_empty(B * K, G * T, S), q3, kt, beta=0.0, alpha=D**-0.5).float()
    if T > 1:
        scores = scores.masked_fill(~grouped_mask(T, S, G, q.device), float("-inf"))
    return torch.bmm(scores.softmax(dim=-1).to(v.dtype), v3).view(B, H, T, D)  # y: [B, H, T, D]


def causal_mask(T: int, S: int, device) -> Tensor:
    """[T, S] bool, True where the query at position S - T + t may see position s (s <= S - T + t)."""
    return torch.ones(T, S, dtype=torch.bool, device=device).tril(diagonal=S - T)
