"""Per-keystroke completion latency through the protocol (client -> answer) against the engine alone.

A client starts `python -m lsp_server serve`, opens a Python file, and types a line one character at a time:
didChange + textDocument/inlineCompletion, waiting for each answer (the latency a user sees). Then the
same prompts go straight to an Engine in this process, one session, same stop patterns and token budget.
The difference is the protocol's overhead (JSON-RPC, document sync, prompt cut, worker hop, trimming).

    python bench/bench_protocol.py                # a random-weight CodeGen made here (needs transformers)
    python bench/bench_protocol.py --model builtin --keystrokes 60
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
        self.session = Engine(load_model(model, device="cpu", dtype="float32", allow_fallback=False)).session(
            "b"
        )
        self.max_new = max_new

    def __call__(self, before: str) -> float:
        t0 = time.perf_counter()
        pats = self.pp.patterns_for("python", "block", before[before.rfind("\n") + 1 :])
        result = self.session.generate(before, self.params(max_new_tokens=self.max_new, stop_patterns=pats))
        self.pp.trim(result.text, pats)
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
        ctx = types.InlineCompletionContext(trigger_kind=types.InlineCompletionTriggerKind.Invoked)
        params = types.InlineCompletionParams(
            ctx, types.TextDocumentIdentifier(uri), types.Position(line, col)
        )
        return await client.text_document_inline_completion_async(params)

    await ask(col0)  # loads the model and warms the session
    engine(DOC)
    proto, alone = [], []
    cmd = types.ExecuteCommandParams(command="codegen.status")
    last_hits = (await client.workspace_execute_command_async(cmd))["completions"]["typedThroughHits"]
    for i, ch in enumerate(TYPED[:n]):
        t0 = time.perf_counter()
        pos = types.Position(line, col0 + i)
        client.text_document_did_change(
            types.DidChangeTextDocumentParams(
                types.VersionedTextDocumentIdentifier(version=i + 2, uri=uri),
                [types.TextDocumentContentChangePartial(range=types.Range(pos, pos), text=ch)],
            )
        )
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
            pos = types.Position(line, col)
            client.text_document_did_change(
                types.DidChangeTextDocumentParams(
                    types.VersionedTextDocumentIdentifier(version=version, uri=uri),
                    [types.TextDocumentContentChangePartial(range=types.Range(pos, pos), text=ch)],
                )
            )
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
    args = ap.parse_args()
    n = min(args.keystrokes, len(TYPED))
    model = args.model or make_model(args)
    import torch

    torch.set_num_threads(args.threads)
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
