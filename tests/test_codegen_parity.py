"""The engine's CodeGen forward pass against transformers' CodeGenForCausalLM (the reference), float32."""

from __future__ import annotations

import pytest
import torch

from inference import registry
from inference.codegen import CodeGen
from inference.engine import Engine
from inference.generate import GenerationParams
from inference.kv_cache import BLOCK, LAYOUTS, KVCache
from inference.loader import fill_weights, load_model
from inference.weights import open_weights
from tests.checkpoints import make_codegen_checkpoint

TOL = 1e-4
SHAPES = {
    # rotary_dim < head_dim, n_head 4 (one head per qkv shard), default n_inner
    "h4-rot8of16": dict(n_layer=2, n_embd=64, n_head=4, rotary_dim=8),
    # n_head 8 (two heads per shard), n_inner set
    "h8-rot8of16-inner200": dict(n_layer=2, n_embd=128, n_head=8, rotary_dim=8, n_inner=200),
    # n_head 12 (three heads per shard), rotary over the whole head
    "h12-rot8of8": dict(n_layer=3, n_embd=96, n_head=12, rotary_dim=8),
}


@pytest.fixture(scope="module", params=list(SHAPES.values()), ids=list(SHAPES))
def ckpt(request, tmp_path_factory):
    from transformers import CodeGenForCausalLM

    path = make_codegen_checkpoint(tmp_path_factory.mktemp("parity"), **request.param)
    ref = CodeGenForCausalLM.from_pretrained(path).eval()
    return path, ref, load_model(str(path))


def ids_batch(seed: int, batch: int, length: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 51200, (batch, length), generator=g)


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape
    return (a.float() - b.float()).abs().max().item()


def test_logits_without_cache(ckpt):
    _, ref, lm = ckpt
    idx = ids_batch(1, 2, 41)
    with torch.no_grad():
        expected = ref(idx).logits
        got = lm.model(idx)
    assert got.dtype == torch.float32
    assert max_diff(got, expected) < TOL
    assert expected.std(dim=-1).min() > 0.05  # logits far from uniform: the comparison is not trivial


def test_unfused_checkpoint_layout_matches(ckpt):
    """The unfused block (as used for training) reads the 4-shard qkv layout directly."""
    path, ref, lm = ckpt
    with torch.device("meta"):
        model = CodeGen(lm.config)
    fam = registry.REGISTRY["codegen"]
    fill_weights(
        model, open_weights(path), fam.weight_map(lm.config), fam.ignored, torch.device("cpu"), torch.float32
    )
    model.init_buffers()
    assert not any(b.fused for b in model.h)
    idx = ids_batch(2, 1, 30)
    with torch.no_grad():
        assert max_diff(model(idx), ref(idx).logits) < TOL


def test_logits_with_autograd_on(ckpt):
    """With autograd on (training), the forward takes F.linear and the out-of-place rotary."""
    _, ref, lm = ckpt
    idx = ids_batch(5, 1, 20)
    with torch.enable_grad():
        got = lm.model(idx)
    with torch.no_grad():
        assert max_diff(got, ref(idx).logits) < TOL


@pytest.mark.parametrize("layout", LAYOUTS)
def test_logits_with_cache_in_chunks(ckpt, layout):
    """Chunks of 13, 1, 1, 51, 1 and 13 tokens: the few-query attention (mask, no mask; in the blocked layout
    across a block boundary) and SDPA on the cache."""
    _, ref, lm = ckpt
    cfg = lm.config
    idx = ids_batch(3, 2, 80)
    cache = KVCache(cfg.n_layer, cfg.n_head, cfg.head_dim, 96, batch=2, layout=layout)
    assert BLOCK < 66 < 80 <= 96  # the chunks cross a key block's end; the last block is padded
    pieces = []
    with torch.no_grad():
        for a, b in [(0, 13), (13, 14), (14, 15), (15, 66), (66, 67), (67, 80)]:
            pieces.append(lm.model(idx[:, a:b], torch.arange(a, b), cache))
        expected = ref(idx).logits
        last = lm.model(idx[:, 15:40], torch.arange(15, 40), cache, last_only=True)
    assert max_diff(torch.cat(pieces, dim=1), expected) < TOL
    assert last.shape == (2, 1, expected.shape[-1])
    assert max_diff(last[:, 0], expected[:, 39]) < TOL


def test_greedy_64_steps_token_identical(ckpt):
    _, ref, lm = ckpt
    prompt = "def fibonacci(n):\n    "
    ids = lm.tokenizer.encode(prompt)
    with torch.no_grad():
        out = ref.generate(
            torch.tensor([ids]), max_new_tokens=64, do_sample=False, pad_token_id=lm.tokenizer.eos_token_id
        )
    expected = out[0, len(ids) :].tolist()
    result = Engine(lm).generate("doc", prompt, GenerationParams(max_new_tokens=64))
    assert result.token_ids == expected
    assert len(expected) == 64 or expected[-1] == lm.tokenizer.eos_token_id


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_half_precision_is_sane(ckpt, dtype):
    path, ref, lm = ckpt
    half = load_model(str(path), dtype=dtype)
    assert all(p.dtype == dtype for p in half.model.parameters())
    idx = ids_batch(4, 1, 24)
    with torch.no_grad():
        got, expected = half.model(idx), lm.model(idx)
    assert got.dtype == torch.float32 and torch.isfinite(got).all()
    cos = torch.nn.functional.cosine_similarity(got.flatten(1), expected.flatten(1)).min()
    assert cos > 0.99
    result = Engine(half).generate("doc", "x = ", GenerationParams(max_new_tokens=8))
    assert len(result.token_ids) == 8 or result.stop_reason == "eos"
