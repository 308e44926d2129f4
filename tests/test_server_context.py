"""Project context through the real server: a second open document's definitions in the prompt (status shows
the chunk), never a secret or a file outside the workspace, a closed document's chunks dropped, bad files
skipped, and Qwen2.5-Coder's repository layout as the exact prompt the engine answers."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest
import pytest_asyncio
from lsprotocol import types

from inference.engine import Engine
from inference.generate import GenerationParams
from inference.loader import load_model
from lsp_server import fim, postprocess
from tests.checkpoints import make_llama_checkpoint
from tests.conftest import Servers, change, inline, open_doc, status

pytestmark = pytest.mark.asyncio(loop_scope="module")
MODELS = (
    "class Invoice:\n"
    '    """A customer invoice."""\n\n'
    "    def __init__(self, customer: str):\n"
    "        self.customer = customer\n"
    "        self.lines = []\n\n"
    "    def add_line(self, item: str, cents: int, quantity: int = 1) -> None:\n"
    "        self.lines.append((item, cents, quantity))\n\n"
    "    def total_cents(self) -> int:\n"
    "        return sum(cents * quantity for _, cents, quantity in self.lines)\n"
)
REPORT = "from models import Invoice\n\n\ndef render(invoice: Invoice) -> str:\n    total = invoice."
SECRET = "INVOICE_TOTAL_KEY=render-invoice-total-cents\n"
OPTS = {"maxNewTokens": 4, "maxLatencyMs": 0, "prefillOnOpen": False, "prefetch": False}


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A workspace folder with models.py and report.py, a .env, and a file beside it outside the folder."""
    root = tmp_path_factory.mktemp("project")
    ws = root / "shop"
    ws.mkdir()
    (ws / "models.py").write_text(MODELS)
    (ws / "report.py").write_text(REPORT)
    (ws / ".env").write_text(SECRET)
    (root / "outside.py").write_text("def render_invoice_total(invoice):\n    return invoice.total_cents()\n")
    return ws


@pytest_asyncio.fixture(loop_scope="module")
async def servers():
    s = Servers()
    yield s
    await s.close()


def end_of(text: str) -> tuple[int, int]:
    lines = text.split("\n")
    return len(lines) - 1, len(lines[-1])


async def context_of(client, uri: str) -> dict:
    return (await status(client, uri))["completions"]["lastPrompt"]


async def test_a_second_open_document_defining_the_names_is_in_the_prompt(
    servers, codegen_checkpoint, project
):
    client = await servers({"model": str(codegen_checkpoint), **OPTS}, folders=[project])
    models, report = (project / "models.py").as_uri(), (project / "report.py").as_uri()
    open_doc(client, models, MODELS)
    open_doc(client, report, REPORT)
    await inline(client, report, *end_of(REPORT), automatic=False)
    last = await context_of(client, report)
    assert [c["uri"] for c in last["context"]] == [models]
    chunk = last["context"][0]
    assert chunk["source"] == "definition" and chunk["lines"] == [1, MODELS.count("\n")]
    assert last["contextTokens"] > chunk["tokens"] > 0
    assert last["promptTokens"] == last["prefixTokens"] + last["contextTokens"]  # CodeGen: no FIM, no suffix
    assert last["prefilledTokens"] == last["promptTokens"]  # the first request prefilled it all


async def test_a_secret_and_a_file_outside_the_workspace_never_are(servers, codegen_checkpoint, project):
    client = await servers({"model": str(codegen_checkpoint), **OPTS}, folders=[project])
    outside, env = (project.parent / "outside.py").as_uri(), (project / ".env").as_uri()
    report = (project / "report.py").as_uri()
    open_doc(client, env, SECRET, language="dotenv")
    open_doc(client, outside, (project.parent / "outside.py").read_text())
    open_doc(client, report, REPORT)  # models.py only on disk: its definition is read from the file
    await inline(client, report, *end_of(REPORT), automatic=False)
    used = [c["uri"] for c in (await context_of(client, report))["context"]]
    assert used == [(project / "models.py").as_uri()]
    await inline(
        client, outside, 1, 4, automatic=False
    )  # completing outside the workspace: no context at all
    assert (await context_of(client, outside))["contextTokens"] == 0


