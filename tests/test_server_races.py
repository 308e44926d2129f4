"""Requests answer against the text they arrived on: an edit while they compute never breaks them."""

from __future__ import annotations

import random

import pytest_asyncio

from inference import quant
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


# 25.7: a document's life, exact (found by a fuzzer). Every message of a sequence is written before any answer
# is read, so the requests that arrived while the document was open are handled after its didClose.
LIFE_TEXT = "import os\n\n\ndef area(radius):\n    return radius * radius\n\n\ndef volume(r):\n    return"
LIFE_SEQUENCES = 12
DTYPES = ["float32"] + (["int8"] if quant.int8_kernel() else [])


def inline_params(uri: str, pos: dict, trigger: int = 2) -> dict:
    return {"textDocument": {"uri": uri}, "position": pos, "context": {"triggerKind": trigger}}


@pytest_asyncio.fixture(params=DTYPES)
async def builtin_raw(request):
    """The built-in model in each dtype this CPU runs, answering at once (no debounce)."""
    server = await RawServer().start()
    options = {"model": "builtin", "device": "cpu", "dtype": request.param, "debounceMs": 0}
    await server.initialize({**options, "maxNewTokens": 16})
    yield server
    await server.close()


async def test_a_closed_document_is_unknown_and_nothing_of_it_is_kept(builtin_raw):
    """25.7: after didClose a document is unknown, and nothing of it is kept or used."""
    # Open v5, inline, two changes, list, didClose, a change to the closed document, inline: the last is
    # answered as a never-opened document's, the earlier ones empty; no prompt, KV session or suggestion of
    # the closed document is kept, so opening it again computes afresh.
    raw, rng = builtin_raw, random.Random(25)
    never = await raw.call("textDocument/inlineCompletion", inline_params("file:///never.py", position(0, 0)))
    anchor = "file:///anchor.py"
    raw.open(anchor, "")
    for n in range(LIFE_SEQUENCES):
        uri = f"file:///life-{n}.py"
        text = LIFE_TEXT[: rng.randrange(40, len(LIFE_TEXT))]
        line, col = text.count("\n"), len(text) - text.rfind("\n") - 1
        raw.open(uri, text, version=5)
        first = raw.request("textDocument/inlineCompletion", inline_params(uri, position(line, col)))
        raw.change(uri, 6, "x", ((line, col), (line, col)))
        raw.change(uri, 7, "y", ((line, col + 1), (line, col + 1)))
        listed = raw.request(
            "textDocument/completion", {"textDocument": {"uri": uri}, "position": position(line, col + 2)}
        )
        raw.notify("textDocument/didClose", {"textDocument": {"uri": uri}})
        raw.change(uri, 8, "z", ((line, col + 2), (line, col + 2)))
        after = await raw.call("textDocument/inlineCompletion", inline_params(uri, position(line, col + 3)))
        assert after.get("error") == {
            **never["error"],
            "message": never["error"]["message"].replace("file:///never.py", uri),
        }, (n, after)
        for key in (first, listed):  # computed for a document closed before they were answered
            answer = await raw.answer(key)
            assert answer["result"]["items"] == [], (n, answer)
        # Once this model call is answered, the worker has run everything handed to it before the close (a new
        # text each time: neither typed through nor prefetched).
        raw.change(anchor, n + 2, f"value_{n} = ")
        await raw.call(
            "textDocument/inlineCompletion", inline_params(anchor, position(0, 9 + len(str(n))), 1)
        )
        st = await raw.status()
        assert uri not in st["completions"]["lastPrompt"] and uri not in st["completions"]["lastReason"], n
        engine = st["models"][0]["engine"]
        assert list(engine["cachedTokens"]) == [anchor] and engine["sessions"] == 1, (n, engine)
        hits = st["completions"]["typedThroughHits"]
        raw.open(uri, text + "xy")  # its last text again: computed afresh, not typed through an old answer
        await raw.call("textDocument/inlineCompletion", inline_params(uri, position(line, col + 2), 1))
        assert (await raw.status())["completions"]["typedThroughHits"] == hits, n
        raw.notify("textDocument/didClose", {"textDocument": {"uri": uri}})
