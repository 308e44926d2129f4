"""Open documents and LSP positions in UTF-16 (default), UTF-8 or UTF-32 code units; CRLF/CR aware."""

from __future__ import annotations

import itertools
import logging
import re
from bisect import bisect_right
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

LINE_BREAK = re.compile(r"\r\n|\r|\n")


class DocumentError(ValueError):
    """A request or edit that names an unknown document or an impossible range."""


def units(ch: str, encoding: str) -> int:
    """Code units of one character in the position encoding."""
    if encoding == "utf-32":
        return 1
    cp = ord(ch)
    if encoding == "utf-8":
        return 1 if cp < 0x80 else 2 if cp < 0x800 else 3 if cp < 0x10000 else 4
    return 2 if cp > 0xFFFF else 1


@dataclass
class Document:
    """One open text document: full text, language, version, and line starts."""

    uri: str
    language_id: str
    version: int
    text: str
    _starts: list[int] = field(default_factory=list, repr=False)
    _ends: list[int] = field(default_factory=list, repr=False)
    opened: int = 0  # which didOpen this text belongs to (Documents numbers them; a snapshot keeps it)

    def __post_init__(self) -> None:
        if not self._starts:  # a snapshot shares the line index (never mutated, only replaced)
            self._index()

    def _index(self) -> None:
        starts, ends = [0], []
        for m in LINE_BREAK.finditer(self.text):
            ends.append(m.start())
            starts.append(m.end())
        ends.append(len(self.text))
        self._starts, self._ends = starts, ends

    @property
    def line_count(self) -> int:
        return len(self._starts)

    def snapshot(self) -> Document:
        """A frozen copy (text, version, line index): a request answers against the text it arrived on."""
        return Document(
            self.uri, self.language_id, self.version, self.text, self._starts, self._ends, self.opened
        )

    def offset_at(self, line: int, character: int, encoding: str = "utf-16") -> tuple[int, bool]:
        """(string index, clamped?) of an LSP position; past-the-end lines/characters clamp to the end."""
        if line >= len(self._starts):
            return len(self.text), True
        start, end = self._starts[line], self._ends[line]
        if encoding == "utf-32":
            col = min(character, end - start)
            return start + col, character > end - start
        seen = 0
        i = start
        while i < end and seen < character:
            u = units(self.text[i], encoding)
            if seen + u > character:  # inside a surrogate pair / multi-byte character: round down
                return i, True
            seen += u
            i += 1
        return i, seen < character

    def position_at(self, offset: int, encoding: str = "utf-16") -> tuple[int, int]:
        """(line, character) in code units of a string index."""
        offset = max(0, min(offset, len(self.text)))
        line = bisect_right(self._starts, offset) - 1
        chunk = self.text[self._starts[line] : min(offset, self._ends[line])]
        if encoding == "utf-32":
            return line, len(chunk)
        return line, sum(units(c, encoding) for c in chunk)

    def apply_change(self, change, encoding: str = "utf-16") -> None:
        """Apply one content change (full text or range edit); DocumentError for an inverted range."""
        rng = getattr(change, "range", None)
        if rng is None:
            self.text = change.text
            self._index()
            return
        start, _ = self.offset_at(rng.start.line, rng.start.character, encoding)
        end, _ = self.offset_at(rng.end.line, rng.end.character, encoding)
        if end < start:
            raise DocumentError(
                f"edit range end {rng.end.line}:{rng.end.character} is before its start "
                f"{rng.start.line}:{rng.start.character} in {self.uri}; edit ignored"
            )
        self.text = self.text[:start] + change.text + self.text[end:]
        self._index()


class Documents:
    """The open documents by URI."""

    def __init__(self) -> None:
        self._docs: dict[str, Document] = {}
        self._opens = itertools.count(1)

    def open(self, uri: str, language_id: str, version: int, text: str) -> Document:
        doc = Document(uri, language_id or "plaintext", version, text, opened=next(self._opens))
        self._docs[uri] = doc
        return doc

    def close(self, uri: str) -> None:
        self._docs.pop(uri, None)

    def get(self, uri: str) -> Document:
        """The open document, or DocumentError naming the URI."""
        doc = self._docs.get(uri)
        if doc is None:
            raise DocumentError(
                f"unknown document {uri!r}: not open (never opened, or closed; send textDocument/didOpen)"
            )
        return doc

    def find(self, uri: str) -> Document | None:
        """The open document, or None."""
        return self._docs.get(uri)

    def is_open(self, doc: Document) -> bool:
        """Whether `doc` (a document or a snapshot of one) is still open: neither closed since, nor closed and
        opened again (a request of a closed document leaves nothing behind, even under a reopened URI)."""
        live = self._docs.get(doc.uri)
        return live is not None and live.opened == doc.opened

    def __contains__(self, uri: str) -> bool:
        return uri in self._docs

    def __len__(self) -> int:
        return len(self._docs)


def newline_of(text: str) -> str:
    """The document's line break: CRLF when its first line ends with one, else LF."""
    return "\r\n" if "\r\n" in text[: text.find("\n") + 1 or len(text)] else "\n"
