"""Multi-turn synthesis through the real server (subprocess): codegen.synthesize with and without insertion,
the stateful conversation, progress per turn, cancellation, and bad arguments."""

from __future__ import annotations

import asyncio

import pytest
import pytest_asyncio
from lsprotocol import types
from pygls.exceptions import JsonRpcException

from inference.engine import GenerationParams
from lsp_server import mtpb as syn
from tests.conftest import change, open_doc, status

pytestmark = pytest.mark.asyncio(loop_scope="module")
MAX_NEW = 8
TURNS = ["Define a variable a = 3.", "Double it.", "Print it."]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def client(start_module_server, codegen_checkpoint):
    client = await start_module_server({"model": str(codegen_checkpoint)})
    client.edits = []

    @client.feature(types.WORKSPACE_APPLY_EDIT)
    def apply_edit(params: types.ApplyWorkspaceEditParams):
        client.edits.append(params)
        return types.ApplyWorkspaceEditResult(applied=True)

    open_doc(client, "file:///bad.py", "x = 1\ny = 2\n")
    await status(client)
    return client


async def run(client, name: str, obj) -> dict:
    args = [obj] if obj is not None else []
    return await client.workspace_execute_command_async(
        types.ExecuteCommandParams(command=name, arguments=args)
    )


def reference(engine, text_before: str, turns=TURNS, max_new=MAX_NEW) -> dict:
    """What the server must answer: the same synthesis on an engine in the test process."""
    return syn.synthesize(engine, turns, GenerationParams(max_new_tokens=max_new), text_before=text_before)


def synth_args(uri: str, line: int, character: int, turns=TURNS, version=1, **extra) -> dict:
    return {
        "textDocument": {"uri": uri, "version": version},
        "position": {"line": line, "character": character},
        "turns": turns,
        "maxNewTokensPerTurn": MAX_NEW,
        **extra,
    }


def progress_messages(client, title: str) -> list[list[str]]:
    """The report messages of every progress with this title."""
    out = []
    for values in client.progress_reports.values():
        if values and getattr(values[0], "title", None) == title:
            out.append([v.message for v in values if v.kind == "report"])
    return out


async def test_synthesize_equals_engine_turn_by_turn_and_reports_progress(client, codegen_engine):
    uri = "file:///synth.py"
    open_doc(client, uri, "import os\n\nx = 1\n")
    before = len(progress_messages(client, "codegen: synthesizing"))
    got = await run(client, "codegen.synthesize", synth_args(uri, 3, 0))
    want = reference(codegen_engine, "import os\n\nx = 1\n")
    assert [t["code"] for t in got["turns"]] == [t["code"] for t in want["turns"]]
    assert got["program"] == want["program"]
    assert got["program"].startswith("# Define a variable a = 3.\n")
    assert (got["prefillTokens"], got["promptTokens"]) == (want["prefillTokens"], want["promptTokens"])
    assert got["prefillTokens"] <= got["promptTokens"] + 2 * len(TURNS)
    assert got["cancelled"] is False and "applied" not in got
    assert {"prompt", "code", "tokens", "stopReason", "ms"} <= set(got["turns"][0])
    assert client.edits == []
    runs = progress_messages(client, "codegen: synthesizing")
    assert len(runs) == before + 1
    assert runs[-1] == ["turn 1/3", "turn 2/3", "turn 3/3"]


async def test_insert_applies_one_versioned_edit(client, codegen_engine):
    uri = "file:///empty.py"
    open_doc(client, uri, "")
    client.edits.clear()
    got = await run(client, "codegen.synthesize", synth_args(uri, 0, 0, insert=True))
    want = reference(codegen_engine, "")
    assert got["applied"] is True
    assert got["program"] == want["program"] and got["program"].startswith(syn.MTPB_HEADER)
    assert len(client.edits) == 1
    (doc_edit,) = client.edits[0].edit.document_changes
    assert doc_edit.text_document.uri == uri and doc_edit.text_document.version == 1
    (edit,) = doc_edit.edits
    assert edit.range == types.Range(types.Position(0, 0), types.Position(0, 0))
    assert edit.new_text == want["program"]


async def test_insert_keeps_crlf_line_endings(client, codegen_engine):
    uri = "file:///crlf.py"
    open_doc(client, uri, "x = 1\r\n")
    client.edits.clear()
    got = await run(client, "codegen.synthesize", synth_args(uri, 1, 0, turns=TURNS[:1], insert=True))
    assert got["applied"] is True
    assert got["program"] == reference(codegen_engine, "x = 1\r\n", TURNS[:1])["program"]
    (edit,) = client.edits[0].edit.document_changes[0].edits
    assert edit.new_text == got["program"].replace("\n", "\r\n")


