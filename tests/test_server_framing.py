"""One bad frame never kills or deafens the server (17.1); every request gets exactly one answer (17.2)."""

from __future__ import annotations

import json

import pytest
import pytest_asyncio

from tests.rawlsp import RawServer

URI = "file:///a.py"
STATUS = {"command": "codegen.status", "arguments": ["é"]}  # a non-ASCII body: bytes != characters


def body(msg_id: int) -> bytes:
    msg = {"jsonrpc": "2.0", "id": msg_id, "method": "workspace/executeCommand", "params": STATUS}
    return json.dumps(msg, ensure_ascii=False).encode()


# name -> (bytes of the broken frame carrying request 7, whether request 7 itself can be answered, error code)
B = body(7)
BROKEN = {
    "length-10^12": (b"Content-Length: 1000000000000\r\n\r\n{}", False, -32600),
    "length-2^31": (b"Content-Length: 2147483648\r\n\r\n" + B, False, -32600),
    "length-in-characters": (b"Content-Length: %d\r\n\r\n" % len(B.decode()) + B, False, -32700),
    "length-40-too-large": (b"Content-Length: %d\r\n\r\n" % (len(B) + 40) + B, False, -32700),
    "length-missing": (b"Content-Type: application/vscode-jsonrpc; charset=utf-8\r\n\r\n" + B, False, -32700),
    "length-zero": (b"Content-Length: 0\r\n\r\n" + B, False, -32700),
    "length-negative": (b"Content-Length: -5\r\n\r\n" + B, False, -32700),
    "length-not-a-number": (b"Content-Length: many\r\n\r\n" + B, False, -32700),
    "lowercase-name": (b"content-length: %d\r\n\r\n" % len(B) + B, True, None),
    "lf-only-lines": (b"Content-Length: %d\n\n" % len(B) + B, True, None),
}


@pytest_asyncio.fixture
async def raw():
    server = await RawServer().start()
    await server.initialize()
    yield server
    assert await server.close() == 0  # shutdown and exit were still answered


@pytest.mark.parametrize("name", list(BROKEN), ids=list(BROKEN))
async def test_a_broken_frame_is_survived_and_the_next_one_read(raw, name):
    data, answerable, code = BROKEN[name]
    raw.send_bytes(data)
    raw.send_bytes(b"Content-Length: %d\r\n\r\n" % len(body(8)) + body(8))
    assert "result" in await raw.answer(8)
    if answerable:
        assert "result" in await raw.answer(7)
    else:
        errors = [m for m in raw.messages if "error" in m and m.get("id") is None]
        assert [e["error"]["code"] for e in errors] == [code], errors
    assert (await raw.status())["version"]


async def test_garbage_then_a_frame(raw):
    raw.send_bytes(b"\x00\xff garbage without a line end " * 1000 + b"\r\n\r\n")
    assert (await raw.status())["version"]


BAD_REQUESTS = {
    "line--1": (
        "textDocument/completion",
        {"textDocument": {"uri": URI}, "position": {"line": -1, "character": 0}},
    ),
    "line-2^31": (
        "textDocument/completion",
        {"textDocument": {"uri": URI}, "position": {"line": 2**31, "character": 0}},
    ),
    "inline-no-context": (
        "textDocument/inlineCompletion",
        {"textDocument": {"uri": URI}, "position": {"line": 0, "character": 0}},
    ),
    "trigger-kind-9": (
        "textDocument/inlineCompletion",
        {
            "textDocument": {"uri": URI},
            "position": {"line": 0, "character": 0},
            "context": {"triggerKind": 9},
        },
    ),
    "completion-no-position": ("textDocument/completion", {"textDocument": {"uri": URI}}),
    "execute-command-list": ("workspace/executeCommand", []),
    "execute-command-5": ("workspace/executeCommand", {"command": 5}),
    "shutdown-with-params": ("shutdown", {"force": True}),
}


@pytest.mark.parametrize("name", list(BAD_REQUESTS), ids=list(BAD_REQUESTS))
async def test_params_failing_validation_answer_invalid_params(raw, name):
    method, params = BAD_REQUESTS[name]
    raw.open(URI, "import os\n")
    answer = await raw.call(method, params)
    assert answer["error"]["code"] == -32602, answer
    assert (await raw.status())["version"]


@pytest.mark.parametrize("with_params", [True, False], ids=["with-params", "without-params"])
async def test_unknown_method_is_method_not_found(raw, with_params):
    answer = await raw.call("codegen/nope", {}, with_params=with_params)
    assert answer["error"]["code"] == -32601


MALFORMED = {
    "not-json": b"{bad",
    "batch": b'[{"jsonrpc": "2.0", "id": 41, "method": "shutdown"}]',
    "jsonrpc-1.0": b'{"jsonrpc": "1.0", "id": 42, "method": "shutdown"}',
    "5000-digit-integer": b'{"jsonrpc": "2.0", "id": ' + b"9" * 5000 + b', "method": "shutdown"}',
    "id-is-an-object": b'{"jsonrpc": "2.0", "id": {"a": 1}, "method": "shutdown"}',
    "method-is-a-number": b'{"jsonrpc": "2.0", "id": 43, "method": 5}',
    "a-string": b'"shutdown"',
}


@pytest.mark.parametrize("name", list(MALFORMED), ids=list(MALFORMED))
async def test_malformed_messages_answer_with_id_null(raw, name):
    raw.write(MALFORMED[name])
    assert (await raw.status())["version"]  # and it did not shut down
    errors = [m for m in raw.messages if "error" in m]
    assert len(errors) == 1 and errors[0]["id"] is None
    assert errors[0]["error"]["code"] == (-32700 if name in ("not-json", "5000-digit-integer") else -32600)


async def test_lifecycle_errors():
    server = await RawServer().start()
    try:
        before = await server.call("workspace/executeCommand", STATUS)
        assert before["error"]["code"] == -32002
        await server.initialize()
        again = await server.call("initialize", {"processId": None, "rootUri": None, "capabilities": {}})
        assert again["error"]["code"] == -32600
        assert "result" in await server.call("shutdown")
        after = await server.call("workspace/executeCommand", STATUS)
        assert after["error"]["code"] == -32600
        server.notify("exit")
        assert await server.proc.wait() == 0
    finally:
        await server.close()
    answered = [json.dumps(m["id"]) for m in server.messages if "id" in m and "method" not in m]
    assert len(answered) == len(set(answered))  # exactly one answer per request
