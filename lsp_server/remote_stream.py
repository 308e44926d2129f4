"""One streamed /completions answer (SSE `data:` lines): ids decoded here, stops applied, closed early; a
server that goes away mid-stream is noticed within about a second (`Liveness`), not after `timeoutMs`."""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from inference.rules import StopReason, first_match, line_end_after

LIVENESS_S = 0.5  # a stream silent this long has its server checked (then every half of it)
PROBE_TIMEOUT_S = 1.0  # the check: a new TCP connection to the stream's peer, accepted within this


class RemoteError(Exception):
    """The server could not answer (refused, timeout, HTTP error, malformed stream, gone mid-stream)."""


# A server that dies with its process gives its streams a FIN or RST: the read fails at once. One that is
# stopped (SIGTERM: vLLM's HTTP server stops listening, then waits for open streams to end, which never
# happens) or whose host is gone sends nothing more and keeps the connection: the read would wait timeoutMs.
# So once a stream has been silent for LIVENESS_S, a thread opens a new TCP connection to its peer, every
# LIVENESS_S / 2 while it stays silent: accepted, the server is there (busy or queueing: the wait goes on, up
# to timeoutMs); refused or not accepted within PROBE_TIMEOUT_S, it is gone, and the stream's socket is shut
# down so that the blocked read ends at once. Where the transport does not expose its socket, no thread runs.
class Liveness:
    """Whether an open stream's server is still there, checked while it is silent (`gone`: why not)."""

    def __init__(self, response, silence_s: float) -> None:
        stream = response.extensions.get("network_stream")
        self.sock = stream.get_extra_info("socket") if stream is not None else None
        self.silence_s = silence_s
        self.last = time.monotonic()  # when the last line came
        self.gone: str | None = None
        self._done = threading.Event()
        self._lock = threading.Lock()  # no shutdown after __exit__: the connection may go back to the pool

    def __enter__(self) -> Liveness:
        try:
            peer = self.sock.getpeername()[:2] if self.sock is not None else None
        except OSError:  # already closed: the read fails by itself
            peer = None
        if peer is not None:
            threading.Thread(target=self._watch, args=(peer,), name="remote-liveness", daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        with self._lock:
            self._done.set()

    def seen(self) -> None:
        """A line came: the server is there."""
        self.last = time.monotonic()

    def _watch(self, peer) -> None:
        while not self._done.wait(self.silence_s / 2):
            if time.monotonic() - self.last < self.silence_s:
                continue
            why = _not_accepting(peer)
            with self._lock:
                if why is None or self._done.is_set():
                    continue
                self.gone = f"the server went away mid-stream: {why}"
                try:  # the plain socket's shutdown (also under TLS): the blocked read returns at once
                    socket.socket.shutdown(self.sock, socket.SHUT_RDWR)
                except OSError:
                    pass
                return


def _not_accepting(peer) -> str | None:
    """Why a new TCP connection to `peer` (host, port) fails, or None when it is accepted."""
    try:
        with socket.create_connection(peer, timeout=PROBE_TIMEOUT_S):
            return None
    except OSError as exc:
        return f"a new connection to {peer[0]}:{peer[1]} failed ({exc.strerror or type(exc).__name__})"


@dataclass
class Streamed:
    """What a completion stream gave."""

    text: str = ""
    token_ids: list = field(default_factory=list)
    reason: StopReason = StopReason.MAX_TOKENS
    cached_tokens: int = 0
    first_ms: float | None = None
    decoder: Any = None  # the tokenizer's incremental decoder, for servers that stream token ids
    eos_token_id: int | None = None
    stop_ids: frozenset = frozenset()  # ids that end the text like EOS (a FIM template's end tokens)
    deadline: float | None = None  # a perf_counter() reading: after it, the text ends at the next line end
    spent_at: int | None = None  # len(text) when the deadline passed


def stream_completion(
    eng, body: dict, compiled: Sequence[re.Pattern], should_cancel, deadline: float | None = None
) -> Streamed:
    """POST /completions (stream) and read it until [DONE], a stop match, a cancel, or after `deadline`
    (a perf_counter() reading) a line end; RemoteError else."""
    httpx, t0 = eng.httpx, time.perf_counter()
    tok = eng.loaded.tokenizer
    out = Streamed(
        decoder=tok.incremental_decoder(),
        eos_token_id=eng.loaded.config.eos_token_id,
        stop_ids=frozenset(body.get("stop_token_ids", ())),
        deadline=deadline,
    )
    live = None
    try:
        with eng.client.stream("POST", "/completions", json=body) as r:
            if r.status_code != 200:
                r.read()
                raise RemoteError(f"HTTP {r.status_code} from {eng.spec.url}/completions: {_error_text(r)}")
            with Liveness(r, LIVENESS_S) as live:
                _read(eng, r, out, compiled, should_cancel, live, t0)
                return out
    except (TypeError, AttributeError, KeyError, IndexError, ValueError) as exc:  # chunks of the wrong shape
        raise RemoteError(f"malformed stream from {eng.spec.url}: {type(exc).__name__}: {exc}") from exc
    except httpx.HTTPError as exc:
        if live is not None and live.gone:  # its socket was shut down: that is why the read failed
            raise RemoteError(live.gone) from exc
        if isinstance(exc, httpx.TimeoutException):
            raise RemoteError(f"timed out after {eng.spec.timeout_ms} ms ({type(exc).__name__})") from exc
        raise RemoteError(f"{type(exc).__name__}: {exc or 'connection failed'}") from exc


def _read(eng, r, out: Streamed, compiled, should_cancel, live: Liveness, t0: float) -> None:
    """Read the stream into `out` to [DONE], a stop match, a cancel or a spent budget; else RemoteError."""
    for line in r.iter_lines():
        live.seen()
        if live.gone:  # shut down while this (partial) line was read
            break
        if should_cancel is not None and should_cancel():
            out.reason = StopReason.CANCELLED
            eng.state.closed_early += 1
            eng.state.cancelled += 1
            return  # leaving the `with` closes the stream: the server aborts the sequence
        if not line.strip() or line.startswith(":"):
            continue
        if not line.startswith("data:"):
            raise RemoteError(f"malformed stream from {eng.spec.url}: {line[:80]!r}")
        data = line[5:].strip()
        if data == "[DONE]":
            _finish(out, compiled)
            return
        if _take(out, _parse(data, eng.spec.url), compiled, t0):
            eng.state.closed_early += 1
            return
    raise RemoteError(live.gone or f"the stream from {eng.spec.url} ended without [DONE]")


def _parse(data: str, url: str) -> dict:
    try:
        chunk = json.loads(data)
    except json.JSONDecodeError:
        raise RemoteError(f"malformed stream from {url}: {data[:80]!r}") from None
    if not isinstance(chunk, dict):
        raise RemoteError(f"malformed stream from {url}: {data[:80]!r}")
    if "error" in chunk:
        err = chunk["error"]
        raise RemoteError(f"server error: {err.get('message', err) if isinstance(err, dict) else err}")
    return chunk


def _take(out: Streamed, chunk: dict, patterns: list, t0: float) -> bool:
    """Add one chunk; True when the text ends here: a stop pattern matched or the time budget is spent
    (the text is cut), so the stream is closed and the server aborts the sequence."""
    choices = chunk.get("choices") or []
    details = (chunk.get("usage") or {}).get("prompt_tokens_details") or {}
    out.cached_tokens = details.get("cached_tokens") or out.cached_tokens
    if not choices or out.reason == StopReason.EOS:
        return False
    c = choices[0]
    ids = c.get("token_ids") if isinstance(c, dict) else None
    if not isinstance(c, dict) or not isinstance(c.get("text") or "", str) or not isinstance(ids or [], list):
        raise RemoteError(f"malformed chunk: {json.dumps(chunk)[:80]}")
    if out.first_ms is None:
        out.first_ms = (time.perf_counter() - t0) * 1e3
    before = len(out.text)
    if ids is not None and out.decoder is not None:
        # Decode the ids here, as the local engine does: the same text whatever the server's detokenizer.
        for i in ids:
            out.token_ids.append(i)
            if i == out.eos_token_id or i in out.stop_ids:
                out.reason = StopReason.EOS
                break
            out.text += out.decoder.push(i)
    else:
        out.text += c.get("text") or ""
    if _cut(out, patterns):
        return True
    if out.reason == StopReason.EOS:
        return False
    if _spent(out, before):
        return True
    if c.get("finish_reason") == "stop":  # EOS, or a literal stop string the server stopped at
        out.reason = StopReason.STOP_PATTERN if c.get("stop_reason") is not None else StopReason.EOS
    elif c.get("finish_reason") == "length":
        out.reason = StopReason.MAX_TOKENS
    return False


def _cut(out: Streamed, patterns: list) -> bool:
    cut = first_match(out.text, patterns)
    if cut >= 0:
        out.text, out.reason = out.text[:cut], StopReason.STOP_PATTERN
    return cut >= 0


def _spent(out: Streamed, before: int) -> bool:
    """After the deadline, the text ends at the next line end (reason TIME_BUDGET): True once it has one.

    `before`: len(text) before this chunk; the line that counts is the first to end after it once the
    deadline passed, as the local engine's (generate.StopText).
    """
    if out.spent_at is None and out.deadline is not None and time.perf_counter() >= out.deadline:
        out.spent_at = before
    end = line_end_after(out.text, out.spent_at) if out.spent_at is not None else -1
    if end >= 0:
        out.text, out.reason = out.text[:end], StopReason.TIME_BUDGET
    return end >= 0


def _finish(out: Streamed, patterns: list) -> Streamed:
    if out.decoder is not None and out.reason != StopReason.STOP_PATTERN:
        out.text += out.decoder.flush()
    _cut(out, patterns)
    return out


def _error_text(r) -> str:
    try:
        err = r.json().get("error", r.json())
        return str(err.get("message", err) if isinstance(err, dict) else err)[:200]
    except Exception:
        return r.text[:200] or r.reason_phrase
