"""One completion request: typed-through cache, prompt, engine call on the worker, trimming, empty reasons."""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from dataclasses import dataclass, field

from lsp_server import postprocess
from lsp_server.documents import Document
from lsp_server.models import ModelUnavailable
from lsp_server.prefetch import Prefetcher
from lsp_server.progress import show
from lsp_server.prompt import PromptWindow, cut_prompt
from lsp_server.scheduler import Superseded

log = logging.getLogger(__name__)

# Request kinds; each has its own superseding chain, so a list completion and an inline completion for
# the same keystroke do not cancel each other (they run one after the other on the one worker).
KINDS = ("inline", "list")

# The worker key of prefill-on-open jobs: one at a time (the newest document wins), and any completion
# request stops a running one at its next chunk (what it computed stays in the document's cache).
PREFILL_KEY = ("__prefill_on_open__",)
PREFILL_CHUNK = 128  # tokens per forward of a prefill-on-open job: how long a request may wait for it

# Why an answer is empty (shown by codegen.status).
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


@dataclass
class Outcome:
    """What to insert and where (document offsets), or why nothing."""

    text: str = ""
    start: int = 0
    end: int = 0
    reason: str | None = None
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


class Completer:
    """Computes completions for the server; state per document lives here."""

    def __init__(self, server) -> None:
        self.server = server
        self.windows: dict[str, PromptWindow] = {}
        self.suggestions: dict[str, Suggestion] = {}
        self.stats = Stats()
        self.prefilling: str | None = None  # the document of the latest prefill-on-open job
        self.outages_told: dict[int, int] = {}  # id(remote engine) -> its outages the user was told of
        self.prefetch = Prefetcher(self)  # the completion after the last suggestion, computed ahead

    def forget(self, uri: str | None = None) -> None:
        """Drop per-document state (one document, or all)."""
        self.prefetch.stop(uri)
        if uri is None:
            self.windows.clear()
            self.suggestions.clear()
        else:
            self.windows.pop(uri, None)
            self.suggestions.pop(uri, None)
            self.stats.last_reason.pop(uri, None)

    def _answer(self, uri: str, out: Outcome, t0: float) -> Outcome:
        out.latency_ms = (time.perf_counter() - t0) * 1000
        if uri in self.server.documents:  # kept for open documents only (a closed one's is dropped)
            self.stats.last_reason[uri] = out.reason
        if out.reason:
            self.stats.empty[out.reason] += 1
            quiet = out.reason in (SUPERSEDED, CANCELLED, MID_WORD)  # routine while typing
            log.log(logging.DEBUG if quiet else logging.INFO, "empty completion for %s: %s", uri, out.reason)
        return out

    async def complete(
        self, doc: Document, offset: int, automatic: bool, selected=None, kind: str = "inline"
    ) -> Outcome:
        """The completion at `offset`; `selected` = (start, end, text) of the selected completion item."""
        assert kind in KINDS, kind
        t0 = time.perf_counter()
        uri, text = doc.uri, doc.text
        job_key = (uri, kind)
        self.stats.requests += 1
        eol = offset
        while eol < len(text) and text[eol] not in "\r\n":
            eol += 1
        line_suffix = text[offset:eol]
        start, end, lead, before = offset, offset, None, text[:offset]
        if selected is not None:  # continue as if the selected item were accepted; answer over its range
            start, end, lead = selected
            end = max(end, start)
            before = text[:start] + lead
            line_suffix = text[max(end, offset) : eol]
        # The model sees "\n" line breaks; the inserted text gets the document's own (CRLF stays CRLF).
        newline = newline_of(text)
        if newline != "\n":
            before = before.replace("\r\n", "\n")
        if automatic and postprocess.mid_word(line_suffix):
            self.server.worker.supersede(job_key)
            return self._answer(uri, Outcome(start=start, end=end, reason=MID_WORD), t0)
        if not before:
            return self._answer(uri, Outcome(start=start, end=end, reason=AT_DOCUMENT_START), t0)

        cached = self.typed_through(uri, before)
        if cached is not None:
            self.server.worker.supersede(job_key)
            self.stats.typed_through_hits += 1
            out = self._fit(cached, line_suffix, start, end, lead, newline)
            out.source = "typed_through"
            return self._answer(uri, out, t0)
        if kind == "inline" and (out := await self._prefetched(doc, before, line_suffix, start, end, lead)):
            return self._answer(uri, out, t0)

        settings = self.server.settings
        try:
            entry = await self.server.models.get(doc.language_id)
        except asyncio.CancelledError:
            self._answer(uri, Outcome(reason=CANCELLED), t0)
            raise
        except ModelUnavailable as e:
            log.warning("%s", e)
            return self._answer(uri, Outcome(start=start, end=end, reason=MODEL_NOT_LOADED), t0)
        line_prefix = before[before.rfind("\n") + 1 :]
        mode = settings.mode_for(doc.language_id)
        patterns = postprocess.patterns_for(doc.language_id, mode, line_prefix, settings.stop_patterns)
        generate = self.generator(uri, entry, before, patterns)
        self.stats.model_calls += 1
        self.server.worker.supersede(PREFILL_KEY)  # a request goes before any prefill-on-open
        self.prefetch.stop()  # ... and before any prefetch
        try:
            delay = settings.debounce_ms / 1000 if automatic else 0.0  # an explicit request is not debounced
            result = await self.server.worker.submit(job_key, generate, delay_s=delay)
        except Superseded:
            return self._answer(uri, Outcome(start=start, end=end, reason=SUPERSEDED), t0)
        except asyncio.CancelledError:
            self._answer(uri, Outcome(reason=CANCELLED), t0)
            raise
        except Exception:
            log.exception("completion failed for %s", uri)
            return self._answer(uri, Outcome(start=start, end=end, reason=ERROR), t0)
        if result.stop_reason == "cancelled":
            return self._answer(uri, Outcome(start=start, end=end, reason=CANCELLED), t0)
        if result.stop_reason == REMOTE_UNAVAILABLE:
            self.tell_outage(entry.engine, result.extra["remote_error"])
        completion = postprocess.trim(result.text, patterns)
        self.record(result, t0)
        if completion:
            self.suggestions[uri] = Suggestion(before, completion)  # kept: the next keystroke types through
        else:
            self.suggestions.pop(uri, None)
            return self._answer(uri, Outcome(start=start, end=end, reason=self.why_empty(result)), t0)
        if self.moved(doc):
            return self._answer(uri, Outcome(start=start, end=end, reason=DOCUMENT_CHANGED), t0)
        out = self._fit(completion, line_suffix, start, end, lead, newline)
        if kind == "inline":
            self._prefetch_after(doc, entry, before, lead, out)
        return self._answer(uri, out, t0)

    async def _prefetched(
        self, doc: Document, before: str, line_suffix: str, start, end, lead
    ) -> Outcome | None:
        """The answer from the completion computed ahead for `before`; None when there is none."""
        try:
            ahead = await self.prefetch.answer(doc.uri, before)
        except Superseded:
            return Outcome(start=start, end=end, reason=SUPERSEDED)
        if ahead is None:
            return None
        self.server.worker.supersede((doc.uri, "inline"))
        self.suggestions[doc.uri] = Suggestion(before, ahead)
        if self.moved(doc):  # it waited for the prefetch: the document may have moved on meanwhile
            return Outcome(start=start, end=end, reason=DOCUMENT_CHANGED)
        out = self._fit(ahead, line_suffix, start, end, lead, newline_of(doc.text))
        out.source = "prefetched"
        self._prefetch_after(doc, None, before, lead, out)
        return out

    def _prefetch_after(self, doc: Document, entry, before: str, lead: str | None, out: Outcome) -> None:
        """Compute ahead what follows the answer `out` once it is accepted (the text before the cursor is
        then the text before the answer's range plus its text, with LF line breaks)."""
        entry = entry or self.server.models.loaded_for(doc.language_id)
        if out.reason or entry is None:
            return
        accepted = before[: len(before) - len(lead or "")] + out.text.replace("\r\n", "\n")
        self.prefetch.schedule(doc.uri, entry, doc.language_id, accepted)

    def moved(self, snap: Document) -> bool:
        """Whether the live document is no longer the text `snap` was taken from (edited or closed)."""
        live = self.server.documents.find(snap.uri)
        return live is None or live.version != snap.version or live.text is not snap.text

    def tell_outage(self, engine, error: str) -> None:
        """One message per outage of a remote server (whichever request, prefetch included, met it first)."""
        outages = engine.state.outages
        if self.outages_told.get(id(engine)) != outages:
            self.outages_told[id(engine)] = outages
            show(self.server, f"codegen: the completion server is unavailable: {error}")

    def generator(self, uri: str, entry, before: str, patterns: list[str]):
        """The function the worker runs: cut the prompt, then generate in the document's session."""
        from inference.engine import GenerationParams

        s = self.server.settings
        window, max_new = self.budget(entry)
        params = GenerationParams(
            max_new_tokens=max_new,
            temperature=s.temperature,
            top_p=s.top_p,
            stop_patterns=patterns,
            max_latency_ms=s.max_latency_ms,
        )

        def run(should_cancel):
            ids = self.prompt_ids(uri, entry, before, window - max_new)
            return entry.engine.session(uri).generate(ids, params, should_cancel=should_cancel)

        return run

    def budget(self, entry) -> tuple[int, int]:
        """(context window, new tokens) of one request to this model under the current settings."""
        s = self.server.settings
        n_positions = entry.loaded.config.n_positions
        window = min(s.context_window or n_positions, n_positions)
        return window, max(1, min(s.max_new_tokens, window // 2))

    def prompt_ids(self, uri: str, entry, before: str, limit: int) -> list[int] | str:
        """The prompt cut from `before` (keeping the document's window start), as ids when already encoded."""
        tok = entry.loaded.tokenizer
        last: list = [None, None]  # the last text counted and its ids: usually the prompt itself

        def count(t: str) -> int:
            last[:] = t, tok.encode(t)
            return len(last[1])

        prompt, self.windows[uri] = cut_prompt(before, limit, count, self.windows.get(uri))
        return last[1] if last[0] == prompt else prompt  # encode each keystroke's prompt once

    async def prefill_on_open(self, doc: Document) -> None:
        """Prefill a just-opened document (as if the cursor were at its end) with the model already serving
        its language, so that the first completion there reuses the cache instead of a cold prefill."""
        entry = await self.server.models.ready_for(doc.language_id)
        text = doc.text
        if entry is None or not text.strip() or self.server.documents.find(doc.uri) is not doc:
            return
        uri, before = doc.uri, text.replace("\r\n", "\n") if newline_of(text) != "\n" else text
        window, max_new = self.budget(entry)

        def run(should_cancel) -> dict | None:
            if not entry.engine.pool.has_room_for(uri):
                return None  # never evict the cache of a document being edited for one just opened
            t0 = time.perf_counter()
            ids = self.prompt_ids(uri, entry, before, window - max_new)
            if isinstance(ids, str):
                ids = entry.loaded.tokenizer.encode(ids)
            done = entry.engine.session(uri).prefill(ids, should_cancel, chunk=PREFILL_CHUNK)
            ms = round((time.perf_counter() - t0) * 1000, 2)
            return {"uri": uri, "promptTokens": len(ids), "prefillTokens": done, "ms": ms}

        self.prefilling = uri
        try:
            info = await self.server.worker.submit(PREFILL_KEY, run)
        except (Superseded, asyncio.CancelledError):
            return
        except Exception:
            log.exception("prefill on open failed for %s", uri)
            return
        if info is None:
            log.debug("no prefill on open for %s: the KV-cache budget is in use", uri)
            return
        self.stats.prefills += 1
        self.stats.last_prefill = info
        log.debug("prefilled %s on open: %s", uri, info)

    def stop_prefill(self, uri: str) -> None:
        """Stop the prefill-on-open of `uri` (the document was closed)."""
        if self.prefilling == uri:
            self.server.worker.supersede(PREFILL_KEY)

    def typed_through(self, uri: str, before: str) -> str | None:
        """The rest of the last suggestion when the text typed since then is its start."""
        s = self.suggestions.get(uri)
        if s is None or not before.startswith(s.before):
            return None
        typed = before[len(s.before) :]
        if len(typed) < len(s.text) and s.text.startswith(typed):
            return s.text[len(typed) :]
        return None

    def _fit(
        self, completion: str, line_suffix: str, start: int, end: int, lead: str | None, newline: str = "\n"
    ) -> Outcome:
        text, replaced = postprocess.fit_suffix(completion, line_suffix)
        if replaced and lead is not None:  # a selected item's range cannot grow: keep the first line
            text, replaced = postprocess.fit_suffix(completion.partition("\n")[0], line_suffix)
        if not text.strip():
            return Outcome(start=start, end=end, reason=SUFFIX_ONLY)
        if newline != "\n":
            text = text.replace("\n", newline)
        return Outcome(text=(lead or "") + text, start=start, end=end + replaced)

    def record(self, result, t0: float) -> None:
        self.stats.recent.append(
            {
                "totalMs": round((time.perf_counter() - t0) * 1000, 2),
                "engineMs": round(result.total_ms, 2),
                "prefillMs": round(result.prefill_ms, 2),
                "decodeMs": round(result.decode_ms, 2),
                "promptTokens": result.prompt_tokens,
                "reusedTokens": result.reused_tokens,
                "prefillTokens": result.prefill_tokens,
                "newTokens": len(result.token_ids),
                "stopReason": result.stop_reason,
            }
        )

    @staticmethod
    def why_empty(result) -> str:
        if result.stop_reason == REMOTE_UNAVAILABLE:
            return REMOTE_UNAVAILABLE
        if result.stop_reason == "eos" and len(result.token_ids) <= 1:
            return EOS_AT_ONCE
        if result.stop_reason == "context_full":
            return CONTEXT_FULL
        if result.stop_reason == "stop_pattern" and not result.text.strip():
            return STOP_AT_ONCE
        return BLANK


def newline_of(text: str) -> str:
    """The document's line break: CRLF when its first line ends with one, else LF."""
    return "\r\n" if "\r\n" in text[: text.find("\n") + 1 or len(text)] else "\n"
