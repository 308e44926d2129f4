"""maxLatencyMs: once a completion has spent its budget it ends at the next line end (stop reason
time_budget); an injected clock makes the decode loop's decision deterministic."""

from __future__ import annotations

import itertools

import pytest
import torch

from inference.engine import Engine
from inference.generate import GenerationParams, decode_loop
from inference.heal import split
from inference.loader import load_model
from inference.rules import line_end_after
from lsp_server.cli import main
from lsp_server.settings import Settings, update
from tests.checkpoints import CODEGEN_TOKENIZER_DIR
from tokenizer import load_tokenizer

SCRIPT = "x = 1\n\n    y = 2\nz = 3\nw = 4\n"
PROMPT = "import os\n\n\ndef main():\n    "
KEPT, HEAL = split(PROMPT)  # the CLI and the server heal the trailing indentation (inference/heal.py)


class Scripted:
    """A model whose greedy continuation is `ids`, one per call, whatever it is fed."""

    def __init__(self, ids: list[int], vocab: int):
        self.ids, self.vocab, self.calls = ids, vocab, 0

    def logits(self) -> torch.Tensor:
        out = torch.zeros(self.vocab)
        out[self.ids[min(self.calls, len(self.ids) - 1)]] = 1.0
        return out

    def __call__(self, idx, positions, cache):
        self.calls += 1
        return self.logits()[None, None]


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(CODEGEN_TOKENIZER_DIR)


def run(tok, deadline, clock):
    ids = tok.encode(SCRIPT)
    model = Scripted(ids, 51200)
    cache = type("Cache", (), {"capacity": 64})()
    params = GenerationParams(max_new_tokens=len(ids))
    text, *_, reason, steps = decode_loop(
        model, cache, model.logits(), 0, params, tok, None, None, deadline, clock
    )
    return text, reason


def test_no_deadline_runs_to_max_tokens(tok):
    assert run(tok, None, itertools.count().__next__) == (SCRIPT, "max_tokens")


@pytest.mark.parametrize(
    "spent_after, want",
    [(1, "x = 1"), (4, "x = 1"), (5, "x = 1\n\n    y = 2"), (10, "x = 1\n\n    y = 2\nz = 3")],
    ids=["first-token", "on-a-line-end", "second-line", "third-line"],
)
def test_spent_budget_ends_at_the_next_line_end(tok, spent_after, want):
    """The clock reads 1, 2, 3, ... at each decoded piece; past `spent_after` the next line end ends it."""
    pieces = [tok.decode([i]) for i in tok.encode(SCRIPT)]
    assert "".join(pieces) == SCRIPT
    text, reason = run(tok, spent_after, itertools.count(1).__next__)
    assert (text, reason) == (want, "time_budget")
    spent_at = len("".join(pieces[: spent_after - 1]))  # text before the piece that saw the clock run out
    assert text == SCRIPT[: line_end_after(SCRIPT, spent_at)]


def test_line_end_after_skips_blank_lines():
    assert line_end_after("\n    \nab\ncd", 0) == 8
    assert line_end_after("ab", 0) == -1


@pytest.fixture(scope="module")
def builtin():
    return load_model("builtin")


def test_engine_with_a_tiny_budget_shows_the_first_line(builtin):
    full = Engine(builtin).generate("a", PROMPT, GenerationParams(max_new_tokens=48))
    end = line_end_after(full.text, 0)
    assert end > 0  # the built-in model writes several lines here
    r = Engine(builtin).generate("b", PROMPT, GenerationParams(max_new_tokens=48, max_latency_ms=1e-3))
    assert (r.text, r.stop_reason) == (full.text[:end], "time_budget")


def test_cli_max_latency_ms(tmp_path, capsys, builtin):
    src = tmp_path / "a.py"
    src.write_text(PROMPT, encoding="utf-8")
    argv = ["complete", "--model", "builtin", "--file", str(src), "--raw", "--max-new-tokens", "48"]
    assert main(argv + ["--max-latency-ms", "0.001"]) == 0
    full = Engine(builtin).generate("a", KEPT, GenerationParams(max_new_tokens=48, heal=HEAL))
    assert capsys.readouterr().out == full.text[: line_end_after(full.text, 0)]


@pytest.mark.parametrize("value, ok", [(0, True), (250, True), (-1, False), ("fast", False)], ids=str)
def test_max_latency_setting_is_validated(value, ok):
    settings, errors = update(Settings(), {"maxLatencyMs": value})
    assert (settings.max_latency_ms == (value if ok else Settings().max_latency_ms)) and (not errors) == ok
    if ok:
        assert GenerationParams(max_latency_ms=settings.max_latency_ms).max_latency_ms == value
    with pytest.raises(ValueError, match="max_latency_ms must be >= 0"):
        GenerationParams(max_latency_ms=-1)


@pytest.mark.asyncio
async def test_server_passes_max_latency_to_the_engine(start_server, builtin):
    """maxLatencyMs 1: the server's completion is the first line, stopped by the budget (codegen.status)."""
    from tests.conftest import inline, open_doc, status

    opts = {"model": "builtin", "device": "cpu", "dtype": "float32", "maxNewTokens": 48}
    client = await start_server({**opts, "maxLatencyMs": 1, "completionMode": "free"})
    open_doc(client, "file:///a.py", PROMPT)
    items = await inline(client, "file:///a.py", 4, 4, automatic=False)
    last = (await status(client))["latency"]["last"]
    full = Engine(builtin).generate("a", KEPT, GenerationParams(max_new_tokens=48, heal=HEAL))
    assert last["stopReason"] == "time_budget"
    assert items and items[0].insert_text == full.text[: line_end_after(full.text, 0)]
