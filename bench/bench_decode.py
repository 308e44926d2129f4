"""Decode near the byte floor on small models, and the latency budget, float32 vs int8, same run.

1. A random 8-layer, 512-wide CodeGen (vocabulary 51,200) at 1,110 cached positions and the built-in model
   at 300: engine decode ms/step (wall and process CPU time) against (weight + KV bytes read per step, the
   KV in the engine's dtype: float16 under int8) /
   (the best bandwidth measured in this run: matrix-vector kernels and a plain read), float32 and int8.
2. maxLatencyMs: the built-in model completes 20 keystrokes of real code (64 new tokens, no stop pattern)
   with and without a budget; p95 of a completion's time against the budget plus one line's decode.
3. Through the server: the built-in model (or --server-model; the server's own precision and prompt)
   answers each keystroke of a line typed into a file with 16 new tokens (no stop pattern): the client's
   time from the change to the answer, p50 and p95, over the answers that ran the model for 16 tokens.

    python bench/bench_decode.py [--threads N] [--budget-ms MS] [--steps 64] [--server-keystrokes 40]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import sysconfig
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench_keystroke import decode_weight_bytes, kv_read_bytes, measure_bandwidths, pct  # noqa: E402
from bench_machine import describe, loadavg  # noqa: E402

from inference import ops, quant  # noqa: E402
from inference.codegen import CodeGen  # noqa: E402
from inference.config import CodeGenConfig  # noqa: E402
from inference.engine import Engine  # noqa: E402
from inference.generate import GenerationParams  # noqa: E402
from inference.kv_cache import KVCache, kv_cache_dtype  # noqa: E402
from inference.loader import load_model  # noqa: E402
from inference.rules import line_end_after  # noqa: E402
from lsp_server.prompt import prompt_ids  # noqa: E402

SHAPE_8x512 = dict(vocab_size=51200, n_positions=2048, n_embd=512, n_layer=8, n_head=8, rotary_dim=32)


def random_codegen(shape: dict) -> torch.nn.Module:
    """A random-weight CodeGen of `shape`, prepared (fused) as the loader prepares one."""
    torch.manual_seed(0)
    model = CodeGen(CodeGenConfig.from_dict({"model_type": "codegen", **shape}))
    model.prepare_for_inference()
    ops.store_transposed(model)  # as the loader stores float32 weights on this CPU
    return model.eval().requires_grad_(False)


def kv_dtype(model) -> torch.dtype:
    """The KV cache dtype the engine gives `model` (float16 under int8 weights)."""
    return kv_cache_dtype("int8" if quant.int8_bytes(model) else torch.float32, "cpu")


@torch.inference_mode()
def step_ms(model, positions: int, steps: int) -> tuple[float, float]:
    """Median wall and CPU ms of one decode step at `positions` cached tokens (after a prefill)."""
    c = model.config
    assert positions + steps <= c.n_positions
    # the engine's: the whole window, in the engine's dtype
    cache = KVCache(c.n_layer, c.n_head, c.head_dim, c.n_positions, dtype=kv_dtype(model))
    pos = torch.arange(c.n_positions)
    model(torch.randint(0, c.vocab_size, (1, positions)), pos[:positions], cache, last_only=True)
    idx = torch.tensor([[5]])
    wall, cpu = [], []
    for i in range(positions, positions + steps):
        t, p = time.perf_counter(), time.process_time()
        model(idx, pos[i : i + 1], cache)
        wall.append((time.perf_counter() - t) * 1e3)
        cpu.append((time.process_time() - p) * 1e3)
    return statistics.median(wall), statistics.median(cpu)


def floors(models: dict, positions: dict, steps: int, bws: dict) -> None:
    """Each model's decode step against its byte floor, float32 and int8."""
    name_bw = max(bws, key=lambda k: bws[k][0])
    bw, bw_cpu = bws[name_bw]
    print(
        f"floors at the best bandwidth measured: {name_bw}, {bw / 1e9:.1f} GB/s wall, {bw_cpu / 1e9:.1f} CPU"
    )
    for name, model in models.items():
        c = model.config
        P = positions[name.split()[0]]
        nbytes = decode_weight_bytes(model) + kv_read_bytes(c, P, kv_dtype(model))
        wall, cpu = step_ms(model, P, steps)
        floor, floor_cpu = nbytes / bw * 1e3, nbytes / bw_cpu * 1e3
        print(
            f"  {name:16s} {P} positions: {wall:6.2f} ms/step wall, {cpu:6.2f} CPU; "
            f"reads {nbytes / 1e6:5.1f} MB -> floor {floor:5.2f} ms: {wall / floor:.2f}x wall, "
            f"{cpu / floor_cpu:.2f}x CPU"
        )


