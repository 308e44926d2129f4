"""Our layer over pygls: reader loop, message checks, LSP lifecycle, a writer that outlives its stream.

The one module that relies on pygls beyond its public API (tests/test_jsonrpc.py fails loudly when pygls
changes underneath). pygls' own reader dies on a huge Content-Length, goes deaf after a broken header, and
drops requests it cannot structure; here every request with an id gets exactly one response:

- -32700 (id null): a frame that cannot be read, or a body that is not JSON (a 5,000-digit number included);
- -32600 (id null): not one JSON-RPC 2.0 object (a batch, `jsonrpc` not "2.0", a bad id or method);
- -32002: a request before `initialize`; -32600: a second `initialize`, or any request after `shutdown`;
- -32602: params that fail lsprotocol's validation; -32601: an unknown method (with or without params).

Notifications cannot be answered: a bad one is logged and dropped (before `initialize` and after `shutdown`
every notification but `exit` is dropped, as LSP says).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
from collections.abc import Awaitable, Callable

import attrs
import cattrs
from lsprotocol import types
from pygls.exceptions import JsonRpcException
from pygls.protocol import LanguageServerProtocol
from pygls.protocol.language_server import lsp_method

from lsp_server.framing import FrameError, FrameParser

log = logging.getLogger(__name__)
PARSE_ERROR, INVALID_REQUEST, INVALID_PARAMS, NOT_INITIALIZED = -32700, -32600, -32602, -32002
READ_CHUNK = 1 << 16


class CodegenProtocol(LanguageServerProtocol):
    """Document sync goes to our own store (exact UTF-8/16/32 positions, CRLF, invalid-range checks), not to
    pygls' workspace: these override pygls' built-in handlers and call ours directly (plain functions: pygls
    runs a generator handler through a future it files in its request table)."""

    @lsp_method(types.TEXT_DOCUMENT_DID_OPEN)
    def lsp_text_document__did_open(self, params):
        self.fm.features[types.TEXT_DOCUMENT_DID_OPEN](params)

    @lsp_method(types.TEXT_DOCUMENT_DID_CHANGE)
    def lsp_text_document__did_change(self, params):
        self.fm.features[types.TEXT_DOCUMENT_DID_CHANGE](params)

    @lsp_method(types.TEXT_DOCUMENT_DID_CLOSE)
    def lsp_text_document__did_close(self, params):
        self.fm.features[types.TEXT_DOCUMENT_DID_CLOSE](params)


class SafeWriter:
    """A protocol writer that stops writing once its stream is closed or broken, logging that once (sending
    on a closed stream used to be reported with showMessage, which sent again: a flood on stderr)."""

    def __init__(self, write: Callable[[bytes], object], close: Callable[[], object]) -> None:
        self._write, self._close = write, close
        self.closed = False

    def write(self, data: bytes) -> None:
        if self.closed:
            return
        try:
            self._write(data)
        except (OSError, ValueError) as e:  # BrokenPipeError, "write to closed file"
            self.closed = True
            log.info("the client's stream is closed (%s); nothing more is sent", e)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            try:
                self._close()
            except (OSError, ValueError):
                pass


def stdout_writer(stdout) -> SafeWriter:
    def write(data: bytes) -> None:
        stdout.write(data)
        stdout.flush()

    return SafeWriter(write, stdout.close)


class Lifecycle:
    """Where the session is: before `initialize`, serving, or after `shutdown`."""

    def __init__(self) -> None:
        self.initialized = False
        self.shut_down = False

    def refuse(self, method: str, is_request: bool) -> tuple[int, str] | None:
        """The error for a message this state does not take (None: dispatch it)."""
        if method == types.EXIT:
            return None
        if self.shut_down:
            return INVALID_REQUEST, f"the server is shut down; only 'exit' is accepted, not {method!r}"
        if method == types.INITIALIZE and self.initialized:
            return INVALID_REQUEST, "initialize was already received"
        if not self.initialized and method != types.INITIALIZE:
            return NOT_INITIALIZED, f"{method!r} before initialize"
        return None

    def dispatched(self, method: str) -> None:
        self.initialized = self.initialized or method == types.INITIALIZE
        self.shut_down = self.shut_down or method == types.SHUTDOWN


def send_error(protocol, msg_id, code: int, message: str) -> None:
    """One JSON-RPC error response, written to the protocol's writer."""
    body = json.dumps({"jsonrpc": "2.0", "id": msg_id, "error": {"code": code, "message": message}}).encode()
    if protocol.writer is not None:
        protocol.writer.write(b"Content-Length: %d\r\n\r\n%s" % (len(body), body))


