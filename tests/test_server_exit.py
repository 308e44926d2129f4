"""`exit` without `shutdown` while a request is in flight ends the process quietly (17.6)."""

from __future__ import annotations

import asyncio

from tests.rawlsp import RawServer


async def test_exit_during_a_request_does_not_flood_stderr(codegen_checkpoint):
    """Was 194,546 lines of stderr in 2.5 s: the answer, sent on the closed stream, was reported with
    showMessage, which sent again."""
    server = await RawServer().start()
    await server.initialize({"model": str(codegen_checkpoint), "maxNewTokens": 200, "logLevel": "info"})
    uri = "file:///exit.py"
    server.open(uri, "def f(x):\n    ")
    params = {
        "textDocument": {"uri": uri},
        "position": {"line": 1, "character": 4},
        "context": {"triggerKind": 1},
    }
    await server.call("textDocument/inlineCompletion", params)  # the model is loaded
    for _ in range(3):
        server.request("textDocument/inlineCompletion", params)
        server.request("workspace/executeCommand", {"command": "codegen.clearCache"})
    server.notify("exit")
    assert await asyncio.wait_for(server.proc.wait(), timeout=20) == 1  # exit without shutdown: 1 (LSP)
    await server.close()
    err = server.stderr.decode(errors="replace")
    assert err.count("Traceback") == 0, err[-3000:]
    assert len(err.splitlines()) < 50, err[-3000:]


def test_sending_on_a_closed_stream_is_one_log_line(caplog):
    """The cause of the flood: pygls reports a failed send with showMessage, which sends on the same closed
    stream and fails again, recursively (a traceback per level)."""
    import io
    import logging

    from lsprotocol import types

    from lsp_server import jsonrpc
    from lsp_server.server import CodegenServer

    ls = CodegenServer()
    stream = io.BytesIO()
    ls.protocol.set_writer(jsonrpc.stdout_writer(stream))
    stream.close()  # what `exit` does to stdout
    with caplog.at_level(logging.DEBUG):
        for _ in range(3):
            ls.window_log_message(types.LogMessageParams(type=types.MessageType.Info, message="late"))
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == [], caplog.text[-2000:]
    assert len([r for r in caplog.records if r.name.startswith("lsp_server")]) == 1  # "the stream is closed"
    assert "Traceback" not in caplog.text
