"""Per-keystroke completion latency through the protocol (client -> answer) against the engine alone.

A client starts `python -m lsp_server serve`, opens a Python file, and types a line one character at a time:
didChange + textDocument/inlineCompletion, waiting for each answer (the latency a user sees). Then the
same prompts go straight to an Engine in this process, one session, same stop patterns and token budget.
The difference is the protocol's overhead (JSON-RPC, document sync, prompt cut, worker hop, trimming).

    python bench/bench_protocol.py                # a random-weight CodeGen made here (needs transformers)
    python bench/bench_protocol.py --model builtin --keystrokes 60
    python bench/bench_protocol.py --accepts 12   # also: the answer after accepting a suggestion, with and
                                                  # without `prefetch`, and a keystroke during a prefetch
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lsprotocol import types  # noqa: E402
from pygls.lsp.client import LanguageClient  # noqa: E402

DOC = "".join(
    f"def helper_{i}(values, scale={i}):\n    return [v * scale for v in values]\n\n" for i in range(12)
)
DOC += "def main(argv):\n    "
TYPED = "result = helper_3(parse(argv), scale=2) + other_values_list[index]"


def insert(client: LanguageClient, uri: str, version: int, line: int, col: int, text: str) -> None:
    """didChange: `text` inserted at (line, col) of version `version` - 1."""
    pos = types.Position(line, col)
    client.text_document_did_change(
        types.DidChangeTextDocumentParams(
            types.VersionedTextDocumentIdentifier(version=version, uri=uri),
            [types.TextDocumentContentChangePartial(range=types.Range(pos, pos), text=text)],
        )
    )


async def ask_inline(client: LanguageClient, uri: str, line: int, col: int):
    """An invoked textDocument/inlineCompletion at (line, col)."""
    ctx = types.InlineCompletionContext(trigger_kind=types.InlineCompletionTriggerKind.Invoked)
    params = types.InlineCompletionParams(ctx, types.TextDocumentIdentifier(uri), types.Position(line, col))
    return await client.text_document_inline_completion_async(params)


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def summary(xs: list[float]) -> str:
    med, mean = statistics.median(xs), statistics.fmean(xs)
    return f"median {med:7.2f} ms   p90 {pct(xs, 0.9):7.2f} ms   mean {mean:7.2f} ms"


class EngineAlone:
    """The baseline: the same prompts straight to an Engine in this process (one session, same stops)."""

    def __init__(self, model: str, max_new: int) -> None:
        from inference.engine import Engine, GenerationParams
        from inference.loader import load_model
        from lsp_server import postprocess

        self.pp, self.params = postprocess, GenerationParams
        engine = Engine(load_model(model, device="cpu", dtype="float32", allow_fallback=False))
        self.session, self.tokenizer = engine.session("b"), engine.loaded.tokenizer
        self.max_new = max_new

    def __call__(self, before: str) -> float:
        t0 = time.perf_counter()
        pats = self.pp.patterns_for("python", "block", before[before.rfind("\n") + 1 :])
        ids = self.tokenizer.encode(before)  # short prompts: no cut
        result = self.session.generate(ids, self.params(max_new_tokens=self.max_new, stop_patterns=pats))
        result.text.rstrip()  # the engine cut at the stops; the server strips the end
        return (time.perf_counter() - t0) * 1000


async def run(model: str, n: int, max_new: int, threads: int) -> tuple[list[float], list[float], dict]:
    """Type n characters; after each protocol answer, time the engine alone on the same prompt (interleaved,
    so both see the same machine load)."""
    client = LanguageClient("bench", "0")
    client.feature(types.WINDOW_LOG_MESSAGE)(lambda _params: None)
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT), OMP_NUM_THREADS=str(threads))
    await client.start_io(sys.executable, "-m", "lsp_server", "serve", "--log-level", "warning", env=env)
    caps = types.ClientCapabilities(general=types.GeneralClientCapabilities(position_encodings=["utf-16"]))
    opts = {"model": model, "maxNewTokens": max_new}
    await client.initialize_async(types.InitializeParams(capabilities=caps, initialization_options=opts))
    client.initialized(types.InitializedParams())
    engine = EngineAlone(model, max_new)
    uri = "file:///bench.py"
    item = types.TextDocumentItem(uri=uri, language_id="python", version=1, text=DOC)
    client.text_document_did_open(types.DidOpenTextDocumentParams(item))
    line = DOC.count("\n")
    col0 = len(DOC.rsplit("\n", 1)[1])

    async def ask(col: int):
        return await ask_inline(client, uri, line, col)

    await ask(col0)  # loads the model and warms the session
    engine(DOC)
    proto, alone = [], []
    cmd = types.ExecuteCommandParams(command="codegen.status")
    last_hits = (await client.workspace_execute_command_async(cmd))["completions"]["typedThroughHits"]
    for i, ch in enumerate(TYPED[:n]):
        t0 = time.perf_counter()
        insert(client, uri, i + 2, line, col0 + i, ch)
        await ask(col0 + i + 1)
        ms = (time.perf_counter() - t0) * 1000
        hits = (await client.workspace_execute_command_async(cmd))["completions"]["typedThroughHits"]
        if hits == last_hits:  # compare model calls only: a typed-through answer has no engine twin
            proto.append(ms)
            alone.append(engine(DOC + TYPED[: i + 1]))
        last_hits = hits
    # typing through the last suggestion: answered from the server's cache, no model call (protocol floor)
    col, version = col0 + n, n + 2
    through = []
    for _ in range(3):
        res = await ask(col)
        suggestion = res.items[0].insert_text if res and res.items else ""
        for ch in suggestion[: len(suggestion) - 1][:10]:
            t0 = time.perf_counter()
            insert(client, uri, version, line, col, ch)
            col, version = col + 1, version + 1
            await ask(col)
            through.append((time.perf_counter() - t0) * 1000)
    status = await client.workspace_execute_command_async(
        types.ExecuteCommandParams(command="codegen.status")
    )
    status["typed_through_ms"] = through
    await client.shutdown_async(None)
    client.exit(None)
    await client.stop()
    return proto, alone, status


def cpu_info() -> str:
    """The CPU model and its vector instruction-set flags (from /proc/cpuinfo where there is one)."""
    import platform

    name, flags = platform.processor() or platform.machine(), []
    try:
        info = Path("/proc/cpuinfo").read_text()
        name = next(ln.split(":", 1)[1].strip() for ln in info.splitlines() if ln.startswith("model name"))
        line = next(ln for ln in info.splitlines() if ln.startswith("flags"))
        flags = [f for f in line.split(":", 1)[1].split() if f.startswith(("avx", "fma", "sse4", "amx"))]
    except (OSError, StopIteration):
        pass
    return f"{name}, {os.cpu_count()} cores, flags: {' '.join(flags) or '?'}"


async def start_server(model: str, threads: int, opts: dict) -> LanguageClient:
    """`python -m lsp_server serve` under a pygls client, initialized with `opts`."""
    client = LanguageClient("bench", "0")
    client.feature(types.WINDOW_LOG_MESSAGE)(lambda _params: None)
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT), OMP_NUM_THREADS=str(threads))
    await client.start_io(sys.executable, "-m", "lsp_server", "serve", "--log-level", "warning", env=env)
    caps = types.ClientCapabilities(general=types.GeneralClientCapabilities(position_encodings=["utf-16"]))
    await client.initialize_async(
        types.InitializeParams(capabilities=caps, initialization_options={"model": model, **opts})
    )
    client.initialized(types.InitializedParams())
    return client


async def accepts(model: str, n: int, max_new: int, threads: int, prefetch: bool, think_ms: float) -> dict:
    """Ask, wait `think_ms` (a user reading the suggestion), accept it (didChange inserting it), and time the
    next answer; then type one character off that answer (while its prefetch runs) and time that answer."""
    opts = {"maxNewTokens": max_new, "completionMode": "free", "stopPatterns": {"python": []}}
    client = await start_server(model, threads, {**opts, "prefetch": prefetch})
    uri, text, version = "file:///accept.py", DOC, 1
    client.text_document_did_open(
        types.DidOpenTextDocumentParams(types.TextDocumentItem(uri, "python", version, text))
    )

    async def edit_and_ask(ins: str) -> tuple[str, float]:
        nonlocal text, version
        line, col = text.count("\n"), len(text.rsplit("\n", 1)[1])
        t0 = time.perf_counter()
        if ins:
            version += 1
            insert(client, uri, version, line, col, ins)
            text += ins
            line, col = text.count("\n"), len(text.rsplit("\n", 1)[1])
        res = await ask_inline(client, uri, line, col)
        return (res.items[0].insert_text if res and res.items else ""), (time.perf_counter() - t0) * 1000

    after, keys, answers = [], [], []
    suggestion, _ = await edit_and_ask("")  # loads the model and warms the session
    for _ in range(n):
        await asyncio.sleep(think_ms / 1000)
        suggestion, ms = await edit_and_ask(suggestion)  # Tab: the suggestion is inserted, the next asked
        after.append(ms)
        answers.append(suggestion)
        await asyncio.sleep(0.005)  # the next suggestion's prefetch is under way now
        off = "x" if not suggestion.startswith("x") else "y"
        suggestion, ms = await edit_and_ask(off)  # a keystroke off the suggestion: a model call either way
        keys.append(ms)
    cmd = types.ExecuteCommandParams(command="codegen.status")
    status = await client.workspace_execute_command_async(cmd)
    await client.shutdown_async(None)
    client.exit(None)
    await client.stop()
    return {"after": after, "keys": keys, "answers": answers, "completions": status["completions"]}


def report_accepts(model: str, n: int, max_new: int, threads: int, think_ms: float) -> None:
    """The answer after an acceptance and a keystroke during a prefetch, prefetch off and on (same run)."""
    off = asyncio.run(accepts(model, n, max_new, threads, False, think_ms))
    on = asyncio.run(accepts(model, n, max_new, threads, True, think_ms))
    same = off["answers"] == on["answers"]
    print(f"\n{n} acceptances, think time {think_ms:.0f} ms, completionMode free, maxNewTokens {max_new}")
    for name, r in (("prefetch off", off), ("prefetch on ", on)):
        c = r["completions"]
        print(
            f"{name}: answer after acceptance {summary(r['after'])}\n"
            f"              keystroke during a prefetch {summary(r['keys'])}\n"
            f"              model calls {c['modelCalls']}, prefetch {c.get('prefetch')}"
        )
    a_off, a_on = statistics.median(off["after"]), statistics.median(on["after"])
    k_off, k_on = statistics.median(off["keys"]), statistics.median(on["keys"])
    print(
        f"answer after acceptance: p50 {a_on:.2f} ms with prefetch vs {a_off:.2f} ms without "
        f"({a_off / a_on:.1f}x)"
    )
    print(
        f"keystroke during a prefetch: p50 {k_on:.2f} ms with vs {k_off:.2f} ms without "
        f"({k_on - k_off:+.2f} ms)"
    )
    print(f"same suggestions with and without prefetch: {same}")


def make_model(args) -> str:
    from tests.checkpoints import make_codegen_checkpoint

    dest = Path(tempfile.mkdtemp(prefix="bench-codegen-"))
    make_codegen_checkpoint(
        dest, n_layer=args.layers, n_embd=args.embd, n_head=args.heads, rotary_dim=8, n_positions=512
    )
    return str(dest)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--model", default=None, help="checkpoint directory / builtin (default: make a random one)"
    )
    ap.add_argument("--keystrokes", type=int, default=40)
    ap.add_argument("--max-new-tokens", type=int, default=16)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--embd", type=int, default=256)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1, help="torch threads, in the server and the baseline")
    ap.add_argument("--accepts", type=int, default=0, help="acceptances to time with and without prefetch")
    ap.add_argument("--think-ms", type=float, default=300.0, help="time from a suggestion to its acceptance")
    args = ap.parse_args()
    n = min(args.keystrokes, len(TYPED))
    model = args.model or make_model(args)
    import torch

    torch.set_num_threads(args.threads)
    print(f"cpu: {cpu_info()}")
    if args.accepts:
        report_accepts(model, args.accepts, args.max_new_tokens, args.threads, args.think_ms)
        if not args.keystrokes:
            return
    proto, alone, status = asyncio.run(run(model, n, args.max_new_tokens, args.threads))
    comp = status["completions"]
    print(
        f"model {model}   {n} keystrokes ({len(proto)} answered by the model)   "
        f"maxNewTokens {args.max_new_tokens}   torch threads {args.threads}"
    )
    print(f"through the protocol : {summary(proto)}")
    print(f"engine alone         : {summary(alone)}")
    over = statistics.median(proto) - statistics.median(alone)
    print(
        f"protocol overhead    : {over:+.2f} ms at the median "
        f"(ratio {statistics.median(proto) / statistics.median(alone):.2f}x)"
    )
    print(
        f"server: {comp['modelCalls']} model calls, {comp['typedThroughHits']} typed-through answers, "
        f"empty: {comp['emptyReasons']}"
    )
    if status["typed_through_ms"]:
        print(f"typed-through answers: {summary(status['typed_through_ms'])}  (no model call)")
    last = status["latency"].get("last", {})
    print(f"server's last engine call: {last}")


if __name__ == "__main__":
    main()
