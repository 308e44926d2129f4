"""Text before the cursor -> prompt token ids, cut from the left at a line boundary, moving its start in
large steps. The one prompt cutter: the server, the CLI and synthesis cut here; the engine refuses what
does not fit.

The prompt's start stays where it was as long as the text from there to the cursor fits the budget
(`window - maxNewTokens` tokens) and the text at the start is unchanged. When it no longer fits, the start
jumps forward to the first line that leaves a quarter of the budget free, so the next keystrokes keep
reusing the engine's KV cache (a moving start would change every token and force a full prefill).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable
from dataclasses import dataclass, field

ANCHOR_CHARS = 64  # text remembered at the prompt start to notice edits above it
MAX_CHARS_PER_TOKEN = 16  # never look further back than budget * this many characters
SLACK = 4  # after a jump, 1/SLACK of the budget is free


@dataclass
class PromptWindow:
    """Where the last prompt of a document started (per document state)."""

    start: int = 0
    anchor: str = ""


def line_starts(text: str, lo: int = 0) -> list[int]:
    """Indexes (>= lo) where a line starts, after '\\n' (a CRLF ends in '\\n' too)."""
    out = [lo] if lo == 0 or text[lo - 1] == "\n" else []
    i = text.find("\n", lo)
    while i != -1:
        out.append(i + 1)
        i = text.find("\n", i + 1)
    return out


def _still_valid(prefix: str, w: PromptWindow) -> bool:
    s = w.start
    return 0 < s <= len(prefix) and prefix[s - 1] == "\n" and prefix.startswith(w.anchor, s)


def cut_prompt(
    prefix: str, budget: int, count: Callable[[str], int], window: PromptWindow | None = None
) -> tuple[str, PromptWindow]:
    """The prompt for `prefix` within `budget` tokens, and the window to pass to the next call."""
    assert budget > 0, "the token budget must be positive"
    if window is not None and _still_valid(prefix, window) and count(prefix[window.start :]) <= budget:
        return prefix[window.start :], window
    lo = max(0, len(prefix) - budget * MAX_CHARS_PER_TOKEN)
    if lo == 0 and count(prefix) <= budget:
        return prefix, PromptWindow(0, prefix[:ANCHOR_CHARS])
    target = budget - budget // SLACK
    # line starts before the end; none in reach: the last line starts at or before `lo`, cut inside it
    starts = [s for s in line_starts(prefix, lo) if s < len(prefix)] or [lo]
    # smallest line start whose tail fits the target (token counts fall as the start moves right)
    i = bisect_left(range(len(starts)), True, key=lambda k: count(prefix[starts[k] :]) <= target)
    if i < len(starts):
        start = starts[i]
    else:  # the last line alone is over the target: cut inside it
        first = starts[-1]
        span = range(first, len(prefix) + 1)
        start = first + bisect_left(range(len(span)), True, key=lambda k: count(prefix[span[k] :]) <= target)
    return prefix[start:], PromptWindow(start, prefix[start : start + ANCHOR_CHARS])


def prompt_ids(
    text: str, tokenizer, limit: int, window: PromptWindow | None = None
) -> tuple[list[int], PromptWindow]:
    """The token ids of `text`'s prompt within `limit` tokens (cut_prompt), and the window for the next call.

    Each text counted is encoded once; the prompt is usually the last one counted, so its ids are reused.
    """
    last: list = [None, None]  # the last text counted and its ids

    def count(t: str) -> int:
        last[:] = t, tokenizer.encode(t)
        return len(last[1])

    prompt, window = cut_prompt(text, limit, count, window)
    return (last[1] if last[0] == prompt else tokenizer.encode(prompt)), window


def cut_suffix(after: str, budget: int, count: Callable[[str], int]) -> str:
    """The start of `after` (the text after the cursor) within `budget` tokens, cut at a line end: whole lines
    from the cursor on, the last one that fits ending it (only the cursor's own line is ever cut inside)."""
    if budget <= 0 or not after:
        return ""
    if len(after) <= budget * MAX_CHARS_PER_TOKEN and count(after) <= budget:
        return after
    after = after[: budget * MAX_CHARS_PER_TOKEN]
    ends = [i + 1 for i, ch in enumerate(after) if ch == "\n"]  # cut points after each line break
    # largest line end whose text fits (token counts grow with the end)
    k = bisect_left(range(len(ends)), True, key=lambda j: count(after[: ends[j]]) > budget)
    if k > 0:
        return after[: ends[k - 1]]
    first = after[: ends[0]] if ends else after  # the cursor's line alone is over the budget: cut inside it
    n = bisect_left(range(len(first) + 1), True, key=lambda j: count(first[:j]) > budget)
    return first[: max(0, n - 1)]


@dataclass
class Prompt:
    """A prompt's token ids and how they were made (codegen.status shows it)."""

    ids: list[int]
    template: str | None = None  # the FIM template's name; None: the text before the cursor only
    prefix_tokens: int = 0
    suffix_tokens: int = 0
    context: list = field(default_factory=list)  # project context: (chunk, tokens) before the prefix
    context_tokens: int = 0  # its ids, with the layout's headers
    prefilled: int | None = None  # tokens its request prefilled (the rest came from the KV cache)


def fim_prompt_ids(
    before: str, after: str, tokenizer, template, limit: int, suffix_budget: int, window=None, inner=()
) -> tuple[Prompt, PromptWindow]:
    """The FIM prompt (lsp_server/fim.py's template) within `limit` tokens: the suffix cut to `suffix_budget`
    tokens at a line end, the prefix cut by cut_prompt to what the template and the suffix's whole budget
    leave (a fixed share, so the prefix's start does not move with the suffix's length); `inner`: context
    ids at the start of the prefix part, counted in `limit` by the caller."""
    from lsp_server import fim

    extra = fim.overhead(template, tokenizer)
    suffix_budget = max(0, min(suffix_budget, (limit - extra) // 2))  # the prefix keeps at least half
    suffix = cut_suffix(after, suffix_budget, lambda t: len(tokenizer.encode(t)))
    suffix_ids = tokenizer.encode(suffix) if suffix else []
    prefix_ids, window = prompt_ids(before, tokenizer, max(1, limit - extra - suffix_budget), window)
    ids = fim.build(template, tokenizer, [*inner, *prefix_ids], suffix_ids)
    return Prompt(ids, template.name, len(prefix_ids), len(suffix_ids)), window