def _valid_id(msg_id) -> bool:
    return isinstance(msg_id, (int, str)) and not isinstance(msg_id, bool)


def envelope_error(data) -> str | None:
    """Why `data` is not one JSON-RPC 2.0 message (None when it is)."""
    if isinstance(data, list):
        return "batches are not supported (LSP sends one message per frame)"
    if not isinstance(data, dict):
        return f"a message must be a JSON object, got {type(data).__name__}"
    if data.get("jsonrpc") != "2.0":
        return f"'jsonrpc' must be \"2.0\", got {str(data.get('jsonrpc'))[:40]!r}"
    if "id" in data and not _valid_id(data["id"]):
        return "'id' must be an integer or a string"
    if "method" in data and not isinstance(data["method"], str):
        return "'method' must be a string"
    if "method" not in data and "id" not in data:
        return "neither a request, a notification nor a response"
    return None


def _takes_no_params(method: str) -> bool:
    """Whether lsprotocol types the method's params as void (`shutdown`, `exit`)."""
    request_type = types.METHOD_TO_TYPES.get(method, (None,))[0]
    fields = attrs.fields_dict(request_type) if request_type is not None else {}
    return "params" in fields and fields["params"].type is type(None)


def invalid_params(error: Exception) -> str:
    """lsprotocol's validation failure as one readable line."""
    cause = error.__cause__ if error.__cause__ is not None else error
    if isinstance(cause, cattrs.BaseValidationError):
        return "invalid params: " + "; ".join(cattrs.transform_error(cause))[:500]
    return f"invalid params: {cause}"[:500]


class Dispatcher:
    """Checks each body and hands it to pygls, or answers it with the error."""

    def __init__(self, protocol, on_request: Callable[[object], object] | None = None) -> None:
        self.protocol = protocol
        self.on_request = on_request  # called with each request as it arrives, before any later message
        self.state = Lifecycle()
        self.parser = FrameParser()

    def feed(self, data: bytes) -> None:
        for item in self.parser.feed(data):
            if isinstance(item, FrameError):
                log.warning("broken frame: %s", item.message)
                send_error(
                    self.protocol, None, INVALID_REQUEST if item.too_large else PARSE_ERROR, item.message
                )
            else:
                self.body(item)

    def body(self, body: bytes) -> None:
        try:
            data = json.loads(body)
        except (ValueError, RecursionError) as e:  # not JSON, bad UTF-8, a 5,000-digit integer, deep nesting
            log.warning("a message that is not JSON: %.200s", e)
            send_error(self.protocol, None, PARSE_ERROR, f"parse error: {str(e)[:200]}")
            self.parser.resync(body)
            return
        if (why := envelope_error(data)) is not None:
            log.warning("invalid message: %s", why)
            send_error(self.protocol, None, INVALID_REQUEST, why)
            return
        self.message(data)

    def message(self, data: dict) -> None:
        method, msg_id = data.get("method"), data.get("id")
        is_request = method is not None and "id" in data
        if method is not None:
            if (refused := self.state.refuse(method, is_request)) is not None:
                if is_request:
                    send_error(self.protocol, msg_id, *refused)
                else:
                    log.info("notification %r dropped: %s", method, refused[1])
                return
            data.setdefault("params", None)  # an unknown method without params is -32601, not silence
            if data["params"] is not None and _takes_no_params(method):
                if is_request:
                    send_error(self.protocol, msg_id, INVALID_PARAMS, f"{method!r} takes no params")
                return
        try:
            message = self.protocol.structure_message(data)
        except JsonRpcException as e:
            log.warning("%s %r: %s", "request" if is_request else "message", method, invalid_params(e))
            if is_request:
                send_error(self.protocol, msg_id, INVALID_PARAMS, invalid_params(e))
            return
        if method is not None:
            self.state.dispatched(method)
        if is_request and self.on_request is not None:
            self.on_request(message)  # context variables it sets are inherited by the handler's task
        self.protocol.handle_message(message)
        prune_request_table(self.protocol)


