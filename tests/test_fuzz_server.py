"""Property-based fuzzing of the real server over stdio: random edits, requests, cancels and settings.

After every step: the server's copy of each document equals the test's own model of it (text and version),
no answer was an InternalError (-32603), no request was answered twice, and a non-empty completion is
anchored at the position it was asked for. At the end of a sequence every request has exactly one answer.

CI runs a fixed, derandomized number of sequences (CODEGEN_FUZZ_EXAMPLES, default 600, about a minute on two
cores); more on demand, e.g. `CODEGEN_FUZZ_EXAMPLES=2000 pytest tests/test_fuzz_server.py` (also
CODEGEN_FUZZ_SEED to explore other sequences).
"""

from __future__ import annotations

import asyncio
import json
import os
import re

import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from tests.rawlsp import RawServer

EXAMPLES = int(os.environ.get("CODEGEN_FUZZ_EXAMPLES", "600"))
SEED = int(os.environ.get("CODEGEN_FUZZ_SEED", "17"))
BREAK = re.compile(r"\r\n|\r|\n")
# Pieces of text that have broken editors' position arithmetic: astral characters (2 UTF-16 units), CRLF,
# a lone CR, combining marks, tabs, CJK, a lone surrogate, long runs.
PIECES = [
    "a",
    "x = 1",
    "😀",
    "\r\n",
    "\r",
    "\n",
    "e\u0301",
    "\t",
    "日本語",
    "\ud83d",
    "    ",
    "()",
    "z" * 300,
]
SETTINGS = {
    "maxNewTokens": [1, 4, 8, 0, -3, 1e999, "many"],
    "temperature": [0.0, 0.7, -1, float("nan")],
    "debounceMs": [0, 5, 20],
    "completionMode": ["line", "block", "free", "nope", {"python": "line"}],
    "contextWindow": [0, 1, 2, 64],
    "device": ["cpu", "cuda", "gpu"],
    "cacheBudgetMb": [1, 4, 512],
}


def units(ch: str) -> int:
    return 2 if ord(ch) > 0xFFFF else 1


def position(text: str, offset: int) -> dict:
    """The LSP position (UTF-16) of a string offset: the test's own arithmetic, not the server's."""
    line, start = 0, 0
    for m in BREAK.finditer(text, 0, offset):
        if m.end() <= offset:
            line, start = line + 1, m.end()
    return {"line": line, "character": sum(units(c) for c in text[start:offset])}


def offsets(text: str) -> list[int]:
    """Offsets a position can name (not between the CR and LF of a CRLF)."""
    return [i for i in range(len(text) + 1) if not (0 < i < len(text) and text[i - 1 : i + 1] == "\r\n")]


