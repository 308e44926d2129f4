"""Fill-in-the-middle through the real server (subprocess) with a random Qwen2-layout checkpoint: the answer
is the engine's greedy completion of the exact FIM prompt; `fim` off / on; status says which template ran."""

from __future__ import annotations

import uuid

import pytest
import pytest_asyncio

from inference.engine import Engine
from inference.generate import GenerationParams
from inference.heal import split as split_heal
from inference.loader import load_model
from lsp_server import fim, postprocess
from tests.checkpoints import make_llama_checkpoint
from tests.conftest import Servers, change, inline, open_doc, status

MAX_NEW = 10
pytestmark = pytest.mark.asyncio(loop_scope="module")
TEXT = "import math\n\ndef area(r):\n    return \n\nprint(area(2.0))\nprint(area(3.0))\n"
CURSOR = (3, 11)  # after "    return "


@pytest.fixture(scope="module")
def qwen_checkpoint(tmp_path_factory):
    return make_llama_checkpoint(tmp_path_factory.mktemp("qwen-fim"), n_layer=2, init_std=1.5, seed=5)


@pytest.fixture(scope="module")
def engine(qwen_checkpoint):
    return Engine(load_model(str(qwen_checkpoint), dtype="float32"))


@pytest_asyncio.fixture(loop_scope="module")
async def servers():
    s = Servers()
    yield s
    await s.close()


def expected(engine, before: str, after: str, use_fim: bool) -> str:
    """The engine's greedy answer to the prompt the server documents (block mode), trimmed the same way."""
    tok = engine.loaded.tokenizer
    line_prefix = before[before.rfind("\n") + 1 :]
    patterns = postprocess.patterns_for("python", "block", line_prefix)
    template = fim.template_for(tok)
    before, heal = split_heal(before)  # trailing spaces healed (tokenHealing, on by default)
    if use_fim:
        ids = fim.build(template, tok, tok.encode(before), tok.encode(after))
        stop_ids = fim.stop_ids(template, tok)
    else:
        ids, stop_ids = tok.encode(before), ()
    params = GenerationParams(max_new_tokens=MAX_NEW, stop_patterns=patterns, stop_ids=stop_ids, heal=heal)
    text = engine.generate(f"ref-{uuid.uuid4()}", ids, params).text
    text = postprocess.cut_suffix_repeat(postprocess.trim(text, patterns), after)
    return postprocess.fit_suffix(text, after.partition("\n")[0])[0]


def split(text: str, line: int, character: int) -> tuple[str, str]:
    lines = text.splitlines(keepends=True)
    offset = sum(len(x) for x in lines[:line]) + character
    return text[:offset], text[offset:]


@pytest.mark.parametrize("mode", ["auto", "on", "off"])
async def test_answer_is_the_greedy_completion_of_the_fim_prompt(servers, qwen_checkpoint, engine, mode):
    client = await servers(
        {
            "model": str(qwen_checkpoint),
            "maxNewTokens": MAX_NEW,
            "maxLatencyMs": 0,
            "fim": mode,
            "dtype": "float32",
        }
    )
    uri = f"file:///fim-{mode}.py"
    open_doc(client, uri, TEXT)
    items = await inline(client, uri, *CURSOR, automatic=False)
    before, after = split(TEXT, *CURSOR)
    want = expected(engine, before, after, use_fim=mode != "off")
    assert want.strip()  # the checkpoint answers something here: the comparison is not of two empty lists
    assert [i.insert_text for i in items] == ([want] if want.strip() else [])
    last = (await status(client, uri))["completions"]["lastPrompt"]
    if mode == "off":
        assert last["fimTemplate"] is None and last["suffixTokens"] == 0
    else:
        assert last["fimTemplate"] == "qwen2.5-coder"
        assert last["suffixTokens"] == len(engine.loaded.tokenizer.encode(after))  # under the 64-token budget
        assert last["promptTokens"] == last["prefixTokens"] + last["suffixTokens"] + 3


