"""Project context and the KV cache: 20 keystrokes typed in one function with 4 other open files, context on
vs off, through the real server (two server processes typing in turns, keystroke by keystroke, same run).

The workspace: a copy of CPython's `json` package; `json/__init__.py` is edited (a line of `loads` typed one
character at a time), `decoder.py`, `encoder.py`, `scanner.py` and `tool.py` are open beside it. The model: a
random-weight CodeGen checkpoint with the real tokenizer and a 4,096-token window (the figures are about the
prompt and the cache, not about the answers). Each keystroke asks for a 16-token greedy completion; the
figures are the server's own (codegen.status: prefilled tokens, total ms). Then a completion in another file
and back: how many background prefills that cost, and what the first keystroke back prefilled.

    python bench/bench_context.py [--keystrokes 20] [--new-tokens 16] [--threads 2] [--context-tokens 1536]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import sysconfig
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_machine import describe  # noqa: E402
from lsprotocol import types  # noqa: E402
from pygls.lsp.client import LanguageClient  # noqa: E402

OTHERS = ("decoder.py", "encoder.py", "scanner.py", "tool.py")
LINE = "    if isinstance(s, str):"  # in json.loads: typed a character at a time
SHAPE = dict(n_layer=4, n_embd=512, n_head=8, rotary_dim=32, n_positions=4096)


def workspace(tmp: Path) -> Path:
    """A copy of the stdlib json package (the workspace folder)."""
    src = Path(sysconfig.get_paths()["stdlib"]) / "json"
    ws = tmp / "json"
    shutil.copytree(src, ws, ignore=shutil.ignore_patterns("__pycache__"))
    return ws


class Editor:
    """One server process and the documents it has open."""

    def __init__(self, name: str) -> None:
        self.name, self.versions = name, {}

    async def start(self, model: str, threads: int, ws: Path, opts: dict) -> None:
        self.client = LanguageClient("bench", "0")
        self.client.feature(types.WINDOW_LOG_MESSAGE)(lambda _params: None)
        self.client.feature(types.WINDOW_SHOW_MESSAGE)(lambda _params: None)
        env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT), OMP_NUM_THREADS=str(threads))
        await self.client.start_io(
            sys.executable, "-m", "lsp_server", "serve", "--log-level", "warning", env=env
        )
        folders = [types.WorkspaceFolder(ws.as_uri(), ws.name)]
        caps = types.ClientCapabilities(
            general=types.GeneralClientCapabilities(position_encodings=["utf-16"])
        )
        init = {"model": model, "maxLatencyMs": 0, "prefetch": False, "dtype": "int8", **opts}
        await self.client.initialize_async(
            types.InitializeParams(capabilities=caps, initialization_options=init, workspace_folders=folders)
        )
        self.client.initialized(types.InitializedParams())

    def open(self, path: Path, text: str) -> None:
        self.versions[path.as_uri()] = 1
        item = types.TextDocumentItem(uri=path.as_uri(), language_id="python", version=1, text=text)
        self.client.text_document_did_open(types.DidOpenTextDocumentParams(item))

    def type(self, path: Path, line: int, col: int, ch: str) -> None:
        uri = path.as_uri()
        self.versions[uri] += 1
        pos = types.Position(line, col)
        self.client.text_document_did_change(
            types.DidChangeTextDocumentParams(
                types.VersionedTextDocumentIdentifier(version=self.versions[uri], uri=uri),
                [types.TextDocumentContentChangePartial(range=types.Range(pos, pos), text=ch)],
            )
        )

    async def ask(self, path: Path, line: int, col: int) -> dict:
        """Complete there; (status's last latency row, the document's last prompt, model call or not)."""
        before = await self.status()
        ctx = types.InlineCompletionContext(trigger_kind=types.InlineCompletionTriggerKind.Invoked)
        await self.client.text_document_inline_completion_async(
            types.InlineCompletionParams(
                ctx, types.TextDocumentIdentifier(path.as_uri()), types.Position(line, col)
            )
        )
        after = await self.status(path.as_uri())
        comp = after["completions"]
        return {
            "model": comp["modelCalls"] > before["completions"]["modelCalls"],
            "last": after["latency"]["last"],
            "prompt": comp["lastPrompt"],
            "context": comp["projectContext"],
        }

    async def status(self, *args) -> dict:
        return await self.client.workspace_execute_command_async(
            types.ExecuteCommandParams(command="codegen.status", arguments=list(args))
        )

    async def stop(self) -> None:
        await self.client.shutdown_async(None)
        self.client.exit(None)
        await self.client.stop()


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


async def run(args) -> None:
    from tests.checkpoints import make_codegen_checkpoint

    tmp = Path(tempfile.mkdtemp(prefix="bench-context-"))
    model = str(make_codegen_checkpoint(tmp / "model", **SHAPE, init_std=1.0))
    ws = workspace(tmp)
    current = ws / "__init__.py"
    text = current.read_text()
    at = text.index(LINE)
    line, col0 = text[:at].count("\n"), len(LINE) - len(LINE.lstrip())
    start = text[: at + col0] + text[at + len(LINE) :]  # the line's code not typed yet
    keys = LINE.lstrip()[: args.keystrokes]
    editors = {"on": Editor("on"), "off": Editor("off")}
    for name, ed in editors.items():
        opts = {"maxNewTokens": args.new_tokens, "projectContext": {"maxTokens": args.context_tokens}}
        if name == "off":
            opts["projectContext"] = {"enabled": False}
        await ed.start(model, args.threads, ws, opts)
        for other in OTHERS:
            ed.open(ws / other, (ws / other).read_text())
        ed.open(current, start)
    for ed in editors.values():  # warm: load, prefill on open, the context chosen and prefilled when idle
        await ed.ask(current, line, col0)
        await asyncio.sleep(3)
        await ed.ask(current, line, col0)
    rows: dict[str, list[dict]] = {k: [] for k in editors}
    for i, ch in enumerate(keys):
        for name, ed in editors.items():  # in turns: a drift of the machine lands on both alike
            ed.type(current, line, col0 + i, ch)
            r = await ed.ask(current, line, col0 + i + 1)
            if r["model"]:
                rows[name].append(r)
    on = editors["on"]
    prompt = rows["on"][-1]["prompt"] if rows["on"] else {}
    print(describe())
    print(
        f"model: random CodeGen {SHAPE} int8, {args.threads} threads; "
        f"{len(keys)} keystrokes, {args.new_tokens} new tokens"
    )
    print(f"context: {prompt.get('contextTokens')} tokens in {len(prompt.get('context', []))} chunks:")
    for c in prompt.get("context", []):
        print(
            f"  {c['uri'].rsplit('/', 1)[1]:12} lines {c['lines'][0]}-{c['lines'][1]:<5} "
            f"{c['tokens']:5} tokens ({c['source']})"
        )
    print(f"prompt {prompt.get('promptTokens')} tokens, prefix {prompt.get('prefixTokens')}")
    figures = {}
    for name, rs in rows.items():
        prefill = [r["last"]["prefillTokens"] for r in rs]
        ms = [r["last"]["totalMs"] for r in rs]
        figures[name] = (statistics.mean(prefill), pct(ms, 0.5), pct(ms, 0.9), len(rs))
        print(
            f"context {name:3}: {len(rs)} model calls, prefilled tokens per keystroke "
            f"mean {figures[name][0]:.2f} "
            f"(max {max(prefill)}), total ms p50 {figures[name][1]:.1f} p90 {figures[name][2]:.1f}"
        )
    print(f"p50 ratio on/off: {figures['on'][1] / figures['off'][1]:.3f}")
    # another file and back: the refreshes (background prefills) it cost, the first keystroke back
    before = (await on.status())["completions"]["projectContext"]
    other = ws / "decoder.py"
    await on.ask(other, 10, 0)
    await asyncio.sleep(2)
    on.type(current, line, col0 + len(keys), " ")
    back = await on.ask(current, line, col0 + len(keys) + 1)
    await asyncio.sleep(3)
    on.type(current, line, col0 + len(keys) + 1, "x")
    again = await on.ask(current, line, col0 + len(keys) + 2)
    after = (await on.status())["completions"]["projectContext"]
    cost = after["backgroundRefreshes"] - before["backgroundRefreshes"]
    print(
        f"switch to decoder.py and back: {cost} background prefill(s) "
        f"({after['lastRefresh'].get('prefillTokens', 0)} tokens), unchanged choices "
        f"{after['unchangedRefreshes'] - before['unchangedRefreshes']}; first keystroke back prefilled "
        f"{back['last']['prefillTokens']}, the next {again['last']['prefillTokens']}"
    )
    for ed in editors.values():
        await ed.stop()
    shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--keystrokes", type=int, default=20)
    p.add_argument("--new-tokens", type=int, default=16)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--context-tokens", type=int, default=1536, help="projectContext.maxTokens")
    asyncio.run(run(p.parse_args()))


if __name__ == "__main__":
    main()
