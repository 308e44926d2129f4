"""Trimming: stop patterns per language, completion modes, scope limit, suffix de-duplication.

The documented trimming of one completion, in order:
1. `patterns_for(...)` regexes, compiled once (re.MULTILINE), are passed to the engine, which stops decoding
   at the first match and returns the text before it (the one cut); the server then strips trailing white
   space. `trim()` is that cut and strip as one function of a text (tests and benchmarks state it with it).
   - the language's stop patterns (`stopPatterns[language]`, else the built-in list, else `*`);
   - a decoding loop: a block of one to four lines (the first non-blank) repeated three times in a row ends
     the completion before its first copy;
   - `line` mode: the end of the first non-blank line; `sentence` mode: the first sentence end
     (`。．！？` at once, `.!?` when followed by white space); `block` mode (code only): the scope limit, a
     line that dedents below the indentation of the cursor's line; `free`: nothing more.
2. `fit_suffix()`: text already after the cursor on the same line (closing brackets, quotes) is not
   repeated: a one-line completion ending with it drops it; a multi-line one whose first line ends with it
   replaces it (the item's range covers it); any other multi-line completion keeps its first line only.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from inference.rules import compile_stops, first_match
from lsp_server.constants import PROSE_LANGUAGES

BLANK_LINE = r"\n[ \t]*\r?\n"
BLANK_RUN = r"\n[ \t]*\r?\n[ \t]*\r?\n"
ENDOFTEXT = re.escape("<|endoftext|>")

DEFAULT_STOP_PATTERNS: dict[str, list[str]] = {
    # a blank-line run; a new top-level def/class/decorator/main guard/comment
    "python": [BLANK_RUN, r"\n(?=(?:async[ \t]+)?def[ \t]|class[ \t]|if[ \t]+__name__|@|#)", ENDOFTEXT],
    # end of paragraph, a heading line
    "markdown": [BLANK_LINE, r"\n(?=[ \t]{0,3}#{1,6}(?:[ \t]|$))", ENDOFTEXT],
    "restructuredtext": [BLANK_LINE, r"\n(?=([=\-~^\"'`#*+:.])\1{2,}[ \t]*$)", ENDOFTEXT],
    "plaintext": [BLANK_LINE, ENDOFTEXT],
    "*": [BLANK_RUN, ENDOFTEXT],
}
PROSE = frozenset(PROSE_LANGUAGES)
LINE_END = r"(?<=\S)[ \t]*\r?\n"
# At the first of three identical blocks in a row: the smallest block of 1-4 whole lines, its first non-blank.
REPEATED_BLOCK = r"^(?=(?=[^\n]*\S)((?:[^\n]*\n){1,4}?)\1\1)"
SENTENCE_END = r"(?<=[。．！？])|(?<=[.!?])(?=\s)"
WORD_CHAR = re.compile(r"\w")


def indent_of(line: str) -> int:
    """Leading spaces and tabs (one column each)."""
    return len(line) - len(line.lstrip(" \t"))


def block_indent(line_prefix: str) -> int:
    """Indentation of the block the cursor is in: its line's indent, or the typed indent on a blank line."""
    return len(line_prefix) if not line_prefix.strip() else indent_of(line_prefix)


def scope_pattern(indent: int) -> str | None:
    """A newline followed by a non-blank line indented less than `indent` (None at top level)."""
    return rf"\n(?=[ \t]{{0,{indent - 1}}}[^ \t\r\n])" if indent > 0 else None


def language_patterns(language: str, overrides: Mapping[str, Sequence[str]] | None = None) -> list[str]:
    """The user's stop patterns for the language (or `*`), else the built-in ones."""
    overrides = overrides or {}
    for table in (overrides, DEFAULT_STOP_PATTERNS):
        if language in table:
            return list(table[language])
    return list(overrides.get("*", DEFAULT_STOP_PATTERNS["*"]))


def patterns_for(
    language: str, mode: str, line_prefix: str, overrides: Mapping[str, Sequence[str]] | None = None
) -> tuple[re.Pattern, ...]:
    """Every stop regex of one completion request (language + mode + scope), compiled once."""
    pats = language_patterns(language, overrides) + [REPEATED_BLOCK]
    if mode == "line":
        pats.append(LINE_END)
    elif mode == "sentence":
        pats.append(SENTENCE_END)
    elif mode == "block" and language not in PROSE:
        scope = scope_pattern(block_indent(line_prefix))
        if scope:
            pats.append(scope)
    return compile_stops(pats)


def trim(text: str, patterns: Sequence[str | re.Pattern]) -> str:
    """Text before the earliest match of any stop pattern (the engine's cut), without trailing white space."""
    cut = first_match(text, compile_stops(patterns))
    return (text if cut < 0 else text[:cut]).rstrip()


def fit_suffix(text: str, line_suffix: str) -> tuple[str, int]:
    """(text to insert, characters after the cursor it replaces) so the line's suffix is not repeated."""
    suffix = line_suffix.rstrip()
    if not suffix or not text:
        return text, 0
    first, nl, _ = text.partition("\n")
    if not nl:
        head = text.rstrip()
        return (head[: -len(suffix)], 0) if head.endswith(suffix) else (text, 0)
    if first.rstrip().endswith(suffix):
        return text, len(line_suffix.rstrip("\r\n"))
    return fit_suffix(first, line_suffix)


def cut_suffix_repeat(text: str, after: str) -> str:
    """`text` cut before its first line (past the first) that repeats the first non-blank line below the
    cursor's line: the code that follows is already there (FIM models see it; the others guess it)."""
    below = next((ln.strip() for ln in after.split("\n")[1:] if ln.strip()), "")
    if not below or "\n" not in text:
        return text
    pos = text.find("\n")
    while pos != -1:
        end = text.find("\n", pos + 1)
        if text[pos + 1 : end if end != -1 else len(text)].strip() == below:
            return text[:pos]
        pos = end
    return text


def mid_word(line_suffix: str) -> bool:
    """True when the cursor touches a word on its right (automatic completion is skipped there)."""
    return bool(line_suffix) and WORD_CHAR.match(line_suffix[0]) is not None
