"""Prompt-lookup speculation, measured where it counts: the built-in model completing held-out code
(tokens per pass, completion time with and without, per kind of position), and on the large shapes the
cost of one pass over k+1 rows against a one-token step (k = 1..8): the speedup at any acceptance follows.

Held-out code: the standard-library modules the built-in model never saw (tools/train_default_model.py
HELD_OUT). Kinds of position: inside a line (the cursor after a line's first half), a new line in a function
body (the cursor at its indentation), after a call whose name appears above (the cursor after `name(`). Each
completion is 32 greedy tokens with the server's stop patterns (block mode), run without and with prompt
lookup in turns; the outputs are compared token by token.

    python bench/bench_lookup.py [--positions 40] [--threads 2] [--skip-shapes]
"""

from __future__ import annotations

import argparse
import random
import re
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "tools"))

from bench_keystroke import pct  # noqa: E402
from bench_machine import describe, loadavg  # noqa: E402
from train_default_model import corpus_files, read_source  # noqa: E402

from inference import ops, quant  # noqa: E402
from inference.engine import Engine  # noqa: E402
from inference.generate import GenerationParams  # noqa: E402
from inference.kv_cache import KVCache  # noqa: E402
from inference.loader import load_model  # noqa: E402
from lsp_server import postprocess  # noqa: E402
from lsp_server.prompt import prompt_ids  # noqa: E402

CALL = re.compile(r"\b([A-Za-z_][\w.]*)\(")
KINDS = ("inside a line", "new line in a body", "after a call seen above")


def positions(n: int, seed: int) -> dict[str, list[str]]:
    """n texts-before-the-cursor of each kind, from the held-out modules (at most 1,200 characters back)."""
    rng = random.Random(seed)
    out = {k: [] for k in KINDS}
    _, held = corpus_files()
    for path in held:
        text = read_source(path)
        lines = text.splitlines(keepends=True)
        starts = [sum(len(x) for x in lines[:i]) for i in range(len(lines))]
        for i, line in enumerate(lines):
            body = line.strip()
            if i < 10 or len(body) < 12 or body.startswith(("#", '"', "'")):
                continue
            indent = len(line) - len(line.lstrip())
            out["inside a line"].append(text[: starts[i] + indent + len(body) // 2])
            if indent >= 4:
                out["new line in a body"].append(text[: starts[i] + indent])
            m = CALL.search(line, indent)
            if m and f"{m.group(1)}(" in text[max(0, starts[i] - 3000) : starts[i]]:
                out["after a call seen above"].append(text[: starts[i] + m.end()])
    return {k: [t[-1200:] for t in rng.sample(v, min(n, len(v)))] for k, v in out.items()}


def run(lm, texts: list[str], new_tokens: int) -> dict:
    """Each text completed without and with prompt lookup, in turns: times, passes, tokens, agreement."""
    res = {"off": [], "on": [], "tokens": 0, "passes": 0, "same": 0}
    for k, text in enumerate(texts):
        line = text[text.rfind("\n") + 1 :]
        stops = postprocess.patterns_for("python", "block", line)
        order = ("off", "on") if k % 2 == 0 else ("on", "off")
        got = {}
        for mode in order:
            params = GenerationParams(
                max_new_tokens=new_tokens, stop_patterns=stops, prompt_lookup=mode == "on"
            )
            engine = Engine(lm)  # a cold session each: the same prefill for both
            ids, _ = prompt_ids(text, lm.tokenizer, engine.prompt_limit(new_tokens))  # the server's cut
            r = engine.generate("doc", ids, params)
            res[mode].append(r.decode_ms)
            got[mode] = r.token_ids
            if mode == "on":  # decode passes: plain decoding needs one per token after the first
                res["tokens"] += len(r.token_ids) - 1
                res["passes"] += r.extra.get("lookup_passes", 0)
        res["same"] += got["on"] == got["off"]
    return res


def report_positions(lm, sets: dict[str, list[str]], new_tokens: int) -> None:
    lm.lookup_pays = True
    for kind, texts in sets.items():
        r = run(lm, texts, new_tokens)
        ratio = pct(r["off"], 0.5) / pct(r["on"], 0.5)
        worst = max(b / a for a, b in zip(r["off"], r["on"], strict=True) if a > 0)
        print(
            f"  {kind:26s} {len(texts):3d} completions: {r['tokens'] / max(1, r['passes']):.2f} tokens/pass; "
            f"decode p50 {pct(r['off'], 0.5):6.2f} ms -> {pct(r['on'], 0.5):6.2f} ms ({ratio:.2f}x faster), "
            f"worst single {worst:.2f}x of its plain time; {r['same']}/{len(texts)} token-identical"
        )


@torch.inference_mode()
def pass_costs(lm, context: int = 1000, ks=range(1, 9), repeats: int = 5) -> None:
    """Wall time of one pass over k+1 rows (exact rows) at `context` positions, against a one-token step."""
    c = lm.config
    cache = KVCache(c.n_layer, c.kv_heads, c.head_dim, context + 16, dtype=lm.kv_dtype)
    ids = torch.randint(0, 1000, (1, context + 9))
    lm.model(ids[:, :context], torch.arange(context), cache, last_only=True)

    def timed(rows: int) -> float:
        best = float("inf")
        for _ in range(repeats):
            t = time.perf_counter()
            with ops.exact_rows():
                lm.model(ids[:, context : context + rows], torch.arange(context, context + rows), cache)
            best = min(best, time.perf_counter() - t)
        return best * 1e3

    one = timed(1)
    costs = {k: timed(k + 1) for k in ks}
    print(
        f"  one-token step {one:.1f} ms; pass over k+1 rows / step: "
        + ", ".join(f"k={k} {v / one:.2f}x" for k, v in costs.items())
    )
    print("  break-even: a pass must carry (its cost / step) tokens on average")


def shapes(tmp: Path) -> None:
    from tests.checkpoints import make_codegen_checkpoint, make_llama_checkpoint

    cg = make_codegen_checkpoint(
        tmp / "cg", n_layer=20, n_embd=1024, n_head=16, rotary_dim=32, n_positions=2048
    )
    qw = make_llama_checkpoint(
        tmp / "qw", n_layer=24, hidden_size=896, n_head=14, n_kv_head=2, intermediate_size=4864,
        tie_word_embeddings=True, max_position_embeddings=32768, rope_theta=1e6,
    )  # fmt: skip
    for name, path in (("codegen-350M shape", cg), ("Qwen2.5-Coder-0.5B shape", qw)):
        for dtype in ("float32", "int8") if quant.int8_kernel() else ("float32",):
            lm = load_model(str(path), dtype=dtype)
            print(f"{name}, {dtype}:")
            pass_costs(lm)
            del lm


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--positions", type=int, default=40)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--skip-shapes", action="store_true")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(describe())
    print("load average at start: " + loadavg())
    sets = positions(args.positions, args.seed)
    for dtype in ("int8", "float32") if quant.int8_kernel() else ("float32",):
        lm = load_model("builtin", dtype=dtype)
        print(f"built-in model, {dtype}, held-out code, {args.new_tokens} new tokens, decode without -> with")
        report_positions(lm, sets, args.new_tokens)
    if not args.skip_shapes:
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            shapes(Path(tmp))
    print("load average at end: " + loadavg())


if __name__ == "__main__":
    main()
