"""Token healing (inference/heal.py): a prompt's trailing spaces are left out of it and spelled by the first
generated ids; the text returned starts after them."""

from __future__ import annotations

import pytest
import torch

from inference.engine import Engine
from inference.generate import GenerationParams
from inference.heal import barred, split
from inference.loader import load_model

PROMPT = "def add(a, b):\n    return "


@pytest.fixture(scope="module")
def builtin():
    return load_model("builtin", device="cpu", dtype="float32")


@pytest.mark.parametrize(
    ("before", "kept", "heal"),
    [
        ("x = ", "x =", " "),
        ("def f():\n    ", "def f():\n", "    "),
        ("a\t \t", "a", "\t \t"),
        ("x = 1\n", "x = 1\n", ""),
        ("", "", ""),
    ],
    ids=["space", "indentation", "tabs", "line-end", "empty"],
)
def test_split_takes_trailing_spaces_and_tabs_only(before, kept, heal):
    assert split(before) == (kept, heal)


def test_barred_allows_ids_that_spell_the_need(builtin):
    tok = builtin.tokenizer
    vocab = builtin.config.vocab_size
    mask = barred(tok, b"  ", vocab)
    assert mask.shape == (vocab,)
    for i in range(vocab):
        b = tok.token_bytes(i)
        allowed = bool(b) and (b.startswith(b"  ") or b"  ".startswith(b))
        assert bool(mask[i]) == (not allowed), (i, b)
    assert not bool(mask.all())


def test_healed_greedy_is_the_best_id_that_spells_the_spaces(builtin):
    """The first id is the argmax of the logits over the ids that start with the space; text starts after."""
    tok = builtin.tokenizer
    kept, heal = split(PROMPT)
    ids = tok.encode(kept)
    logits = builtin.model(torch.tensor([ids]))[0, -1]
    allowed = [i for i in range(logits.shape[-1]) if tok.token_bytes(i).startswith(b" ")]
    best = max(allowed, key=lambda i: float(logits[i]))
    params = GenerationParams(max_new_tokens=12, heal=heal)
    result = Engine(builtin).generate("t", ids, params)
    assert result.token_ids[0] == best
    assert heal + result.text == tok.decode(result.token_ids)
    assert not result.text.startswith(" ")


def test_healing_spans_several_ids_and_stops_cut_after_it(builtin):
    """Indentation longer than one id: spelled over ids as needed; a stop pattern sees only the new text."""
    tok = builtin.tokenizer
    kept, heal = split("class A:\n    def f(self):\n        ")
    assert heal == " " * 8
    params = GenerationParams(max_new_tokens=16, heal=heal, stop_patterns=("\n",))
    result = Engine(builtin).generate("t", tok.encode(kept), params)
    spelled = tok.decode(result.token_ids)
    assert spelled.startswith(heal) and spelled[len(heal) :].startswith(result.text)
    assert "\n" not in result.text


def test_heal_takes_whitespace_only():
    with pytest.raises(ValueError, match="spaces and tabs only"):
        GenerationParams(heal=" x")


@pytest.mark.asyncio
@pytest.mark.parametrize("healing", [True, False], ids=["healed", "as-typed"])
async def test_server_heals_unless_told_not_to(start_server, builtin, healing):
    """The server's answer at `return ` is the healed greedy completion, or with tokenHealing off the
    completion of the text as typed; the prompt is one token shorter when healed."""
    from lsp_server import postprocess
    from tests.conftest import inline, open_doc, status

    opts = {"model": "builtin", "dtype": "float32", "maxNewTokens": 12, "maxLatencyMs": 0, "prefetch": False}
    opts["fim"] = "off"  # the prompt is the text before the cursor, whichever built-in model ships
    client = await start_server({**opts, "tokenHealing": healing})
    open_doc(client, "file:///add.py", PROMPT)
    items = await inline(client, "file:///add.py", 1, 11, automatic=False)
    kept, heal = split(PROMPT) if healing else (PROMPT, "")
    tok = builtin.tokenizer
    patterns = postprocess.patterns_for("python", "block", "    return ")
    params = GenerationParams(max_new_tokens=12, stop_patterns=patterns, heal=heal)
    want = postprocess.trim(Engine(builtin).generate("ref", tok.encode(kept), params).text, patterns)
    assert want.strip()  # a real comparison
    assert [i.insert_text for i in items] == [want]
    last = (await status(client, "file:///add.py"))["completions"]["lastPrompt"]
    assert last["promptTokens"] == len(tok.encode(kept))
    assert len(tok.encode(kept)) == len(tok.encode(PROMPT)) - healing  # the lone space token left out
