"""Prefill on open: a document is prefilled when it opens, so its first completion reuses the cache."""

from __future__ import annotations

import asyncio

import pytest

from tests.conftest import inline, open_doc, status
from tests.test_server_completion import MAX_NEW, expected_completion

TEXT = (
    "import os\n\n\ndef read(path):\n    with open(path) as f:\n        return f.read()\n\n\n"
    "def main(argv):\n    "
)
END = (9, 4)


async def wait_for_prefills(client, n: int) -> dict:
    """codegen.status once `n` prefill-on-open jobs have finished."""
    for _ in range(600):
        st = await status(client)
        if st["completions"]["prefillsOnOpen"] >= n:
            return st
        await asyncio.sleep(0.05)
    raise AssertionError(f"no prefill on open after 30 s: {st['completions']}")


@pytest.mark.parametrize("enabled", [True, False], ids=["prefill-on-open", "off"])
async def test_first_completion_after_open(start_server, codegen_checkpoint, codegen_engine, enabled):
    client = await start_server(
        {"model": str(codegen_checkpoint), "maxNewTokens": MAX_NEW, "prefillOnOpen": enabled}
    )
    uri = "file:///opened.py"
    open_doc(client, uri, TEXT)  # right after initialize: the model is still loading
    if enabled:
        info = (await wait_for_prefills(client, 1))["completions"]["lastPrefillOnOpen"]
        assert info["uri"] == uri and info["prefillTokens"] == info["promptTokens"] > 20
    items = await inline(client, uri, *END)
    assert [i.insert_text for i in items] == [expected_completion(codegen_engine, TEXT)]
    st = await status(client)
    last = st["latency"]["last"]
    if enabled:
        assert last["prefillTokens"] == 1 and last["reusedTokens"] == last["promptTokens"] - 1
    else:
        assert last["reusedTokens"] == 0 and st["completions"]["prefillsOnOpen"] == 0


async def test_a_cursor_inside_the_document_reuses_the_prefix(
    start_server, codegen_checkpoint, codegen_engine
):
    client = await start_server({"model": str(codegen_checkpoint), "maxNewTokens": MAX_NEW})
    uri = "file:///inside.py"
    open_doc(client, uri, TEXT)
    await wait_for_prefills(client, 1)
    before = TEXT[: TEXT.index("        return")] + "        "
    items = await inline(client, uri, 5, 8, automatic=False)
    want = expected_completion(codegen_engine, before, "return f.read()")
    assert want.strip() and [i.insert_text for i in items] == [want]
    last = (await status(client))["latency"]["last"]
    assert last["reusedTokens"] >= last["promptTokens"] - 2


async def test_an_empty_document_is_not_prefilled(start_server, codegen_checkpoint):
    client = await start_server({"model": str(codegen_checkpoint), "maxNewTokens": MAX_NEW})
    open_doc(client, "file:///first.py", "x = 1\n")
    await wait_for_prefills(client, 1)
    open_doc(client, "file:///empty.py", "  \n")
    await asyncio.sleep(0.5)
    st = await status(client)
    assert st["completions"]["prefillsOnOpen"] == 1
    assert st["completions"]["lastPrefillOnOpen"]["uri"] == "file:///first.py"


async def test_prefill_never_evicts_another_documents_cache(start_server, codegen_checkpoint):
    """1 MiB holds four float32 caches of the tiny model (256 KiB each): a fifth document is not prefilled."""
    settings = {"model": str(codegen_checkpoint), "dtype": "float32", "maxNewTokens": MAX_NEW}
    client = await start_server({**settings, "cacheBudgetMb": 1})
    for i in range(4):
        open_doc(client, f"file:///doc{i}.py", f"x{i} = {i}\n")
        await wait_for_prefills(client, i + 1)
    open_doc(client, "file:///doc4.py", "x4 = 4\n")
    await asyncio.sleep(1.0)
    st = await status(client)
    assert st["completions"]["prefillsOnOpen"] == 4
    (model,) = st["models"]
    assert model["engine"]["cachedSessions"] == 4 and model["engine"]["evictions"] == 0
