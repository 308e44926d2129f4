"""What ends a generation and what fits its window: stop reasons, stop patterns, the prompt limit.

No torch here: the server imports these at start (the engine and the server share them).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from enum import Enum


class StopReason(str, Enum):
    """Why a generation ended (str-valued: JSON and status show the plain string)."""

    __str__ = str.__str__

    EOS = "eos"  # the model ended the text
    STOP_PATTERN = "stop_pattern"  # a stop pattern matched; the text ends before the match
    MAX_TOKENS = "max_tokens"  # max_new_tokens were generated
    CANCELLED = "cancelled"  # should_cancel() turned true
    CONTEXT_FULL = "context_full"  # no free position left in the window
    TIME_BUDGET = "time_budget"  # max_latency_ms was spent; the text ends at a line end
    REMOTE_UNAVAILABLE = "remote_unavailable"  # the remote engine's server did not answer


def compile_stops(patterns: Sequence[str | re.Pattern]) -> tuple[re.Pattern, ...]:
    """Stop regexes compiled once (re.MULTILINE); compiled ones pass as they are; ValueError on a bad one."""
    out = []
    for p in patterns:
        if isinstance(p, re.Pattern):
            out.append(p)
            continue
        try:
            out.append(re.compile(p, re.MULTILINE))
        except re.error as exc:
            raise ValueError(f"bad stop pattern {p!r}: {exc}") from exc
    return tuple(out)


def prompt_limit(window: int, max_new_tokens: int) -> int:
    """Most prompt tokens in a `window`-token window: room for the completion, never under half the window."""
    assert window >= 2, window
    return max(1, window - min(max_new_tokens, window // 2))


def first_match(text: str, patterns: Sequence[re.Pattern]) -> int:
    """Start of the earliest match of any pattern in text, or -1."""
    starts = [m.start() for m in (p.search(text) for p in patterns) if m]
    return min(starts) if starts else -1


def line_end_after(text: str, since: int) -> int:
    """End of the first non-blank line of text that ends at or after `since`, or -1."""
    nl = text.find("\n", since)
    while nl >= 0 and not text[:nl].strip():
        nl = text.find("\n", nl + 1)  # a blank first line is not worth showing
    return nl