async def test_stale_version_writes_nothing(client):
    uri = "file:///stale.py"
    open_doc(client, uri, "x = 1\n")
    change(client, uri, 2, (1, 0), (1, 0), "y = 2\n")
    client.edits.clear()
    got = await run(client, "codegen.synthesize", synth_args(uri, 1, 0, turns=TURNS[:1], insert=True))
    assert got["applied"] is False
    assert "changed (version 2, the request was for 1); nothing was written" in got["reason"]
    assert got["program"]  # the answer still carries the program
    assert client.edits == []


def applied(text: str, edit: types.TextEdit) -> str:
    """`text` after one single-line-based edit (LF text, UTF-16 = UTF-32 here: ASCII)."""
    lines = text.splitlines(keepends=True)
    start = sum(map(len, lines[: edit.range.start.line])) + edit.range.start.character
    end = sum(map(len, lines[: edit.range.end.line])) + edit.range.end.character
    return text[:start] + edit.new_text + text[end:]


C1, C2 = "# Define a variable a = 3.\n", "# Double it.\n"
SELECTED = {
    # name: (document, selection range, its first line, the first line after the replaced ones, indent)
    "top-level": (f"import os\n\n{C1}{C2}\nx = 1\n", (2, 0, 3, 12), 2, 4, ""),
    "ends-at-next-line": (f"import os\n\n{C1}{C2}x = 1\n", (2, 3, 4, 0), 2, 4, ""),
    "last-lines": (f"import os\n{C1}{C2.rstrip()}", (1, 0, 2, 5), 1, None, ""),
    "in-a-function": (f"def f(a, b):\n    {C1}    {C2}    pass\n", (1, 4, 2, 16), 1, 3, "    "),
}


@pytest.mark.parametrize("name", list(SELECTED), ids=list(SELECTED))
async def test_range_replaces_the_selected_comment_lines_with_the_program(client, codegen_engine, name):
    text, (l0, c0, l1, c1), first, stop, indent = SELECTED[name]
    uri = f"file:///inplace-{name}.py"
    open_doc(client, uri, text)
    client.edits.clear()
    rng = {"start": {"line": l0, "character": c0}, "end": {"line": l1, "character": c1}}
    args = synth_args(uri, 0, 0, turns=TURNS[:2], insert=True, range=rng)
    del args["position"]
    got = await run(client, "codegen.synthesize", args)
    lines = text.splitlines(keepends=True)
    before = "".join(lines[:first])
    want = syn.synthesize(
        codegen_engine, TURNS[:2], GenerationParams(max_new_tokens=MAX_NEW), text_before=before, indent=indent
    )
    assert got["applied"] is True and got["program"] == want["program"]
    (edit,) = client.edits[0].edit.document_changes[0].edits
    end = (stop, 0) if stop is not None else (len(lines) - 1, len(lines[-1]))
    assert edit.range == types.Range(types.Position(first, 0), types.Position(*end))
    after = applied(text, edit)
    assert after == before + got["program"] + "".join(lines[stop:] if stop is not None else [])
    for turn in got["turns"]:  # each comment once, at the selection's depth, its code right after it
        comment = f"{indent}# {turn['prompt']}\n"
        assert after.count(f"# {turn['prompt']}") == 1
        assert comment + turn["code"] in after
        assert all(line.startswith(indent) for line in turn["code"].splitlines() if line.strip())


async def test_range_with_a_stale_version_writes_nothing(client):
    uri = "file:///inplace-stale.py"
    open_doc(client, uri, "# Define a variable a = 3.\n")
    change(client, uri, 2, (1, 0), (1, 0), "y = 2\n")
    client.edits.clear()
    rng = {"start": {"line": 0, "character": 0}, "end": {"line": 0, "character": 5}}
    got = await run(client, "codegen.synthesize", synth_args(uri, 0, 0, TURNS[:1], insert=True, range=rng))
    assert got["applied"] is False and "nothing was written" in got["reason"]
    assert client.edits == []


