"""Document store: offsets and positions in UTF-8/16/32 units, clamping, CRLF, range edits."""

from __future__ import annotations

import pytest
from lsprotocol import types

from lsp_server.documents import Document, DocumentError, Documents
from tests.test_server_positions import TEXT


@pytest.mark.parametrize("enc", ["utf-16", "utf-8", "utf-32"])
def test_document_offsets_round_trip(enc):
    doc = Document("file:///x", "python", 1, TEXT)
    for offset in range(len(TEXT) + 1):
        if TEXT[offset - 1 : offset + 1] == "\r\n":
            continue  # between CR and LF is not a position
        line, char = doc.position_at(offset, enc)
        assert doc.offset_at(line, char, enc) == (offset, False)


@pytest.mark.parametrize(
    ("line", "character", "expected"),
    [(0, 3, 2), (0, 2, 2), (5, 0, len(TEXT)), (0, 999, TEXT.index("\r\n")), (2, 1, TEXT.index("end") + 1)],
    ids=[
        "inside-surrogate-pair-rounds-down",
        "before-emoji",
        "past-last-line",
        "past-line-end",
        "after-crlf",
    ],
)
def test_document_clamps_utf16(line, character, expected):
    doc = Document("file:///x", "python", 1, TEXT)
    assert doc.offset_at(line, character, "utf-16")[0] == expected


def edit(start, end, text):
    return types.TextDocumentContentChangePartial(
        range=types.Range(types.Position(*start), types.Position(*end)), text=text
    )


def test_range_edits_full_replace_and_inverted_range():
    doc = Document("file:///x", "python", 1, "ab\r\ncd\n")
    doc.apply_change(edit((1, 1), (1, 2), "X"), "utf-16")
    assert doc.text == "ab\r\ncX\n"
    doc.apply_change(edit((0, 2), (1, 0), ""), "utf-16")  # delete the CRLF
    assert doc.text == "abcX\n"
    doc.apply_change(edit((9, 0), (9, 0), "tail"), "utf-16")  # past the end: appended
    assert doc.text == "abcX\ntail"
    with pytest.raises(DocumentError, match="before its start"):
        doc.apply_change(edit((0, 3), (0, 1), "no"), "utf-16")
    assert doc.text == "abcX\ntail"  # unchanged
    doc.apply_change(types.TextDocumentContentChangeWholeDocument(text="new"), "utf-16")
    assert doc.text == "new" and doc.line_count == 1


def test_unknown_document():
    docs = Documents()
    with pytest.raises(DocumentError, match="never opened"):
        docs.get("file:///nope")
