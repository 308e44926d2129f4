"""The next suggestion, ready in advance: after an inline suggestion is answered, compute the completion
that follows it as if it had been accepted, at the lowest priority.

Its tokens are already in the document's KV cache (the answer's prompt + generated ids), so the job costs
decode steps and a prefill of at most the few ids whose re-tokenization differs. It runs on the worker under
PREFETCH_KEY (one at a time, newest wins): every completion request that cannot use it, and every edit that
leaves the path "before + suggestion", supersedes it at its next decode step. When the text before the cursor
then is "before + suggestion" (or that plus a start of the prefetched text), the completer answers from it
without a model call; a request for exactly that text while the job still runs waits for it instead of
starting the same computation again. Accepting one line of a multi-line suggestion is the typed-through case
(the rest of the suggestion answers); accepting the rest then reaches the prefetched one.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from inference.rules import StopReason
from lsp_server.scheduler import Superseded

log = logging.getLogger(__name__)

PREFETCH_KEY = ("__prefetch__",)


@dataclass
class Prefetched:
    """A completion computed ahead for the text `before` (LF line breaks)."""

    uri: str
    before: str
    after: str = ""  # the text after the cursor (a FIM prompt's suffix)
    text: str | None = None  # trimmed completion; None while computing (or when it was stopped)
    task: asyncio.Task | None = None


class Prefetcher:
    """The one prefetch job of the server (the newest answered suggestion wins) and its result."""

    def __init__(self, completer) -> None:
        self.completer = completer
        self.current: Prefetched | None = None
        self.started = 0  # jobs submitted
        self.hits = 0  # answers given from a prefetched completion
        self.stopped = 0  # jobs superseded while computing (a request or an edit off their path)

    @property
    def server(self):
        return self.completer.server

    def schedule(self, uri: str, entry, language: str, before_next: str, after: str = "") -> None:
        """Compute the completion of `before_next` (the text once the suggestion is accepted; `after` follows
        it) in the background, unless the setting is off."""
        if not self.server.settings.prefetch:
            return
        self.stop()
        job = Prefetched(uri, before_next, after)
        job.task = asyncio.ensure_future(self._run(job, entry, language))
        self.current = job
        self.server.background.add(job.task)
        job.task.add_done_callback(self.server.background.discard)

    async def _run(self, job: Prefetched, entry, language: str) -> None:
        if self.current is not job:  # stopped before it started (a request, an edit, its document closed)
            return
        stops = self.completer.stops_for(language, job.before)
        generate = self.completer.generator(job.uri, entry, job.before, stops, job.after)
        self.started += 1
        try:
            result = await self.server.worker.submit(PREFETCH_KEY, generate)
        except (Superseded, asyncio.CancelledError):
            return
        except Exception:
            log.exception("prefetch failed for %s", job.uri)
            return
        if result.stop_reason != StopReason.CANCELLED:
            job.text = result.text.rstrip()  # the engine cut at the stop patterns
            log.debug("prefetched %d characters for %s", len(job.text), job.uri)

    async def answer(self, uri: str, before: str) -> str | None:
        """The prefetched completion for `before` (waiting for the job when it computes exactly that text),
        or None; a job that cannot serve `before` is stopped so the model call starts at once. Superseded
        when a newer request or an edit stopped the job this request waited for (this request is stale)."""
        job = self.current
        if job is None or job.uri != uri or not before.startswith(job.before):
            self.stop()
            return None
        if job.text is None and before == job.before and job.task is not None and not job.task.done():
            await asyncio.shield(job.task)
            if self.current is not job:
                raise Superseded("a newer request or edit stopped the prefetch this request waited for")
        typed = before[len(job.before) :]
        if job.text and len(typed) < len(job.text) and job.text.startswith(typed):
            self.hits += 1
            self.current = None
            return job.text[len(typed) :]
        self.stop()
        return None

    def edited(self, doc, changes, encoding: str) -> None:
        """A keystroke: stop the job unless the text up to the cursor (taken as the end of the last change)
        is still on the way to "before + suggestion", or past it."""
        job = self.current
        if job is None or job.uri != doc.uri or not changes:
            return
        rng = getattr(changes[-1], "range", None)
        if rng is None:  # the whole text was replaced: no cursor to go by
            upto = doc.text
        else:
            start, _ = doc.offset_at(rng.start.line, rng.start.character, encoding)
            upto = doc.text[: start + len(changes[-1].text)]
        upto = upto.replace("\r\n", "\n")
        if not (job.before.startswith(upto) or upto.startswith(job.before)):
            self.stop()

    def stop(self, uri: str | None = None) -> None:
        """Supersede the prefetch job (of `uri`, or any) and forget its result."""
        job = self.current
        if job is None or (uri is not None and job.uri != uri):
            return
        self.current = None
        if job.task is not None and not job.task.done():
            self.stopped += 1
        self.server.worker.supersede(PREFETCH_KEY)

    def status(self) -> dict:
        """What codegen.status shows."""
        return {"started": self.started, "hits": self.hits, "stopped": self.stopped}
