"""The framing parser, and the pygls internals lsp_server/jsonrpc.py relies on (these fail loudly when pygls
changes underneath)."""

from __future__ import annotations

import asyncio
import json

import pytest
from lsprotocol import types
from pygls.exceptions import JsonRpcInvalidParams
from pygls.protocol import JsonRPCProtocol

from lsp_server import jsonrpc
from lsp_server.framing import MAX_BODY, MAX_HEADER_LINE, FrameError, FrameParser
from lsp_server.server import CodegenServer, create_server

MSG = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "shutdown"}).encode()
FRAME = b"Content-Length: %d\r\n\r\n%s" % (len(MSG), MSG)


def test_frames_split_anywhere_are_reassembled():
    p = FrameParser()
    out = [item for i in range(len(FRAME * 2)) for item in p.feed((FRAME * 2)[i : i + 1])]
    assert out == [MSG, MSG]


@pytest.mark.parametrize(
    ("header", "too_large"),
    [
        (b"Content-Length: %d\r\n" % (MAX_BODY + 1), True),
        (b"Content-Length: 0\r\n", False),
        (b"Content-Length: -1\r\n", False),
        (b"Content-Length: 1e3\r\n", False),
        (b"Content-Type: text/plain\r\n", False),
    ],
    ids=["over-limit", "zero", "negative", "float", "missing"],
)
def test_a_broken_header_is_one_error_then_the_next_frame(header, too_large):
    p = FrameParser()
    out = p.feed(header + b"\r\n" + b'{"some": "body"}' + FRAME)
    assert len(out) == 2 and isinstance(out[0], FrameError) and out[0].too_large == too_large
    assert out[1] == MSG


def test_a_body_that_swallowed_the_next_header_is_re_read():
    p = FrameParser()
    out = p.feed(b"Content-Length: %d\r\n\r\n%s" % (len(MSG) + 30, MSG) + FRAME)
    assert out == [MSG + FRAME[:30]]
    p.resync(out[0])
    assert p.feed(b"") == [MSG]


def test_garbage_without_line_ends_is_bounded():
    p = FrameParser()
    for _ in range(100):
        assert p.feed(b"x" * 10_000) == []
    assert len(p.buf) <= MAX_HEADER_LINE + 10_000
    assert p.feed(b"\r\n" + FRAME) == [MSG]


# --- what jsonrpc.py takes from pygls beyond its public API -----------------------------------------------


def test_pygls_builtin_document_sync_is_replaced_by_ours():
    ls = CodegenServer()
    for method in (
        types.TEXT_DOCUMENT_DID_OPEN,
        types.TEXT_DOCUMENT_DID_CHANGE,
        types.TEXT_DOCUMENT_DID_CLOSE,
    ):
        handler = ls.protocol.fm.builtin_features[method]
        assert handler.__func__ is getattr(jsonrpc.CodegenProtocol, handler.__name__), method


def test_pygls_request_table_and_message_id_exist():
    proto = CodegenServer().protocol
    assert isinstance(proto._request_futures, dict)
    assert proto.msg_id is None
    assert isinstance(proto, JsonRPCProtocol) and proto.writer is None


def test_pygls_structures_bad_params_as_invalid_params_with_the_cattrs_cause():
    proto = CodegenServer().protocol
    bad = {"jsonrpc": "2.0", "id": 1, "method": "textDocument/completion", "params": {"position": {}}}
    with pytest.raises(JsonRpcInvalidParams) as e:
        proto.structure_message(bad)
    assert "required field missing" in jsonrpc.invalid_params(e.value)
    unknown = proto.structure_message({"jsonrpc": "2.0", "id": 2, "method": "x/y", "params": None})
    assert unknown.method == "x/y" and unknown.id == 2


def test_pygls_workspace_raises_before_initialize():
    with pytest.raises(RuntimeError):
        CodegenServer().workspace  # noqa: B018 (the property is the test)
    assert CodegenServer().position_encoding == "utf-16"


def test_the_writer_stops_after_its_stream_breaks():
    calls = []

    def write(data: bytes) -> None:
        calls.append(data)
        raise BrokenPipeError

    w = jsonrpc.SafeWriter(write, lambda: None)
    w.write(b"a")
    w.write(b"b")
    assert calls == [b"a"] and w.closed


async def test_cancel_flag_takes_the_place_of_the_request_future():
    ls = CodegenServer()
    proto = ls.protocol
    proto._ctx_msg_id.set(5)  # what pygls sets while it runs request 5's handler
    proto._request_futures[5] = asyncio.get_running_loop().create_future()
    flag = jsonrpc.cancel_flag(ls)
    assert proto._request_futures[5] is flag
    proto._handle_cancel_notification(5)  # what $/cancelRequest does
    assert flag.is_set()


async def test_the_request_table_does_not_grow_with_notifications():
    """17.9: every didChange (and every command) left a future in pygls' request table for good."""
    import io

    from tests.rawlsp import frame

    ls = create_server()
    ls.protocol.set_writer(jsonrpc.stdout_writer(io.BytesIO()))
    d = jsonrpc.Dispatcher(ls.protocol)
    options = {"model": "x", "prefillOnOpen": False}
    init = {"processId": None, "rootUri": None, "capabilities": {}, "initializationOptions": options}
    d.feed(frame({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": init}))
    item = {"uri": "file:///t.py", "languageId": "python", "version": 1, "text": ""}
    d.feed(frame({"jsonrpc": "2.0", "method": "textDocument/didOpen", "params": {"textDocument": item}}))
    for v in range(2, 200):
        change = {
            "range": {"start": {"line": 0, "character": 0}, "end": {"line": 0, "character": 0}},
            "text": "x",
        }
        params = {"textDocument": {"uri": "file:///t.py", "version": v}, "contentChanges": [change]}
        d.feed(frame({"jsonrpc": "2.0", "method": "textDocument/didChange", "params": params}))
        await asyncio.sleep(0)
    assert ls.documents.get("file:///t.py").text == "x" * 198
    assert len(ls.protocol._request_futures) < 5
    for i in range(50):  # a command runs as a coroutine pygls files under a uuid of its own
        status = {"command": "codegen.status", "arguments": []}
        d.feed(
            frame({"jsonrpc": "2.0", "id": 100 + i, "method": "workspace/executeCommand", "params": status})
        )
        await asyncio.sleep(0.01)
    d.feed(frame({"jsonrpc": "2.0", "method": "textDocument/didChange", "params": params}))
    assert len(ls.protocol._request_futures) < 5
    ls.worker.close()
