"""The kernels a CPU decode step is made of, in isolation: what bandwidth each gets on this machine.

Four measurements, float32, best of several passes over more data than any cache holds:
  1. a plain read (`torch.sum`): the memory bandwidth any kernel could hope for;
  2. `x @ W^T` for 1..32 rows x over the 350M shape's fused [7168, 1024] weights, by oneDNN and by torch's
     default (MKL): weight bytes per second, and each row count's cost against one row (what a prefill of
     a few tokens, or verifying drafted tokens in speculative decoding, pays over one decode step);
  3. one query's attention over a 20-layer, 16-head, 64-dim KV cache at 1041 positions: the engine's
     blocked cache read by embedding_bag (x86 with AVX2), batched matmuls over a positions-last cache sized
     exactly and in one of 2048 positions (the engine's on other CPUs, rows strided), and
     scaled_dot_product_attention on a positions-first cache;
  4. the engine's decode step on a model of the 350M depth (20 layers) with tiny widths (E 64, 4 heads,
     vocab 512) at the same position: what a step costs beyond moving bytes (op dispatch and Python);
  5. the int8 and half-precision products torch 2.13 ships, for 1 row and 1,000 rows over [7168, 1024]:
     fbgemm's dynamic-quantized linear (prepacked int8, the engine's int8 kernel), aten._weight_int8pack_mm
     (weight-only int8), bfloat16 F.linear, against float32 (F.linear and oneDNN): ms and speedup.

    python bench/bench_kernels.py [--threads N] [--positions 1041]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_keystroke import BAG_GEMV, gemv_kernels  # noqa: E402 (this folder: the same kernels as the floor's)
from bench_machine import best_seconds, describe, loadavg, read_bandwidth  # noqa: E402

from inference import ops, quant  # noqa: E402
from inference.codegen import CodeGen  # noqa: E402
from inference.config import CodeGenConfig  # noqa: E402
from inference.kv_cache import KVCache, default_layout  # noqa: E402

ROWS = (1, 2, 4, 8, 16, 32)
L, H, D = 20, 16, 64  # codegen-350M: layers, heads, head dim


def linear_bandwidths(mats: int = 10) -> dict[str, dict[int, float]]:
    """Kernel name -> {rows: weight bytes/s} for x [rows, 1024] @ W^T over `mats` [7168, 1024] weights."""
    ws = [torch.randn(7168, 1024) for _ in range(mats)]
    nbytes = sum(w.nbytes for w in ws)
    out = {}
    for name, kernel in gemv_kernels().items():
        out[name] = {}
        for rows in ROWS if name != BAG_GEMV else (1,):  # embedding_bag rows: one-row products only
            x = torch.randn(rows, 1024)
            out[name][rows] = nbytes / best_seconds(lambda x=x, k=kernel: [k(x, w) for w in ws])
    return out


def attention_bandwidths(positions: int, capacity: int = 2048) -> dict[str, float]:
    """Layout -> KV bytes/s of one query's attention over every layer at `positions` cached tokens."""
    S = positions
    q = torch.randn(H, 1, D)

    def bmm_attention(ks, vs):
        for k, v in zip(ks, vs, strict=True):  # k, v: [H, D, S] (positions last)
            scores = torch.baddbmm(q.new_empty(H, 1, S), q, k, beta=0.0, alpha=D**-0.5)
            torch.bmm(scores.softmax(-1), v.transpose(1, 2))

    def sdpa(ks, vs):
        for k, v in zip(ks, vs, strict=True):  # k, v: [1, H, S, D] (positions first)
            F.scaled_dot_product_attention(q[None], k, v)

    exact = [torch.randn(H, D, S) for _ in range(2 * L)]
    strided = [torch.randn(H, D, capacity)[..., :S] for _ in range(2 * L)]
    first = [torch.randn(1, H, S, D) for _ in range(2 * L)]
    nbytes = 2 * L * H * D * S * 4
    cases = {
        f"batched matmuls, positions-last, {S} of {S}": lambda: bmm_attention(exact[:L], exact[L:]),
        f"batched matmuls, positions-last, {S} of {capacity} (engine without fbgemm)": lambda: bmm_attention(
            strided[:L], strided[L:]
        ),
        f"scaled_dot_product_attention, positions-first, {S}": lambda: sdpa(first[:L], first[L:]),
    }
    if default_layout("cpu") == "blocked":
        cache = KVCache(L, H, D, capacity)
        cache.k.normal_(), cache.v.normal_()
        cases[f"embedding_bag rows, blocked layout, {S} of {capacity} (engine)"] = lambda: [
            ops.bag_attention(q[None], cache, i, S) for i in range(L)
        ]
    return {name: nbytes / best_seconds(fn) for name, fn in cases.items()}


