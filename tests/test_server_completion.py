"""End to end through the real server (subprocess): parity with the engine, typed-through cache, superseding,
cancellation, completion items, selected completion info, settings and progress."""

from __future__ import annotations

import asyncio
import re
import time
import uuid

import pytest
import pytest_asyncio
from lsprotocol import types

from inference.engine import GenerationParams
from inference.heal import split
from lsp_server import postprocess
from tests.checkpoints import make_codegen_checkpoint
from tests.conftest import Servers, change, inline, inline_params, open_doc, status

MAX_NEW = 12
pytestmark = pytest.mark.asyncio(loop_scope="module")


def expected_completion(
    engine,
    before: str,
    line_suffix: str = "",
    language="python",
    mode="block",
    overrides=None,
    max_new=MAX_NEW,
):
    """The engine's greedy completion of the same prompt, trimmed as documented: the server's answer."""
    line_prefix = before[before.rfind("\n") + 1 :]
    patterns = postprocess.patterns_for(language, mode, line_prefix, overrides)
    kept, heal = split(before)  # trailing spaces healed (tokenHealing, on by default)
    params = GenerationParams(max_new_tokens=max_new, stop_patterns=patterns, heal=heal)
    result = engine.generate(f"ref-{uuid.uuid4()}", kept, params)
    text, _ = postprocess.fit_suffix(postprocess.trim(result.text, patterns), line_suffix)
    return text


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def client(start_module_server, codegen_checkpoint):
    """One server shared by the tests that do not change settings (each uses its own documents)."""
    return await start_module_server({"model": str(codegen_checkpoint), "maxNewTokens": MAX_NEW})


@pytest_asyncio.fixture(loop_scope="module")
async def own_server(codegen_checkpoint):
    """Factory of servers for one test (settings changes, long generations)."""
    servers = Servers()
    yield lambda **opts: servers({"model": str(codegen_checkpoint), "maxNewTokens": MAX_NEW, **opts})
    await servers.close()


DOCS = {
    "function-body": ("def hello(name):\n    ", (1, 4)),
    "after-call": ("import os\nprint(os.path.join('a', 'b'))\n", (2, 0)),
    "cursor-before-paren": ("def add(a, b):\n    return max(a, b\n", (1, 19)),
    "deep-block": ("class A:\n    def f(self):\n        if self.x:\n            ", (3, 12)),
}


@pytest.mark.parametrize("name", list(DOCS), ids=list(DOCS))
async def test_inline_completion_equals_engine_greedy_after_trimming(client, codegen_engine, name):
    text, (line, char) = DOCS[name]
    uri = f"file:///{name}.py"
    open_doc(client, uri, text)
    items = await inline(client, uri, line, char, automatic=False)
    lines = text.split("\n")
    before = "\n".join(lines[:line] + [lines[line][:char]])
    want = expected_completion(codegen_engine, before, lines[line][char:])
    got = items[0].insert_text if items else ""
    assert got == want
    if items:
        assert items[0].range.start == types.Position(line, char)


async def test_settings_change_is_validated_and_applied(own_server, codegen_engine):
    client = await own_server()
    before = "def hello(name):\n    "
    raw = codegen_engine.generate("raw", before, GenerationParams(max_new_tokens=MAX_NEW)).text
    pattern = r"(?<=\w)[ \t]"  # a space after a word: cuts after the first word the model writes
    assert re.search(pattern, raw.rstrip()), raw
    settings = {"stopPatterns": {"python": [pattern]}, "maxNewTokens": -3, "completionMode": {"go": "line"}}
    client.workspace_did_change_configuration(
        types.DidChangeConfigurationParams(settings={"codegen": settings})
    )
    open_doc(client, "file:///stop.py", before)
    items = await inline(client, "file:///stop.py", 1, 4)
    want = expected_completion(codegen_engine, before, overrides={"python": [pattern]})
    assert want and len(want) < len(raw.rstrip())
    assert items[0].insert_text == want
    st = await status(client)
    assert st["settings"]["maxNewTokens"] == MAX_NEW and st["settings"]["completionMode"]["go"] == "line"
    assert st["settings"]["stopPatterns"] == {"python": [pattern]}
    assert any("maxNewTokens" in m.message and m.type == types.MessageType.Warning for m in client.messages)


