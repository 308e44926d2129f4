"""One completion request: typed-through cache, prefetch, prompt, engine call on the worker, empty reasons."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

from inference.rules import StopReason, prompt_limit
from lsp_server import fim, postprocess
from lsp_server.answers import KINDS, LOOKUP_FIELDS, ROUTINE, EmptyReason, Outcome, Stats, Suggestion
from lsp_server.context import ProjectContext
from lsp_server.documents import Document, newline_of
from lsp_server.models import ModelUnavailable
from lsp_server.prefetch import Prefetcher
from lsp_server.prefill import PrefillOnOpen
from lsp_server.progress import show
from lsp_server.prompt import Prompt, PromptWindow, fim_prompt_ids, prompt_ids
from lsp_server.scheduler import Superseded

log = logging.getLogger(__name__)


@dataclass
class Request:
    """One completion request: where the answer goes and what the model continues."""

    doc: Document
    kind: str  # one of KINDS
    automatic: bool
    start: int  # the answer's range in the document
    end: int
    lead: str | None  # the selected completion item's text, continued as if accepted
    before: str  # the text the model continues (LF line breaks)
    line_suffix: str  # the text after the answer's range on its line
    newline: str  # the document's line break
    after: str = ""  # the text after the answer's range (LF line breaks): a FIM prompt's suffix
    t0: float = field(default_factory=time.perf_counter)

    @classmethod
    def at(cls, doc: Document, offset: int, automatic: bool, selected, kind: str) -> Request:
        """The request at `offset`; `selected` = (start, end, text) of the selected completion item."""
        text = doc.text
        eol = offset
        while eol < len(text) and text[eol] not in "\r\n":
            eol += 1
        line_suffix = text[offset:eol]
        start, end, lead, before, after = offset, offset, None, text[:offset], text[offset:]
        if selected is not None:  # continue as if the selected item were accepted; answer over its range
            start, end, lead = selected
            end = max(end, start)
            before = text[:start] + lead
            line_suffix, after = text[max(end, offset) : eol], text[max(end, offset) :]
        # The model sees "\n" line breaks; the inserted text gets the document's own (CRLF stays CRLF).
        newline = newline_of(text)
        if newline != "\n":
            before, after = before.replace("\r\n", "\n"), after.replace("\r\n", "\n")
        return cls(doc, kind, automatic, start, end, lead, before, line_suffix, newline, after)

    @property
    def job_key(self) -> tuple[str, str]:
        return (self.doc.uri, self.kind)

    def empty(self, reason: EmptyReason) -> Outcome:
        return Outcome(start=self.start, end=self.end, reason=reason)


class Completer:
    """Computes completions for the server; state per document lives here."""

    def __init__(self, server) -> None:
        self.server = server
        self.windows: dict[str, PromptWindow] = {}
        self.prompts: dict[str, Prompt] = {}  # the last prompt of each document (codegen.status)
        self.fim_told: set = set()  # models told of missing FIM tokens, (model, budget) of a capped suffix
        self.suggestions: dict[str, Suggestion] = {}
        self.stats = Stats()
        self.outages_told: dict[int, int] = {}  # id(remote engine) -> its outages the user was told of
        self.prefetch = Prefetcher(self)  # the completion after the last suggestion, computed ahead
        self.prefill = PrefillOnOpen(self)  # a just-opened document's cache, computed ahead
        self.context = ProjectContext(server)  # chunks of the project's other files (lsp_server/context.py)

    def forget(self, uri: str | None = None) -> None:
        """Drop per-document state (one document, or all)."""
        self.prefetch.stop(uri)
        self.context.closed(uri)
        if uri is None:
            self.windows.clear()
            self.suggestions.clear()
            self.prompts.clear()
        else:
            self.windows.pop(uri, None)
            self.prompts.pop(uri, None)
            self.suggestions.pop(uri, None)
            self.stats.last_reason.pop(uri, None)

    def forget_prompt(self, uri: str) -> None:
        """A closed document's prompt window and last prompt, again on the inference thread after the job
        that was running at the close (it wrote them as it started)."""
        self.windows.pop(uri, None)
        self.prompts.pop(uri, None)
        self.context.closed(uri)  # a selection that job made for it

    def _answer(self, uri: str, out: Outcome, t0: float) -> Outcome:
        out.latency_ms = (time.perf_counter() - t0) * 1000
        if uri in self.server.documents:  # kept for open documents only (a closed one's is dropped)
            self.stats.last_reason[uri] = out.reason
        if out.reason:
            self.stats.empty[out.reason] += 1
            level = logging.DEBUG if out.reason in ROUTINE else logging.INFO  # routine while typing
            log.log(level, "empty completion for %s: %s", uri, out.reason)
        return out

    async def complete(
        self, doc: Document, offset: int, automatic: bool, selected=None, kind: str = "inline"
    ) -> Outcome:
        """The completion at `offset`; `selected` = (start, end, text) of the selected completion item.

        The first step that answers wins: skipped (mid-word, nothing before), typed through the last
        suggestion, computed ahead (prefetch), else computed by the model.
        """
        assert kind in KINDS, kind
        self.stats.requests += 1
        req = Request.at(doc, offset, automatic, selected, kind)
        if not self.server.documents.is_open(doc):  # closed since it arrived: nothing of it is used or kept
            return self._answer(doc.uri, req.empty(EmptyReason.DOCUMENT_CHANGED), req.t0)
        self.context.looked(doc.uri, req.before.count("\n"))
        out = self._skipped(req) or self._typed_through(req)
        if out is None and kind == "inline":
            out = await self._prefetched(req)
        if out is None:
            out = await self._from_model(req)
        self.context.after_request(doc, req.before, req.after)  # a stale context: chosen again when idle
        return self._answer(doc.uri, out, req.t0)

    def _skipped(self, req: Request) -> Outcome | None:
        """No completion wanted here: a word right after the cursor (automatic trigger), or no text before."""
        if req.automatic and postprocess.mid_word(req.line_suffix):
            self.server.worker.supersede(req.job_key)
            return req.empty(EmptyReason.MID_WORD)
        if not req.before:
            return req.empty(EmptyReason.AT_DOCUMENT_START)
        return None

    def _typed_through(self, req: Request) -> Outcome | None:
        """The rest of the last suggestion when the text typed since is its start."""
        cached = self.typed_through(req.doc.uri, req.before)
        if cached is None:
            return None
        self.server.worker.supersede(req.job_key)
        self.stats.typed_through_hits += 1
        out = self._fit(cached, req)
        out.source = "typed_through"
        return out

    async def _prefetched(self, req: Request) -> Outcome | None:
        """The answer from the completion computed ahead for `before`; None when there is none."""
        doc = req.doc
        try:
            ahead = await self.prefetch.answer(doc.uri, req.before)
        except Superseded:
            return req.empty(EmptyReason.SUPERSEDED)
        if ahead is None:
            return None
        self.server.worker.supersede((doc.uri, "inline"))
        if self.server.documents.is_open(doc):  # a closed document's answer is never kept
            self.suggestions[doc.uri] = Suggestion(req.before, ahead)
        if self.moved(doc):  # it waited for the prefetch: the document may have moved on meanwhile
            return req.empty(EmptyReason.DOCUMENT_CHANGED)
        out = self._fit(ahead, req)
        out.source = "prefetched"
        self._prefetch_after(doc, None, req.before, req.lead, out)
        return out

    async def _from_model(self, req: Request) -> Outcome:
        """Load the model if needed, generate on the worker, and turn the result into an answer."""
        try:
            entry = await self.server.models.get(req.doc.language_id)
        except asyncio.CancelledError:
            self._answer(req.doc.uri, Outcome(reason=EmptyReason.CANCELLED), req.t0)
            raise
        except ModelUnavailable as e:
            log.warning("%s", e)
            return req.empty(EmptyReason.MODEL_NOT_LOADED)
        result = await self._generate(req, entry)
        return result if isinstance(result, Outcome) else self._answer_of(req, entry, result)

    async def _generate(self, req: Request, entry):
        """The engine's GenerationResult for the request (run on the worker), or an Outcome saying why not."""
        if not self.server.documents.is_open(req.doc):  # closed while its model loaded: nothing submitted
            return req.empty(EmptyReason.DOCUMENT_CHANGED)
        stops = self.stops_for(req.doc.language_id, req.before)
        generate = self.generator(req.doc.uri, entry, req.before, stops, req.after)
        self.stats.model_calls += 1
        self.prefill.supersede()  # a request goes before any prefill-on-open
        self.prefetch.stop()  # ... and before any prefetch
        delay = self.server.settings.debounce_ms / 1000 if req.automatic else 0.0  # explicit: no debounce
        try:
            return await self.server.worker.submit(req.job_key, generate, delay_s=delay)
        except Superseded:
            return req.empty(EmptyReason.SUPERSEDED)
        except asyncio.CancelledError:
            self._answer(req.doc.uri, Outcome(reason=EmptyReason.CANCELLED), req.t0)
            raise
        except Exception:
            log.exception("completion failed for %s", req.doc.uri)
            return req.empty(EmptyReason.ERROR)

    def _answer_of(self, req: Request, entry, result) -> Outcome:
        """The answer from the engine's result (cut at the stop patterns by the engine): fitted, or empty."""
        uri = req.doc.uri
        if result.stop_reason == StopReason.CANCELLED:
            return req.empty(EmptyReason.CANCELLED)
        if result.stop_reason == StopReason.REMOTE_UNAVAILABLE:
            self.tell_outage(entry.engine, result.extra["remote_error"])
        completion = result.text.rstrip()
        self.record(result, req.t0)
        if (prompt := self.prompts.get(uri)) is not None:
            prompt.prefilled = result.prefill_tokens
        if not completion:
            self.suggestions.pop(uri, None)
            return req.empty(self.why_empty(result))
        if self.server.documents.is_open(req.doc):  # kept while open: the next keystroke types through
            self.suggestions[uri] = Suggestion(req.before, completion)
        if self.moved(req.doc):
            return req.empty(EmptyReason.DOCUMENT_CHANGED)
        out = self._fit(completion, req)
        if req.kind == "inline":
            self._prefetch_after(req.doc, entry, req.before, req.lead, out)
        return out

    def _prefetch_after(self, doc: Document, entry, before: str, lead: str | None, out: Outcome) -> None:
        """Compute ahead what follows the answer `out` once it is accepted (the text before the cursor is
        then the text before the answer's range plus its text, with LF line breaks)."""
        entry = entry or self.server.models.loaded_for(doc.language_id)
        if out.reason or entry is None:
            return
        accepted = before[: len(before) - len(lead or "")] + out.text.replace("\r\n", "\n")
        after = doc.text[out.end :].replace("\r\n", "\n")  # what follows the answer once it is inserted
        self.prefetch.schedule(doc.uri, entry, doc.language_id, accepted, after)

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

    def stops_for(self, language: str, before: str) -> tuple:
        """The compiled stop patterns of a completion of `before` (settings: mode, overrides)."""
        s = self.server.settings
        line_prefix = before[before.rfind("\n") + 1 :]
        return postprocess.patterns_for(language, s.mode_for(language), line_prefix, s.stop_patterns)

    def generator(self, uri: str, entry, before: str, stops: tuple, after: str = ""):
        """What the worker runs: cut the prompt to token ids, then generate in the document's session."""
        from inference.generate import GenerationParams
        from inference.heal import split as split_heal

        s = self.server.settings
        limit, max_new = self.budget(entry)
        template = self.fim_template(entry)
        heal = ""
        if s.token_healing and getattr(entry.engine, "heals", False):
            before, heal = split_heal(before)
        params = GenerationParams(
            max_new_tokens=max_new,
            temperature=s.temperature,
            top_p=s.top_p,
            stop_patterns=stops,
            max_latency_ms=s.max_latency_ms,
            stop_ids=fim.stop_ids(template, entry.loaded.tokenizer) if template else (),
            prompt_lookup=s.prompt_lookup,
            heal=heal,
        )

        def run(should_cancel):
            ids = self.prompt_ids(uri, entry, before, limit, after, template)
            return entry.engine.session(uri).generate(ids, params, should_cancel=should_cancel)

        return run

    def fim_template(self, entry):
        """The FIM template a prompt to this model uses under the `fim` setting, or None (prefix only)."""
        mode = self.server.settings.fim
        if mode == "off":
            return None
        loaded = entry.loaded
        if not hasattr(loaded, "fim_template"):  # found once per model, from its tokenizer's special tokens
            loaded.fim_template = fim.template_for(loaded.tokenizer)
        template = loaded.fim_template
        if mode == "auto" and not getattr(loaded.tokenizer, "fim_auto", True):
            return None  # the model does worse with FIM prompts than with plain ones (the built-in model)
        if template is None and mode == "on" and id(loaded) not in self.fim_told:
            self.fim_told.add(id(loaded))
            show(
                self.server,
                f"codegen: fim is on, but {loaded.name}'s tokenizer has no fill-in-the-middle tokens; "
                "completing from the text before the cursor",
            )
        return template

    def budget(self, entry) -> tuple[int, int]:
        """(prompt tokens, new tokens) of one request to this model under the current settings: the window is
        `contextWindow` (at most the model's), the completion at most half of it (inference.rules)."""
        s = self.server.settings
        n_positions = entry.loaded.config.n_positions
        window = min(s.context_window or n_positions, n_positions)
        max_new = max(1, min(s.max_new_tokens, window // 2))
        return prompt_limit(window, max_new), max_new

    def prompt_ids(
        self, uri: str, entry, before: str, limit: int, after: str = "", template=None
    ) -> list[int]:
        """The prompt's token ids: `before` cut from the left (keeping the document's window start), in the
        FIM template with `after` cut to fimSuffixTokens when there is one."""
        tok, window = entry.loaded.tokenizer, self.windows.get(uri)
        context = self.context.layout(uri, entry, before, after, limit, template, template is not None)
        limit -= len(context)  # fixed between events: the prefix's start stays put while the user types
        if template is None:
            ids, self.windows[uri] = prompt_ids(before, tok, limit, window)
            prompt = Prompt(context.head + context.inner + ids, None, len(ids), 0)
        else:
            budget = self.server.settings.fim_suffix_tokens
            half = (limit - fim.overhead(template, tok)) // 2
            if budget > half and (entry.loaded.name, budget) not in self.fim_told:
                self.fim_told.add((entry.loaded.name, budget))
                log.info(
                    "fimSuffixTokens %d is over half of %s's prompt: the suffix gets %d",
                    budget,
                    entry.loaded.name,
                    half,
                )
            prompt, self.windows[uri] = fim_prompt_ids(
                before, after, tok, template, limit, budget, window, context.inner
            )
            prompt.ids = context.head + prompt.ids
        prompt.context, prompt.context_tokens = context.chunks, len(context)
        self.prompts[uri] = prompt
        return prompt.ids

    def prompt_status(self, uri: str | None) -> dict:
        """The last prompt of a document (or of each): its FIM template (null: none), tokens of each part."""

        def show(p: Prompt) -> dict:
            tokens = {
                "promptTokens": len(p.ids),
                "prefixTokens": p.prefix_tokens,
                "suffixTokens": p.suffix_tokens,
                "contextTokens": p.context_tokens,
                "prefilledTokens": p.prefilled,
            }
            return {"fimTemplate": p.template, **tokens, "context": [c.status(n) for c, n in p.context]}

        if uri is not None:
            return show(self.prompts[uri]) if uri in self.prompts else {}
        return {u: show(p) for u, p in self.prompts.items()}

    def typed_through(self, uri: str, before: str) -> str | None:
        """The rest of the last suggestion when the text typed since then is its start."""
        s = self.suggestions.get(uri)
        if s is None or not before.startswith(s.before):
            return None
        typed = before[len(s.before) :]
        if len(typed) < len(s.text) and s.text.startswith(typed):
            return s.text[len(typed) :]
        return None

    def _fit(self, completion: str, req: Request) -> Outcome:
        """The answer inserting `completion` over the request's range, without repeating the line's suffix."""
        completion = postprocess.cut_suffix_repeat(completion, req.after)
        text, replaced = postprocess.fit_suffix(completion, req.line_suffix)
        if replaced and req.lead is not None:  # a selected item's range cannot grow: keep the first line
            text, replaced = postprocess.fit_suffix(completion.partition("\n")[0], req.line_suffix)
        if not text.strip():
            return req.empty(EmptyReason.SUFFIX_ONLY)
        if req.newline != "\n":
            text = text.replace("\n", req.newline)
        return Outcome(text=(req.lead or "") + text, start=req.start, end=req.end + replaced)

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
                **{camel: result.extra[k] for k, camel in LOOKUP_FIELDS.items() if k in result.extra},
            }
        )

    @staticmethod
    def why_empty(result) -> EmptyReason:
        """Why the engine's result left nothing to insert."""
        if result.stop_reason == StopReason.REMOTE_UNAVAILABLE:
            return EmptyReason.REMOTE_UNAVAILABLE
        if result.stop_reason == StopReason.EOS and len(result.token_ids) <= 1:
            return EmptyReason.EOS_AT_ONCE
        if result.stop_reason == StopReason.CONTEXT_FULL:
            return EmptyReason.CONTEXT_FULL
        if result.stop_reason == StopReason.STOP_PATTERN and not result.text.strip():
            return EmptyReason.STOP_AT_ONCE
        return EmptyReason.BLANK