def tiny_step_seconds(positions: int) -> float:
    """Wall time of one engine decode step at `positions` cached tokens, 20 layers of width 64."""
    config = CodeGenConfig.from_dict(
        dict(
            model_type="codegen",
            vocab_size=512,
            n_positions=2048,
            n_embd=64,
            n_layer=L,
            n_head=4,
            rotary_dim=16,
        )
    )
    model = CodeGen(config)
    model.prepare_for_inference()
    model.eval().requires_grad_(False)
    cache = KVCache(config.n_layer, config.n_head, config.head_dim, config.n_positions)
    pos = torch.arange(config.n_positions)
    model(torch.randint(0, 512, (1, positions)), pos[:positions], cache, last_only=True)
    x = torch.tensor([[5]])
    steps = 20
    return (
        best_seconds(lambda: [model(x, pos[positions : positions + 1], cache) for _ in range(steps)]) / steps
    )


def precision_kernels(rows: int, out: int = 7168, n: int = 1024) -> dict[str, float]:
    """Kernel -> seconds of x [rows, n] @ W^T for one [out, n] weight in each precision torch offers here."""
    g = torch.Generator().manual_seed(0)
    w, x = torch.randn(out, n, generator=g), torch.randn(rows, n, generator=g)
    q, scale = quant.quantize_per_channel(w)
    wb, xb = w.bfloat16(), x.bfloat16()
    kernels = {k: fn for k, fn in gemv_kernels().items() if rows == 1 or k != BAG_GEMV}
    cases = {f"float32 {k}": (lambda fn=fn: fn(x, w)) for k, fn in kernels.items()}
    if quant.int8_kernel():
        packed = quant.Int8Weight(w)
        cases["int8 fbgemm linear_dynamic"] = lambda: packed(x)
    cases["int8 aten._weight_int8pack_mm"] = lambda: torch.ops.aten._weight_int8pack_mm(x, q, scale)
    cases["bfloat16 F.linear"] = lambda: F.linear(xb, wb)
    passes = 20 if rows == 1 else 3
    return {k: best_seconds(fn, passes) for k, fn in cases.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--positions", type=int, default=1041, help="cached tokens for the attention test")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(describe())
    print("load average at start (other processes share this machine): " + loadavg())
    with torch.inference_mode():
        print(f"plain read (torch.sum, 512 MiB): {read_bandwidth()[0] / 1e9:.1f} GB/s")
        print("x [rows, 1024] @ W^T, ten [7168, 1024] float32 weights: weight GB/s (time vs 1 row)")
        for name, by_rows in linear_bandwidths().items():
            cells = "  ".join(f"{r}: {bw / 1e9:5.1f} ({by_rows[1] / bw:.2f}x)" for r, bw in by_rows.items())
            print(f"  {name:14s} {cells}")
        print(f"one query's attention, {L} layers x {H} heads x {D} dims: KV GB/s")
        for name, bw in attention_bandwidths(args.positions).items():
            print(f"  {name}: {bw / 1e9:.1f}")
        step = tiny_step_seconds(args.positions)
        print(f"decode step, {L} layers of width 64 at {args.positions} positions: {step * 1e3:.2f} ms")
        for rows in (1, 1000):
            times = precision_kernels(rows)
            base = min(v for k, v in times.items() if k.startswith("float32"))
            print(f"x [{rows}, 1024] @ W^T, W [7168, 1024]: ms (speedup over the faster float32)")
            for name, sec in times.items():
                print(f"  {name:32s} {sec * 1e3:9.3f} ms  {base / sec:5.2f}x")
    print("load average at end: " + loadavg())


if __name__ == "__main__":
    main()
