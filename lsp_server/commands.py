"""codegen.status and codegen.clearCache: async handler(server, args); the server registers every command
in one table (lsp_server/server.py COMMANDS)."""

from __future__ import annotations

import ctypes
import dataclasses
import logging

from lsp_server.settings import as_camel_dict, camel_keys

log = logging.getLogger(__name__)


async def status(server, args: list) -> dict:
    """Model, device, dtype, cache use, last latencies, and why the last answers were empty."""
    uri = args[0] if args and isinstance(args[0], str) else None
    comp = server.completer.stats
    out = {
        "version": server.version,
        "positionEncoding": server.position_encoding,
        "settings": as_camel_dict(server.settings),
        "models": server.models.status(),
        "modelFailures": {k[0]: v for k, v in server.models.failures.items()},
        "worker": camel_keys(dataclasses.asdict(server.worker.stats)),
        "completions": {
            "requests": comp.requests,
            "modelCalls": comp.model_calls,
            "typedThroughHits": comp.typed_through_hits,
            "prefillsOnOpen": comp.prefills,
            "prefetch": server.completer.prefetch.status(),
            "lastPrefillOnOpen": comp.last_prefill,
            "emptyReasons": dict(comp.empty),
            "lastReason": comp.last_reason.get(uri) if uri else dict(comp.last_reason),
            "lastPrompt": server.completer.prompt_status(uri),
            "projectContext": server.completer.context.status(),
        },
        "latency": comp.latencies(),
        "acceptance": server.acceptance.status(),
        "openDocuments": len(server.documents),
    }
    return out


def trim_heap() -> None:
    """Hand freed heap pages back to the OS: glibc keeps freed KV-cache blocks (a few MiB each, under its
    dynamic mmap threshold) in its heap, so RSS would not show that clearing freed them."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


async def clear_cache(server, args: list) -> dict:
    """Free every KV cache and forget the typed-through suggestions."""
    entries = list(server.models.entries.values())

    def clear() -> None:
        for e in entries:
            e.engine.clear_cache()
        trim_heap()

    await server.worker.call(clear)
    server.completer.forget()
    log.info("caches cleared (%d models)", len(entries))
    return {"cleared": len(entries)}


async def debug_document(server, args: list) -> dict:
    """{uri, version, text} of an open document as the server holds it (tests compare it with their own
    model of the document). Registered only when CODEGEN_LSP_DEBUG=1: not advertised to users."""
    uri = args[0] if args and isinstance(args[0], str) else ""
    doc = server.documents.find(uri)
    return {"uri": uri, "version": doc.version, "text": doc.text} if doc is not None else {"uri": uri}
