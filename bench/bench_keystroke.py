"""Per-keystroke completion latency: the engine (int8 and float32) vs transformers `generate`, same run.

A random-weight model with codegen-350M-mono's exact shape, the real tokenizer, a real CPython stdlib
source file as context (~1000 tokens before the cursor); the next 20 characters are typed one keystroke at
a time and each keystroke asks for a 16-token greedy completion, from the engine in int8 and in float32
and from transformers in float32; the two engines type in turns, keystroke by keystroke. Also: decode
ms/token against a floor of (weight + KV bytes read per token, the KV in the engine's cache dtype: float16
under int8) / (the best bandwidth measured in this run: matrix-vector kernels and a plain read), and a
cold prompt (nothing cached).

    python bench/bench_keystroke.py [--keystrokes 20] [--new-tokens 16] [--context-tokens 1000] [--threads N]
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
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench_machine import best_seconds, describe, loadavg, read_bandwidth  # noqa: E402

from inference import ops, quant, registry  # noqa: E402
from inference.codegen import CodeGen  # noqa: E402
from inference.config import CodeGenConfig  # noqa: E402
from inference.engine import Engine  # noqa: E402
from inference.generate import GenerationParams  # noqa: E402
from inference.loader import LoadedModel, fill_weights  # noqa: E402
from inference.weights import WeightSource  # noqa: E402
from tokenizer import load_tokenizer  # noqa: E402

TOKENIZER_DIR = ROOT.parent / "shared" / "data" / "codegen-350M-mono-tokenizer"
BAG_GEMV = "embedding_bag rows"
SHAPE_350M = dict(
    vocab_size=51200, n_positions=2048, n_embd=1024, n_layer=20, n_head=16, rotary_dim=32, n_inner=None
)


def context_and_keys(tok, context_tokens: int, n_keys: int) -> tuple[str, str, str]:
    """(text before the cursor, the next n_keys characters to type, the file's path)."""
    path = Path(sysconfig.get_paths()["stdlib"]) / "textwrap.py"
    text = path.read_text(encoding="utf-8")
    offset = 0
    for line in text.splitlines(keepends=True):
        body = line.lstrip()
        if len(tok.encode(text[:offset])) >= context_tokens and len(body.rstrip()) >= n_keys:
            cursor = offset + len(line) - len(body)
            return text[:cursor], text[cursor : cursor + n_keys], str(path)
        offset += len(line)
    raise SystemExit(f"{path} is too short")


def build_models(tok):
    """transformers' CodeGenForCausalLM with random weights, and the engine's model with the same weights."""
    from transformers import CodeGenConfig as HFConfig
    from transformers import CodeGenForCausalLM

    torch.manual_seed(0)
    ref = CodeGenForCausalLM(HFConfig(**SHAPE_350M)).eval()
    state = ref.state_dict()
    config = CodeGenConfig.from_dict({"model_type": "codegen", **SHAPE_350M})
    with torch.device("meta"):
        model = CodeGen(config)
    fam = registry.REGISTRY["codegen"]
    mem = Path("<memory>")
    source = WeightSource({name: mem for name in state}, {mem: state})
    fill_weights(model, source, fam.weight_map(config), fam.ignored, torch.device("cpu"), torch.float32)
    model.init_buffers()
    model.prepare_for_inference()
    ops.store_transposed(model)  # as the loader stores float32 weights on this CPU
    model.eval().requires_grad_(False)
    loaded = LoadedModel(
        name="random-350M-mono-shape",
        path=mem,
        family="codegen",
        config=config,
        model=model,
        tokenizer=tok,
        device=torch.device("cpu"),
        dtype=torch.float32,
    )
    return ref, loaded


def int8_copy(loaded: LoadedModel) -> LoadedModel:
    """The same model with int8 weights (quantized as the loader does: after fusing, per output row)."""
    model = copy.deepcopy(loaded.model)
    quant.quantize_model(model)
    return LoadedModel(**{**vars(loaded), "model": model, "name": loaded.name + "-int8", "weights": "int8"})


def decode_weight_bytes(model) -> int:
    """Bytes of weights one decode step reads: everything but the embedding table (one row of it)."""
    total = sum(p.numel() * p.element_size() for p in model.parameters()) + quant.int8_bytes(model)
    wte = model.wte.weight
    return total - wte.numel() * wte.element_size() + wte.shape[1] * wte.element_size()


@torch.inference_mode()
def gemv_bandwidth(kernel, n: int = 4096, mats: int = 8, repeats: int = 10) -> tuple[float, float]:
    """Bytes/s of float32 matrix-vector products by `kernel(x, w)` over more matrices than any cache holds
    (best run), by wall-clock and by process CPU time."""
    ws = [torch.randn(n, n) for _ in range(mats)]
    x = torch.randn(1, n)
    for w in ws:
        kernel(x, w)
    best, best_cpu = float("inf"), float("inf")
    for _ in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        for w in ws:
            kernel(x, w)
        best = min(best, time.perf_counter() - t)
        best_cpu = min(best_cpu, time.process_time() - c)
    nbytes = mats * n * n * 4
    return nbytes / best, nbytes / max(best_cpu, 1e-9)


@torch.inference_mode()
def int8_gemv_bandwidth(out: int = 8192, n: int = 4096, mats: int = 8) -> tuple[float, float]:
    """Bytes/s (wall, CPU) of one-row products through the int8 kernel over `mats` [out, n] int8 weights."""
    ws = [quant.Int8Weight(torch.randn(out, n)) for _ in range(mats)]
    x = torch.randn(1, n)
    nbytes = sum(w.nbytes for w in ws)
    wall = best_seconds(lambda: [w(x) for w in ws], passes=10)
    cpu = best_seconds(lambda: [w(x) for w in ws], passes=10, clock=time.process_time)
    return nbytes / wall, nbytes / max(cpu, 1e-9)


def gemv_kernels() -> dict:
    """The matrix-vector kernels this torch build has: its default (MKL), oneDNN's and embedding_bag rows."""
    kernels = {"torch F.linear": F.linear}
    if ops.USE_ONEDNN:
        kernels["oneDNN"] = lambda x, w: torch.ops.mkldnn._linear_pointwise(x, w, None, "none", [], "")
    if ops.USE_BAG_GEMV:  # the engine's one-row kernel (x @ W^T for W^T stored as rows; one row only)
        kernels[BAG_GEMV] = lambda x, w: ops.bag_linear(x, w.t(), None)
    return kernels


def measure_bandwidths(when: str) -> dict:
    """Each matrix-vector kernel's (wall, CPU-time) bandwidth and a plain read's (torch.sum), printed.

    All on torch's thread count of the decode that follows; a floor takes the best of them, i.e. the
    fastest any kernel read memory in this run (a plain read is what the memory gives at all).
    """
    bws = {name: gemv_bandwidth(kernel) for name, kernel in gemv_kernels().items()}
    if quant.int8_kernel():
        bws["int8 " + quant.int8_kernel()] = int8_gemv_bandwidth()
    bws["plain read (torch.sum)"] = read_bandwidth()
    for name, (b, bc) in bws.items():
        print(f"bandwidth {when}, {name}: {b / 1e9:.2f} GB/s wall ({bc / 1e9:.2f} GB/s CPU)")
    return bws


def kv_read_bytes(config, positions: int, kv_dtype: torch.dtype) -> int:
    """Bytes of keys and values (in the cache's dtype) a decode step's attention reads at `positions`."""
    return 2 * config.n_layer * positions * config.n_head * config.head_dim * kv_dtype.itemsize


def pct(xs: list[float], q: float) -> float:
    """The q-quantile (nearest rank) of xs."""
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(q * (len(xs) - 1))))]