def longest_line(tok, ids: list[int]) -> int:
    """Tokens in the longest line of a completion (a token holding a newline ends its line)."""
    longest, n = 0, 0
    for i in ids:
        n += 1
        if "\n" in tok.decode([i]):
            longest, n = max(longest, n), 0
    return max(longest, n)


def completions(loaded, opened: str, prompts: list[str], params: GenerationParams) -> list:
    """Open the document (prefill `opened`), then complete each prompt, cut as the server cuts."""
    engine = Engine(loaded)
    session, limit = engine.session("doc"), engine.prompt_limit(params.max_new_tokens)
    ids, window = prompt_ids(opened, loaded.tokenizer, limit)
    session.generate(ids, GenerationParams(max_new_tokens=1))
    out = []
    for p in prompts:
        ids, window = prompt_ids(p, loaded.tokenizer, limit, window)
        out.append(session.generate(ids, params))
    return out


def budget_run(loaded, keystrokes: int, budget_ms: float | None, new_tokens: int) -> None:
    """Per-keystroke completion time with and without a latency budget; p95 vs budget + one line's decode.

    No `budget_ms`: half the median completion time without one, so the budget cuts on any machine."""
    text = (Path(sysconfig.get_paths()["stdlib"]) / "textwrap.py").read_text(encoding="utf-8")
    cut = text.index("def fill(")
    prompts = [text[: cut + k] for k in range(keystrokes)]
    free = completions(loaded, text[:cut], prompts, GenerationParams(max_new_tokens=new_tokens))
    if budget_ms is None:
        budget_ms = round(statistics.median(r.total_ms for r in free) / 2)
    capped = completions(
        loaded, text[:cut], prompts, GenerationParams(max_new_tokens=new_tokens, max_latency_ms=budget_ms)
    )
    per_token = statistics.median(r.decode_ms / r.decode_steps for r in free if r.decode_steps)
    allowance = [budget_ms + longest_line(loaded.tokenizer, r.token_ids) * per_token for r in free]
    totals = [r.total_ms for r in capped]
    within = sum(t <= a for t, a in zip(totals, allowance, strict=True))
    stopped = sum(r.stop_reason == "time_budget" for r in capped)
    print(
        f"  {loaded.precision}: no budget p95 {pct([r.total_ms for r in free], 0.95):.1f} ms; "
        f"maxLatencyMs {budget_ms:g}: p95 {pct(totals, 0.95):.1f} ms, {stopped}/{len(capped)} stopped by it; "
        f"{within}/{len(capped)} within the budget + their longest line's decode at {per_token:.2f} ms/token "
        f"(p95 of that allowance {pct(allowance, 0.95):.1f} ms)"
    )
    shown = [r.text[: line_end_after(r.text, 0)] for r in free]
    assert all(
        c.text.startswith(s) or c.stop_reason != "time_budget" for c, s in zip(capped, shown, strict=True)
    )


