"""LSP framing (`Content-Length: N` headers, a blank line, N bytes) without I/O, surviving bad frames.

`FrameParser.feed(bytes)` returns the complete bodies and the framing errors found so far. A broken header
(missing, zero, negative, non-numeric or too large length) is reported once and the parser resynchronises on
the next `Content-Length` header, even one glued to the end of a broken body. Header names are matched
without regard to case and LF-only line ends are accepted (both are seen in the wild). A body that turns out
not to be JSON (its length counted characters, not bytes, or was too large) can be handed back with
`resync(body)`, which re-reads it from the first header found inside it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# The largest body accepted. VS Code does not synchronise files over 50 MB to extensions, and JSON escaping
# of ordinary source text adds little, so no real message comes near 64 MiB; a bigger length is a broken
# header. The bound is also the most memory one frame can take.
MAX_BODY = 64 << 20
MAX_HEADER_LINE = 8192  # a longer "header line" is garbage (the rest of a broken body): dropped
HEADER = re.compile(rb"content-length[ \t]*:", re.IGNORECASE)
HEADER_IN_BODY = re.compile(rb"content-length[ \t]*:[ \t]*\d+[ \t]*\r?\n", re.IGNORECASE)


@dataclass
class FrameError:
    """A frame that could not be read; `too_large` when its length was over MAX_BODY."""

    message: str
    too_large: bool = False


class FrameParser:
    """Bytes in, bodies (bytes) and FrameErrors out."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.length: int | None = None  # from this header block; None: none seen yet
        self.bad: FrameError | None = None  # this header block's broken length
        self.in_headers = False
        self.body_len: int | None = None  # reading a body of this many bytes

    def feed(self, data: bytes) -> list[bytes | FrameError]:
        self.buf += data
        out: list[bytes | FrameError] = []
        while True:
            if self.body_len is not None:
                if len(self.buf) < self.body_len:
                    return out
                out.append(bytes(self.buf[: self.body_len]))
                del self.buf[: self.body_len]
                self.body_len = None
                continue
            line = self._line()
            if line is None:
                return out
            if (event := self._header(line)) is not None:
                out.append(event)

    def resync(self, body: bytes) -> None:
        """Re-read a body that was not a message from the first header inside it (the next frame's)."""
        m = HEADER_IN_BODY.search(body)
        if m is not None:
            self.buf[:0] = body[m.start() :]

    def _line(self) -> bytes | None:
        """The next header line without its line end; None until a whole line is buffered."""
        nl = self.buf.find(b"\n")
        if nl < 0:
            if len(self.buf) > MAX_HEADER_LINE:  # keep a tail that may hold the start of a header
                del self.buf[: len(self.buf) - 64]
            return None
        line = bytes(self.buf[:nl]).rstrip(b"\r")
        del self.buf[: nl + 1]
        return line

    def _header(self, line: bytes) -> FrameError | None:
        if not line.strip():
            return self._end_of_headers()
        m = HEADER.search(line)
        if m is None:  # another header (Content-Type), or garbage: only a length matters
            self.in_headers = self.in_headers or b":" in line
            return None
        self.in_headers, self.length, self.bad = True, None, None  # garbage before it is dropped
        value = line[m.end() :].strip()
        if not value.isdigit():
            self.bad = FrameError(f"invalid Content-Length {value[:40].decode('latin-1')!r}")
        elif int(value) > MAX_BODY:
            self.bad = FrameError(f"Content-Length {int(value)} is over the {MAX_BODY >> 20} MiB limit", True)
        elif int(value) == 0:
            self.bad = FrameError("Content-Length 0: a message cannot be empty")
        else:
            self.length = int(value)
        return None

    def _end_of_headers(self) -> FrameError | None:
        length, bad, seen = self.length, self.bad, self.in_headers
        self.length, self.bad, self.in_headers = None, None, False
        if length is not None:
            self.body_len = length
            return None
        if bad is not None:
            return bad
        return FrameError("a header block without Content-Length") if seen else None
