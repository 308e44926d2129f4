"""Requests answer against the text they arrived on: an edit while they compute never breaks them."""

from __future__ import annotations

import pytest_asyncio

from tests.rawlsp import RawServer

TEXT = "import os\n\n\ndef area(radius):\n    return radius"
URI = "file:///race.py"


@pytest_asyncio.fixture
async def raw(codegen_checkpoint):
    """A server whose automatic requests wait 300 ms (debounce): an edit sent right after one lands first."""
    server = await RawServer().start()
    await server.initialize({"model": str(codegen_checkpoint), "maxNewTokens": 8, "debounceMs": 300})
    yield server
    await server.close()


def position(line: int, character: int) -> dict:
    return {"line": line, "character": character}


async def test_list_completion_when_the_text_shrinks_under_it(raw):
    """17.3: was -32603 IndexError (word_before on the new, shorter text with the old offset)."""
    raw.open(URI, TEXT)
    key = raw.request("textDocument/completion", {"textDocument": {"uri": URI}, "position": position(4, 17)})
    raw.change(URI, 2, "import os\n")
    answer = await raw.answer(key)
    assert "error" not in answer, answer
    assert answer["result"]["items"] == []
    assert (await raw.status(URI))["completions"]["lastReason"] == "document_changed"


async def test_inline_completion_when_a_line_is_inserted_above(raw):
    """17.4: the range was (4,0)-(4,0), neither the old cursor nor the new one: now empty, with the reason."""
    raw.open(URI, TEXT[: TEXT.rfind("radius")])
    ctx = {"triggerKind": 2}
    params = {"textDocument": {"uri": URI}, "position": position(4, 11), "context": ctx}
    key = raw.request("textDocument/inlineCompletion", params)
    raw.change(URI, 2, "# header\n", ((0, 0), (0, 0)))
    answer = await raw.answer(key)
    assert answer["result"]["items"] == []
    assert (await raw.status(URI))["completions"]["lastReason"] == "document_changed"
    # the same request on the unchanged document is answered (the model does produce text there)
    params["position"] = position(5, 11)
    answer = await raw.call("textDocument/inlineCompletion", {**params, "context": {"triggerKind": 1}})
    assert (await raw.status(URI))["completions"]["lastReason"] is None, answer
    item = answer["result"]["items"][0]
    assert item["range"]["start"] == position(5, 11)


async def test_a_lone_surrogate_in_the_document_is_completed_around(raw):
    """17.8: `TypeError: TextInputSequence must be str` from the tokenizer; every answer was empty (error)."""
    uri = "file:///surrogate.py"
    raw.open(uri, "s = '\ud83d'\nx = 1\n")
    answer = await raw.call(
        "textDocument/inlineCompletion",
        {"textDocument": {"uri": uri}, "position": position(2, 0), "context": {"triggerKind": 1}},
    )
    assert "result" in answer
    assert (await raw.status(uri))["completions"]["lastReason"] != "error"
    for item in answer["result"]["items"]:
        assert item["range"]["start"] == position(2, 0)  # positions count the surrogate as one UTF-16 unit


async def test_last_reasons_are_kept_for_open_documents_only(raw):
    """17.9: codegen.status's lastReason kept every URI ever seen (1,010 after 1,000 opened and closed)."""
    for i in range(30):
        uri = f"file:///closed-{i}.py"
        raw.open(uri, "x = 1\n")
        params = {"textDocument": {"uri": uri}, "position": position(1, 0), "context": {"triggerKind": 1}}
        await raw.call("textDocument/inlineCompletion", params)
        raw.notify("textDocument/didClose", {"textDocument": {"uri": uri}})
    raw.open(URI, "y = 2\n")
    params = {"textDocument": {"uri": URI}, "position": position(1, 0), "context": {"triggerKind": 1}}
    await raw.call("textDocument/inlineCompletion", params)
    assert list((await raw.status())["completions"]["lastReason"]) == [URI]