async def server_keystrokes(
    model: str, n: int, threads: int, new_tokens: int
) -> tuple[list[float], list[int], str]:
    """Client-side ms of each keystroke's answer, the tokens each generated, and the model's precision."""
    from bench_protocol import DOC, TYPED, ask_inline, insert, start_server
    from lsprotocol import types

    opts = {"maxNewTokens": new_tokens, "stopPatterns": {"python": []}, "prefetch": False}
    client = await start_server(model, threads, opts | {"completionMode": "free"})
    uri, line = "file:///bench.py", DOC.count("\n")
    col0 = len(DOC.rsplit("\n", 1)[1])
    item = types.TextDocumentItem(uri=uri, language_id="python", version=1, text=DOC)
    client.text_document_did_open(types.DidOpenTextDocumentParams(item))
    status = types.ExecuteCommandParams(command="codegen.status")

    await ask_inline(client, uri, line, col0)  # loads the model
    ms, tokens, count = [], [], (await client.workspace_execute_command_async(status))["latency"]["count"]
    text = (TYPED * 2)[:n]
    for i, ch in enumerate(text):
        t0 = time.perf_counter()
        insert(client, uri, i + 2, line, col0 + i, ch)
        await ask_inline(client, uri, line, col0 + i + 1)
        elapsed = (time.perf_counter() - t0) * 1000
        st = await client.workspace_execute_command_async(status)
        if st["latency"]["count"] != count:  # the model ran (not an answer typed through from the cache)
            ms.append(elapsed)
            tokens.append(st["latency"]["last"]["newTokens"])
        count = st["latency"]["count"]
    precision = st["models"][0]["dtype"]
    await client.shutdown_async(None)
    client.exit(None)
    await client.stop()
    return ms, tokens, precision


def server_run(model: str, n: int, threads: int, new_tokens: int = 16) -> None:
    """Print p50/p95 of a model's keystroke answers through the server."""
    import asyncio

    ms, tokens, precision = asyncio.run(server_keystrokes(model, n, threads, new_tokens))
    full = [m for m, t in zip(ms, tokens, strict=True) if t == new_tokens]
    print(
        f"through the server, {model} ({precision}), {len(ms)} keystrokes that ran the model, "
        f"{len(full)} of them {new_tokens} tokens: p50 {pct(full, 0.5):.1f} ms, p95 {pct(full, 0.95):.1f} ms "
        f"(all answers p50 {pct(ms, 0.5):.1f} ms, mean tokens {statistics.fmean(tokens):.1f})"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--steps", type=int, default=64, help="decode steps timed per model")
    ap.add_argument("--budget-ms", type=float, default=None, help="default: half the median completion")
    ap.add_argument("--keystrokes", type=int, default=20)
    ap.add_argument("--server-keystrokes", type=int, default=40, help="0: skip the server measurement")
    ap.add_argument("--server-only", action="store_true", help="only the measurement through the server")
    ap.add_argument("--server-model", default="builtin", help="the model measured through the server")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(describe())
    print("load average at start (other processes share this machine): " + loadavg())
    if args.server_keystrokes:
        server_run(args.server_model, args.server_keystrokes, args.threads or torch.get_num_threads())
    if args.server_only:
        return
    small = random_codegen(SHAPE_8x512)
    builtin = load_model("builtin", dtype="float32")
    models = {"8x512 float32": small, "builtin float32": builtin.model}
    if quant.int8_kernel():
        for name in list(models):
            q = copy.deepcopy(models[name])
            quant.quantize_model(q)
            models[name.replace("float32", "int8")] = q
    bws = measure_bandwidths("before")
    floors(models, {"8x512": 1110, "builtin": 300}, args.steps, bws)
    print(f"latency budget, built-in model, {args.keystrokes} keystrokes, 64 new tokens, no stop pattern:")
    budget_run(builtin, args.keystrokes, args.budget_ms, 64)
    if quant.int8_kernel():
        budget_run(load_model("builtin", dtype="int8"), args.keystrokes, args.budget_ms, 64)
    print("load average at end: " + loadavg())


if __name__ == "__main__":
    main()
