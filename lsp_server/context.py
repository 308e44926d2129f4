"""Project context: chunks of the workspace's other files placed before the current file in the prompt.

Sources: the other open documents of the workspace (windows of WINDOW_LINES lines), the places recently
edited or completed at, and for Python the definitions of the names imported and used near the cursor
(lsp_server/context_python.py). Chunks are ranked by identifier overlap (Jaccard) with the text around the
cursor; near-duplicates of the current file are dropped; lsp_server/context_files.py decides what may be read.

The chosen chunks of a document (its Selection) change only at events: a document opened, closed or saved,
a completion in another document, the cursor far from where they were chosen. A stale selection keeps
serving the keystrokes (its ids are the cached start of the prompt) until the background job `refresh`
chooses again when the worker is idle and prefills the new prompt; kept chunks keep their order and new ones
go after them, so a new chunk only extends the cached ids. A closed document's chunks are never used again.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import re
import threading
from dataclasses import dataclass, field

from lsp_server import context_python as py
from lsp_server.context_files import Files, path_uri, uri_path
from lsp_server.context_layout import Chunk, Layout, Renderer
from lsp_server.prefill import PREFILL_KEY
from lsp_server.scheduler import Superseded

log = logging.getLogger(__name__)

WINDOW_LINES = 40  # an open document's chunks: windows of this many lines, every STRIDE lines
STRIDE = 20
RECENT_LINES = 10  # a recent place: this many lines either side
RECENT_PLACES = 16  # the ring of recent places (llama.vim keeps 16 chunks)
NEAR_BEFORE, NEAR_AFTER = 30, 10  # lines around the cursor the chunks are ranked against
FAR_LINES = 2 * NEAR_BEFORE  # the cursor this far from where the chunks were chosen: choose again
MIN_LINES = 4  # a window cut to fit the budget keeps at least this many lines
DUPLICATE = 0.8  # a chunk with this share of its lines in the current file is a near-duplicate
SHARE = 2  # the context gets at most 1/SHARE of the prompt left after the suffix's budget
IDLE_S = 0.3  # a choice made stale waits this long after the last request before it is made again
BONUS = {"definition": 1.0, "recent": 0.25, "open": 0.0}  # added to the similarity (definitions first)
IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]+")


def identifiers(text: str) -> set[str]:
    """The identifiers (two characters or more) of a text."""
    return set(IDENT.findall(text))


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a or b else 0.0


@dataclass
class Selection:
    """A document's chosen chunks with their ids, and when they were chosen."""

    chunks: list[tuple[Chunk, list[int]]]
    key: tuple  # the renderer's (tokenizer, template, language, path, budget)
    epoch: int
    line: int


@dataclass
class Counters:
    """codegen.status's figures of the project context."""

    selections: int = 0
    refreshes: int = 0  # background jobs that chose again and prefilled
    unchanged: int = 0  # background jobs that chose the same chunks
    last_refresh: dict = field(default_factory=dict)


