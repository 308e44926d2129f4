"""Shared kernels: linear (oneDNN for few-row float32 on CPU) and causal attention over the KV cache."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from inference.quant import Int8Weight

# Below this many rows (tokens), a float32 CPU matmul is a matrix-vector product bound by memory bandwidth.
# torch's MKL path runs it on one core (and is 2-4x slower still for 2..32 rows on AMD CPUs); oneDNN's uses
# every core. Above it, MKL's GEMM is as fast or faster (bench/bench_keystroke.py measures the gap).
ONEDNN_MAX_ROWS = 32
# oneDNN costs ~30 us a call more than MKL: worth it from weights of about 4 MB (float32) up.
ONEDNN_MIN_WEIGHT = 1 << 20
USE_ONEDNN = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")

# Up to this many queries, attention is two batched matrix-vector products over the cache (see KVCache's
# positions-last layout); longer prefills use scaled_dot_product_attention.
SMALL_ATTENTION_MAX_T = 16


def linear(x: Tensor, w: Tensor | Int8Weight, b: Tensor | None = None) -> Tensor:
    """x: [..., in] @ w.T [in, out] + b -> [..., out], F.linear's arithmetic (int8: fbgemm, bias inside)."""
    if isinstance(w, Int8Weight):
        assert b is None, "an Int8Weight holds its bias"
        return w(x)
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


class Linear(nn.Linear):
    """nn.Linear (same parameters and state_dict names) computed by `linear`."""

    int8_weights = (("weight", "bias"),)  # what quant.quantize_model replaces

    def forward(self, x: Tensor) -> Tensor:
        return linear(x, self.weight, self.bias)


class Embedding(nn.Embedding):
    """nn.Embedding that skips its random init on the meta device (the loader fills it next).

    On meta, nn.Embedding's normal_ runs through torch._refs, whose first use imports torch._dynamo and
    sympy: about a second of every process's first model load, for no data.
    """

    def reset_parameters(self) -> None:
        if not self.weight.is_meta:
            super().reset_parameters()


def attention(q: Tensor, k: Tensor, v: Tensor, start: int) -> Tensor:
    """Causal attention of q [B, H, T, D] at positions start.. over k, v [B, H, S, D] (S = start + T)."""
    T, S = q.shape[2], k.shape[2]
    if T <= SMALL_ATTENTION_MAX_T and q.device.type == "cpu":
        return small_attention(q, k, v)
    k, v = k.contiguous(), v.contiguous()  # no-ops unless they are views of a positions-last cache
    if T == 1:
        return F.scaled_dot_product_attention(q, k, v)
    if start == 0:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=causal_mask(T, S, q.device))


def small_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Causal attention for a few queries (the last T of S positions) as batched matmuls: y [B, H, T, D]."""
    B, H, T, D = q.shape
    S = k.shape[2]
    q3, v3 = q.reshape(B * H, T, D), v.reshape(B * H, S, D)
    kt = k.transpose(-1, -2).reshape(B * H, D, S)  # a view for the positions-last cache
    scores = torch.baddbmm(q3.new_empty(B * H, T, S), q3, kt, beta=0.0, alpha=D**-0.5).float()
    if T > 1:
        scores = scores.masked_fill(~causal_mask(T, S, q.device), float("-inf"))
    return torch.bmm(scores.softmax(dim=-1).to(v.dtype), v3).view(B, H, T, D)  # y: [B, H, T, D]


def causal_mask(T: int, S: int, device) -> Tensor:
    """[T, S] bool, True where the query at position S - T + t may see position s (s <= S - T + t)."""
    return torch.ones(T, S, dtype=torch.bool, device=device).tril(diagonal=S - T)
