"""Acceptance statistics, local only: inline suggestions shown, accepted and partly accepted, per language
and model. Nothing leaves the machine; `codegen.status` shows the figures.

Each inline item the server answers carries the command `codegen.accepted {id}`, which the client runs when
the user accepts it (LSP InlineCompletionItem.command); clients that accept a part (a word, a line) report
`codegen.partiallyAccepted {id, acceptedLength}` (the length accepted so far, in characters). "Shown" counts
the suggestions answered (the server cannot see whether the client drew them); the rest of a suggestion
answered again while the user types through it is the same suggestion, with the same id. Memory is bounded:
the ids of the last MAX_SHOWN items are kept (an older id is unknown and ignored), and the last MAX_LATENCIES
latencies of accepted items per row.
"""

from __future__ import annotations

import collections
import itertools
import logging
from dataclasses import dataclass, field

from lsprotocol import types
from pygls.exceptions import JsonRpcInvalidParams

log = logging.getLogger(__name__)

MAX_SHOWN = 1024  # ids of shown items remembered
MAX_LATENCIES = 512  # latencies of accepted items per (language, model)
ACCEPTED = "codegen.accepted"
PARTIALLY_ACCEPTED = "codegen.partiallyAccepted"


@dataclass
class _Item:
    """One shown suggestion."""

    key: tuple[str, str]  # (language, model)
    chars: int  # characters it adds after the cursor
    latency_ms: float  # how long its request took
    accepted_chars: int = 0
    accepted: bool = False
    partly: bool = False


@dataclass
class Row:
    """The figures of one language and model."""

    shown: int = 0
    accepted: int = 0
    partly_accepted: int = 0
    accepted_chars: int = 0
    latencies: collections.deque = field(default_factory=lambda: collections.deque(maxlen=MAX_LATENCIES))

    def to_json(self, language: str, model: str) -> dict:
        lat = sorted(self.latencies)
        pct = {f"p{p}": round(percentile(lat, p), 2) for p in (50, 90, 99)} if lat else {}
        return {
            "language": language,
            "model": model,
            "shown": self.shown,
            "accepted": self.accepted,
            "partlyAccepted": self.partly_accepted,
            "acceptedChars": self.accepted_chars,
            "acceptanceRate": round(self.accepted / self.shown, 4) if self.shown else None,
            "acceptedLatencyMs": pct,
        }


def percentile(sorted_values: list[float], p: float) -> float:
    """The nearest-rank percentile of a sorted, non-empty list."""
    assert sorted_values, "percentile of nothing"
    rank = max(1, -(-len(sorted_values) * p // 100))  # ceil(n * p / 100)
    return sorted_values[int(rank) - 1]


class Acceptance:
    """Shown items by id (bounded) and the figures per (language, model)."""

    def __init__(self, max_shown: int = MAX_SHOWN) -> None:
        self.max_shown = max_shown
        self._items: collections.OrderedDict[str, _Item] = collections.OrderedDict()
        self._rows: dict[tuple[str, str], Row] = {}
        self._ids = itertools.count(1)
        self._last: collections.OrderedDict[str, str] = collections.OrderedDict()  # document -> last id

    def shown(self, language: str, model: str, chars: int, latency_ms: float, uri: str = "") -> str:
        """Record a suggestion answered to the client; its id for the acceptance command."""
        item_id = f"s{next(self._ids)}"
        self._items[item_id] = _Item((language, model), chars, latency_ms)
        self._last[uri] = item_id
        self._last.move_to_end(uri)
        while len(self._items) > self.max_shown:
            self._items.popitem(last=False)
        while len(self._last) > self.max_shown:
            self._last.popitem(last=False)
        self._row(item_id).shown += 1
        return item_id

    def last_shown(self, uri: str) -> str | None:
        """The id of the last suggestion shown in a document, while it is remembered."""
        item_id = self._last.get(uri)
        return item_id if item_id in self._items else None

    def accepted(self, item_id: str) -> bool:
        """The user took the whole suggestion; False for an unknown (or forgotten) id."""
        item = self._items.get(item_id)
        if item is None:
            return False
        if not item.accepted:
            row = self._row(item_id)
            row.accepted += 1
            row.latencies.append(item.latency_ms)
            self._take(item, row, item.chars)
            item.accepted = True
        return True

    def partially_accepted(self, item_id: str, length: int) -> bool:
        """The user took the first `length` characters so far; False for an unknown id."""
        item = self._items.get(item_id)
        if item is None:
            return False
        row = self._row(item_id)
        if not item.partly and not item.accepted:
            row.partly_accepted += 1
            item.partly = True
        self._take(item, row, min(length, item.chars))
        return True

    @staticmethod
    def _take(item: _Item, row: Row, upto: int) -> None:
        if upto > item.accepted_chars:
            row.accepted_chars += upto - item.accepted_chars
            item.accepted_chars = upto

    def _row(self, item_id: str) -> Row:
        key = self._items[item_id].key
        return self._rows.setdefault(key, Row())

    def status(self) -> list[dict]:
        """The figures per language and model."""
        return [row.to_json(lang, model) for (lang, model), row in sorted(self._rows.items())]


def item_command(server, doc, out, offset: int) -> types.Command:
    """Record an inline answer as shown; the command the client runs when the user accepts it."""
    acc = server.acceptance
    item_id = acc.last_shown(doc.uri) if out.source == "typed_through" else None
    if item_id is None:
        entry = server.models.loaded_for(doc.language_id)
        model = entry.name if entry is not None else server.settings.model_for(doc.language_id)
        chars = max(0, len(out.text) - max(0, offset - out.start))  # what it adds after the cursor
        item_id = acc.shown(doc.language_id, model, chars, out.latency_ms, doc.uri)
    return types.Command(title="codegen: accepted", command=ACCEPTED, arguments=[{"id": item_id}])


def _args(args: list, name: str, length: bool = False) -> tuple[str, int]:
    obj = args[0] if len(args) == 1 and isinstance(args[0], dict) else None
    if obj is None or not isinstance(obj.get("id"), str):
        raise JsonRpcInvalidParams(f"{name} takes one object argument {{id}}, got {args!r:.200}")
    n = obj.get("acceptedLength", 0)
    if length and (isinstance(n, bool) or not isinstance(n, int) or n < 0):
        raise JsonRpcInvalidParams(f"{name}: acceptedLength must be a non-negative integer, got {n!r}")
    return obj["id"], n


async def accepted(server, args: list) -> dict:
    """The client accepted an inline suggestion."""
    item_id, _ = _args(args, ACCEPTED)
    known = server.acceptance.accepted(item_id)
    log.debug("suggestion %s accepted%s", item_id, "" if known else " (unknown id)")
    return {"id": item_id, "known": known}


async def partially_accepted(server, args: list) -> dict:
    """The client accepted a part (a word, a line) of an inline suggestion."""
    item_id, n = _args(args, PARTIALLY_ACCEPTED, length=True)
    known = server.acceptance.partially_accepted(item_id, n)
    log.debug("suggestion %s: %d characters accepted%s", item_id, n, "" if known else " (unknown id)")
    return {"id": item_id, "known": known}
