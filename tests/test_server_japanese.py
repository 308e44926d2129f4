"""Through the real server: Markdown gets Japanese from GPT-NeoX-Japanese, Python gets code from CodeGen."""

from __future__ import annotations

import uuid

import pytest
import pytest_asyncio

from inference.engine import Engine, GenerationParams
from inference.heal import split
from inference.loader import load_model
from lsp_server import postprocess
from tests.checkpoints import make_neox_japanese_checkpoint
from tests.conftest import Servers, inline, open_doc, status

MAX_NEW = 12
pytestmark = pytest.mark.asyncio(loop_scope="module")

JA_DOC = "# 吾輩は猫である\n\n吾輩は猫である。名前はまだ無い。どこで生れたか"
PY_DOC = "def hello(name):\n    "


@pytest.fixture(scope="module")
def ja_checkpoint(tmp_path_factory):
    """A tiny random-weight GPT-NeoX-Japanese checkpoint (partial rotary, untied) with the real vocabulary."""
    pytest.importorskip("transformers")
    return make_neox_japanese_checkpoint(
        tmp_path_factory.mktemp("ja-tiny"),
        n_layer=2,
        hidden_size=64,
        n_head=4,
        rotary_pct=0.5,
        tie_word_embeddings=False,
        max_position_embeddings=256,
        seed=3,
    )


@pytest.fixture(scope="module")
def ja_engine(ja_checkpoint):
    return Engine(load_model(str(ja_checkpoint), device="cpu", dtype="float32", allow_fallback=False))


def expected_completion(engine, before: str, language: str, mode: str) -> str:
    """The engine's greedy completion of the same prompt, trimmed as the server documents it."""
    line_prefix = before[before.rfind("\n") + 1 :]
    patterns = postprocess.patterns_for(language, mode, line_prefix)
    kept, heal = split(before)  # trailing spaces healed (tokenHealing, on by default)
    params = GenerationParams(max_new_tokens=MAX_NEW, stop_patterns=patterns, heal=heal)
    result = engine.generate(f"ref-{uuid.uuid4()}", kept, params)
    return postprocess.trim(result.text, patterns)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def client(start_module_server, codegen_checkpoint, ja_checkpoint):
    options = {
        "model": str(codegen_checkpoint),
        "languageModels": {"markdown": str(ja_checkpoint), "plaintext": str(ja_checkpoint)},
        "maxNewTokens": MAX_NEW,
    }
    return await start_module_server(options)


async def test_markdown_gets_japanese_and_python_gets_codegen(
    client, ja_engine, codegen_engine, ja_checkpoint, codegen_checkpoint
):
    open_doc(client, "file:///notes.md", JA_DOC, language="markdown")
    open_doc(client, "file:///hello.py", PY_DOC, language="python")
    lines = JA_DOC.split("\n")
    md_items = await inline(client, "file:///notes.md", len(lines) - 1, len(lines[-1]), automatic=False)
    py_items = await inline(client, "file:///hello.py", 1, 4, automatic=False)

    want_md = expected_completion(ja_engine, JA_DOC, "markdown", "sentence")
    want_py = expected_completion(codegen_engine, PY_DOC, "python", "block")
    assert want_md and want_py  # both models produce something here, so the comparison means something
    assert md_items and md_items[0].insert_text == want_md
    assert py_items and py_items[0].insert_text == want_py
    # The two answers come from different models: a Japanese tokenizer cannot produce CodeGen's text and back.
    assert want_md != expected_completion(codegen_engine, JA_DOC, "markdown", "sentence")

    families = {m["name"]: m["family"] for m in (await status(client))["models"]}
    assert families == {str(ja_checkpoint): "gpt_neox_japanese", str(codegen_checkpoint): "codegen"}


async def test_plaintext_shares_the_loaded_japanese_model(client, ja_engine):
    text = "今日は良い天気ですね。明日は"
    open_doc(client, "file:///memo.txt", text, language="plaintext")
    items = await inline(client, "file:///memo.txt", 0, len(text), automatic=False)
    want = expected_completion(ja_engine, text, "plaintext", "sentence")
    assert (items[0].insert_text if items else "") == want
    assert len((await status(client))["models"]) == 2  # one Japanese model serves both prose languages


async def test_memory_budget_unloads_the_least_recently_used_model(
    ja_checkpoint, codegen_checkpoint, ja_engine, codegen_engine
):
    # The budget counts resident bytes (weights + KV cache allocated): each model holds more than 1 MiB, so
    # a 1 MiB budget keeps only the model in use (the one just used is never unloaded).
    servers = Servers()
    try:
        client = await servers(
            {
                "model": str(codegen_checkpoint),
                "languageModels": {"markdown": str(ja_checkpoint)},
                "maxNewTokens": MAX_NEW,
                "cacheBudgetMb": 512,
                "modelMemoryBudgetMb": 1,
            }
        )
        lines, memo = JA_DOC.split("\n"), "今日は良い天気ですね。明日は"
        open_doc(client, "file:///a.md", JA_DOC, language="markdown")
        open_doc(client, "file:///b.py", PY_DOC, language="python")
        open_doc(client, "file:///c.md", memo, language="markdown")
        want_md = expected_completion(ja_engine, JA_DOC, "markdown", "sentence")
        want_py = expected_completion(codegen_engine, PY_DOC, "python", "block")
        want_memo = expected_completion(ja_engine, memo, "markdown", "sentence")
        for uri, (line, char), want, family in [
            ("file:///a.md", (len(lines) - 1, len(lines[-1])), want_md, "gpt_neox_japanese"),
            ("file:///b.py", (1, 4), want_py, "codegen"),
            ("file:///c.md", (0, len(memo)), want_memo, "gpt_neox_japanese"),  # loaded again
        ]:
            items = await inline(client, uri, line, char, automatic=False)
            assert items and items[0].insert_text == want
            models = (await status(client))["models"]
            assert [m["family"] for m in models] == [family] and models[0]["weightMb"] > 1
    finally:
        await servers.close()