class Sequence:
    """One fuzz sequence against the shared server: its documents' models and its requests."""

    def __init__(self, raw: RawServer, data, n: int) -> None:
        self.raw, self.data, self.n = raw, data, n
        self.docs: dict[str, list] = {}  # uri -> [version, text]
        self.pending: dict[str, dict] = {}  # request key -> what it asked
        self.asked: dict[str, dict] = {}

    def draw(self, strategy):
        return self.data.draw(strategy)

    def uri(self) -> str:
        return self.draw(st.sampled_from(sorted(self.docs)))

    def open(self) -> None:
        uri = f"file:///fuzz/{self.n}-{len(self.docs)}.py"
        text = "".join(self.draw(st.lists(st.sampled_from(PIECES), max_size=8)))
        self.docs[uri] = [1, text]
        self.raw.open(uri, text)

    def edit(self) -> None:
        uri = self.uri()
        version, text = self.docs[uri]
        new = "".join(self.draw(st.lists(st.sampled_from(PIECES), max_size=4)))
        if self.draw(st.integers(0, 9)) == 0:  # a full-text change
            self.raw.change(uri, version + 1, new)
            self.docs[uri] = [version + 1, new]
            return
        valid = offsets(text)
        a, b = sorted(self.draw(st.lists(st.sampled_from(valid), min_size=2, max_size=2)))
        p, q = position(text, a), position(text, b)
        self.raw.change(uri, version + 1, new, ((p["line"], p["character"]), (q["line"], q["character"])))
        self.docs[uri] = [version + 1, text[:a] + new + text[b:]]

    def request(self) -> None:
        uri = self.uri()
        _, text = self.docs[uri]
        pos = position(text, self.draw(st.sampled_from(offsets(text))))
        kind = self.draw(st.sampled_from(["inline", "inline-invoked", "list"]))
        params = {"textDocument": {"uri": uri}, "position": pos}
        if kind == "list":
            key = self.raw.request("textDocument/completion", params)
        else:
            ctx = {"triggerKind": 1 if kind == "inline-invoked" else 2}
            key = self.raw.request("textDocument/inlineCompletion", {**params, "context": ctx})
        self.pending[key] = self.asked[key] = {"kind": kind, "position": pos}

    def cancel(self) -> None:
        """Cancel one of this sequence's requests (answered or not: what is pending depends on timing, and
        what hypothesis draws must not)."""
        if self.asked:
            key = list(self.asked)[self.draw(st.integers(0, len(self.asked) - 1))]
            self.raw.notify("$/cancelRequest", {"id": json.loads(key)})

    def configure(self) -> None:
        key = self.draw(st.sampled_from(sorted(SETTINGS)))
        value = self.draw(st.sampled_from(SETTINGS[key]))
        body = json.dumps({"jsonrpc": "2.0", "method": "workspace/didChangeConfiguration", "params": "@"})
        settings_json = json.dumps({"codegen": {key: value}}).replace("Infinity", "1e999")
        self.raw.write(body.replace('"@"', '{"settings": ' + settings_json + "}").encode())

    def status(self) -> None:
        key = self.raw.request("workspace/executeCommand", {"command": "codegen.status", "arguments": []})
        self.asked[key] = {"kind": "status"}

    def close(self) -> None:
        if len(self.docs) > 1:
            uri = self.uri()
            del self.docs[uri]
            self.raw.notify("textDocument/didClose", {"textDocument": {"uri": uri}})

    async def check(self) -> None:
        """The server's documents equal the models; answers so far are well-formed."""
        for uri, (version, text) in self.docs.items():
            got = await self.raw.call(
                "workspace/executeCommand", {"command": "codegen.debug.document", "arguments": [uri]}
            )
            assert got["result"] == {"uri": uri, "version": version, "text": text}
        for key in list(self.pending):
            if self.raw.answers.get(key):
                self.verify(key, self.pending.pop(key))

    def verify(self, key: str, asked: dict) -> None:
        answers = self.raw.answers[key]
        assert len(answers) == 1, answers
        answer = answers[0]
        if "error" in answer:
            assert answer["error"]["code"] not in (-32603, -32602, -32601), answer
            return
        if asked["kind"] == "status":
            return
        items = answer["result"]["items"] if answer["result"] else []
        for item in items:
            rng = item["range"] if asked["kind"] != "list" else item["textEdit"]["range"]
            if asked["kind"] == "list":
                start, end = ((rng[k]["line"], rng[k]["character"]) for k in ("start", "end"))
                assert start[0] == asked["position"]["line"] and end >= start, (asked, item)
            else:
                assert rng["start"] == asked["position"], (asked, item)

    async def finish(self) -> None:
        for key in list(self.pending):
            await self.raw.answer(key, timeout=60)
        await asyncio.sleep(0.05)  # a second answer to any of them would have arrived by now
        for key in list(self.pending):
            self.verify(key, self.pending.pop(key))
        for key in self.asked:
            await self.raw.answer(key, timeout=60)
            assert len(self.raw.answers[key]) == 1
        for uri in self.docs:
            self.raw.notify("textDocument/didClose", {"textDocument": {"uri": uri}})


@pytest.fixture(scope="module")
def fuzz_server():
    loop = asyncio.new_event_loop()
    raw = loop.run_until_complete(RawServer().start(CODEGEN_LSP_DEBUG="1"))
    loop.run_until_complete(
        raw.initialize({"model": "builtin", "device": "cpu", "debounceMs": 0, "maxNewTokens": 4})
    )
    yield loop, raw
    code = loop.run_until_complete(raw.close())
    loop.close()
    assert code == 0


STEPS = ["edit", "edit", "edit", "request", "request", "cancel", "configure", "status", "open", "close"]
counter = {"sequences": 0}


@seed(SEED)
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.function_scoped_fixture,
        HealthCheck.data_too_large,
    ],
)
@given(data=st.data())
def test_random_sessions_keep_the_server_correct(fuzz_server, data):
    loop, raw = fuzz_server
    counter["sequences"] += 1
    seq = Sequence(raw, data, counter["sequences"])

    async def run() -> None:
        seq.open()
        for step in data.draw(st.lists(st.sampled_from(STEPS), min_size=1, max_size=25)):
            if step == "open" and len(seq.docs) < 3:
                seq.open()
            elif step != "open":
                getattr(seq, step)()
            await seq.check()
        await seq.finish()

    loop.run_until_complete(run())
    assert raw.proc.returncode is None, raw.stderr[-3000:].decode(errors="replace")
    assert b"Traceback" not in raw.stderr, raw.stderr[-3000:].decode(errors="replace")
