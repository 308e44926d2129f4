"""MTPB prompts and the conversation store: multi-turn synthesis on one engine session (no LSP, no CLI).

The prompt of turn k is: the document before the cursor (or MTPB's import header for an empty Python
document), then for each earlier turn its comment line, its truncated code and "\n\n", then turn k's
comment line (`# ...` in Python, `// ...` in C-like languages). Every turn runs on the same session, so the
engine reuses the cached prefix and prefills only what is new: the comment line (plus any generated ids that
are not the canonical tokenization of their own text).
"""

from __future__ import annotations

import logging
import re
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from inference.rules import StopReason
from lsp_server.prompt import PromptWindow, prompt_ids

log = logging.getLogger(__name__)

# MTPB (arXiv 2203.13474): the history of an empty program, and the truncation patterns of the benchmark.
MTPB_HEADER = "# Import libraries.\n\nimport numpy as np\n\n"
ENDOFTEXT = re.escape("<|endoftext|>")
MTPB_PATTERNS = ("^#", ENDOFTEXT, "^'''", "\n\n\n", '^"""')
TURN_SEPARATOR = "\n\n"

MAX_TURNS = 64
MAX_CONVERSATIONS = 64  # live at once, per server
MAX_TURN_CHARS = 4000
MAX_NEW_TOKENS_PER_TURN = 2048  # no released CodeGen has more positions than this


class SynthesisError(ValueError):
    """Bad synthesis input: the message is meant for the user."""


@dataclass(frozen=True)
class CommentStyle:
    """How a language writes a line comment, and where the model's code for one turn ends."""

    prefix: str
    patterns: tuple[str, ...]
    header: str = ""  # history of an empty document


_HASH = CommentStyle("# ", ("^#", ENDOFTEXT, "\n\n\n"))
_SLASH = CommentStyle("// ", ("^//", r"^/\*", ENDOFTEXT, "\n\n\n"))
_DASH = CommentStyle("-- ", ("^--", ENDOFTEXT, "\n\n\n"))
_PERCENT = CommentStyle("% ", ("^%", ENDOFTEXT, "\n\n\n"))
_SEMI = CommentStyle(";; ", ("^;", ENDOFTEXT, "\n\n\n"))
PYTHON = CommentStyle("# ", MTPB_PATTERNS, MTPB_HEADER)

# LSP language ids -> comment style (data, not code paths).
COMMENT_STYLES: dict[str, CommentStyle] = {
    "python": PYTHON,
    **dict.fromkeys(
        "shellscript ruby perl r julia yaml toml makefile dockerfile powershell elixir coffeescript nim "
        "cmake".split(),
        _HASH,
    ),
    **dict.fromkeys(
        "c cpp csharp java javascript javascriptreact typescript typescriptreact go rust kotlin swift scala "
        "php dart groovy objective-c objective-cpp zig solidity cuda-cpp verilog".split(),
        _SLASH,
    ),
    **dict.fromkeys("lua sql haskell ada elm vhdl".split(), _DASH),
    **dict.fromkeys("matlab erlang prolog".split(), _PERCENT),
    **dict.fromkeys("lisp clojure scheme racket".split(), _SEMI),
}


def comment_style(language_id: str | None) -> CommentStyle:
    """The comment style of an LSP language id (Python's for unknown ids: CodeGen-mono is a Python model)."""
    return COMMENT_STYLES.get((language_id or "python").lower(), PYTHON)


def validate_turns(turns: Any) -> list[str]:
    """Check a list of turn descriptions; raise SynthesisError with a message a user can act on."""
    if not isinstance(turns, list) or not turns:
        raise SynthesisError("'turns' must be a non-empty list of strings, one description per turn")
    if len(turns) > MAX_TURNS:
        raise SynthesisError(f"at most {MAX_TURNS} turns per request, got {len(turns)}")
    for i, turn in enumerate(turns, 1):
        validate_turn(turn, f"turn {i}")
    return list(turns)


def validate_turn(turn: Any, what: str = "turn") -> str:
    """Check one turn description."""
    if not isinstance(turn, str):
        raise SynthesisError(f"{what} must be a string, got {type(turn).__name__}")
    if not turn.strip():
        raise SynthesisError(f"{what} is empty: describe what the code should do")
    if len(turn) > MAX_TURN_CHARS:
        raise SynthesisError(f"{what} is {len(turn)} characters long; the limit is {MAX_TURN_CHARS}")
    return turn


def validate_max_new_tokens(value: Any, n_positions: int | None = None) -> int:
    """Check a per-turn token budget against the model's context window."""
    limit = min(MAX_NEW_TOKENS_PER_TURN, n_positions - 1) if n_positions else MAX_NEW_TOKENS_PER_TURN
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= limit:
        raise SynthesisError(f"maxNewTokensPerTurn must be an integer from 1 to {limit}, got {value!r}")
    return value