def engine_keystrokes(models: dict, before: str, prompts: list[str], params) -> dict:
    """Each engine opens the document (its cold prefill is not a keystroke), then they type in turns.

    Keystroke k runs on every engine before k + 1 does (the first engine alternates), so a drift in the
    machine's memory bandwidth during the run lands on all of them alike; then a cold prompt each.
    """
    engines = {name: Engine(loaded) for name, loaded in models.items()}
    runs = {name: {k: [] for k in ("wall", "cpu", "dec", "dec_cpu", "prefills", "ids")} for name in models}
    for engine in engines.values():
        engine.generate("doc", before, params)
    for k, p in enumerate(prompts):
        for name in list(engines)[:: 1 if k % 2 == 0 else -1]:
            out, c = runs[name], time.process_time()
            r = engines[name].generate("doc", p, params)
            out["cpu"].append((time.process_time() - c) * 1e3)
            out["wall"].append(r.total_ms)
            out["prefills"].append(r.prefill_tokens)
            out["ids"].append(r.token_ids)
            if r.decode_steps:
                out["dec"].append(r.decode_ms / r.decode_steps)
                out["dec_cpu"].append(r.extra["decode_cpu_ms"] / r.decode_steps)
    for name, loaded in models.items():
        runs[name]["cold"] = Engine(loaded).generate("cold", prompts[-1], params)
    return runs


def print_engine(name: str, run: dict, wbytes: int, kv_bytes: int, bws: dict) -> None:
    """Keystroke percentiles, the cold prompt, and decode against its byte floor at the best bandwidth."""
    report(name, run["wall"], run["cpu"])
    cold = run["cold"]
    print(
        f"{'':14s}prefilled {statistics.mean(run['prefills']):.1f} tokens/keystroke on average; a cold "
        f"{cold.prompt_tokens}-token prompt: {cold.total_ms:.0f} ms wall (prefill {cold.prefill_ms:.0f} ms)"
    )
    fastest = max(bws, key=lambda k: bws[k][0])
    bw, bw_cpu = bws[fastest]
    floor, floor_cpu = (wbytes + kv_bytes) / bw * 1e3, (wbytes + kv_bytes) / bw_cpu * 1e3
    d, dc = statistics.median(run["dec"]), statistics.median(run["dec_cpu"])
    print(
        f"{'':14s}decode {d:.1f} ms/token wall, {dc:.1f} CPU; reads {wbytes / 1e6:.0f} MB weights + "
        f"{kv_bytes / 1e6:.0f} MB KV -> floor {floor:.1f} ms ({fastest}): {d / floor:.2f}x wall, "
        f"{dc / floor_cpu:.2f}x CPU"
    )