async def test_conversation_start_turn_end(client, codegen_engine):
    uri = "file:///conv.py"
    open_doc(client, uri, "import os\n")
    started = await run(
        client,
        "codegen.synthesis.start",
        {
            "textDocument": {"uri": uri},
            "position": {"line": 1, "character": 0},
            "maxNewTokensPerTurn": MAX_NEW,
        },
    )
    cid = started["id"]
    assert started["historyTokens"] == len(codegen_engine.loaded.tokenizer.encode("import os\n"))
    want = reference(codegen_engine, "import os\n", TURNS[:2])
    for k, prompt in enumerate(TURNS[:2]):
        got = await run(client, "codegen.synthesis.turn", {"id": cid, "prompt": prompt})
        assert got["turn"]["code"] == want["turns"][k]["code"]
        assert got["turn"]["prefillTokens"] == want["turns"][k]["prefillTokens"]
        assert got["turns"] == k + 1
    assert got["program"] == want["program"]
    ended = await run(client, "codegen.synthesis.end", {"id": cid})
    assert ended == {"id": cid, "ended": True, "turns": 2, "program": want["program"]}
    with pytest.raises(JsonRpcException, match=r"unknown conversation id .*\(ended\)"):
        await run(client, "codegen.synthesis.turn", {"id": cid, "prompt": "More."})


async def test_conversation_without_document_starts_from_the_mtpb_header(client, codegen_engine):
    started = await run(
        client, "codegen.synthesis.start", {"languageId": "python", "maxNewTokensPerTurn": MAX_NEW}
    )
    got = await run(client, "codegen.synthesis.turn", {"id": started["id"], "prompt": TURNS[0]})
    assert got["program"] == reference(codegen_engine, "", TURNS[:1])["program"]
    await run(client, "codegen.synthesis.end", {"id": started["id"]})


async def test_cancel_returns_the_turns_finished_so_far(client):
    uri = "file:///cancel-synth.py"
    open_doc(client, uri, "")
    client.edits.clear()
    n = 8
    args = synth_args(uri, 0, 0, turns=[f"Step {i}." for i in range(n)], insert=True, maxNewTokensPerTurn=96)
    params = types.ExecuteCommandParams(command="codegen.synthesize", arguments=[args])
    before = len(progress_messages(client, "codegen: synthesizing"))
    fut = client.protocol.send_request(types.WORKSPACE_EXECUTE_COMMAND, params, msg_id="synth-cancel")
    for _ in range(3000):  # until turn 2 starts (turn 1 is finished)
        runs = progress_messages(client, "codegen: synthesizing")
        if len(runs) > before and f"turn 2/{n}" in runs[-1]:
            break
        await asyncio.sleep(0.01)
    client.protocol.notify(types.CANCEL_REQUEST, types.CancelParams(id="synth-cancel"))
    got = await asyncio.wait_for(asyncio.wrap_future(fut), timeout=60)
    assert got["cancelled"] is True
    assert 1 <= len(got["turns"]) < n
    assert got["program"].startswith(syn.MTPB_HEADER + "# Step 0.\n")
    assert got["applied"] is False and "cancelled" in got["reason"]
    assert client.edits == []
    assert (await status(client))["version"]  # still serving


async def test_cancelled_conversation_turn_leaves_no_trace(client, codegen_engine):
    started = await run(client, "codegen.synthesis.start", {"maxNewTokensPerTurn": 200})
    cid = started["id"]
    params = types.ExecuteCommandParams(
        command="codegen.synthesis.turn", arguments=[{"id": cid, "prompt": "Write a long program."}]
    )
    fut = client.protocol.send_request(types.WORKSPACE_EXECUTE_COMMAND, params, msg_id="turn-cancel")
    await asyncio.sleep(0.05)
    client.protocol.notify(types.CANCEL_REQUEST, types.CancelParams(id="turn-cancel"))
    got = await asyncio.wait_for(asyncio.wrap_future(fut), timeout=60)
    assert got["cancelled"] is True and got["turns"] == 0 and got["program"] == ""
    assert got["turn"]["stopReason"] == "cancelled"
    got = await run(client, "codegen.synthesis.turn", {"id": cid, "prompt": TURNS[0]})
    want = syn.synthesize(codegen_engine, TURNS[:1], GenerationParams(max_new_tokens=200))
    assert got["turns"] == 1 and got["program"] == want["program"]
    await run(client, "codegen.synthesis.end", {"id": cid})


