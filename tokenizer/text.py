"""Text as a tokenizer can take it."""

from __future__ import annotations

import re

SURROGATE = re.compile("[\ud800-\udfff]")


def encodable(text: str) -> str:
    """`text` with every surrogate code point (a lone half of a UTF-16 pair, legal in a JSON string but not
    in UTF-8) replaced by U+FFFD: one character for one, so string offsets and LSP positions stay exact."""
    return SURROGATE.sub("\ufffd", text) if SURROGATE.search(text) else text
