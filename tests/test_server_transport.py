"""Transports: `serve --tcp` (127.0.0.1, one client, exits when it leaves) and stdio exit codes."""

from __future__ import annotations

import asyncio
import socket
import sys

import pytest
from lsprotocol import types
from pygls.lsp.client import LanguageClient

from tests.conftest import server_env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_tcp_serves_a_client_and_exits_after_exit(codegen_checkpoint):
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        *[sys.executable, "-m", "lsp_server", "serve", "--tcp", "--port", str(port)],
        env=server_env(),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        client = LanguageClient("tcp-test", "0")
        for _ in range(200):  # wait until it listens
            try:
                await client.start_tcp("127.0.0.1", port)
                break
            except OSError:
                await asyncio.sleep(0.1)
        result = await client.initialize_async(
            types.InitializeParams(
                capabilities=types.ClientCapabilities(),
                initialization_options={"model": str(codegen_checkpoint)},
            )
        )
        assert result.server_info.name == "codegen-lsp"
        client.initialized(types.InitializedParams())
        st = await client.workspace_execute_command_async(
            types.ExecuteCommandParams(command="codegen.status")
        )
        assert st["settings"]["model"] == str(codegen_checkpoint)
        await client.shutdown_async(None)
        client.exit(None)
        await client.stop()
        assert await asyncio.wait_for(proc.wait(), timeout=20) == 0
        assert await proc.stdout.read() == b""  # nothing ever goes to stdout
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def frame(method: str, params, msg_id: int | None = None) -> bytes:
    """One JSON-RPC message with its Content-Length header."""
    import json

    msg = {"jsonrpc": "2.0", "method": method, "params": params}
    if msg_id is not None:
        msg["id"] = msg_id
    body = json.dumps(msg).encode()
    return b"Content-Length: %d\r\n\r\n%s" % (len(body), body)


@pytest.mark.parametrize("shutdown, code", [(True, 0), (False, 1)], ids=["shutdown-then-exit", "exit-only"])
async def test_stdio_exit_code_follows_the_spec(shutdown, code):
    """LSP: `exit` ends the process with 0 after `shutdown`, with 1 without it."""
    proc = await asyncio.create_subprocess_exec(
        *[sys.executable, "-m", "lsp_server", "serve"],
        env=server_env(),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    init = {"processId": None, "rootUri": None, "capabilities": {}, "initializationOptions": {"model": "x"}}
    messages = frame("initialize", init, 1)
    if shutdown:
        messages += frame("shutdown", None, 2)
    messages += frame("exit", None)
    proc.stdin.write(messages)
    await proc.stdin.drain()
    try:
        assert await asyncio.wait_for(proc.wait(), timeout=20) == code
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
