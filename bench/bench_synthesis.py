"""Multi-turn synthesis: KV cache carried across turns vs. every turn from scratch, same run, same programs.

The carried run is `lsp_server.mtpb.synthesize` (one session for all turns); the baseline frees the
session before each turn, so it prefills the whole MTPB prompt every turn. Both must write the same program.
Context: the first `--history-tokens` tokens of a CPython stdlib file (the document before the cursor).

    python bench/bench_synthesis.py [--model builtin] [--turns 5] [--new-tokens 32] [--history-tokens 120]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import sysconfig
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from inference.engine import Engine  # noqa: E402
from inference.generate import GenerationParams  # noqa: E402
from inference.loader import load_model  # noqa: E402
from lsp_server import mtpb as syn  # noqa: E402

TURNS = [
    "Import the random module.",
    "Define a list of 10 random integers between 1 and 100.",
    "Sort the list in place.",
    "Compute the sum of the list.",
    "Print the sum and the largest element.",
    "Write a function that returns the mean of a list.",
    "Print the mean of the list.",
    "Remove the duplicates from the list.",
]


def history(tok, n_tokens: int) -> str:
    """Whole lines of textwrap.py up to about n_tokens tokens."""
    text = (Path(sysconfig.get_paths()["stdlib"]) / "textwrap.py").read_text(encoding="utf-8")
    out = ""
    for line in text.splitlines(keepends=True):
        if len(tok.encode(out + line)) > n_tokens:
            break
        out += line
    return out


def run(engine: Engine, turns, params, text_before: str, carried: bool) -> tuple[dict, float]:
    """One synthesis; without `carried`, the session is freed before every turn."""
    conv = syn.new_conversation(engine, text_before, "python", params)
    t0 = time.perf_counter()
    for prompt in turns:
        if not carried:
            conv.close()
        conv.turn(prompt)
    ms = (time.perf_counter() - t0) * 1e3
    conv.close()
    return conv.summary(), ms


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="builtin")
    ap.add_argument("--turns", type=int, default=5)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--history-tokens", type=int, default=120)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    torch.manual_seed(0)
    loaded = load_model(args.model)
    engine = Engine(loaded)
    turns = TURNS[: args.turns]
    params = GenerationParams(max_new_tokens=args.new_tokens)
    before = history(loaded.tokenizer, args.history_tokens)
    run(engine, turns[:1], params, before, True)  # warm up
    results: dict[bool, list] = {True: [], False: []}
    for _ in range(args.repeat):
        for carried in (True, False):
            results[carried].append(run(engine, turns, params, before, carried))
    (carried, _), (scratch, _) = results[True][0], results[False][0]
    assert carried["program"] == scratch["program"], "carrying the cache changed the program"
    ms_c = statistics.median(ms for _, ms in results[True])
    ms_s = statistics.median(ms for _, ms in results[False])
    pre_ms_c = statistics.median(sum(t["prefillMs"] for t in r["turns"]) for r, _ in results[True])
    pre_ms_s = statistics.median(sum(t["prefillMs"] for t in r["turns"]) for r, _ in results[False])
    pre_c = carried["prefillTokens"]
    pre_s = sum(t["promptTokens"] for t in scratch["turns"])
    n_hist = len(loaded.tokenizer.encode(before))
    print(f"machine: {platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"model: {args.model} ({loaded.config.n_layer} layers, {loaded.config.n_positions} positions)")
    print(f"{len(turns)} turns, {args.new_tokens} new tokens a turn, history {n_hist} tokens")
    print(f"final prompt: {carried['promptTokens']} tokens (medians of {args.repeat} runs below)")
    print(f"carried:      prefilled {pre_c:6d} tokens in {pre_ms_c:8.1f} ms; whole synthesis {ms_c:8.1f} ms")
    print(f"from scratch: prefilled {pre_s:6d} tokens in {pre_ms_s:8.1f} ms; whole synthesis {ms_s:8.1f} ms")
    print(
        f"scratch/carried: prefill tokens {pre_s / max(pre_c, 1):.2f}x, "
        f"prefill time {pre_ms_s / pre_ms_c:.2f}x, whole synthesis {ms_s / ms_c:.2f}x"
    )
    print(
        "per turn (carried), prefilled/prompt: "
        + ", ".join(f"{t['prefillTokens']}/{t['promptTokens']}" for t in carried["turns"])
    )


if __name__ == "__main__":
    main()