async def test_model_loading_reports_progress(client):
    await status(client)  # the default model is loaded at `initialized`
    for _ in range(50):
        reports = [r for rs in client.progress_reports.values() for r in rs]
        if any(r.kind == "end" for r in reports):
            break
        await asyncio.sleep(0.1)
    kinds = [r.kind for r in reports]
    assert kinds[0] == "begin" and kinds[-1] == "end" and "loading" in reports[0].title


async def test_typed_through_answers_without_a_model_call(client):
    uri = "file:///typed.py"
    open_doc(client, uri, "def hello(name):\n    ")
    first = (await inline(client, uri, 1, 4))[0].insert_text
    assert len(first) >= 3
    calls = (await status(client))["completions"]["modelCalls"]
    change(client, uri, 2, (1, 4), (1, 4), first[:2])
    items = await inline(client, uri, 1, 6)
    assert items[0].insert_text == first[2:]
    st = await status(client, uri)
    assert st["completions"]["modelCalls"] == calls and st["completions"]["typedThroughHits"] == 1
    assert st["completions"]["lastReason"] is None


async def test_burst_of_keystrokes_supersedes_and_ends_like_a_single_request(client):
    uri = "file:///burst.py"
    open_doc(client, uri, "def compute(values):\n    ")
    typed = "total = sum(v * 2 for v in values) + offset_value_1"[:50]
    assert len(typed) == 50
    started = (await status(client))["worker"]["started"]  # the module's earlier tests share this server
    pending = []
    for i, ch in enumerate(typed):
        change(client, uri, i + 2, (1, 4 + i), (1, 4 + i), ch)
        pending.append(
            asyncio.ensure_future(client.text_document_inline_completion_async(inline_params(uri, 1, 5 + i)))
        )
        await asyncio.sleep(0)  # let the message go out, without waiting for any answer
    answers = await asyncio.wait_for(asyncio.gather(*pending), timeout=60)
    assert len(answers) == 50 and all(a is not None for a in answers)
    st = await status(client)
    w = st["worker"]
    assert w["maxRunningPerKey"] == 1 and w["maxRunning"] == 1
    assert w["superseded"] >= 1 and st["completions"]["emptyReasons"].get("superseded", 0) >= 1
    assert w["started"] - started < 50  # superseded requests mostly never reach the model
    final_text = "def compute(values):\n    " + typed
    open_doc(client, "file:///burst-single.py", final_text)
    single = await inline(client, "file:///burst-single.py", 1, 4 + 50)
    last = list(answers[-1].items)
    assert [i.insert_text for i in last] == [i.insert_text for i in single]


async def test_cancel_request_stops_the_computation(own_server, tmp_path):
    # A model whose 900 decode steps (float32 lm_head of 52 MB each, free mode: no stop pattern) take
    # seconds, so the cancel always arrives mid-computation (200 steps of the tiny one ended within 50 ms).
    path = make_codegen_checkpoint(tmp_path, n_layer=2, n_embd=256, n_head=4, rotary_dim=8, n_positions=1024)
    # No prefill on open or prefetch: a job of theirs superseded by the request would count as a second
    # interruption, depending on timing (the count below is of this request's computation alone).
    opts = dict(model=str(path), dtype="float32", maxNewTokens=900, maxLatencyMs=0, prefetch=False)
    opts.update(prefillOnOpen=False)
    client = await own_server(**opts, completionMode="free")
    open_doc(client, "file:///warm.py", "x = 1\n")
    await inline(client, "file:///warm.py", 1, 0)  # warm up: loads the model
    uri = "file:///cancel.py"
    open_doc(client, uri, "def hello(name):\n    ")
    before = (await status(client))["worker"]
    fut = client.protocol.send_request(
        types.TEXT_DOCUMENT_INLINE_COMPLETION, inline_params(uri, 1, 4, automatic=False), msg_id="to-cancel"
    )
    await asyncio.sleep(0.05)
    client.protocol.notify(types.CANCEL_REQUEST, types.CancelParams(id="to-cancel"))
    with pytest.raises(Exception, match="cancel"):
        await asyncio.wait_for(asyncio.wrap_future(fut), timeout=30)
    t0 = time.perf_counter()
    st = await status(client)
    assert st["worker"]["cancelled"] == before["cancelled"] + 1
    for _ in range(100):  # the computation stops at its next decode step
        if st["worker"]["interrupted"] > before["interrupted"]:
            break
        await asyncio.sleep(0.02)
        st = await status(client)
    assert st["worker"]["interrupted"] == before["interrupted"] + 1
    assert time.perf_counter() - t0 < 5
    assert st["completions"]["emptyReasons"].get("cancelled") == 1


