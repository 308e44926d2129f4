"""LSP commands for multi-turn synthesis: codegen.synthesize and the codegen.synthesis.* conversation.

codegen.synthesize {textDocument: {uri, version?}, position?, range?, turns: [str], maxNewTokensPerTurn?,
                    temperature?, topP?, seed?, insert?}
    -> {program, turns: [{prompt, code, tokens, stopReason, ms, ...}], prefillTokens, promptTokens, cancelled,
        applied?, reason?}
codegen.synthesis.start {textDocument?: {uri}, position?, languageId?, maxNewTokensPerTurn?, temperature?,
                         topP?, seed?} -> {id, languageId, historyTokens}
codegen.synthesis.turn {id, prompt} -> {id, turn, program, turns, cancelled}
codegen.synthesis.end {id} -> {id, ended, turns, program}

With `range` (the selected comment lines) the program continues the text before those lines, its comments at
their indentation, and `insert` replaces the lines with it (each comment once, its code after it); without
it the program continues the text before `position` and is inserted there.
maxNewTokensPerTurn defaults to 128 (MTPB), temperature and topP to the `temperature` / `topP` settings.
`$/cancelRequest` stops at the next decode step; the answer then carries the turns finished so far and
`cancelled: true`. Conversations are freed after `synthesisIdleSeconds` idle; their KV caches live in the
model's engine, under `cacheBudgetMb` with every document's session (LRU).
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass

from lsprotocol import types
from pygls.exceptions import JsonRpcException, JsonRpcInvalidParams

from inference.rules import StopReason
from lsp_server import jsonrpc
from lsp_server import mtpb as syn
from lsp_server.documents import DocumentError
from lsp_server.progress import Progress
from lsp_server.settings import OPTIONS, check

log = logging.getLogger(__name__)
REQUEST_FAILED = -32803  # LSP ErrorCodes.RequestFailed


@dataclass
class Sampling:
    """Per-request generation options (camelCase in the arguments)."""

    max_new_tokens: int = 128
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None


def _fail(message: str) -> JsonRpcInvalidParams:
    return JsonRpcInvalidParams(message)


def _object(args: list, name: str) -> dict:
    """The single object argument of a command."""
    if len(args) != 1 or not isinstance(args[0], dict):
        raise _fail(f"{name} takes one object argument, got {args!r:.200}")
    return args[0]


def _sampling(obj: dict, n_positions: int, settings) -> Sampling:
    """maxNewTokensPerTurn / temperature / topP / seed, checked (temperature, topP default to settings)."""
    out = Sampling(temperature=settings.temperature, top_p=settings.top_p)
    if "maxNewTokensPerTurn" in obj:
        out.max_new_tokens = syn.validate_max_new_tokens(obj["maxNewTokensPerTurn"], n_positions)
    else:
        out.max_new_tokens = min(out.max_new_tokens, n_positions - 1)
    t = _setting(obj, "temperature", out.temperature)
    p = _setting(obj, "topP", out.top_p)
    seed = obj.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**64):
        raise syn.SynthesisError(f"seed must be an integer from 0 to 2^64 - 1, got {seed!r:.40}")
    out.temperature, out.top_p, out.seed = float(t), float(p), seed
    return out


def _setting(obj: dict, key: str, default):
    """obj[key] checked against the settings table's type and bounds for that key."""
    try:
        return check(OPTIONS[key], obj.get(key, default))
    except ValueError as e:
        raise syn.SynthesisError(f"{key} must be a valid value: {e}") from None


def _params(s: Sampling):
    from inference.engine import GenerationParams

    return GenerationParams(
        max_new_tokens=s.max_new_tokens, temperature=s.temperature, top_p=s.top_p, seed=s.seed
    )


def _document_and_offset(server, obj: dict, required: bool = True):
    """(document, offset, range to write, indent) of {textDocument, position or range}; outside: an error."""
    td = obj.get("textDocument")
    if td is None and not required:
        return None, 0, None, ""
    if not isinstance(td, dict) or not isinstance(td.get("uri"), str):
        raise _fail("'textDocument' must be {uri, version}")
    try:
        doc = server.documents.get(td["uri"])
    except DocumentError as e:
        raise _fail(str(e)) from None
    if "range" in obj:  # the selected lines: the program replaces them
        return doc, *_selected_lines(server, doc, obj["range"])
    pos = obj.get("position")
    if not _is_position(pos):
        raise _fail("'position' must be {line, character} with non-negative integers")
    offset, clamped = doc.offset_at(pos["line"], pos["character"], server.position_encoding)
    if clamped:
        raise _fail(
            f"position {pos['line']}:{pos['character']} is outside {doc.uri} "
            f"({doc.line_count} lines, version {doc.version})"
        )
    at = types.Position(line=pos["line"], character=pos["character"])
    return doc, offset, types.Range(start=at, end=at), ""


