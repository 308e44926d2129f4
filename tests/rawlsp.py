"""A raw JSON-RPC client of the real server over stdio: any bytes in, every frame out, counted per id."""

from __future__ import annotations

import asyncio
import collections
import json
import sys

from tests.conftest import server_env

SERVER = [sys.executable, "-m", "lsp_server", "serve"]
BUILTIN = {"model": "builtin", "device": "cpu", "debounceMs": 0}


def frame(msg) -> bytes:
    """One message (an object, or bytes sent as they are) with its Content-Length header."""
    body = msg if isinstance(msg, bytes) else json.dumps(msg).encode()
    return b"Content-Length: %d\r\n\r\n%s" % (len(body), body)


class RawServer:
    """The server as a subprocess; answers its requests to the client (configuration, progress) with null."""

    def __init__(self) -> None:
        self.proc: asyncio.subprocess.Process | None = None
        self.messages: list[dict] = []  # everything the server sent, in order
        self.answers: collections.defaultdict = collections.defaultdict(list)  # id -> responses
        self.waiters: dict = {}
        self.next_id = 1000
        self.reader: asyncio.Task | None = None
        self.stderr = bytearray()

    async def start(self, **env) -> RawServer:
        self.proc = await asyncio.create_subprocess_exec(
            *SERVER,
            env=server_env(**env),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            limit=1 << 24,
        )
        self.reader = asyncio.ensure_future(self._read())
        self.err_reader = asyncio.ensure_future(self._read_stderr())
        return self

    async def _read_stderr(self) -> None:
        while chunk := await self.proc.stderr.read(1 << 16):
            self.stderr += chunk[: max(0, (1 << 22) - len(self.stderr))]  # keep the first 4 MiB

    async def _read(self) -> None:
        out = self.proc.stdout
        while True:
            length = None
            while True:
                line = await out.readline()
                if not line:
                    return
                if line in (b"\r\n", b"\n"):
                    break
                name, _, value = line.decode().partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value)
            msg = json.loads(await out.readexactly(length))
            self.messages.append(msg)
            if "method" in msg and "id" in msg:  # a request to the client
                reply = [{}] if msg["method"] == "workspace/configuration" else None
                self.write({"jsonrpc": "2.0", "id": msg["id"], "result": reply})
            elif "method" not in msg:
                key = json.dumps(msg.get("id"))
                self.answers[key].append(msg)
                if (w := self.waiters.pop(key, None)) is not None and not w.done():
                    w.set_result(msg)

    def write(self, msg) -> None:
        self.proc.stdin.write(frame(msg))

    def send_bytes(self, data: bytes) -> None:
        self.proc.stdin.write(data)

    def request(self, method: str, params=None, msg_id=None, with_params: bool = True) -> str:
        """Send a request; returns its id's key for `answer`."""
        if msg_id is None:
            msg_id, self.next_id = self.next_id, self.next_id + 1
        msg = {"jsonrpc": "2.0", "id": msg_id, "method": method}
        if with_params:
            msg["params"] = params
        self.write(msg)
        return json.dumps(msg_id)

    def notify(self, method: str, params=None) -> None:
        self.write({"jsonrpc": "2.0", "method": method, "params": params})

    async def answer(self, key, timeout: float = 20.0) -> dict:
        """The (first) response to the request with id key (a json.dumps'd id)."""
        key = key if isinstance(key, str) else json.dumps(key)
        if self.answers.get(key):
            return self.answers[key][0]
        fut = self.waiters.setdefault(key, asyncio.get_running_loop().create_future())
        return await asyncio.wait_for(asyncio.shield(fut), timeout)

    async def call(self, method: str, params=None, timeout: float = 20.0, **kw) -> dict:
        return await self.answer(self.request(method, params, **kw), timeout)

    async def initialize(self, options: dict | None = None) -> dict:
        caps = {"window": {"workDoneProgress": True}, "workspace": {"configuration": True}}
        init = {"processId": None, "rootUri": None, "capabilities": caps}
        answer = await self.call("initialize", {**init, "initializationOptions": options or BUILTIN})
        self.notify("initialized", {})
        return answer

    def open(self, uri: str, text: str, version: int = 1, language: str = "python") -> None:
        item = {"uri": uri, "languageId": language, "version": version, "text": text}
        self.notify("textDocument/didOpen", {"textDocument": item})

    def change(self, uri: str, version: int, text: str, rng: tuple | None = None) -> None:
        """didChange: the whole text, or `rng` ((line, char), (line, char)) replaced by text."""
        ch = {"text": text}
        if rng is not None:
            (l1, c1), (l2, c2) = rng
            ch["range"] = {"start": {"line": l1, "character": c1}, "end": {"line": l2, "character": c2}}
        params = {"textDocument": {"uri": uri, "version": version}, "contentChanges": [ch]}
        self.notify("textDocument/didChange", params)

    async def status(self, *args) -> dict:
        params = {"command": "codegen.status", "arguments": list(args)}
        answer = await self.call("workspace/executeCommand", params)
        return answer["result"]

    def shown(self) -> list[str]:
        """window/showMessage texts so far."""
        return [m["params"]["message"] for m in self.messages if m.get("method") == "window/showMessage"]

    async def close(self, timeout: float = 10.0) -> int | None:
        """shutdown + exit when still running; kill after `timeout`; the exit code."""
        if self.proc.returncode is None:
            try:
                await self.call("shutdown", None, timeout=timeout)
                self.notify("exit")
                await asyncio.wait_for(self.proc.wait(), timeout)
            except (asyncio.TimeoutError, ConnectionError, BrokenPipeError):
                self.proc.kill()
                await self.proc.wait()
        await asyncio.gather(self.reader, self.err_reader, return_exceptions=True)
        return self.proc.returncode
