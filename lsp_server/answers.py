"""What a completion request answers: kinds, empty reasons, the outcome, the kept suggestion, counters."""

from __future__ import annotations

import collections
from dataclasses import dataclass, field
from enum import Enum

# Request kinds; each has its own superseding chain, so a list completion and an inline completion for
# the same keystroke do not cancel each other (they run one after the other on the one worker).
KINDS = ("inline", "list")


class EmptyReason(str, Enum):
    """Why an answer is empty (codegen.status shows the plain string)."""

    __str__ = str.__str__

    SUPERSEDED = "superseded"  # a newer request for the same document replaced it
    CANCELLED = "cancelled"  # the client sent $/cancelRequest
    MID_WORD = "mid_word"  # automatic trigger with a word character right after the cursor
    AT_DOCUMENT_START = "at_document_start"  # nothing before the cursor to continue
    STOP_AT_ONCE = "stop_pattern_at_once"  # the first generated text matched a stop pattern / the scope limit
    EOS_AT_ONCE = "eos_at_once"  # the model ended the text at once
    BLANK = "blank"  # only white space was generated
    SUFFIX_ONLY = "suffix_only"  # the completion only repeated the text after the cursor
    CONTEXT_FULL = "context_full"  # no room left in the model's window
    MODEL_NOT_LOADED = "model_not_loaded"  # no model could be loaded (see the message shown)
    REMOTE_UNAVAILABLE = "remote_unavailable"  # the remote server did not answer (codegen.status: why)
    ERROR = "error"  # an unexpected error (logged with its traceback)
    DOCUMENT_CHANGED = "document_changed"  # the document was edited or closed while the answer was computed


LOOKUP_FIELDS = {"lookup_passes": "lookupPasses", "lookup_accepted": "lookupAccepted"}  # prompt lookup
ROUTINE = (EmptyReason.SUPERSEDED, EmptyReason.CANCELLED, EmptyReason.MID_WORD)  # logged at debug level


@dataclass
class Outcome:
    """What to insert and where (document offsets), or why nothing."""

    text: str = ""
    start: int = 0
    end: int = 0
    reason: EmptyReason | None = None
    source: str = "model"  # "model" | "typed_through" | "prefetched"
    latency_ms: float = 0.0


@dataclass
class Suggestion:
    """The last completion of a document, for the typed-through cache."""

    before: str  # effective text before the cursor when it was computed
    text: str  # trimmed completion, before suffix fitting


@dataclass
class Stats:
    """Counters and recent latencies for codegen.status."""

    requests: int = 0
    model_calls: int = 0
    typed_through_hits: int = 0
    empty: collections.Counter = field(default_factory=collections.Counter)
    last_reason: dict[str, str | None] = field(default_factory=dict)  # uri -> reason of its last answer
    recent: collections.deque = field(default_factory=lambda: collections.deque(maxlen=32))
    prefills: int = 0  # prefill-on-open jobs that ran to the end
    last_prefill: dict = field(default_factory=dict)

    def latencies(self) -> dict:
        if not self.recent:
            return {}
        last = self.recent[-1]
        totals = sorted(r["totalMs"] for r in self.recent)
        return {"last": last, "medianTotalMs": totals[len(totals) // 2], "count": len(self.recent)}