class ProjectContext:
    """The per-server store: open documents' places, selections per document, the files' rules."""

    def __init__(self, server) -> None:
        self.server = server
        self.files = Files()
        self.epoch = 0
        self.recent: collections.deque = collections.deque(maxlen=RECENT_PLACES)  # (uri, line)
        self.open: dict[str, None] = {}  # the open documents' URIs, in the order they opened
        self.selections: dict[str, Selection] = {}
        self.pending: set[str] = set()
        self.last_uri: str | None = None
        self.counters = Counters()
        self._config: tuple = ()
        self._lock = threading.Lock()

    @property
    def settings(self) -> dict:
        return self.server.settings.project_context

    # --- events (event loop) -----------------------------------------------------------------------------

    def sync(self) -> None:
        """Take the workspace folders and the exclude globs; a change is an event."""
        try:
            ws = self.server.workspace
        except RuntimeError:  # pygls has no workspace before initialize
            ws = None
        folders = [f.uri for f in ws.folders.values()] if ws else []
        if ws is not None and not folders and ws.root_uri:
            folders = [ws.root_uri]
        config = (tuple(folders), tuple(self.settings["exclude"]))
        if config != self._config:
            self._config = config
            self.files.configure(folders, self.settings["exclude"])
            self.event()

    def event(self) -> None:
        """A document opened, closed or saved, another document or settings: every selection is stale."""
        self.epoch += 1

    def opened(self, uri: str) -> None:
        self.open[uri] = None
        self.sync()
        self.event()

    def closed(self, uri: str | None) -> None:
        """Drop a closed document's places and selection (None: every selection, settings changed)."""
        with self._lock:
            if uri is None:
                self.selections.clear()
            else:
                self.open.pop(uri, None)
                self.recent = collections.deque((p for p in self.recent if p[0] != uri), maxlen=RECENT_PLACES)
                self.selections.pop(uri, None)
                self.pending.discard(uri)
        self.event()

    def edited(self, uri: str, changes) -> None:
        """Remember the lines an edit touched (recently edited places)."""
        for ch in changes:
            rng = getattr(ch, "range", None)
            if rng is not None:
                self._place(uri, rng.start.line)

    def looked(self, uri: str, line: int) -> None:
        """A completion at `line`: a place looked at; the first in another document is an event."""
        self.sync()
        if uri != self.last_uri:
            self.last_uri = uri
            self.event()
        self._place(uri, line)

    def _place(self, uri: str, line: int) -> None:
        with self._lock:
            near = [p for p in self.recent if p[0] == uri and abs(p[1] - line) <= RECENT_LINES]
            for p in near:
                self.recent.remove(p)
            self.recent.append((uri, line))

    # --- the prompt's context (inference thread) ---------------------------------------------------------

    def layout(self, uri: str, entry, before: str, after: str, limit: int, template, fim_on: bool) -> Layout:
        """The context ids of a prompt of `uri`: its selection's, chosen now when it has none (or it holds a
        closed document's chunk, or the model or budget changed), else kept even when stale."""
        doc = self.server.documents.find(uri)
        if doc is None or not self._wanted(entry):
            return Layout()
        renderer, key = self._renderer(uri, entry, doc.language_id, limit, template, fim_on)
        if renderer is None:
            return Layout()
        line = before.count("\n")
        sel = self.selections.get(uri)
        if sel is None or sel.key != key or self._holds_closed(sel) or self._remote_stale(entry, sel, line):
            sel = self._choose(uri, renderer, key, before, after, line, sel)
        elif sel.epoch != self.epoch or abs(line - sel.line) > FAR_LINES:
            self.pending.add(uri)  # chosen again in the background (refresh)
        return renderer.layout(sel.chunks)

    def _wanted(self, entry) -> bool:
        s = self.settings
        return s["enabled"] and s["maxChunks"] > 0 and (entry.device != "remote" or s["remote"])

    def _remote_stale(self, entry, sel: Selection, line: int) -> bool:
        """A remote model has no cache here to keep: a stale selection is chosen again at once."""
        return entry.device == "remote" and (sel.epoch != self.epoch or abs(line - sel.line) > FAR_LINES)

    def _holds_closed(self, sel: Selection) -> bool:
        docs = self.server.documents
        return any(c.uri not in docs for c, _ in sel.chunks if c.source != "file")

    def _renderer(self, uri, entry, language, limit, template, fim_on):
        from lsp_server import fim

        tok = entry.loaded.tokenizer
        path = uri_path(uri)
        placed = self.files.place(path) if path is not None else None
        if placed is None:  # the current file is outside the workspace (or excluded): no context
            return None, None
        folder, rel = placed
        reserve = self.server.settings.fim_suffix_tokens if fim_on else 0
        extra = fim.overhead(template, tok) if fim_on else 0
        budget = min(self.settings["maxTokens"], max(0, limit - extra - reserve) // SHARE)
        repo_template = fim.template_for(tok)  # the repository tokens, whatever `fim` says
        renderer = Renderer(tok, repo_template, fim_on, language, folder.name, rel)
        if not renderer.usable or budget <= 0:
            return None, None
        key = (id(tok), repo_template and repo_template.name, fim_on, language, rel, budget)
        return renderer, key

    def _choose(self, uri, renderer, key, before, after, line, old) -> Selection:
        """Choose the chunks now and install the selection (kept chunks first, in their order)."""
        budget, cap = key[-1], self.settings["maxChunks"]
        ranked = self.candidates(uri, before, after)
        frame = sum(map(len, renderer.frame()))
        kept_ids = {c: ids for c, ids in (old.chunks if old else [])}
        picked: list[tuple[float, Chunk, list[int]]] = []
        used = frame
        for score, c in ranked:
            if len(picked) >= cap:
                break
            if any(p.uri == c.uri and p.start < c.end and c.start < p.end for _, p, _ in picked):
                continue
            ids = kept_ids.get(c) or renderer.chunk_ids(c)
            if used + len(ids) > budget and c.short:  # a definition's outline where the whole does not fit
                c = dataclasses.replace(c, text=c.short, short="")
                ids = kept_ids.get(c) or renderer.chunk_ids(c)
            if used + len(ids) > budget and c.source in ("open", "recent"):  # its first lines that fit
                c, ids = self._cut(c, renderer, budget - used, kept_ids)
            if c is not None and used + len(ids) <= budget:
                picked.append((score, c, ids))
                used += len(ids)
        order = {c: i for i, (c, _) in enumerate(old.chunks)} if old else {}
        kept = sorted((p for p in picked if p[1] in order), key=lambda p: order[p[1]])
        new = sorted((p for p in picked if p[1] not in order), key=lambda p: p[0])  # best nearest the file
        sel = Selection([(c, ids) for _, c, ids in kept + new], key, self.epoch, line)
        with self._lock:
            self.selections[uri] = sel
            self.pending.discard(uri)
        self.counters.selections += 1
        return sel

    @staticmethod
    def _cut(c: Chunk, renderer, room: int, kept: dict) -> tuple[Chunk | None, list[int]]:
        """The chunk's first lines (at least MIN_LINES) within `room` tokens, or None."""
        lines = c.text.splitlines(keepends=True)
        best: tuple[Chunk | None, list[int]] = (None, [])
        lo, hi = MIN_LINES, len(lines) - 1
        while lo <= hi:  # token counts grow with the lines kept
            n = (lo + hi) // 2
            cut = dataclasses.replace(c, end=c.start + n, text="".join(lines[:n]))
            ids = kept.get(cut) or renderer.chunk_ids(cut)
            if len(ids) <= room:
                best, lo = (cut, ids), n + 1
            else:
                hi = n - 1
        return best

    def candidates(self, uri: str, before: str, after: str) -> list[tuple[float, Chunk]]:
        """Every allowed chunk for a cursor between `before` and `after`, best first."""
        near_text = "".join(before.splitlines(keepends=True)[-NEAR_BEFORE:])
        near_text += "".join(after.splitlines(keepends=True)[:NEAR_AFTER])
        near = identifiers(near_text)
        current = {ln.strip() for ln in (before + after).splitlines() if ln.strip()}
        texts = self._open_texts(uri)
        found: list[Chunk] = []
        doc = self.server.documents.find(uri)
        if doc is not None and doc.language_id == "python":
            found += self._definitions(uri, before + after, near, near_text, texts)
        with self._lock:
            places = [p for p in reversed(self.recent) if p[0] != uri and p[0] in texts]
        for u, ln in places:
            lines = texts[u][1].splitlines(keepends=True)
            lo, hi = max(0, ln - RECENT_LINES), min(len(lines), ln + RECENT_LINES + 1)
            found.append(Chunk(u, texts[u][0], lo, hi, "".join(lines[lo:hi]), "recent"))
        for u, (rel, text) in texts.items():
            lines = text.splitlines(keepends=True)
            for lo in range(0, max(1, len(lines) - WINDOW_LINES + STRIDE), STRIDE):
                hi = min(len(lines), lo + WINDOW_LINES)
                found.append(Chunk(u, rel, lo, hi, "".join(lines[lo:hi]), "open"))
        scored = []
        for c in dict.fromkeys(found):
            body = [ln.strip() for ln in c.text.splitlines() if ln.strip()]
            if not body or sum(ln in current for ln in body) >= DUPLICATE * len(body):
                continue  # empty, or a near-duplicate of the current file
            bonus = BONUS["definition" if c.source == "file" else c.source]
            scored.append((bonus + jaccard(near, identifiers(c.text)), c))
        scored.sort(key=lambda sc: -sc[0])
        return scored

    def _open_texts(self, uri: str) -> dict[str, tuple[str, str]]:
        """{uri: (workspace-relative path, text)} of the other open documents that may be read."""
        out = {}
        for other in list(self.open):
            if other == uri or (path := uri_path(other)) is None:
                continue
            doc = self.server.documents.find(other)
            placed = self.files.place(path) if doc is not None else None
            if placed is not None and (text := self.files.check_text(placed[1], doc.text)) is not None:
                out[other] = (placed[1], text)
        return out

    def _definitions(self, uri, text, near, near_text, texts) -> list[Chunk]:
        """The definitions of the imported names used near the cursor (open documents first, then disk)."""
        here = uri_path(uri)
        by_path = {real(uri_path(u)): u for u in texts}
        out = []
        for w in py.wanted_names(text, near, near_text):
            for path in py.module_paths(w.module or "", here.parent if here else None, self.files.folders):
                u = by_path.get(real(path))
                if u is not None:
                    rel, src, source = texts[u][0], texts[u][1], "definition"
                elif path.is_file() and (src := self.files.read(path)) is not None:
                    u, rel, source = path_uri(path), self.files.place(path)[1], "file"
                else:
                    continue
                tree = py.parse(src)
                if tree is not None:
                    lines = src.splitlines(keepends=True)
                    for _, lo, hi, body, short in py.definitions(tree, lines, {w.name}):
                        out.append(Chunk(u, rel, lo, hi, body, source, short))
                break
        return out

    # --- background refresh (event loop schedules, inference thread runs) -------------------------------

    def after_request(self, doc, before: str, after: str) -> None:
        """Choose a stale selection again once the worker is idle, and prefill the prompt it makes."""
        if doc.uri not in self.pending:
            return
        entry = self.server.models.loaded_for(doc.language_id)
        if entry is None or entry.device == "remote":
            return
        task = asyncio.ensure_future(self._refresh(doc.uri, entry, before, after))
        self.server.background.add(task)
        task.add_done_callback(self.server.background.discard)

    async def _refresh(self, uri: str, entry, before: str, after: str) -> None:
        comp = self.server.completer
        limit, _ = comp.budget(entry)
        template = comp.fim_template(entry)

        def job(should_cancel):
            sel = self.selections.get(uri)
            if uri not in self.server.documents or sel is None or uri not in self.pending:
                return None
            doc = self.server.documents.find(uri)
            renderer, key = self._renderer(uri, entry, doc.language_id, limit, template, template is not None)
            if renderer is None:
                return None
            new = self._choose(uri, renderer, key, before, after, before.count("\n"), sel)
            if [c for c, _ in new.chunks] == [c for c, _ in sel.chunks]:
                self.counters.unchanged += 1
                return None
            ids = comp.prompt_ids(uri, entry, before, limit, after, template)
            done = entry.engine.session(uri).prefill(ids, should_cancel)
            self.counters.refreshes += 1
            self.counters.last_refresh = {"uri": uri, "promptTokens": len(ids), "prefillTokens": done}
            return done

        try:
            await self.server.worker.submit(PREFILL_KEY, job, delay_s=IDLE_S)
        except (Superseded, asyncio.CancelledError):
            return
        except Exception:
            log.exception("project context refresh failed for %s", uri)

    def status(self) -> dict:
        """Workspace folders read and the selections' counters (codegen.status's projectContext)."""
        c = self.counters
        return {
            "folders": [str(f) for f in self.files.folders],
            "selections": c.selections,
            "backgroundRefreshes": c.refreshes,
            "unchangedRefreshes": c.unchanged,
            "lastRefresh": c.last_refresh,
        }


def real(path):
    """The resolved path (None when it cannot be resolved: a symlink loop)."""
    try:
        return path.resolve(strict=False) if path is not None else None
    except (OSError, RuntimeError):
        return None
