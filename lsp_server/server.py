"""The language server: protocol handlers only; the work is in the adapter modules next to this one."""

from __future__ import annotations

import asyncio
import contextvars
import logging
import os
import sys

from lsprotocol import types
from pygls.exceptions import JsonRpcInvalidParams
from pygls.lsp.server import LanguageServer

from lsp_server import acceptance, commands, jsonrpc, synthesis_commands
from lsp_server import settings as settings_mod
from lsp_server.answers import KINDS
from lsp_server.completion import Completer
from lsp_server.documents import DocumentError, Documents
from lsp_server.models import ModelManager, off_loop
from lsp_server.progress import log_to_client, show
from lsp_server.scheduler import Worker

log = logging.getLogger(__name__)
ARRIVED: contextvars.ContextVar = contextvars.ContextVar("arrived", default=None)  # a request's document
VERSION = "0.1.0"
LOGGERS = ("lsp_server", "inference", "tokenizer")
TRIGGER_CHARACTERS = [".", "(", ","]  # clients that autotrigger only on these (Neovim 0.11) still get asked
COMPLETION_OPTIONS = types.CompletionOptions(trigger_characters=TRIGGER_CHARACTERS, resolve_provider=False)
ENCODINGS = {"utf-8": "utf-8", "utf-16": "utf-16", "utf-32": "utf-32"}


class CodegenServer(LanguageServer):
    """Server state: settings, documents, models, the inference worker and the completer."""

    def __init__(self) -> None:
        super().__init__("codegen-lsp", VERSION, protocol_cls=jsonrpc.CodegenProtocol)
        self.settings = settings_mod.Settings()
        self.documents = Documents()
        self.worker = Worker()
        self.models = ModelManager(self, self.worker, self.settings)
        self.completer = Completer(self)
        self.acceptance = acceptance.Acceptance()  # shown / accepted suggestions (codegen.status)
        self.shutdown_requested = False
        self.background: set[asyncio.Task] = set()  # prefill-on-open, prefetch tasks (referenced until done)
        self.exit_code: int | None = None  # set by `exit`: 0 after `shutdown`, else 1 (LSP)

    @property
    def position_encoding(self) -> str:
        try:
            enc = self.workspace.position_encoding
        except RuntimeError:  # before initialize: pygls has no workspace yet
            enc = None
        return ENCODINGS.get(str(getattr(enc, "value", enc)), "utf-16")

    def apply_settings(self, raw) -> None:
        """Validate and apply settings; report rejected values to the user."""
        new, errors = settings_mod.update(self.settings, raw)
        for e in errors:
            show(self, f"codegen: {e}", types.MessageType.Warning)
        if new.log_level != self.settings.log_level:
            set_log_level(new.log_level)
        self.settings = new
        self.models.update_settings(new)
        self.completer.forget()

    def shutdown(self) -> None:
        self.worker.close()
        super().shutdown()

    def on_request(self, message) -> None:
        """Snapshot the document a request names as it arrives (before a didChange right behind it)."""
        doc = getattr(getattr(message, "params", None), "text_document", None)
        found = self.documents.find(doc.uri) if isinstance(getattr(doc, "uri", None), str) else None
        ARRIVED.set(found.snapshot() if found is not None else None)

    def report_server_error(self, error: Exception, source) -> None:
        jsonrpc.report_error(self, error, source)


# workspace/executeCommand: name -> async handler(server, args), all of them, registered by create_server.
COMMANDS = (
    ("codegen.status", commands.status),
    ("codegen.clearCache", commands.clear_cache),
    (acceptance.ACCEPTED, acceptance.accepted),
    (acceptance.PARTIALLY_ACCEPTED, acceptance.partially_accepted),
    ("codegen.synthesize", synthesis_commands.synthesize),
    ("codegen.synthesis.start", synthesis_commands.start),
    ("codegen.synthesis.turn", synthesis_commands.turn),
    ("codegen.synthesis.end", synthesis_commands.end),
)


def set_log_level(level: str) -> None:
    for name in LOGGERS:
        logging.getLogger(name).setLevel(level.upper())
    logging.getLogger("pygls").setLevel("DEBUG" if level == "debug" else "WARNING")


def doc_offset(ls: CodegenServer, uri: str, position: types.Position):
    """(snapshot of the document, string offset) of a request position; InvalidParams for an unknown one.

    The request works on the snapshot taken as it arrives: its answer's ranges are relative to that text, or
    the completer answers empty (`document_changed`) when the document moved on before the answer was ready.
    """
    doc = ARRIVED.get()
    if doc is None or doc.uri != uri:  # a request that did not come through the dispatcher (tests)
        try:
            doc = ls.documents.get(uri).snapshot()
        except DocumentError as e:
            raise JsonRpcInvalidParams(str(e)) from None
    offset, clamped = doc.offset_at(position.line, position.character, ls.position_encoding)
    if clamped:
        log.info("position %d:%d clamped to the document in %s", position.line, position.character, uri)
    return doc, offset