async def test_typing_in_the_middle_reuses_the_prefix(servers, qwen_checkpoint):
    """A keystroke before unchanged code prefills only what follows the changed prefix tail."""
    client = await servers({"model": str(qwen_checkpoint), "maxNewTokens": 4, "maxLatencyMs": 0, "fim": "on"})
    uri = "file:///typing.py"
    open_doc(client, uri, TEXT)
    await inline(client, uri, *CURSOR, automatic=False)
    first = (await status(client))["latency"]["last"]
    change(client, uri, 2, CURSOR, CURSOR, "m")
    await inline(client, uri, CURSOR[0], CURSOR[1] + 1, automatic=False)
    second = (await status(client))["latency"]["last"]
    last = (await status(client, uri))["completions"]["lastPrompt"]
    assert second["reusedTokens"] > 0
    # what is prefilled again: the changed end of the prefix, the sentinels after it and the suffix
    assert second["prefillTokens"] <= last["suffixTokens"] + 3 + 3
    assert (
        first["promptTokens"] == second["promptTokens"] - 1 or second["promptTokens"] >= first["promptTokens"]
    )


async def test_fim_on_without_sentinels_says_so_and_completes(servers, codegen_checkpoint):
    """CodeGen-1's tokenizer has no FIM tokens: `fim: on` says so once and completes from the prefix."""
    opts = {"model": str(codegen_checkpoint), "maxNewTokens": 6, "maxLatencyMs": 0, "fim": "on"}
    client = await servers(opts)
    uri = "file:///codegen.py"
    open_doc(client, uri, TEXT)
    await inline(client, uri, *CURSOR, automatic=False)
    await inline(client, uri, *CURSOR, automatic=False)
    told = [m.message for m in client.messages if "fill-in-the-middle" in m.message]
    assert len(told) == 1 and codegen_checkpoint.name in told[0]
    assert (await status(client, uri))["completions"]["lastPrompt"]["fimTemplate"] is None


@pytest.mark.parametrize("mode", ["auto", "on"])
async def test_the_builtin_model_uses_fim_only_when_told(servers, mode):
    """Its tokenizer has Qwen2.5-Coder's sentinels but turns `auto` off (FIM does worse for it than plain)."""
    client = await servers({"model": "builtin", "maxNewTokens": 4, "maxLatencyMs": 0, "fim": mode})
    uri = f"file:///builtin-{mode}.py"
    open_doc(client, uri, TEXT)
    await inline(client, uri, *CURSOR, automatic=False)
    want = "qwen2.5-coder" if mode == "on" else None
    assert (await status(client, uri))["completions"]["lastPrompt"]["fimTemplate"] == want


async def accept_twice(client, uri: str, before: str, after: str) -> tuple[list[str], dict]:
    """Ask in the middle, accept (didChange inserting the answer at the cursor), ask again, twice."""
    open_doc(client, uri, before + after)
    answers = []
    for k in range(3):
        lines = before.split("\n")
        line, character = len(lines) - 1, len(lines[-1].encode("utf-16-le")) // 2  # UTF-16 positions
        items = await inline(client, uri, line, character, automatic=False)
        assert len(items) == 1, items
        answers.append(items[0].insert_text)
        change(client, uri, k + 2, (line, character), (line, character), items[0].insert_text)
        before += items[0].insert_text
    return answers, (await status(client))["completions"]


async def test_prefetch_and_typed_through_with_fim(servers, qwen_checkpoint):
    """The answer after an acceptance comes from the FIM prefetch (suffix kept) and equals a fresh call."""
    opts = {"model": str(qwen_checkpoint), "maxNewTokens": 6, "maxLatencyMs": 0, "completionMode": "free"}
    opts.update(stopPatterns={"python": []}, prefillOnOpen=False)
    before, after = split(TEXT, *CURSOR)
    fresh = await servers({**opts, "prefetch": False})
    ahead = await servers(opts)
    want, comp_f = await accept_twice(fresh, "file:///fim-fresh.py", before, after)
    got, comp_a = await accept_twice(ahead, "file:///fim-ahead.py", before, after)
    assert all(want) and got == want
    assert comp_f["modelCalls"] == 3 and comp_a["modelCalls"] == 1
    assert comp_a["prefetch"]["hits"] == 2
    assert comp_a["lastPrompt"]["file:///fim-ahead.py"]["fimTemplate"] == "qwen2.5-coder"
