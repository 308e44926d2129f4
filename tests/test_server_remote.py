"""`codegen-lsp serve` with `remote` set: completions from a fake OpenAI-compatible server; outages."""

from __future__ import annotations

import asyncio

import pytest

from lsp_server.cli import main
from tests.checkpoints import CODEGEN_TOKENIZER_DIR
from tests.conftest import inline, open_doc, status
from tests.fake_openai import FakeOpenAI
from tokenizer import load_tokenizer

TOKENIZER = load_tokenizer(CODEGEN_TOKENIZER_DIR)
ANSWER = "    return a + b\n\n\ndef sub(a, b):\n    return a - b\n"


@pytest.fixture
def fake():
    server = FakeOpenAI(TOKENIZER, TOKENIZER.encode(ANSWER))
    yield server
    server.stop()


def remote_options(url: str, **extra) -> dict:
    return {"remote": {"url": url, "model": "fake", "tokenizer": str(CODEGEN_TOKENIZER_DIR)}, **extra}


async def test_remote_completion_outage_and_recovery(start_server, fake):
    client = await start_server(remote_options(fake.url, maxNewTokens=16))
    uri = "file:///w/add.py"
    open_doc(client, uri, "def add(a, b):\n")
    items = await inline(client, uri, 1, 0, automatic=False)
    assert [i.insert_text for i in items] == ["    return a + b"]  # block mode stops at the blank lines
    assert fake.requests[0]["prompt"] == TOKENIZER.encode("def add(a, b):\n")  # (then maybe a prefetch)
    port = fake.port
    fake.stop()
    for name in ("mul", "div"):  # other documents: the typed-through cache would answer for add.py
        open_doc(client, f"file:///w/{name}.py", f"def {name}(a, b):\n")
        assert await inline(client, f"file:///w/{name}.py", 1, 0, automatic=False) == []
    uri = "file:///w/div.py"
    st = await status(client, uri)
    assert st["completions"]["lastReason"] == "remote_unavailable"
    (model,) = st["models"]
    assert model["device"] == "remote" and model["engine"]["state"] == "down"
    assert "ConnectError" in model["engine"]["lastError"]
    told = [m for m in client.messages if "completion server is unavailable" in m.message]
    assert len(told) == 1  # one message per outage, not one per keystroke
    back = FakeOpenAI(TOKENIZER, TOKENIZER.encode(ANSWER), port=port)
    try:
        items = await inline(client, uri, 1, 0, automatic=False)
        assert [i.insert_text for i in items] == [
            "    return a + b"
        ]  # the fake's answer, whatever the prompt
        assert (await status(client, uri))["models"][0]["engine"]["state"] == "up"
    finally:
        back.stop()


async def test_prose_stays_local_while_code_goes_remote(start_server, fake, codegen_checkpoint):
    options = remote_options(fake.url, model=str(codegen_checkpoint))
    options["languageModels"] = {"markdown": str(codegen_checkpoint)}
    client = await start_server(options)
    open_doc(client, "file:///w/a.md", "Some text here", language="markdown")
    await inline(client, "file:///w/a.md", 0, 14, automatic=False)
    assert fake.requests == []  # markdown is served by the local model
    open_doc(client, "file:///w/b.py", "def add(a, b):\n")
    await inline(client, "file:///w/b.py", 1, 0, automatic=False)
    assert fake.requests[0]["prompt"] == TOKENIZER.encode("def add(a, b):\n")
    devices = sorted(m["device"] for m in (await status(client))["models"])
    assert devices == ["cpu", "remote"]


async def test_per_language_remote_and_bad_remote_setting(start_server, fake, codegen_checkpoint):
    options = {"model": str(codegen_checkpoint), "languageModels": {"python": remote_options(fake.url)}}
    options["remote"] = {"url": "not a url", "model": "m"}
    client = await start_server(options)
    await asyncio.sleep(0)
    assert any("invalid setting remote" in m.message for m in client.messages)
    open_doc(client, "file:///w/b.py", "def add(a, b):\n")
    await inline(client, "file:///w/b.py", 1, 0, automatic=False)
    assert fake.requests[0]["prompt"] == TOKENIZER.encode("def add(a, b):\n")


async def test_synthesis_goes_to_the_remote_server(start_server, fake):
    """Synthesis calls the same backend: each turn's MTPB prompt reaches the server as token ids."""
    from lsprotocol import types

    client = await start_server(remote_options(fake.url))
    uri = "file:///w/synth.py"
    open_doc(client, uri, "")
    turns = ["Add two numbers.", "Subtract them."]
    args = {
        "textDocument": {"uri": uri, "version": 1},
        "position": {"line": 0, "character": 0},
        "turns": turns,
    }
    cmd = types.ExecuteCommandParams(command="codegen.synthesize", arguments=[args])
    got = await client.workspace_execute_command_async(cmd)
    assert len(fake.requests) == 2
    prompts = [TOKENIZER.decode(r["prompt"]) for r in fake.requests]
    assert prompts[0].endswith(f"# {turns[0]}\n") and prompts[1].endswith(f"# {turns[1]}\n")
    assert [t["code"] for t in got["turns"]] == ["    return a + b"] * 2  # cut at the blank lines


def test_cli_complete_remote(fake, tmp_path, capsys):
    src = tmp_path / "add.py"
    src.write_text("def add(a, b):\n")
    args = ["complete", "--file", str(src), "--remote-url", fake.url, "--remote-model", "fake"]
    args += ["--remote-tokenizer", str(CODEGEN_TOKENIZER_DIR)]
    assert main(args) == 0
    assert capsys.readouterr().out == "    return a + b"
    fake.mode = "http500"
    assert main(args) == 1
    assert "remote_unavailable: HTTP 500" in capsys.readouterr().err
    assert main(["complete", "--file", str(src), "--remote-url", fake.url]) == 2
    assert "--remote-url and --remote-model go together" in capsys.readouterr().err