LINE0, LINE5 = {"line": 0, "character": 2}, {"line": 5, "character": 0}
BAD = {
    "no-arguments": (None, "takes one object argument"),
    "no-turns": (synth_args("file:///bad.py", 0, 0, turns=[]), "non-empty list"),
    "empty-turn": (synth_args("file:///bad.py", 0, 0, turns=["Fine.", "  "]), "turn 2 is empty"),
    "line-outside": (synth_args("file:///bad.py", 9, 0), r"position 9:0 is outside file:///bad.py"),
    "character-outside": (synth_args("file:///bad.py", 0, 40), r"position 0:40 is outside"),
    "unknown-document": (synth_args("file:///nope.py", 0, 0), "unknown document"),
    "zero-tokens": (synth_args("file:///bad.py", 0, 0, maxNewTokensPerTurn=0), "from 1 to 255"),
    "huge-tokens": (synth_args("file:///bad.py", 0, 0, maxNewTokensPerTurn=10**9), "from 1 to 255"),
    "string-tokens": (synth_args("file:///bad.py", 0, 0, maxNewTokensPerTurn="many"), "from 1 to 255"),
    "bad-top-p": (synth_args("file:///bad.py", 0, 0, topP=0), "topP must be"),
    "seed-2^64": (synth_args("file:///bad.py", 0, 0, seed=2**64), "seed must be an integer from 0"),
    "infinite-temperature": (
        synth_args("file:///bad.py", 0, 0, temperature=float("inf")),
        "temperature must be",
    ),
    "range-not-lines": (
        synth_args("file:///bad.py", 0, 0, range={"start": {"line": 1, "character": 0}, "end": LINE5}),
        r"range lines 1\.\.5 are not lines of file:///bad.py",
    ),
    "range-inverted": (
        synth_args("file:///bad.py", 0, 0, range={"start": {"line": 1, "character": 0}, "end": LINE0}),
        "range lines 1..0",
    ),
    "range-malformed": (synth_args("file:///bad.py", 0, 0, range={"start": 0}), "'range' must be"),
}


@pytest.mark.parametrize("name", list(BAD), ids=list(BAD))
async def test_bad_synthesize_arguments_are_clear_errors(client, name):
    obj, message = BAD[name]
    client.edits.clear()
    with pytest.raises(JsonRpcException, match=message) as error:
        await run(client, "codegen.synthesize", obj)
    assert error.value.code == -32602  # InvalidParams (a seed of 2^64 was -32603)
    assert client.edits == []
    assert (await status(client))["version"]  # the server keeps serving


@pytest.mark.parametrize(
    ("command", "obj", "message"),
    [
        (
            "codegen.synthesis.turn",
            {"id": "no-such-id", "prompt": "x"},
            "unknown conversation id 'no-such-id'",
        ),
        ("codegen.synthesis.turn", {"prompt": "x"}, "'id' must be the conversation id"),
        ("codegen.synthesis.end", {"id": "no-such-id"}, "unknown conversation id"),
        ("codegen.synthesis.start", {"maxNewTokensPerTurn": -1}, "from 1 to 255"),
        ("codegen.synthesis.start", {"languageId": 7}, "languageId must be"),
    ],
    ids=["turn-unknown-id", "turn-no-id", "end-unknown-id", "start-negative-tokens", "start-bad-language"],
)
async def test_bad_conversation_arguments_are_clear_errors(client, command, obj, message):
    with pytest.raises(JsonRpcException, match=message):
        await run(client, command, obj)
    assert (await status(client))["version"]


async def test_empty_turn_in_a_conversation_is_an_error_and_keeps_it(client):
    started = await run(client, "codegen.synthesis.start", {"maxNewTokensPerTurn": MAX_NEW})
    with pytest.raises(JsonRpcException, match="prompt is empty"):
        await run(client, "codegen.synthesis.turn", {"id": started["id"], "prompt": ""})
    got = await run(client, "codegen.synthesis.turn", {"id": started["id"], "prompt": TURNS[0]})
    assert got["turns"] == 1
    await run(client, "codegen.synthesis.end", {"id": started["id"]})


async def test_idle_conversations_expire(client):
    set_idle = types.DidChangeConfigurationParams(settings={"codegen": {"synthesisIdleSeconds": 0.3}})
    client.workspace_did_change_configuration(set_idle)
    try:
        started = await run(client, "codegen.synthesis.start", {"maxNewTokensPerTurn": MAX_NEW})
        key = f"synthesis:{started['id']}"
        await run(client, "codegen.synthesis.turn", {"id": started["id"], "prompt": TURNS[0]})
        assert key in (await status(client))["models"][0]["engine"]["cachedTokens"]
        await asyncio.sleep(1.0)  # the idle check frees it without any request
        assert key not in (await status(client))["models"][0]["engine"]["cachedTokens"]
        with pytest.raises(JsonRpcException, match=r"expired after 0.3 s idle"):
            await run(client, "codegen.synthesis.turn", {"id": started["id"], "prompt": TURNS[1]})
    finally:
        reset = types.DidChangeConfigurationParams(settings={"codegen": {"synthesisIdleSeconds": 600}})
        client.workspace_did_change_configuration(reset)
