"""Prefetch through the protocol: after a suggestion is accepted (didChange inserting it), the next inline
completion comes from the completion computed ahead, with the text a fresh model call gives; an edit off
that path stops the job, and the answer is the fresh model call's."""

from __future__ import annotations

import pytest
from lsprotocol import types

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


@pytest.mark.asyncio
async def test_a_keystroke_off_the_path_stops_the_prefetch(start_server, codegen_checkpoint):
    model = {"model": str(codegen_checkpoint), **OPTIONS, "maxNewTokens": 120}
    fresh = await start_server({**model, "prefetch": False})
    ahead = await start_server(model)
    answers = []
    for client in (fresh, ahead):
        uri = "file:///keys.py"
        open_doc(client, uri, TEXT)
        first = text_of(await inline(client, uri, 1, 11, automatic=False))
        # The user types something else than the suggestion while its continuation is being computed.
        change(client, uri, 2, (1, 11), (1, 11), "b *")
        answers.append((first, text_of(await inline(client, uri, 1, 14, automatic=False))))
        st = await status(client)
        answers.append(st["completions"])
    (first_f, second_f), comp_f, (first_a, second_a), comp_a = answers
    assert (first_a, second_a) == (first_f, second_f)
    assert comp_f["modelCalls"] == comp_a["modelCalls"] == 2
    assert comp_a["prefetch"]["hits"] == 0 and comp_a["prefetch"]["stopped"] >= 1


@pytest.mark.asyncio
async def test_prefetch_setting_is_validated(start_server, codegen_checkpoint):
    client = await start_server({"model": str(codegen_checkpoint), **OPTIONS, "prefetch": "yes"})
    st = await status(client)
    assert st["settings"]["prefetch"] is True  # the default kept
    set_off = types.DidChangeConfigurationParams(settings={"codegen": {"prefetch": False}})
    client.workspace_did_change_configuration(set_off)
    assert (await status(client))["settings"]["prefetch"] is False
