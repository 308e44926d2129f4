"""Acceptance statistics: each inline item carries `codegen.accepted {id}`; codegen.status counts what a
client did (shown, accepted, partly accepted, accepted characters, latency of accepted ones)."""

from __future__ import annotations

import pytest
import pytest_asyncio
from lsprotocol import types
from pygls.exceptions import JsonRpcException

from tests.conftest import change, inline, open_doc, status

pytestmark = pytest.mark.asyncio(loop_scope="module")
OPTIONS = {
    "maxNewTokens": 8,
    "completionMode": "free",
    "stopPatterns": {"python": []},
    "prefillOnOpen": False,
}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def client(start_module_server, codegen_checkpoint):
    return await start_module_server({"model": str(codegen_checkpoint), **OPTIONS})


async def run(client, name: str, *args):
    return await client.workspace_execute_command_async(
        types.ExecuteCommandParams(command=name, arguments=list(args))
    )


def row_of(st: dict, language: str) -> dict:
    (row,) = [r for r in st["acceptance"] if r["language"] == language]
    return row


async def test_status_counts_what_the_client_did(client, codegen_checkpoint):
    items = []
    for i in range(5):  # five documents, one language
        uri = f"file:///acc{i}.py"
        open_doc(client, uri, f"def f{i}(a, b):\n    return ")
        got = await inline(client, uri, 1, 11, automatic=False)
        assert len(got) == 1 and got[0].insert_text, got
        items.append(got[0])
    for item in items:
        assert item.command.command == "codegen.accepted"
        assert isinstance(item.command.arguments[0]["id"], str)
    ids = [it.command.arguments[0]["id"] for it in items]
    assert len(set(ids)) == 5
    # Two accepted whole (one of them twice: counted once), one partly (a word, then a line), one partly then
    # whole, one ignored.
    lengths = [len(it.insert_text) for it in items]
    for i in (0, 1, 1):
        assert await run(client, "codegen.accepted", {"id": ids[i]}) == {"id": ids[i], "known": True}
    await run(client, "codegen.partiallyAccepted", {"id": ids[2], "acceptedLength": 1})
    await run(client, "codegen.partiallyAccepted", {"id": ids[2], "acceptedLength": 3})
    await run(client, "codegen.partiallyAccepted", {"id": ids[3], "acceptedLength": 2})
    await run(client, "codegen.accepted", {"id": ids[3]})
    unknown = await run(client, "codegen.accepted", {"id": "s999999"})
    assert unknown == {"id": "s999999", "known": False}
    st = await status(client)
    row = row_of(st, "python")
    assert row["model"] == str(codegen_checkpoint)
    assert (row["shown"], row["accepted"], row["partlyAccepted"]) == (5, 3, 2)
    assert row["acceptedChars"] == lengths[0] + lengths[1] + min(3, lengths[2]) + lengths[3]
    assert row["acceptanceRate"] == 0.6
    assert set(row["acceptedLatencyMs"]) == {"p50", "p90", "p99"}
    assert 0 < row["acceptedLatencyMs"]["p50"] <= row["acceptedLatencyMs"]["p99"]


@pytest.mark.parametrize(
    ("name", "args", "message"),
    [
        ("codegen.accepted", [], "takes one object argument"),
        ("codegen.accepted", [{"id": 3}], "takes one object argument"),
        ("codegen.partiallyAccepted", [{"id": "s1", "acceptedLength": -1}], "non-negative integer"),
        ("codegen.partiallyAccepted", [{"id": "s1", "acceptedLength": "two"}], "non-negative integer"),
    ],
    ids=["no-argument", "id-not-a-string", "negative-length", "length-not-a-number"],
)
async def test_bad_acceptance_arguments_are_clear_errors(client, name, args, message):
    with pytest.raises(JsonRpcException, match=message):
        await run(client, name, *args)
    assert (await status(client))["version"]


async def test_typing_through_a_suggestion_keeps_its_id(client):
    uri = "file:///through.py"
    open_doc(client, uri, "def g(a, b):\n    return ")
    (first,) = await inline(client, uri, 1, 11, automatic=False)
    before = row_of(await status(client), "python")["shown"]
    change(client, uri, 2, (1, 11), (1, 11), first.insert_text[0])
    (rest,) = await inline(client, uri, 1, 12, automatic=False)
    assert rest.insert_text == first.insert_text[1:]  # typed through: the same suggestion
    assert rest.command.arguments == first.command.arguments
    assert row_of(await status(client), "python")["shown"] == before
