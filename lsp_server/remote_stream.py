"""One streamed /completions answer (SSE `data:` lines): ids decoded here, stops applied, closed early."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from inference.rules import StopReason, first_match, line_end_after


class RemoteError(Exception):
    """The server could not answer (refused, timeout, HTTP error, malformed stream)."""


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
        decoder=tok.incremental_decoder(), eos_token_id=eng.loaded.config.eos_token_id, deadline=deadline
    )
    try:
        with eng.client.stream("POST", "/completions", json=body) as r:
            if r.status_code != 200:
                r.read()
                raise RemoteError(f"HTTP {r.status_code} from {eng.spec.url}/completions: {_error_text(r)}")
            for line in r.iter_lines():
                if should_cancel is not None and should_cancel():
                    out.reason = StopReason.CANCELLED
                    eng.state.closed_early += 1
                    eng.state.cancelled += 1
                    return out  # leaving the `with` closes the stream: the server aborts the sequence
                if not line.strip() or line.startswith(":"):
                    continue
                if not line.startswith("data:"):
                    raise RemoteError(f"malformed stream from {eng.spec.url}: {line[:80]!r}")
                data = line[5:].strip()
                if data == "[DONE]":
                    return _finish(out, compiled)
                if _take(out, _parse(data, eng.spec.url), compiled, t0):
                    eng.state.closed_early += 1
                    return out
        raise RemoteError(f"the stream from {eng.spec.url} ended without [DONE]")
    except (TypeError, AttributeError, KeyError, IndexError, ValueError) as exc:  # chunks of the wrong shape
        raise RemoteError(f"malformed stream from {eng.spec.url}: {type(exc).__name__}: {exc}") from exc
    except httpx.TimeoutException as exc:
        raise RemoteError(f"timed out after {eng.spec.timeout_ms} ms ({type(exc).__name__})") from exc
    except httpx.HTTPError as exc:
        raise RemoteError(f"{type(exc).__name__}: {exc or 'connection failed'}") from exc


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
            if i == out.eos_token_id:
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
