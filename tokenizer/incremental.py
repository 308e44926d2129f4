"""Streaming detokenization that never emits half a UTF-8 character."""

from __future__ import annotations

import codecs
from collections.abc import Callable


class IncrementalDecoder:
    """Turns token ids into text as they arrive; bytes of an unfinished character are held back."""

    def __init__(self, token_bytes: Callable[[int], bytes]):
        self._token_bytes = token_bytes
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token_id: int) -> str:
        """Newly stable text for one more token (maybe "")."""
        return self._utf8.decode(self._token_bytes(token_id), final=False)

    def flush(self) -> str:
        """Whatever is left (an unfinished character becomes U+FFFD)."""
        return self._utf8.decode(b"", final=True)
