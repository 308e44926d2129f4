"""Positions end to end: UTF-16 (default), UTF-8 and UTF-32 code units; emoji, CJK and CRLF documents."""

from __future__ import annotations

import pytest
import pytest_asyncio
from lsprotocol import types

from tests.conftest import change, open_doc, status

pytestmark = pytest.mark.asyncio(loop_scope="module")

# Line 1 holds an emoji (2 UTF-16 units, 4 UTF-8 bytes), CJK (1 UTF-16 unit, 3 UTF-8 bytes) and é (2 bytes).
TEXT = '# 😀 emoji, 漢字, é\r\nname = "😀漢字é" + 漢字ab\r\nend\r\n'


def units(s: str, encoding: str) -> int:
    return {"utf-8": len(s.encode("utf-8")), "utf-16": len(s.encode("utf-16-le")) // 2, "utf-32": len(s)}[
        encoding
    ]


@pytest_asyncio.fixture(scope="module", loop_scope="module", params=["utf-16", "utf-8", "utf-32"])
async def server(request, start_module_server, codegen_checkpoint):
    enc = request.param
    offered = None if enc == "utf-16" else [enc, "utf-16"]  # utf-16 is what a client that says nothing gets
    client = await start_module_server(
        {"model": str(codegen_checkpoint), "maxNewTokens": 4}, encodings=offered
    )
    assert client.init_result.capabilities.position_encoding == enc
    return client, enc


async def complete(client, uri, line, character):
    return await client.text_document_completion_async(
        types.CompletionParams(
            text_document=types.TextDocumentIdentifier(uri),
            position=types.Position(line, character),
            context=types.CompletionContext(trigger_kind=types.CompletionTriggerKind.Invoked),
        )
    )


async def test_cursor_lands_after_the_right_character(server):
    client, enc = server
    uri = f"file:///pos-{enc}.py"
    open_doc(client, uri, TEXT)
    line1 = TEXT.split("\r\n")[1]
    col_chars = line1.index("ab") + 2  # right after "漢字ab" (the second one), before " " ... end of line
    col = units(line1[:col_chars], enc)
    result = await complete(client, uri, 1, col)
    assert result.items, "the fixture model should complete here (deterministic weights)"
    edit = result.items[0].text_edit
    # the server saw exactly the word before the cursor, and maps its start back to client units
    assert edit.new_text.startswith("漢字ab")
    word_start = units(line1[: line1.index("漢字ab")], enc)
    assert edit.range.start == types.Position(1, word_start)
    assert edit.range.end.line == 1 and edit.range.end.character >= col
    assert (await status(client))["positionEncoding"] == enc


async def test_incremental_edit_after_emoji_and_cjk(server):
    client, enc = server
    uri = f"file:///edit-{enc}.py"
    open_doc(client, uri, TEXT)
    line1 = TEXT.split("\r\n")[1]
    # replace "漢字é" inside the string (after the emoji) with "Zq"
    s = line1.index("漢字é")
    start, end = units(line1[:s], enc), units(line1[: s + 3], enc)
    change(client, uri, 2, (1, start), (1, end), "Zq")
    new_line1 = line1[:s] + "Zq" + line1[s + 3 :]
    col = units(new_line1[: new_line1.index("Zq") + 2], enc)
    result = await complete(client, uri, 1, col)
    assert result.items, "the fixture model should complete here (deterministic weights)"
    edit = result.items[0].text_edit
    assert edit.new_text.startswith("Zq") and edit.range.start == types.Position(1, units(new_line1[:s], enc))


async def test_edit_across_crlf_lines(server):
    client, enc = server
    uri = f"file:///crlf-{enc}.py"
    open_doc(client, uri, TEXT)
    # join line 0 and line 1: delete from the end of line 0 to the start of line 1 (the CRLF)
    line0 = TEXT.split("\r\n")[0]
    change(client, uri, 2, (0, units(line0, enc)), (1, 0), " ")
    joined = line0 + " " + TEXT.split("\r\n")[1]
    col = units(joined[: joined.index("ab") + 2], enc)
    result = await complete(client, uri, 0, col)
    if result.items:
        edit = result.items[0].text_edit
        assert edit.new_text.startswith("漢字ab") and edit.range.start.line == 0


async def test_crlf_document_prompt_is_normalized_and_answer_matches_engine(server, codegen_engine):
    from tests.test_server_completion import expected_completion

    client, enc = server
    uri = f"file:///crlf-parity-{enc}.py"
    text = "def greet(name):\r\n    msg = '😀 ' + name\r\n    "
    open_doc(client, uri, text)
    items = await client.text_document_inline_completion_async(
        types.InlineCompletionParams(
            context=types.InlineCompletionContext(trigger_kind=types.InlineCompletionTriggerKind.Invoked),
            text_document=types.TextDocumentIdentifier(uri),
            position=types.Position(2, 4),
        )
    )
    want = expected_completion(codegen_engine, text.replace("\r\n", "\n"), max_new=4).replace("\n", "\r\n")
    got = items.items[0].insert_text if items.items else ""
    assert got == want
