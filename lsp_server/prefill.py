"""Prefill on open: a just-opened document's KV cache computed in the background, so that its first
completion reuses the cache instead of a cold prefill.

One job at a time under PREFILL_KEY (the newest document wins); any completion request supersedes a running
one, which stops at its next chunk (inference.session.PREFILL_CHUNK tokens; what it computed stays in the
document's cache). It runs only with the model already serving the language (it waits for a load under way,
never starts one) and only when the KV-cache budget has room without evicting another document's cache.
"""

from __future__ import annotations

import asyncio
import logging
import time

from lsp_server.documents import newline_of
from lsp_server.scheduler import Superseded

log = logging.getLogger(__name__)

PREFILL_KEY = ("__prefill_on_open__",)


class PrefillOnOpen:
    """The server's prefill-on-open job; the figures go to the completer's Stats."""

    def __init__(self, completer) -> None:
        self.completer = completer
        self.prefilling: str | None = None  # the document of the latest job

    @property
    def server(self):
        return self.completer.server

    def supersede(self) -> None:
        """Stop the running job at its next chunk (a completion request goes first)."""
        self.server.worker.supersede(PREFILL_KEY)

    def stop(self, uri: str) -> None:
        """Stop the job of `uri` (the document was closed)."""
        if self.prefilling == uri:
            self.supersede()

    async def run(self, doc) -> None:
        """Prefill `doc` as if the cursor were at its end, with the model already serving its language."""
        comp = self.completer
        entry = await self.server.models.ready_for(doc.language_id)
        text = doc.text
        if entry is None or not text.strip() or self.server.documents.find(doc.uri) is not doc:
            return
        # the text a completion at the end would continue (LF line breaks, as completion.Request.at makes it)
        uri, before = doc.uri, text.replace("\r\n", "\n") if newline_of(text) != "\n" else text
        limit, _ = comp.budget(entry)

        def job(should_cancel) -> dict | None:
            if not entry.engine.pool.has_room_for(uri):
                return None  # never evict the cache of a document being edited for one just opened
            t0 = time.perf_counter()
            ids = comp.prompt_ids(uri, entry, before, limit, "", comp.fim_template(entry))
            done = entry.engine.session(uri).prefill(ids, should_cancel)
            ms = round((time.perf_counter() - t0) * 1000, 2)
            return {"uri": uri, "promptTokens": len(ids), "prefillTokens": done, "ms": ms}

        self.prefilling = uri
        try:
            info = await self.server.worker.submit(PREFILL_KEY, job)
        except (Superseded, asyncio.CancelledError):
            return
        except Exception:
            log.exception("prefill on open failed for %s", uri)
            return
        if info is None:
            log.debug("no prefill on open for %s: the KV-cache budget is in use", uri)
            return
        comp.stats.prefills += 1
        comp.stats.last_prefill = info
        log.debug("prefilled %s on open: %s", uri, info)
