"""Prefetch through the protocol: after a suggestion is accepted (didChange inserting it), the next inline
completion comes from the completion computed ahead, with the text a fresh model call gives; an edit off
that path stops the job, and the answer is the fresh model call's."""

from __future__ import annotations

import pytest
from lsprotocol import types

from tests.checkpoints import make_codegen_checkpoint
from tests.conftest import change, inline, open_doc, status

OPTIONS = {
    "maxNewTokens": 8,
    "completionMode": "free",
    "stopPatterns": {"python": []},
    "prefillOnOpen": False,
}
TEXT = "def add(a, b):\n    return "


def text_of(items) -> str:
    assert len(items) == 1, items
    return items[0].insert_text


async def tab_tab(client, uri: str, n: int = 3) -> tuple[list[str], dict]:
    """Ask, accept (didChange inserting the answer at the cursor), ask again: `n` answers, and the status."""
    text = TEXT
    open_doc(client, uri, text)
    answers = []
    for k in range(n):
        lines = text.split("\n")
        line, character = len(lines) - 1, len(lines[-1])
        got = text_of(await inline(client, uri, line, character, automatic=False))
        answers.append(got)
        change(client, uri, k + 2, (line, character), (line, character), got)
        text += got
    return answers, await status(client)


@pytest.mark.asyncio
async def test_the_answer_after_acceptance_is_the_prefetched_one_and_equals_a_fresh_call(
    start_server, codegen_checkpoint
):
    model = {"model": str(codegen_checkpoint), **OPTIONS}
    fresh = await start_server({**model, "prefetch": False})
    ahead = await start_server(model)
    want, st_fresh = await tab_tab(fresh, "file:///fresh.py")
    got, st_ahead = await tab_tab(ahead, "file:///ahead.py")
    assert all(want) and got == want
    assert st_fresh["completions"]["modelCalls"] == 3
    assert st_fresh["completions"]["prefetch"] == {"started": 0, "hits": 0, "stopped": 0}
    # One model call for the first answer; the two after an acceptance came from prefetches.
    assert st_ahead["completions"]["modelCalls"] == 1
    assert st_ahead["completions"]["prefetch"]["hits"] == 2


@pytest.fixture(scope="module")
def slow_checkpoint(tmp_path_factory):
    """A model whose 120-token prefetch outlasts a keystroke's trip: a step reads 4 x 12 x 512^2 + 512 x
    51,200 floats (155 MB), so 120 steps take >= 0.2 s even at 90 GB/s, where the tiny model's took ~0.05 s
    (a loaded machine sent the keystroke after that prefetch had finished)."""
    return make_codegen_checkpoint(
        tmp_path_factory.mktemp("codegen-slow"),
        n_layer=4,
        n_embd=512,
        n_head=8,
        rotary_dim=16,
        n_positions=256,
    )


@pytest.mark.asyncio
async def test_a_keystroke_off_the_path_stops_the_prefetch(start_server, slow_checkpoint):
    model = {"model": str(slow_checkpoint), **OPTIONS, "maxNewTokens": 120}
    fresh = await start_server({**model, "prefetch": False})
    ahead = await start_server(model)
    answers, on_edit = [], []
    for client in (fresh, ahead):
        uri = "file:///keys.py"
        open_doc(client, uri, TEXT)
        first = text_of(await inline(client, uri, 1, 11, automatic=False))
        # The user types something else than the suggestion while its continuation is being computed.
        change(client, uri, 2, (1, 11), (1, 11), "b *")
        on_edit.append((await status(client))["completions"]["prefetch"])  # the edit alone, no request yet
        answers.append((first, text_of(await inline(client, uri, 1, 14, automatic=False))))
        st = await status(client)
        answers.append(st["completions"])
    (first_f, second_f), comp_f, (first_a, second_a), comp_a = answers
    assert (first_a, second_a) == (first_f, second_f)
    assert comp_f["modelCalls"] == comp_a["modelCalls"] == 2
    assert comp_a["prefetch"]["hits"] == 0 and comp_a["prefetch"]["stopped"] >= 1
    assert on_edit[0]["stopped"] == 0 and on_edit[1]["stopped"] == 1  # the keystroke stopped it


@pytest.mark.asyncio
async def test_prefetch_setting_is_validated(start_server, codegen_checkpoint):
    client = await start_server({"model": str(codegen_checkpoint), **OPTIONS, "prefetch": "yes"})
    st = await status(client)
    assert st["settings"]["prefetch"] is True  # the default kept
    set_off = types.DidChangeConfigurationParams(settings={"codegen": {"prefetch": False}})
    client.workspace_did_change_configuration(set_off)
    assert (await status(client))["settings"]["prefetch"] is False


async def line_then_rest(client, uri: str, text: str) -> tuple[list[str], dict]:
    """Ask; accept the first line of the (multi-line) answer; ask; accept the rest; ask."""
    open_doc(client, uri, text)
    answers, version = [], 1
    for k in range(3):
        lines = text.split("\n")
        line, character = len(lines) - 1, len(lines[-1])
        got = text_of(await inline(client, uri, line, character, automatic=False))
        answers.append(got)
        if k == 2:
            break
        assert k or "\n" in got.strip("\n"), f"the model wrote one line only: {got!r}"
        take = got[: got.index("\n", 1) + 1] if k == 0 else got  # the first line with its line break
        version += 1
        change(client, uri, version, (line, character), (line, character), take)
        text += take
    return answers, (await status(client))["completions"]


@pytest.mark.asyncio
async def test_accepting_one_line_then_the_rest_needs_no_model_call(start_server):
    """The built-in model writes multi-line code: one line accepted is answered by the rest of the suggestion
    (typed through), the rest accepted by the prefetched completion, equal to a fresh call's."""
    model = {"model": "builtin", "maxNewTokens": 32, "completionMode": "block", "prefillOnOpen": False}
    model["maxLatencyMs"] = 0  # answers are compared across servers: no time budget may cut one under load
    fresh = await start_server({**model, "prefetch": False})
    ahead = await start_server(model)
    text = "import os\n\n\ndef main():\n"  # answered with a docstring of two lines and more
    want, comp_f = await line_then_rest(fresh, "file:///main-fresh.py", text)
    first, rest, after = want
    assert first.endswith(rest) and rest != first and after
    got, comp_a = await line_then_rest(ahead, "file:///main-ahead.py", text)
    assert got == want
    assert comp_f["modelCalls"] == 2 and comp_f["typedThroughHits"] == 1
    assert comp_a["modelCalls"] == 1 and comp_a["typedThroughHits"] == 1
    assert comp_a["prefetch"]["hits"] == 1
