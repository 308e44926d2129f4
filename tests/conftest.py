"""Shared fixtures: tiny random-weight checkpoints, and clients of the real server run as a subprocess."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest
import pytest_asyncio
from lsprotocol import types
from pytest_lsp import ClientServerConfig, LanguageClient

from tests.checkpoints import (
    CODEGEN_TOKENIZER_DIR,
    NEOX_JA_TOKENIZER_DIR,
    SHARED_DATA,
    make_codegen_checkpoint,
)

ROOT = Path(__file__).resolve().parents[1]
# Tests (and the servers they start) never write the user's prepared-weights cache; tests of the cache pass
# a directory of their own (inference/prepared.py).
os.environ.setdefault("CODEGEN_LSP_PREPARED_CACHE", "off")
SERVER_COMMAND = [sys.executable, "-m", "lsp_server", "serve"]
TINY = dict(n_layer=2, n_embd=64, n_head=4, rotary_dim=8, n_positions=256)


def pytest_sessionstart(session) -> None:
    """Stop at once, saying why, when the real tokenizer files the tests read are not there."""
    missing = [d for d in (CODEGEN_TOKENIZER_DIR, NEOX_JA_TOKENIZER_DIR) if not d.is_dir()]
    if missing:
        raise pytest.UsageError(
            f"the real tokenizer files are missing ({', '.join(map(str, missing))}): the tests read "
            f"{SHARED_DATA}, shared/data beside the checkout; CODEGEN_LSP_SHARED=DIR reads DIR/data instead"
        )


@pytest.fixture(scope="session")
def codegen_checkpoint(tmp_path_factory) -> Path:
    """A tiny random-weight CodeGen checkpoint (real tokenizer, 256 positions), made once per test run."""
    return make_codegen_checkpoint(tmp_path_factory.mktemp("codegen-tiny"), **TINY)


@pytest.fixture(scope="session")
def codegen_engine(codegen_checkpoint):
    """An Engine on `codegen_checkpoint` in the test process (CPU, the server's default dtype 'auto')."""
    from inference.engine import Engine
    from inference.loader import load_model

    return Engine(load_model(str(codegen_checkpoint), device="cpu", dtype="auto", allow_fallback=False))


@pytest.fixture(scope="session")
def codegen_tokenizer():
    """The real codegen-350M-mono tokenizer from ../shared/data."""
    from tokenizer import load_tokenizer

    return load_tokenizer(CODEGEN_TOKENIZER_DIR)


def server_env(**extra: str) -> dict[str, str]:
    """Environment of a server subprocess: offline hub, few threads, the project importable."""
    env = dict(os.environ)
    env.update(
        HF_HUB_OFFLINE="1",
        OMP_NUM_THREADS="1",
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])),
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


def client_capabilities(encodings: list[str] | None = None) -> types.ClientCapabilities:
    """Capabilities of a client that supports inline completion, progress and configuration."""
    general = types.GeneralClientCapabilities(position_encodings=encodings) if encodings else None
    return types.ClientCapabilities(
        general=general,
        window=types.WindowClientCapabilities(work_done_progress=True),
        workspace=types.WorkspaceClientCapabilities(
            configuration=True, workspace_edit=types.WorkspaceEditClientCapabilities(document_changes=True)
        ),
        text_document=types.TextDocumentClientCapabilities(
            inline_completion=types.InlineCompletionClientCapabilities(),
            completion=types.CompletionClientCapabilities(),
        ),
    )


class Servers:
    """Starts `python -m lsp_server serve` under pytest-lsp, initializes it, and shuts them all down."""

    def __init__(self) -> None:
        self.clients: list[LanguageClient] = []

    async def __call__(
        self, options: dict | None = None, encodings: list[str] | None = None, command=None, folders=(), **env
    ):
        config = ClientServerConfig(server_command=command or SERVER_COMMAND, server_env=server_env(**env))
        client = await config.start()
        self.clients.append(client)
        client.init_result = await client.initialize_session(
            types.InitializeParams(
                capabilities=client_capabilities(encodings),
                initialization_options=options or {},
                workspace_folders=[types.WorkspaceFolder(Path(f).as_uri(), Path(f).name) for f in folders]
                or None,
            )
        )
        return client

    async def close(self) -> None:
        for client in self.clients:
            try:
                if client._server is not None and client._server.returncode is None:
                    await asyncio.wait_for(client.shutdown_session(), timeout=10)
            finally:
                await client.stop()


@pytest_asyncio.fixture
async def start_server():
    """Factory: `client = await start_server(initialization_options, encodings=None, command=None, **env)`."""
    servers = Servers()
    yield servers
    await servers.close()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def start_module_server():
    """Like `start_server`, for servers a module shares (mark its tests asyncio(loop_scope="module"))."""
    servers = Servers()
    yield servers
    await servers.close()


# --- small client helpers for the server tests ---------------------------------------------------------


def open_doc(client: LanguageClient, uri: str, text: str, language: str = "python") -> None:
    client.text_document_did_open(
        types.DidOpenTextDocumentParams(
            types.TextDocumentItem(uri=uri, language_id=language, version=1, text=text)
        )
    )


def change(client: LanguageClient, uri: str, version: int, start: tuple, end: tuple, text: str) -> None:
    """One incremental edit: replace [start, end) ((line, character) in the negotiated encoding) by text."""
    rng = types.Range(types.Position(*start), types.Position(*end))
    client.text_document_did_change(
        types.DidChangeTextDocumentParams(
            text_document=types.VersionedTextDocumentIdentifier(uri=uri, version=version),
            content_changes=[types.TextDocumentContentChangePartial(range=rng, text=text)],
        )
    )


def inline_params(uri: str, line: int, character: int, automatic: bool = True, selected=None):
    kind = (
        types.InlineCompletionTriggerKind.Automatic
        if automatic
        else types.InlineCompletionTriggerKind.Invoked
    )
    return types.InlineCompletionParams(
        context=types.InlineCompletionContext(trigger_kind=kind, selected_completion_info=selected),
        text_document=types.TextDocumentIdentifier(uri),
        position=types.Position(line, character),
    )


async def inline(client: LanguageClient, uri: str, line: int, character: int, automatic=True, selected=None):
    """The inline completion items at a position."""
    result = await client.text_document_inline_completion_async(
        inline_params(uri, line, character, automatic, selected)
    )
    return list(result.items) if result is not None else []


async def status(client: LanguageClient, *args) -> dict:
    return await client.workspace_execute_command_async(
        types.ExecuteCommandParams(command="codegen.status", arguments=list(args))
    )
