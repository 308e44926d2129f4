"""Bad settings end to end: rejected with the key named, the previous value kept, the server still serving."""

from __future__ import annotations

import json

import pytest
import pytest_asyncio
import torch

from tests.rawlsp import RawServer

URI = "file:///settings.py"


@pytest_asyncio.fixture
async def raw():
    server = await RawServer().start()
    yield server
    await server.close()


def init_bytes(options_json: str, msg_id: int = 1) -> bytes:
    """An initialize request whose initializationOptions are the raw JSON text given (e.g. with 1e999)."""
    msg = {"jsonrpc": "2.0", "id": msg_id, "method": "initialize"}
    msg["params"] = {"processId": None, "rootUri": None, "capabilities": {}, "initializationOptions": "@"}
    return json.dumps(msg).replace('"@"', options_json).encode()


async def test_infinity_in_initialization_options_is_rejected_by_key(raw, codegen_checkpoint):
    """17.5: `maxNewTokens: 1e999` made initialize fail (-32603 OverflowError): the server could not start."""
    model = json.dumps(str(codegen_checkpoint))
    raw.write(init_bytes(f'{{"model": {model}, "maxNewTokens": 1e999, "temperature": 0.25}}'))
    answer = await raw.answer(1)
    assert "result" in answer and answer["result"]["capabilities"], answer
    raw.notify("initialized", {})
    st = await raw.status()
    assert st["settings"]["maxNewTokens"] == 64 and st["settings"]["temperature"] == 0.25
    assert any(m.startswith("codegen: invalid setting maxNewTokens") for m in raw.shown())


async def test_bad_values_at_run_time_keep_the_rest_of_the_message(raw, codegen_checkpoint):
    await raw.initialize({"model": str(codegen_checkpoint), "maxNewTokens": 4})
    raw.write(
        b'{"jsonrpc": "2.0", "method": "workspace/didChangeConfiguration", "params": {"settings": '
        b'{"maxNewTokens": 1e999, "temperature": 0.5, "contextWindow": 1}}}'
    )
    st = await raw.status()
    assert st["settings"]["temperature"] == 0.5 and st["settings"]["maxNewTokens"] == 4
    assert st["settings"]["contextWindow"] == 0
    shown = raw.shown()
    assert any("maxNewTokens" in m for m in shown) and any(
        "contextWindow" in m and "at least 2" in m for m in shown
    )


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
async def test_a_missing_device_keeps_the_working_model(raw, codegen_checkpoint):
    """17.5: `device: cuda` without a GPU unloaded the model; every completion was then empty, silently."""
    await raw.initialize({"model": str(codegen_checkpoint), "maxNewTokens": 4, "device": "cpu"})
    raw.open(URI, "def f(x):\n    return x\n")
    params = {
        "textDocument": {"uri": URI},
        "position": {"line": 2, "character": 0},
        "context": {"triggerKind": 1},
    }
    await raw.call("textDocument/inlineCompletion", params)
    raw.notify("workspace/didChangeConfiguration", {"settings": {"codegen": {"device": "cuda"}}})
    await raw.call("textDocument/inlineCompletion", params)
    st = await raw.status(URI)
    assert st["settings"]["device"] == "cpu" and len(st["models"]) == 1
    assert st["completions"]["lastReason"] != "model_not_loaded"
    assert any("device" in m and "not available" in m for m in raw.shown())


async def test_cache_budget_resizes_the_engines_pool(raw, codegen_checkpoint):
    """17.5: `cacheBudgetMb: 4` at run time showed 4 while the engine kept its 512 MiB budget."""
    await raw.initialize({"model": str(codegen_checkpoint), "maxNewTokens": 4})
    raw.open(URI, "def f(x):\n    return x\n")
    params = {
        "textDocument": {"uri": URI},
        "position": {"line": 2, "character": 0},
        "context": {"triggerKind": 1},
    }
    await raw.call("textDocument/inlineCompletion", params)  # loads the model
    assert (await raw.status())["models"][0]["engine"]["cacheBudgetBytes"] == 512 << 20
    raw.notify("workspace/didChangeConfiguration", {"settings": {"cacheBudgetMb": 4}})
    await raw.call("textDocument/inlineCompletion", params)  # runs after the resize on the inference thread
    assert (await raw.status())["models"][0]["engine"]["cacheBudgetBytes"] == 4 << 20


async def test_the_smallest_context_window_still_completes(raw, codegen_checkpoint):
    """contextWindow 2 holds one prompt token and one new token: answered, never an AssertionError."""
    await raw.initialize({"model": str(codegen_checkpoint), "maxNewTokens": 64, "contextWindow": 2})
    raw.open(URI, "def f(x):\n    return x\n")
    params = {
        "textDocument": {"uri": URI},
        "position": {"line": 2, "character": 0},
        "context": {"triggerKind": 1},
    }
    answer = await raw.call("textDocument/inlineCompletion", params)
    assert "result" in answer
    assert (await raw.status(URI))["completions"]["lastReason"] != "error"
