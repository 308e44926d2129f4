"""Prompt-lookup speculation: the proposals, bit-identical logits of a checked pass and of one-token steps,
and greedy output token-identical to plain decoding on every family and precision."""

from __future__ import annotations

import pytest
import torch

from inference import ops, quant
from inference.engine import Engine
from inference.generate import GenerationParams
from inference.kv_cache import KVCache
from inference.loader import load_model
from inference.lookup import History, accepted, pays
from tests.checkpoints import make_codegen_checkpoint, make_llama_checkpoint

INT8 = ["float32", "int8"] if quant.int8_kernel() else ["float32"]
CODE = (
    "def area(width, height):\n    return width * height\n\n\n"
    "def perimeter(width, height):\n    return 2 * (width + height)\n\n\n"
    "def volume(width, height, depth):\n    return "
)


@pytest.mark.parametrize(
    "ids, k, want",
    [
        ([1, 2, 3, 9, 1, 2, 3], 4, [9, 1, 2, 3]),  # the 3-gram 1 2 3 occurred before: what followed it
        ([5, 1, 2, 3, 8, 7, 2, 3], 2, [8, 7]),  # no earlier 7 2 3: the 2-gram 2 3
        ([1, 2, 3, 4], 3, []),  # nothing repeats
        ([7, 1, 9, 8, 1], 2, [9, 8]),  # the last id alone
        ([4, 4, 4, 4], 2, [4]),  # the latest earlier occurrence, its continuation cut at the end
        ([1, 2, 3, 9, 1, 2, 3], 0, []),
    ],
    ids=["trigram", "bigram", "none", "unigram", "overlap", "no-room"],
)
def test_proposals(ids, k, want):
    assert History(ids).propose(k) == want


def test_proposal_ignores_byte_matches_inside_two_ids():
    """Ids as 4-byte ints: a byte pattern that straddles two ids is not an occurrence."""
    ids = [0x01000000, 0x02, 0x03, 7, 0x02, 0x03]  # bytes of (2, 3) also appear shifted inside other ids
    assert History([0x0201, 0x0300, *ids]).propose(1) == [7]


def test_accepted_counts_the_agreeing_run():
    assert accepted([5, 6, 7], [5, 6, 9, 1]) == 2
    assert accepted([5, 6], [4, 6, 7]) == 0
    assert accepted([5, 6], [5, 6, 7]) == 2


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Every family and precision the engine runs: the trained built-in CodeGen, random CodeGen and Qwen2."""
    out = {}
    qwen = make_llama_checkpoint(tmp_path_factory.mktemp("q"), hidden_size=128, n_head=8, n_kv_head=2)
    codegen = make_codegen_checkpoint(tmp_path_factory.mktemp("c"), n_layer=2, n_embd=128, n_head=8)
    for dtype in INT8:
        out[f"builtin-{dtype}"] = load_model("builtin", dtype=dtype)
        out[f"codegen-{dtype}"] = load_model(str(codegen), dtype=dtype)
        out[f"qwen2-{dtype}"] = load_model(str(qwen), dtype=dtype)
    for lm in out.values():
        lm.lookup_pays = True  # checked on every model, whether or not it would pay there
    return out


@pytest.mark.parametrize("rows, start", [(2, 30), (5, 63), (8, 100), (12, 70)], ids=lambda v: str(v))
def test_a_checked_pass_gives_the_one_token_steps_logits_bit_for_bit(models, rows, start):
    """Under ops.exact_rows a pass over several rows equals one-token steps exactly (blocked cache included:
    the rows cross a key block), so proposals never change what greedy decoding writes."""
    for name, lm in models.items():
        c = lm.config
        ids = torch.randint(
            0, min(c.vocab_size, 4000), (1, start + rows), generator=torch.Generator().manual_seed(rows)
        )
        got = []
        for mode in ("steps", "pass"):
            cache = KVCache(c.n_layer, c.kv_heads, c.head_dim, start + rows, dtype=lm.kv_dtype)
            with torch.inference_mode():
                lm.model(ids[:, :start], torch.arange(start), cache, last_only=True)
                if mode == "steps":
                    steps = [
                        lm.model(ids[:, t : t + 1], torch.arange(t, t + 1), cache)
                        for t in range(start, start + rows)
                    ]
                    got.append(torch.cat(steps, dim=1))
                else:
                    with ops.exact_rows():
                        got.append(lm.model(ids[:, start:], torch.arange(start, start + rows), cache))
        assert torch.equal(got[0], got[1]), name


def test_int8_rows_of_very_different_magnitudes_each_get_their_own_scale():
    """fbgemm quantizes a call's input with one scale; exact_rows gives each row its own call."""
    if not quant.int8_kernel():
        pytest.skip("no int8 kernel")
    g = torch.Generator().manual_seed(0)
    w = quant.Int8Weight(torch.randn(96, 64, generator=g))
    x = torch.randn(1, 6, 64, generator=g) * torch.tensor([1e-3, 1.0, 1e3, 5.0, 1e-2, 40.0])[None, :, None]
    one_by_one = torch.cat([w(x[:, t : t + 1]) for t in range(6)], dim=1)
    with ops.exact_rows():
        rows = ops.linear(x, w)
    assert torch.equal(rows, one_by_one)
    assert not torch.equal(w(x), one_by_one)  # one call for all rows is not the same arithmetic


@pytest.mark.parametrize("max_new", [1, 2, 7, 40])
def test_greedy_output_is_token_identical(models, max_new):
    """With and without prompt lookup: the same ids, text, stop reason and cached ids, on every model."""
    stops = (r"\n\n\n",)
    prompts = [CODE, CODE.replace("width", "w"), "import os\nimport sys\nimport os\nimport "]
    for name, lm in models.items():
        for prompt in prompts:
            runs = []
            for on in (False, True):
                engine = Engine(lm)
                params = GenerationParams(max_new_tokens=max_new, stop_patterns=stops, prompt_lookup=on)
                result = engine.generate("doc", prompt, params)
                runs.append((result.token_ids, result.text, result.stop_reason, engine.session("doc").ids))
                if on:
                    assert result.extra["lookup_passes"] == result.decode_steps, name  # one pass a step
            assert runs[0] == runs[1], (name, prompt)


def test_the_built_in_model_accepts_proposals_on_repetitive_code(models):
    """The trained model repeats the call shapes above: passes carry more than one token on average."""
    lm = models["builtin-float32"]
    result = Engine(lm).generate("doc", CODE, GenerationParams(max_new_tokens=40, prompt_lookup=True))
    assert result.extra["lookup_accepted"] > 0
    assert len(result.token_ids) > result.extra["lookup_passes"]


def test_a_cancel_stops_at_the_next_pass(models):
    lm = models["builtin-float32"]
    calls = []

    def cancel() -> bool:
        calls.append(1)
        return len(calls) > 3

    result = Engine(lm).generate("doc", CODE, GenerationParams(max_new_tokens=64, prompt_lookup=True), cancel)
    assert result.stop_reason == "cancelled" and result.decode_steps == 2


def test_pays_where_rows_read_the_weights_once():
    f32 = load_model("builtin", dtype="float32")
    assert pays(f32.model, "cpu", min_bytes=0)[0]  # float32 rows: one read of the weights (embedding_bag)
    on, why = pays(f32.model, "cpu")  # but its 20 MB stay in the caches: rows cost arithmetic there
    assert not on and "caches" in why
    assert not pays(f32.model, "cuda", min_bytes=0)[0]
    if quant.int8_kernel():
        on, why = pays(load_model("builtin", dtype="int8").model, "cpu", min_bytes=0)
        assert not on and "a call per checked row" in why
