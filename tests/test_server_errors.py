"""Bad input never kills the server: every request gets an answer or a clear error."""

from __future__ import annotations

import asyncio

import pytest
import pytest_asyncio
from lsprotocol import types

from inference import hub
from tests.conftest import change, inline, inline_params, open_doc, status

shared = pytest.mark.asyncio(loop_scope="module")  # tests on the module's shared server
HAS_BUILTIN = (hub.BUILTIN_DIR / "model.safetensors").is_file()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def client(start_module_server, codegen_checkpoint):
    return await start_module_server({"model": str(codegen_checkpoint), "maxNewTokens": 6})


@shared
@pytest.mark.parametrize(
    ("line", "character"),
    [(0, 500), (40, 0), (40, 500)],
    ids=["past-line-end", "past-last-line", "past-both"],
)
async def test_positions_past_the_end_are_answered(client, line, character):
    uri = f"file:///past-{line}-{character}.py"
    open_doc(client, uri, "def f(x):\n    return x\n")
    items = await inline(client, uri, line, character)
    for item in items:  # answered at the clamped position, with a valid range
        assert item.range.start.line <= 2
    assert (await status(client))["openDocuments"] >= 1


@shared
async def test_unknown_uri_is_a_clear_error(client):
    with pytest.raises(Exception, match="unknown document"):
        await inline(client, "file:///never-opened.py", 0, 0)
    with pytest.raises(Exception, match="unknown document"):
        await client.text_document_completion_async(
            types.CompletionParams(
                types.TextDocumentIdentifier("file:///never-opened.py"), types.Position(0, 0)
            )
        )
    change(client, "file:///never-opened.py", 2, (0, 0), (0, 0), "x")  # a notification: logged, not fatal
    assert (await status(client))["version"]


@shared
async def test_inverted_edit_range_is_rejected_and_loses_nothing(client):
    uri = "file:///inverted.py"
    open_doc(client, uri, "value = 1\n")
    change(client, uri, 2, (0, 5), (0, 2), "zzz")
    change(client, uri, 3, (0, 9), (0, 9), " + 2")  # a good edit afterwards still applies
    result = await client.text_document_completion_async(
        types.CompletionParams(
            types.TextDocumentIdentifier(uri),
            types.Position(0, 13),
            context=types.CompletionContext(trigger_kind=types.CompletionTriggerKind.Invoked),
        )
    )
    warnings = [m.message for m in client.log_messages if "before its start" in m.message]
    assert warnings and uri in warnings[0]
    for item in result.items:
        assert item.text_edit.range.start == types.Position(0, 12)  # "2" is the word before the cursor
        assert item.text_edit.new_text.startswith("2")


@shared
async def test_unknown_command_and_bad_arguments(client):
    with pytest.raises(Exception, match="not defined"):
        await client.workspace_execute_command_async(types.ExecuteCommandParams(command="codegen.nope"))
    assert await client.workspace_execute_command_async(
        types.ExecuteCommandParams(command="codegen.status", arguments=[{"odd": 1}, 2])
    )


async def test_missing_model_path_and_invalid_settings(start_server, tmp_path):
    missing = str(tmp_path / "no-such-model")
    client = await start_server({"model": missing, "maxNewTokens": "lots", "temperature": -2})
    open_doc(client, "file:///m.py", "def f():\n    ")
    items = await inline(client, "file:///m.py", 1, 4)
    st = await status(client, "file:///m.py")
    warnings = [m.message for m in client.messages]
    assert any("maxNewTokens" in m for m in warnings) and any("temperature" in m for m in warnings)
    assert st["settings"]["maxNewTokens"] == 64 and st["settings"]["temperature"] == 0.0
    assert any(missing in m for m in warnings)  # the user is told which model failed, once
    assert sum(missing in m for m in warnings) == 1
    if HAS_BUILTIN:
        assert st["models"][0]["standsInFor"] == missing
    else:
        assert items == [] and st["completions"]["lastReason"] == "model_not_loaded"
        assert missing in next(iter(st["modelFailures"].values()))
    # a second request does not retry the load or repeat the message
    await inline(client, "file:///m.py", 1, 4, automatic=False)
    assert sum(missing in m.message for m in client.messages) == 1


async def test_client_disconnect_mid_request_exits_cleanly(start_server, codegen_checkpoint):
    client = await start_server({"model": str(codegen_checkpoint), "maxNewTokens": 200})
    open_doc(client, "file:///d.py", "def f(x):\n    ")
    await status(client)
    client.protocol.send_request(types.TEXT_DOCUMENT_INLINE_COMPLETION, inline_params("file:///d.py", 1, 4))
    await asyncio.sleep(0.2)
    server = client._server
    server.stdin.close()  # the editor went away without shutdown/exit
    code = await asyncio.wait_for(server.wait(), timeout=15)
    assert code == 0