def _is_position(pos) -> bool:
    return isinstance(pos, dict) and all(
        isinstance(pos.get(k), int) and not isinstance(pos.get(k), bool) and pos[k] >= 0
        for k in ("line", "character")
    )


def _selected_lines(server, doc, rng) -> tuple[int, types.Range, str]:
    """(offset of the first line, the whole selected lines as a Range, their indentation) of a `range`."""
    ok = isinstance(rng, dict) and _is_position(rng.get("start")) and _is_position(rng.get("end"))
    if not ok:
        raise _fail("'range' must be {start, end}, each {line, character} with non-negative integers")
    first, end = rng["start"]["line"], rng["end"]
    # A selection ending at column 0 of a later line does not take that line.
    last = end["line"] - 1 if end["character"] == 0 and end["line"] > first else end["line"]
    if last < first or last >= doc.line_count:
        raise _fail(
            f"range lines {first}..{end['line']} are not lines of {doc.uri} ({doc.line_count} lines, "
            f"version {doc.version})"
        )
    if last + 1 < doc.line_count:
        stop = types.Position(line=last + 1, character=0)
    else:
        stop = types.Position(*doc.position_at(len(doc.text), server.position_encoding))
    offset, _ = doc.offset_at(first, 0)
    end_offset, _ = doc.offset_at(stop.line, stop.character, server.position_encoding)
    lines = [line for line in doc.text[offset:end_offset].splitlines() if line.strip()] or [""]
    indent = lines[0][: len(lines[0]) - len(lines[0].lstrip(" \t"))]  # the first comment's
    return offset, types.Range(start=types.Position(line=first, character=0), end=stop), indent


async def _engine_for(server, language: str):
    """The engine that serves `language` (loading its model on first use)."""
    try:
        entry = await server.models.get(language)
    except Exception as e:
        raise JsonRpcException(f"codegen: no model for synthesis: {e}", code=REQUEST_FAILED) from None
    return entry.engine, entry.loaded.config.n_positions


def store(server) -> syn.ConversationStore:
    """The server's conversation store, idle time from the settings."""
    st = getattr(server, "synthesis_store", None)
    if st is None:
        st = server.synthesis_store = syn.ConversationStore()
    st.idle_seconds = server.settings.synthesis_idle_seconds
    return st


async def _free(server, convs: list[syn.Conversation]) -> None:
    """Drop sessions on the inference thread (the engine's lock is held while it generates)."""
    if convs:
        await server.worker.call(lambda: [c.close() for c in convs])


async def expire(server) -> None:
    """Free idle conversations now; while any is left, check again after the idle time (one timer)."""
    st = store(server)
    await _free(server, st.expire())
    loop = asyncio.get_running_loop()
    due = loop.time() + st.idle_seconds + 0.05
    timer = getattr(st, "timer", None)
    if not len(st) or (timer is not None and not timer.cancelled() and timer.when() <= due):
        return
    if timer is not None:
        timer.cancel()  # the idle time was shortened

    def fire() -> None:
        st.timer = None
        asyncio.ensure_future(expire(server))

    st.timer = loop.call_at(due, fire)


async def _run_turn(server, conv: syn.Conversation, prompt: str, hook: jsonrpc.CancelFlag) -> syn.TurnResult:
    def work(should_cancel) -> syn.TurnResult:
        return conv.turn(prompt, lambda: should_cancel() or hook.event.is_set())

    server.completer.prefetch.stop()  # a request goes before any prefetch

    return await server.worker.submit(conv.session_key, work)


async def _apply(server, doc, version: int, where: types.Range, program: str) -> dict:
    """One workspace/applyEdit writing the program over `where`, for the version the request named."""
    if doc.uri not in server.documents or server.documents.get(doc.uri) is not doc:
        return {"applied": False, "reason": f"{doc.uri} was closed; nothing was written"}
    if doc.version != version:
        return {
            "applied": False,
            "reason": f"{doc.uri} changed (version {doc.version}, the request was for {version}); "
            "nothing was written",
        }
    if not program:
        return {"applied": False, "reason": "the program is empty; nothing was written"}
    if "\r\n" in doc.text:  # keep the document's line endings
        program = re.sub(r"(?<!\r)\n", "\r\n", program)
    edit = types.TextEdit(range=where, new_text=program)
    caps = server.client_capabilities.workspace
    if caps and caps.workspace_edit and caps.workspace_edit.document_changes:
        ident = types.OptionalVersionedTextDocumentIdentifier(uri=doc.uri, version=version)
        wedit = types.WorkspaceEdit(
            document_changes=[types.TextDocumentEdit(text_document=ident, edits=[edit])]
        )
    else:
        wedit = types.WorkspaceEdit(changes={doc.uri: [edit]})
    params = types.ApplyWorkspaceEditParams(edit=wedit, label="codegen: synthesized program")
    try:
        res = await server.workspace_apply_edit_async(params)
    except Exception as e:
        return {"applied": False, "reason": f"the editor refused the edit: {e}"}
    out = {"applied": bool(res.applied)}
    if not res.applied:
        out["reason"] = f"the editor did not apply the edit: {res.failure_reason or 'no reason given'}"
    return out