async def test_completion_item_carries_the_same_text(client, codegen_engine):
    uri = "file:///items.py"
    text = "def greet(person):\n    message = pers"
    open_doc(client, uri, text)
    result = await client.text_document_completion_async(
        types.CompletionParams(
            text_document=types.TextDocumentIdentifier(uri),
            position=types.Position(1, 18),
            context=types.CompletionContext(trigger_kind=types.CompletionTriggerKind.Invoked),
        )
    )
    assert result.is_incomplete
    want = expected_completion(codegen_engine, text)
    if not want:
        assert result.items == []
        return
    item = result.items[0]
    assert item.text_edit.new_text == "pers" + want
    assert item.text_edit.range == types.Range(types.Position(1, 14), types.Position(1, 18))
    assert item.label == ("pers" + want).split("\n")[0].strip()


async def test_list_and_inline_requests_for_one_keystroke_do_not_supersede_each_other(client, codegen_engine):
    uri = "file:///both.py"
    text = "import os\n\ndef list_files(path):\n    return os."
    open_doc(client, uri, text)
    listed = client.text_document_completion_async(
        types.CompletionParams(
            text_document=types.TextDocumentIdentifier(uri),
            position=types.Position(3, 14),
            context=types.CompletionContext(
                trigger_kind=types.CompletionTriggerKind.TriggerCharacter, trigger_character="."
            ),
        )
    )
    ghost = client.text_document_inline_completion_async(inline_params(uri, 3, 14))
    listed, ghost = await asyncio.wait_for(asyncio.gather(listed, ghost), timeout=60)
    want = expected_completion(codegen_engine, text)
    assert want, "the fixture model should continue this prompt"
    assert [i.text_edit.new_text for i in listed.items] == [want]
    assert [i.insert_text for i in ghost.items] == [want]


async def test_completion_trigger_characters_are_declared(client):
    provider = client.init_result.capabilities.completion_provider
    assert provider is not None and "." in (provider.trigger_characters or [])


async def test_selected_completion_info_is_extended_over_the_same_range(client, codegen_engine):
    uri = "file:///selected.py"
    text = "import os\nos.pa"
    open_doc(client, uri, text)
    rng = types.Range(types.Position(1, 3), types.Position(1, 5))
    items = await inline(client, uri, 1, 5, selected=types.SelectedCompletionInfo(range=rng, text="path"))
    want = expected_completion(codegen_engine, "import os\nos.path")
    assert items and items[0].insert_text == "path" + want and items[0].range == rng


async def test_mid_word_is_skipped_when_automatic_only(client):
    uri = "file:///midword.py"
    open_doc(client, uri, "value = compute(alpha)\n")
    assert await inline(client, uri, 0, 10) == []
    assert (await status(client, uri))["completions"]["lastReason"] == "mid_word"
    await inline(client, uri, 0, 10, automatic=False)
    assert (await status(client, uri))["completions"]["lastReason"] != "mid_word"


async def test_clear_cache_and_close(client):
    uri = "file:///close.py"
    open_doc(client, uri, "x = 1\n")
    await inline(client, uri, 1, 0)
    before = await status(client)
    assert uri in before["models"][0]["engine"]["cachedTokens"]
    assert await client.workspace_execute_command_async(
        types.ExecuteCommandParams(command="codegen.clearCache")
    )
    client.text_document_did_close(types.DidCloseTextDocumentParams(types.TextDocumentIdentifier(uri)))
    st = await status(client)
    assert st["openDocuments"] == before["openDocuments"] - 1
    assert st["models"][0]["engine"]["sessions"] == before["models"][0]["engine"]["sessions"] - 1
    assert st["models"][0]["engine"]["cachedSessions"] == 0