async def test_closing_a_document_drops_its_chunks(servers, codegen_checkpoint, project):
    """billing.py exists only in the editor: open, its class is in the prompt; closed, never again."""
    client = await servers({"model": str(codegen_checkpoint), **OPTS}, folders=[project])
    billing, report = (project / "billing.py").as_uri(), (project / "draft.py").as_uri()
    text = REPORT.replace("from models", "from billing")
    open_doc(client, billing, MODELS)
    open_doc(client, report, text)
    await inline(client, report, *end_of(text), automatic=False)
    assert [c["uri"] for c in (await context_of(client, report))["context"]] == [billing]
    client.text_document_did_close(types.DidCloseTextDocumentParams(types.TextDocumentIdentifier(billing)))
    more = "\n    count = len(invoice."  # typed after the close: the model is asked again
    change(client, report, 2, end_of(text), end_of(text), more)
    calls = (await status(client))["completions"]["modelCalls"]
    await inline(client, report, *end_of(text + more), automatic=False)
    assert (await status(client))["completions"]["modelCalls"] == calls + 1
    last = await context_of(client, report)
    assert last["context"] == [] and last["contextTokens"] == 0


async def test_bad_files_are_skipped_and_completion_is_unaffected(
    servers, codegen_checkpoint, project, tmp_path
):
    """Imported modules that cannot be used, a workspace folder that does not exist: one log line each."""
    ws = tmp_path / "bad"
    ws.mkdir()
    (ws / "models.py").write_text(MODELS)
    with open(ws / "huge.py", "wb") as f:  # 50 MB, sparse
        f.truncate(50 << 20)
    (ws / "latin.py").write_bytes(b"caf\xe9 = 1\n")
    os.symlink(ws / "loop_b.py", ws / "loop_a.py")
    os.symlink(ws / "loop_a.py", ws / "loop_b.py")
    os.mkfifo(ws / "locked.py")  # unreadable as a file (and a read would block): never read
    os.symlink(ws / "gone.py", ws / "vanished.py")  # its target vanished
    text = "from huge import Invoice\nfrom latin import Invoice\nfrom loop_a import Invoice\n"
    text += "from locked import Invoice\nfrom vanished import Invoice\n" + REPORT
    client = await servers(
        {"model": str(codegen_checkpoint), **OPTS, "logLevel": "info"}, folders=[ws, tmp_path / "missing"]
    )
    uri = (ws / "report.py").as_uri()
    open_doc(client, uri, text)
    items = await inline(client, uri, *end_of(text), automatic=False)
    last = await context_of(client, uri)
    assert [c["uri"] for c in last["context"]] == [(ws / "models.py").as_uri()]
    assert (await status(client, uri))["completions"]["lastReason"] in (None, "blank", "stop_pattern_at_once")
    assert isinstance(items, list) and not [m for m in client.messages if m.type <= types.MessageType.Warning]


@pytest.fixture(scope="module")
def qwen_checkpoint(tmp_path_factory):
    return make_llama_checkpoint(tmp_path_factory.mktemp("qwen-ctx"), n_layer=2, init_std=1.5, seed=5)


async def test_qwen_gets_the_repository_layout(servers, qwen_checkpoint, project):
    """The answer is the engine's greedy completion of `<|repo_name|>shop` + the chunk + the FIM prompt."""
    opts = {"model": str(qwen_checkpoint), **OPTS, "maxNewTokens": 8, "dtype": "float32", "fim": "on"}
    client = await servers(opts, folders=[project])
    models, report = (project / "models.py").as_uri(), (project / "report.py").as_uri()
    open_doc(client, models, MODELS)
    open_doc(client, report, REPORT)
    items = await inline(client, report, *end_of(REPORT), automatic=False)
    engine = Engine(load_model(str(qwen_checkpoint), dtype="float32"))
    tok = engine.loaded.tokenizer
    t = fim.template_for(tok)
    sep, repo = tok.special_id(t.file_sep), tok.special_id(t.repo_name)
    head = [
        repo,
        *tok.encode("shop\n"),
        sep,
        *tok.encode("models.py\n" + MODELS),
        sep,
        *tok.encode("report.py\n"),
    ]
    ids = head + fim.build(t, tok, tok.encode(REPORT), [])
    patterns = postprocess.patterns_for("python", "block", REPORT.rsplit("\n", 1)[1])
    params = GenerationParams(max_new_tokens=8, stop_patterns=patterns, stop_ids=fim.stop_ids(t, tok))
    want = postprocess.trim(engine.generate(f"ref-{uuid.uuid4()}", ids, params).text, patterns).rstrip()
    assert [i.insert_text for i in items] == ([want] if want.strip() else [])
    last = await context_of(client, report)
    assert last["contextTokens"] == len(head) and last["promptTokens"] == len(ids)