async def synthesize(server, args: list) -> dict:
    """Every turn on one session; optionally written at the position or over the range: one versioned edit."""
    obj = _object(args, "codegen.synthesize")
    hook = jsonrpc.cancel_flag(server)
    try:
        turns = syn.validate_turns(obj.get("turns"))
        doc, offset, where, indent = _document_and_offset(server, obj)
        version = obj["textDocument"].get("version", doc.version)
        if isinstance(version, bool) or not isinstance(version, int):
            raise syn.SynthesisError(f"textDocument.version must be an integer, got {version!r}")
        insert = obj.get("insert", False)
        if not isinstance(insert, bool):
            raise syn.SynthesisError(f"insert must be true or false, got {insert!r}")
        text_before, language = doc.text[:offset], doc.language_id
        engine, n_positions = await _engine_for(server, language)
        sampling = _sampling(obj, n_positions, server.settings)
    except syn.SynthesisError as e:
        raise _fail(str(e)) from None
    conv = syn.new_conversation(engine, text_before, language, _params(sampling), indent)
    progress = await Progress(server, "codegen: synthesizing").begin(f"turn 1/{len(turns)}")
    cancelled = False
    try:
        for k, prompt in enumerate(turns, 1):
            if hook.event.is_set():
                cancelled = True
                break
            progress.report(f"turn {k}/{len(turns)}", percentage=100 * (k - 1) // len(turns))
            turn = await _run_turn(server, conv, prompt, hook)
            if turn.stop_reason == StopReason.CANCELLED:
                cancelled = True
                break
    finally:
        progress.end("cancelled" if cancelled else f"{len(conv.turns)} turns")
        await _free(server, [conv])
    result = conv.summary(cancelled)
    if insert:
        if cancelled:
            result.update(applied=False, reason="cancelled; nothing was written")
        else:
            result.update(await _apply(server, doc, version, where, result["program"]))
    return result


async def start(server, args: list) -> dict:
    """A conversation continuing the document at the position (or MTPB's header for a language)."""
    obj = _object(args, "codegen.synthesis.start")
    try:
        doc, offset, _, _ = _document_and_offset(server, obj, required=False)
        language = doc.language_id if doc is not None else obj.get("languageId", "python")
        if not isinstance(language, str) or not language:
            raise syn.SynthesisError(f"languageId must be a language identifier, got {language!r}")
        engine, n_positions = await _engine_for(server, language)
        sampling = _sampling(obj, n_positions, server.settings)
    except syn.SynthesisError as e:
        raise _fail(str(e)) from None
    st = store(server)
    await _free(server, st.expire())
    text_before = doc.text[:offset] if doc is not None else ""
    try:
        conv = st.add(syn.new_conversation(engine, text_before, language, _params(sampling)))
    except syn.SynthesisError as e:
        raise JsonRpcException(str(e), code=REQUEST_FAILED) from None
    await expire(server)  # schedules the idle check
    tok = engine.loaded.tokenizer
    return {"id": conv.id, "languageId": conv.language_id, "historyTokens": len(tok.encode(conv.lead))}


async def turn(server, args: list) -> dict:
    """One turn of a conversation; the code arrives with the answer."""
    obj = _object(args, "codegen.synthesis.turn")
    st = store(server)
    await _free(server, st.expire())
    try:
        conv = st.get(obj.get("id"))
        prompt = syn.validate_turn(obj.get("prompt"), "prompt")
        if conv.busy:
            raise syn.SynthesisError(f"conversation {conv.id} is still answering its previous turn")
    except syn.SynthesisError as e:
        raise _fail(str(e)) from None
    hook = jsonrpc.cancel_flag(server)
    conv.busy = True
    try:
        result = await _run_turn(server, conv, prompt, hook)
    finally:
        conv.busy = False
        st.touch(conv)
    return {
        "id": conv.id,
        "turn": result.to_json(),
        "program": conv.program,
        "turns": len(conv.turns),
        "cancelled": result.stop_reason == StopReason.CANCELLED,
    }


async def end(server, args: list) -> dict:
    """Free a conversation."""
    obj = _object(args, "codegen.synthesis.end")
    try:
        conv = store(server).end(obj.get("id"))
    except syn.SynthesisError as e:
        raise _fail(str(e)) from None
    await _free(server, [conv])
    return {"id": conv.id, "ended": True, "turns": len(conv.turns), "program": conv.program}
