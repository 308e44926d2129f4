"""`codegen-lsp serve --tcp`: listens on 127.0.0.1, serves one client, and exits when it leaves."""

from __future__ import annotations

import asyncio
import socket
import sys

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