def prune_request_table(protocol) -> None:
    """Drop finished futures from pygls' request table. pygls files every generator- or coroutine-run
    handler of a notification there under a fresh uuid and never removes it (1-3 KB per keystroke: a
    concurrent Future with its lock, the uuid); a finished future there serves nothing (an answer pops its
    own entry first, a cancel of a finished one is a no-op)."""
    table = protocol._request_futures
    for key in [k for k, future in table.items() if future.done()]:
        del table[key]


async def pump(dispatcher: Dispatcher, read: Callable[[int], Awaitable[bytes]]) -> None:
    """Feed the dispatcher until the stream ends or `exit` (SystemExit from pygls) stops the session."""
    loop = asyncio.get_running_loop()
    closing = False

    def on_error(loop: asyncio.AbstractEventLoop, context: dict) -> None:
        if closing:  # requests still in flight are cancelled at exit: their callbacks' errors are expected
            log.debug("after exit: %s", context.get("message"))
        else:
            loop.default_exception_handler(context)

    loop.set_exception_handler(on_error)
    try:
        while data := await read(READ_CHUNK):
            dispatcher.feed(data)
    finally:
        closing = True


def stdin_reader(stdin) -> Callable[[int], Awaitable[bytes]]:
    """Async reads of a blocking binary stream from a daemon thread (never joined: exit need not wait)."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    read1 = getattr(stdin, "read1", None) or (lambda n: os.read(stdin.fileno(), n))

    def run() -> None:
        while True:
            try:
                data = read1(READ_CHUNK)
            except (OSError, ValueError):
                data = b""
            loop.call_soon_threadsafe(queue.put_nowait, data)
            if not data:
                return

    threading.Thread(target=run, name="stdin", daemon=True).start()
    return lambda _n: queue.get()


def serve_stdio(ls, stdin, stdout) -> None:
    """Serve on stdio until stdin ends or `exit` (SystemExit propagates to the caller)."""
    ls.protocol.set_writer(stdout_writer(stdout))

    async def main() -> None:
        await pump(Dispatcher(ls.protocol, ls.on_request), stdin_reader(stdin))

    asyncio.run(main())


def serve_tcp(ls, host: str, port: int) -> None:
    """Serve one client on host:port until it leaves or sends `exit`."""

    async def main() -> None:
        done = asyncio.Event()

        async def connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            ls.protocol.set_writer(SafeWriter(writer.write, writer.close))
            try:
                await pump(Dispatcher(ls.protocol, ls.on_request), reader.read)
            finally:
                done.set()

        server = await asyncio.start_server(connection, host, port)
        log.info("serving on %s:%s", host, port)
        async with server:
            await done.wait()

    asyncio.run(main())


def report_error(ls, error: Exception, source) -> None:
    """pygls' out-of-band error report: shown to the user unless the stream is gone (then logged only)."""
    writer = ls.protocol.writer
    if getattr(writer, "closed", False):
        log.debug("not reported (stream closed): %s", error)
        return
    log.error("%s", error)
    if source.__name__ == "FeatureNotificationError":
        ls.window_show_message(
            types.ShowMessageParams(type=types.MessageType.Error, message=f"codegen: {error}")
        )


class CancelFlag:
    """Stands in for a request's future in pygls' table: `$/cancelRequest` then sets a flag the handler polls
    (pygls would cancel the outer future of a command and drop the handler's answer)."""

    def __init__(self) -> None:
        self.event = threading.Event()

    def cancel(self) -> bool:
        self.event.set()
        return False

    def done(self) -> bool:
        return self.event.is_set()

    def is_set(self) -> bool:
        return self.event.is_set()


def cancel_flag(ls) -> CancelFlag:
    """A flag set by `$/cancelRequest` for the request being handled (set already if it was cancelled before
    its handler ran: pygls has answered it then, so the handler should do no work)."""
    flag = CancelFlag()
    proto = ls.protocol
    msg_id = proto.msg_id
    if msg_id is not None:
        if msg_id in proto._request_futures:
            proto._request_futures[msg_id] = flag
        else:
            flag.event.set()
    return flag