def to_range(ls: CodegenServer, doc, start: int, end: int) -> types.Range:
    enc = ls.position_encoding
    (l1, c1), (l2, c2) = doc.position_at(start, enc), doc.position_at(end, enc)
    return types.Range(types.Position(l1, c1), types.Position(l2, c2))


# Handlers: module-level functions (server, params), registered by create_server below.


def initialize(ls: CodegenServer, params: types.InitializeParams) -> None:
    ls.apply_settings(params.initialization_options)


def shutdown(ls: CodegenServer, params: None) -> None:
    ls.shutdown_requested = True


def exit_(ls: CodegenServer, params: None) -> None:
    ls.exit_code = 0 if ls.shutdown_requested else 1  # pygls raises SystemExit and then swallows it


async def initialized(ls: CodegenServer, params: types.InitializedParams) -> None:
    log_to_client(ls, f"codegen-lsp {VERSION}: model {ls.settings.model}, positions {ls.position_encoding}")
    try:
        await ls.models.get("")  # load the default model now rather than at the first keystroke
    except asyncio.CancelledError:  # the client went away while it loaded
        return
    except Exception as e:
        show(ls, f"codegen: {e}")


async def did_change_configuration(ls: CodegenServer, params: types.DidChangeConfigurationParams) -> None:
    raw = params.settings
    if not raw and ls.client_capabilities.workspace and ls.client_capabilities.workspace.configuration:
        items = [types.ConfigurationItem(section="codegen")]
        raw = (await ls.workspace_configuration_async(types.ConfigurationParams(items=items)))[0]
    ls.apply_settings(raw)


def did_open(ls: CodegenServer, params: types.DidOpenTextDocumentParams) -> None:
    d = params.text_document
    doc = ls.documents.open(d.uri, d.language_id, d.version, d.text)
    ls.completer.context.opened(d.uri)
    if ls.settings.prefill_on_open:
        task = asyncio.ensure_future(ls.completer.prefill.run(doc))
        ls.background.add(task)
        task.add_done_callback(ls.background.discard)


def did_change(ls: CodegenServer, params: types.DidChangeTextDocumentParams) -> None:
    uri = params.text_document.uri
    try:
        doc = ls.documents.get(uri)
        for change in params.content_changes:
            doc.apply_change(change, ls.position_encoding)
        doc.version = params.text_document.version
        ls.completer.prefetch.edited(doc, params.content_changes, ls.position_encoding)
        ls.completer.context.edited(uri, params.content_changes)
    except DocumentError as e:
        log_to_client(ls, f"codegen: {e}", types.MessageType.Warning)


def did_save(ls: CodegenServer, params: types.DidSaveTextDocumentParams) -> None:
    ls.completer.context.event()  # the project context is chosen again (in the background)


def did_close(ls: CodegenServer, params: types.DidCloseTextDocumentParams) -> None:
    uri = params.text_document.uri
    ls.documents.close(uri)
    ls.completer.forget(uri)
    ls.completer.prefill.stop(uri)
    for kind in KINDS:
        ls.worker.supersede((uri, kind))
    # Free the caches at once where no generation holds the engine (so status shows it); and again on the
    # inference thread after the job running now (superseded, it stops at its next step but may have written
    # this document's prompt and KV session as it started). The event loop never waits for a generation; a
    # reopened document's jobs run after that.
    engines = [entry.engine for entry in ls.models.entries.values()]
    for engine in engines:
        engine.try_drop_session(uri)

    def after_running_job() -> None:
        ls.completer.forget_prompt(uri)
        for engine in engines:
            engine.drop_session(uri)

    off_loop(ls.worker, after_running_job)


async def inline_completion(ls: CodegenServer, params: types.InlineCompletionParams):
    doc, offset = doc_offset(ls, params.text_document.uri, params.position)
    automatic = params.context.trigger_kind == types.InlineCompletionTriggerKind.Automatic
    selected = None
    if (info := params.context.selected_completion_info) is not None:
        start, _ = doc.offset_at(info.range.start.line, info.range.start.character, ls.position_encoding)
        end, _ = doc.offset_at(info.range.end.line, info.range.end.character, ls.position_encoding)
        selected = (start, end, info.text)
    out = await ls.completer.complete(doc, offset, automatic, selected)
    if out.reason:
        return types.InlineCompletionList(items=[])
    item = types.InlineCompletionItem(
        insert_text=out.text,
        range=to_range(ls, doc, out.start, out.end),
        command=acceptance.item_command(ls, doc, out, offset),  # run by the client on acceptance
    )
    return types.InlineCompletionList(items=[item])