def turn_comment(prompt: str, language_id: str | None = "python", indent: str = "") -> str:
    """One turn as MTPB writes it: `# prompt\\n` (each line of a multi-line prompt commented), indented."""
    prefix = indent + comment_style(language_id).prefix
    lines = [line.rstrip() for line in prompt.strip().splitlines()]
    return "".join(f"{prefix}{line}".rstrip() + "\n" for line in lines)


def turn_patterns(language_id: str | None = "python", indent: str = "") -> tuple[str, ...]:
    """Where one turn's code ends; inside a block (an indent) also at a comment of that depth or a dedent."""
    style = comment_style(language_id)
    if not indent:
        return style.patterns
    ind, leader = re.escape(indent), re.escape(style.prefix.strip())
    return (*style.patterns, f"^{ind}{leader}", rf"^(?!{ind})[ \t]*\S")


def lead_for(text_before: str, language_id: str | None = "python") -> str:
    """The history before the first turn: the document's text before the position, or MTPB's header."""
    if not text_before.strip():
        return comment_style(language_id).header
    return text_before if text_before.endswith("\n") else text_before + "\n"


def truncate_code(text: str, language_id: str | None = "python", indent: str = "") -> str:
    """Cut the model's output for one turn where the turn's code ends (MTPB truncation)."""
    patterns = turn_patterns(language_id, indent)
    if comment_style(language_id) is PYTHON:
        from tokenizer.codegen import truncate_before_pattern

        return truncate_before_pattern(text, patterns)
    cuts = [m.start() for p in patterns if (m := re.search(p, text, re.MULTILINE))]
    return text[: min(cuts)] if cuts else text


@dataclass
class TurnResult:
    """One finished turn: its description, its code, and what it cost."""

    prompt: str
    code: str
    tokens: int  # generated tokens (before truncation)
    stop_reason: StopReason
    ms: float
    prompt_tokens: int
    prefill_tokens: int
    reused_tokens: int
    prefill_ms: float = 0.0

    def to_json(self) -> dict[str, Any]:
        """The LSP/CLI form (camelCase)."""
        return {
            "prompt": self.prompt,
            "code": self.code,
            "tokens": self.tokens,
            "stopReason": self.stop_reason,
            "ms": round(self.ms, 1),
            "promptTokens": self.prompt_tokens,
            "prefillTokens": self.prefill_tokens,
            "reusedTokens": self.reused_tokens,
            "prefillMs": round(self.prefill_ms, 1),
        }


@dataclass
class Conversation:
    """A growing MTPB history on one engine session, so each turn prefills only its own comment line."""

    engine: Any
    language_id: str
    lead: str  # history before the first turn
    inserted_lead: str  # the part of `lead` that is not already in the document (header or a newline)
    params: Any  # inference.engine.GenerationParams (stop patterns are set per turn)
    indent: str = ""  # the depth of the turns' comments (a selection inside a block)
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    turns: list[TurnResult] = field(default_factory=list)
    last_used: float = field(default_factory=time.monotonic)
    busy: bool = False
    window: PromptWindow | None = None  # where the last prompt started (cut when over the window)
    _body: list[str] = field(default_factory=list)

    @property
    def session_key(self) -> str:
        return f"synthesis:{self.id}"

    @property
    def history(self) -> str:
        """Everything the model has seen as finished turns: the prompt of the next turn minus its comment."""
        return self.lead + "".join(self._body)

    @property
    def program(self) -> str:
        """What to insert at the position: the header (if any), then each turn's comment and code."""
        if not self._body:
            return ""
        body = self.inserted_lead + "".join(self._body)
        return body.rstrip("\n") + "\n"

    def prompt_for(self, prompt: str) -> str:
        """The full MTPB prompt of the next turn."""
        return self.history + turn_comment(prompt, self.language_id, self.indent)

    def turn(self, prompt: str, should_cancel: Callable[[], bool] | None = None) -> TurnResult:
        """Generate the code of one turn on the conversation's session; a cancelled turn leaves no trace."""
        validate_turn(prompt)
        params = replace(self.params, stop_patterns=turn_patterns(self.language_id, self.indent))
        t0 = time.perf_counter()
        limit, tok = self.engine.prompt_limit(params.max_new_tokens), self.engine.loaded.tokenizer
        ids, self.window = prompt_ids(self.prompt_for(prompt), tok, limit, self.window)
        result = self.engine.session(self.session_key).generate(ids, params, should_cancel=should_cancel)
        ms = (time.perf_counter() - t0) * 1000.0
        cancelled = result.stop_reason == StopReason.CANCELLED
        code = "" if cancelled else truncate_code(result.text, self.language_id, self.indent)
        turn = TurnResult(
            prompt=prompt,
            code=code,
            tokens=len(result.token_ids),
            stop_reason=result.stop_reason,
            ms=ms,
            prompt_tokens=result.prompt_tokens,
            prefill_tokens=result.prefill_tokens,
            reused_tokens=result.reused_tokens,
            prefill_ms=result.prefill_ms,
        )
        if not cancelled:
            self._body.append(turn_comment(prompt, self.language_id, self.indent) + code + TURN_SEPARATOR)
            self.turns.append(turn)
        self.last_used = time.monotonic()
        return turn

    def close(self) -> None:
        """Free the KV cache of this conversation."""
        self.engine.drop_session(self.session_key)

    def summary(self, cancelled: bool = False) -> dict[str, Any]:
        """The result of a whole synthesis: program, turns, and prefill against prompt length."""
        return {
            "program": self.program,
            "turns": [t.to_json() for t in self.turns],
            # Prefilled across all turns vs. the last turn's whole prompt: close when the cache carried over.
            "prefillTokens": sum(t.prefill_tokens for t in self.turns),
            "promptTokens": self.turns[-1].prompt_tokens if self.turns else 0,
            "cancelled": cancelled,
        }


