"""A minimal stdio LSP client: asks the real server what it answers for a document (the tests' reference)."""

from __future__ import annotations

import json
import subprocess
import threading
from pathlib import Path


class StdioClient:
    """Starts a server command and exchanges JSON-RPC messages with it (requests answered in order)."""

    def __init__(self, cmd: list[str], env: dict | None = None, cwd: Path | None = None) -> None:
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=cwd
        )
        self.next_id = 0
        self.stderr: list[bytes] = []
        threading.Thread(target=lambda: self.stderr.extend(self.proc.stderr), daemon=True).start()

    def send(self, msg: dict) -> None:
        body = json.dumps(msg).encode()
        self.proc.stdin.write(b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        self.proc.stdin.flush()

    def read(self) -> dict:
        length = None
        while True:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(
                    "server closed stdout: " + b"".join(self.stderr[-20:]).decode(errors="replace")
                )
            line = line.strip()
            if not line:
                break
            name, _, value = line.partition(b":")
            if name.lower() == b"content-length":
                length = int(value)
        return json.loads(self.proc.stdout.read(length))

    def request(self, method: str, params) -> dict:
        """Send a request; answer the server's own requests with null until our response arrives."""
        self.next_id += 1
        rid = self.next_id
        self.send({"jsonrpc": "2.0", "id": rid, "method": method, "params": params})
        while True:
            msg = self.read()
            if msg.get("id") == rid and "method" not in msg:
                if "error" in msg:
                    raise RuntimeError(f"{method} failed: {msg['error']}")
                return msg.get("result")
            if "method" in msg and "id" in msg:  # a server->client request (progress create, ...)
                self.send({"jsonrpc": "2.0", "id": msg["id"], "result": None})

    def notify(self, method: str, params) -> None:
        self.send({"jsonrpc": "2.0", "method": method, "params": params})

    def initialize(self, root: Path, options: dict) -> dict:
        result = self.request(
            "initialize",
            {
                "processId": None,
                "rootUri": root.as_uri(),
                "capabilities": {"general": {"positionEncodings": ["utf-16"]}},
                "initializationOptions": options,
            },
        )
        self.notify("initialized", {})
        return result

    def close(self) -> None:
        try:
            self.request("shutdown", None)
            self.notify("exit", None)
            self.proc.wait(timeout=10)
        except Exception:
            self.proc.kill()
            self.proc.wait()

    def open(self, uri: str, text: str, version: int = 1) -> None:
        self.notify(
            "textDocument/didOpen",
            {"textDocument": {"uri": uri, "languageId": "python", "version": version, "text": text}},
        )

    def close_doc(self, uri: str) -> None:
        self.notify("textDocument/didClose", {"textDocument": {"uri": uri}})

    def inline_text(self, uri: str, text: str, line: int, character: int, allow_empty: bool = False) -> str:
        """The text the server's inline completion puts after (line, character) of the open `text` ("" when
        it suggests nothing and `allow_empty`)."""
        result = self.request(
            "textDocument/inlineCompletion",
            {
                "textDocument": {"uri": uri},
                "position": {"line": line, "character": character},
                "context": {"triggerKind": 1},
            },
        )
        items = result["items"] if isinstance(result, dict) else result or []
        if not items and allow_empty:
            return ""
        assert items, f"the server suggests nothing for {text!r}"
        item = items[0]
        insert = item["insertText"] if isinstance(item["insertText"], str) else item["insertText"]["value"]
        rng = item.get("range")
        if rng:
            typed = text.split("\n")[line][rng["start"]["character"] : character]
            assert insert.startswith(typed)
            insert = insert[len(typed) :]
        return insert

    def synthesize(self, uri: str, where: dict, turns: list[str]) -> dict:
        """`codegen.synthesize` without inserting, on version 1 of an open document; `where` is a position
        or {"range": selected lines}."""
        where = where if "range" in where else {"position": where}
        args = {"textDocument": {"uri": uri, "version": 1}, **where, "turns": turns}
        return self.request(
            "workspace/executeCommand", {"command": "codegen.synthesize", "arguments": [args]}
        )


def reference_inline(
    cmd: list[str],
    env: dict,
    root: Path,
    options: dict,
    uri: str,
    texts: list[str],
    suffix: str = "",
    allow_empty: bool = False,
) -> list[str]:
    """The server's inline completion at the end of each text (each its own document, followed by
    `suffix`, closed after it: the editor under test has that one document open), in one server; "" for
    a text it suggests nothing for when `allow_empty`."""
    client = StdioClient(cmd, env=env, cwd=root)
    out = []
    try:
        client.initialize(root, options)
        for i, text in enumerate(texts):
            doc = f"{uri}.{i}.py"
            client.open(doc, text + suffix)
            line, character = text.count("\n"), len(text.split("\n")[-1])
            out.append(client.inline_text(doc, text + suffix, line, character, allow_empty))
            client.close_doc(doc)
    finally:
        client.close()
    return out


def reference_program(
    cmd: list[str],
    env: dict,
    root: Path,
    options: dict,
    uri: str,
    text: str,
    where: dict,
    turns: list[str],
) -> dict:
    """The server's `codegen.synthesize` answer (without inserting) for a python document."""
    client = StdioClient(cmd, env=env, cwd=root)
    try:
        client.initialize(root, options)
        client.open(uri, text)
        return client.synthesize(uri, where, turns)
    finally:
        client.close()