async def completion(ls: CodegenServer, params: types.CompletionParams):
    doc, offset = doc_offset(ls, params.text_document.uri, params.position)
    ctx = params.context
    automatic = ctx is None or ctx.trigger_kind != types.CompletionTriggerKind.Invoked
    out = await ls.completer.complete(doc, offset, automatic, kind="list")
    if out.reason:
        return types.CompletionList(is_incomplete=True, items=[])
    word = word_before(doc.text, offset)
    new_text = doc.text[offset - len(word) : offset] + out.text
    first = new_text.split("\n", 1)[0]
    label = first.strip() or next((ln.strip() for ln in new_text.splitlines() if ln.strip()), "")
    item = types.CompletionItem(
        label=label,
        kind=types.CompletionItemKind.Text,
        detail="codegen",
        documentation=new_text,
        filter_text=first,
        sort_text="0",
        preselect=True,
        insert_text_format=types.InsertTextFormat.PlainText,
        text_edit=types.TextEdit(range=to_range(ls, doc, offset - len(word), out.end), new_text=new_text),
    )
    return types.CompletionList(is_incomplete=True, items=[item])


def create_server() -> CodegenServer:
    """A server with every handler and command registered: its table of contents."""
    ls = CodegenServer()
    features = (  # (LSP method, handler, options)
        (types.INITIALIZE, initialize, None),
        (types.SHUTDOWN, shutdown, None),
        (types.EXIT, exit_, None),
        (types.INITIALIZED, initialized, None),
        (types.WORKSPACE_DID_CHANGE_CONFIGURATION, did_change_configuration, None),
        (types.TEXT_DOCUMENT_DID_OPEN, did_open, None),
        (types.TEXT_DOCUMENT_DID_CHANGE, did_change, None),
        (types.TEXT_DOCUMENT_DID_CLOSE, did_close, None),
        (types.TEXT_DOCUMENT_DID_SAVE, did_save, None),
        (types.TEXT_DOCUMENT_INLINE_COMPLETION, inline_completion, types.InlineCompletionOptions()),
        (types.TEXT_DOCUMENT_COMPLETION, completion, COMPLETION_OPTIONS),
    )
    for feature, handler, options in features:
        ls.feature(feature, options)(handler)
    for name, handler in COMMANDS:
        register_command(ls, name, handler)
    if os.environ.get("CODEGEN_LSP_DEBUG") == "1":  # tests only: read back a document's text and version
        register_command(ls, "codegen.debug.document", commands.debug_document)
    return ls


def word_before(text: str, offset: int) -> str:
    """The identifier characters just before `offset` (what a completion client filters with)."""
    i = offset
    while i > 0 and (text[i - 1].isalnum() or text[i - 1] == "_"):
        i -= 1
    return text[i:offset]


def register_command(ls: CodegenServer, name: str, handler) -> None:
    """One workspace/executeCommand entry calling handler(server, args)."""

    async def run(ls: CodegenServer, *args):
        return await handler(ls, list(args))

    run.__name__ = name.replace(".", "_")
    ls.command(name)(run)


def serve(args) -> int:
    """Run the server on stdio (default) or TCP (`--tcp --host --port`); logs go to stderr only."""
    level = (getattr(args, "log_level", None) or "info").upper()
    logging.basicConfig(
        stream=sys.stderr, level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    set_log_level(level.lower())
    ls = create_server()
    code = 0
    try:
        if getattr(args, "tcp", False):
            host, port = getattr(args, "host", None) or "127.0.0.1", getattr(args, "port", None) or 2087
            jsonrpc.serve_tcp(ls, host, int(port))
        else:
            stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
            sys.stdout = sys.stderr  # a stray print() must never corrupt the protocol stream
            jsonrpc.serve_stdio(ls, stdin, stdout)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 0
    finally:
        ls.worker.close()
    if ls.exit_code is not None:  # the `exit` notification: 0 after `shutdown`, else 1 (LSP)
        code = ls.exit_code
    # The protocol is over (exit, or the client went away). pygls' stdin reader thread may block on a read
    # that never returns, and a model may still be loading: leave without joining threads.
    log.info("server stopped")
    logging.shutdown()
    sys.stderr.flush()
    os._exit(code)