def new_conversation(
    engine: Any, text_before: str, language_id: str | None, params: Any, indent: str = ""
) -> Conversation:
    """A conversation that continues `text_before` (the document before the cursor), turns at `indent`."""
    assert not indent.strip(), f"indent must be whitespace, got {indent!r}"
    language_id = (language_id or "python").lower()
    lead = lead_for(text_before, language_id)
    inserted = lead[len(text_before) :] if lead.startswith(text_before) else lead
    return Conversation(
        engine=engine,
        language_id=language_id,
        lead=lead,
        inserted_lead=inserted,
        params=params,
        indent=indent,
    )


def synthesize(
    engine: Any,
    turns: Sequence[str],
    params: Any,
    *,
    text_before: str = "",
    language_id: str | None = "python",
    indent: str = "",
    should_cancel: Callable[[], bool] | None = None,
    on_turn: Callable[[int, TurnResult], None] | None = None,
) -> dict[str, Any]:
    """Run every turn on one session (KV carried across turns); stop early if cancelled."""
    turns = validate_turns(list(turns))
    conv = new_conversation(engine, text_before, language_id, params, indent)
    cancelled = False
    try:
        for k, prompt in enumerate(turns, 1):
            turn = conv.turn(prompt, should_cancel)
            if turn.stop_reason == StopReason.CANCELLED:
                cancelled = True
                break
            if on_turn is not None:
                on_turn(k, turn)
    finally:
        conv.close()
    return conv.summary(cancelled)


class ConversationStore:
    """Live conversations by id; idle ones expire. Whoever removes a conversation frees it (`close()`),
    on the inference thread, so the event loop never waits for the engine's lock."""

    def __init__(self, idle_seconds: float = 600.0, clock: Callable[[], float] = time.monotonic):
        self.idle_seconds = idle_seconds
        self.clock = clock
        self._lock = threading.Lock()
        self._live: dict[str, Conversation] = {}
        self._gone: OrderedDict[str, str] = OrderedDict()  # recently ended/expired id -> why

    def add(self, conv: Conversation) -> Conversation:
        """Register a new conversation (at most MAX_CONVERSATIONS live at once)."""
        conv.last_used = self.clock()
        with self._lock:
            if len(self._live) >= MAX_CONVERSATIONS:
                raise SynthesisError(
                    f"{len(self._live)} synthesis conversations are open; end some with codegen.synthesis.end"
                )
            self._live[conv.id] = conv
        return conv

    def get(self, conversation_id: Any) -> Conversation:
        """The live conversation with this id, or a SynthesisError saying why there is none."""
        if not isinstance(conversation_id, str) or not conversation_id:
            raise SynthesisError("'id' must be the conversation id returned by codegen.synthesis.start")
        with self._lock:
            conv = self._live.get(conversation_id)
            why = self._gone.get(conversation_id)
        if conv is None:
            raise SynthesisError(
                f"unknown conversation id {conversation_id!r}" + (f" ({why})" if why else "")
            )
        return conv

    def touch(self, conv: Conversation) -> None:
        """Mark a conversation as used now."""
        conv.last_used = self.clock()

    def end(self, conversation_id: Any) -> Conversation:
        """Forget a conversation (the caller frees it)."""
        conv = self.get(conversation_id)
        self._remove(conv, "ended")
        return conv

    def expire(self) -> list[Conversation]:
        """Forget conversations idle for longer than `idle_seconds` (the caller frees them)."""
        now = self.clock()
        with self._lock:
            idle = [c for c in self._live.values() if not c.busy and now - c.last_used > self.idle_seconds]
        for conv in idle:
            self._remove(conv, f"expired after {self.idle_seconds:g} s idle")
        return idle

    def clear(self) -> list[Conversation]:
        """Forget every conversation (the caller frees them)."""
        with self._lock:
            live = list(self._live.values())
        for conv in live:
            self._remove(conv, "cleared")
        return live

    def __len__(self) -> int:
        return len(self._live)

    def _remove(self, conv: Conversation, why: str) -> None:
        with self._lock:
            self._live.pop(conv.id, None)
            self._gone[conv.id] = why
            while len(self._gone) > 256:
                self._gone.popitem(last=False)
        log.info("synthesis conversation %s %s", conv.id, why)