def transformers_keystrokes(ref, tok, prompts, eng_ids, new_tokens: int) -> tuple[list, list, int]:
    """transformers generate on the same prompts: wall ms, CPU ms, how many token-identical to the engine."""
    hf, hf_cpu, same = [], [], 0
    with torch.inference_mode():
        for p, ids in zip(prompts, eng_ids, strict=True):
            x = torch.tensor([tok.encode(p)])
            t, c = time.perf_counter(), time.process_time()
            out = ref.generate(
                x,
                attention_mask=torch.ones_like(x),
                max_new_tokens=new_tokens,
                do_sample=False,
                pad_token_id=tok.eos_token_id,
            )
            hf.append((time.perf_counter() - t) * 1e3)
            hf_cpu.append((time.process_time() - c) * 1e3)
            same += out[0, x.shape[1] :].tolist() == ids
    return hf, hf_cpu, same


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keystrokes", type=int, default=20)
    ap.add_argument("--new-tokens", type=int, default=16)
    ap.add_argument("--context-tokens", type=int, default=1000)
    ap.add_argument("--skip-transformers", action="store_true", help="engine only (quick checks)")
    ap.add_argument("--no-onednn", action="store_true", help="engine on torch's default matmuls (ablation)")
    ap.add_argument(
        "--threads", type=int, default=0, help="torch threads for both sides (0: torch's default)"
    )
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    tok = load_tokenizer(TOKENIZER_DIR)
    before, keys, src = context_and_keys(tok, args.context_tokens, args.keystrokes)
    prompts = [before + keys[: k + 1] for k in range(args.keystrokes)]
    print(describe())
    print("load average at start (other processes share this machine): " + loadavg())
    print(f"context: {src}, {len(tok.encode(before))} tokens before the cursor; typing {keys!r}")
    t = time.perf_counter()
    ref, loaded = build_models(tok)
    int8 = int8_copy(loaded) if quant.int8_kernel() else None
    print(f"models built in {time.perf_counter() - t:.1f}s")
    params = GenerationParams(max_new_tokens=args.new_tokens)
    bws = measure_bandwidths("before the engine's keystrokes")
    if args.no_onednn:
        ops.USE_ONEDNN = False
        print("engine runs without oneDNN (--no-onednn)")
    models = {"engine int8": int8} if int8 else {}
    runs = engine_keystrokes({**models, "engine fp32": loaded}, before, prompts, params)
    # The VM's memory bandwidth drifts with its neighbours: measure again and keep the best (the lower floor).
    after = measure_bandwidths("after them")
    bws = {name: tuple(map(max, bws[name], after[name])) for name in bws}
    positions = runs["engine fp32"]["cold"].prompt_tokens
    for name, run in runs.items():
        lm = int8 if name.endswith("int8") else loaded
        print_engine(
            name, run, decode_weight_bytes(lm.model), kv_read_bytes(lm.config, positions, lm.kv_dtype), bws
        )
    base = runs["engine fp32"]
    if int8:
        q = runs["engine int8"]
        print(
            f"int8 vs float32 engine: keystroke p50 {pct(base['wall'], 0.5) / pct(q['wall'], 0.5):.2f}x, "
            f"cold prompt {base['cold'].total_ms / q['cold'].total_ms:.2f}x, "
            f"{sum(a == b for a, b in zip(q['ids'], base['ids'], strict=True))}/{len(prompts)} "
            "completions token-identical"
        )
    if args.skip_transformers:
        print("load average at end: " + loadavg())
        return
    hf, hf_cpu, same = transformers_keystrokes(ref, tok, prompts, base["ids"], args.new_tokens)
    report("transformers", hf, hf_cpu)
    print(f"              generate on the same prompts; {same}/{len(prompts)} token-identical to engine fp32")
    print("load average at end: " + loadavg())
    for name, run in runs.items():
        for clock, a, b in (("wall", hf, run["wall"]), ("CPU", hf_cpu, run["cpu"])):
            print(
                f"speedup of {name} over transformers, {clock:4s}: p50 {pct(a, 0.5) / pct(b, 0.5):.1f}x  "
                f"p95 {pct(a, 0.95) / pct(b, 0.95):.1f}x"
            )


def report(name: str, wall: list[float], cpu: list[float]) -> None:
    """One line of per-keystroke percentiles, wall-clock and process CPU time."""
    print(
        f"{name + ':':13s} p50 {pct(wall, 0.5):7.0f} ms  p95 {pct(wall, 0.95):7.0f} ms wall;  "
        f"p50 {pct(cpu, 0.5):7.0f} ms  p95 {pct(cpu, 0.95):7.0f} ms CPU per keystroke"
    )


if __name__ == "__main__":
    main()
