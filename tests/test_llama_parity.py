"""The Llama layout (Llama, Qwen2, Qwen3) against transformers' *ForCausalLM (the reference), float32."""

from __future__ import annotations

import json

import pytest
import torch

from inference.engine import Engine
from inference.errors import ModelLoadError
from inference.generate import GenerationParams
from inference.kv_cache import BLOCK, LAYOUTS, KVCache
from inference.llama_config import LlamaConfig
from inference.loader import load_model
from tests.checkpoints import QWEN_05B_SHAPE, make_llama_checkpoint

TOL = 1e-4  # float32 logits, as for CodeGen and GPT-NeoX-Japanese
LLAMA3 = dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0)
SHAPES = {
    # Qwen2: q/k/v biases, 2 query heads per key/value head, separate lm_head
    "qwen2-gqa2": dict(model_type="qwen2", n_head=4, n_kv_head=2),
    # Llama: attention_bias (q/k/v/o), 4 query heads per KV head, tied embeddings, llama3 rope scaling
    "llama-gqa4-tied-llama3": dict(
        model_type="llama",
        n_head=8,
        n_kv_head=2,
        hidden_size=128,
        attention_bias=True,
        tie_word_embeddings=True,
        rope_scaling=dict(LLAMA3, original_max_position_embeddings=64),
    ),
    # Llama without GQA, linear rope scaling, 3 layers
    "llama-mha-linear": dict(
        model_type="llama",
        n_layer=3,
        n_head=4,
        n_kv_head=4,
        rope_scaling=dict(rope_type="linear", factor=4.0),
    ),
    # Qwen3: RMSNorm on q and k per head, head_dim set apart from hidden_size / heads
    "qwen3-qknorm-hd32": dict(model_type="qwen3", n_head=4, n_kv_head=1, head_dim=32),
}


@pytest.fixture(scope="module", params=list(SHAPES.values()), ids=list(SHAPES))
def ckpt(request, tmp_path_factory):
    from transformers import AutoModelForCausalLM

    path = make_llama_checkpoint(tmp_path_factory.mktemp("llama"), **request.param)
    ref = AutoModelForCausalLM.from_pretrained(path).eval()
    return path, ref, load_model(str(path), dtype="float32")


def ids_batch(seed: int, batch: int, length: int, vocab: int = 151643) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (batch, length), generator=g)


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape
    return (a.float() - b.float()).abs().max().item()


def reference_greedy(ref, ids: list[int], n: int, eos: int) -> list[int]:
    with torch.no_grad():
        out = ref.generate(torch.tensor([ids]), max_new_tokens=n, do_sample=False, pad_token_id=eos)
    return out[0, len(ids) :].tolist()


def test_loaded_as_the_llama_family(ckpt):
    path, ref, lm = ckpt
    assert lm.family == "llama" and isinstance(lm.config, LlamaConfig)
    assert lm.config.kv_heads == ref.config.num_key_value_heads
    assert lm.config.model_type == json.loads((path / "config.json").read_text())["model_type"]


def test_logits_without_cache(ckpt):
    _, ref, lm = ckpt
    idx = ids_batch(1, 2, 41)
    with torch.no_grad():
        expected, got = ref(idx).logits, lm.model(idx)
    assert got.dtype == torch.float32
    assert max_diff(got, expected) < TOL
    assert expected.std(dim=-1).min() > 0.05  # logits far from uniform: the comparison is not trivial


@pytest.mark.parametrize("layout", LAYOUTS)
def test_logits_with_cache_in_chunks(ckpt, layout):
    """Chunks of 13, 1, 1, 51, 1 and 13 tokens: the grouped few-query attention (mask, no mask; in the blocked
    layout across a block boundary) and SDPA over repeated key/value heads on the cache."""
    _, ref, lm = ckpt
    cfg = lm.config
    idx = ids_batch(3, 2, 80)
    cache = KVCache(cfg.n_layer, cfg.kv_heads, cfg.head_dim, 96, batch=2, layout=layout)
    assert cache.k.shape[2] == cfg.kv_heads  # the cache holds only the key/value heads
    assert BLOCK < 66 < 80 <= 96
    pieces = []
    with torch.no_grad():
        for a, b in [(0, 13), (13, 14), (14, 15), (15, 66), (66, 67), (67, 80)]:
            pieces.append(lm.model(idx[:, a:b], torch.arange(a, b), cache))
        expected = ref(idx).logits
        last = lm.model(idx[:, 15:40], torch.arange(15, 40), cache, last_only=True)
    assert max_diff(torch.cat(pieces, dim=1), expected) < TOL
    assert max_diff(last[:, 0], expected[:, 39]) < TOL


def test_greedy_32_tokens_identical_with_cache_reuse(ckpt):
    """32 greedy tokens equal transformers' generate, for a fresh prompt and for one that reuses the cache."""
    _, ref, lm = ckpt
    tok, eos = lm.tokenizer, lm.config.eos_token_id
    session = Engine(lm).session("doc.py")
    prompt = "def fibonacci(n):\n    "
    first = session.generate(tok.encode(prompt), GenerationParams(max_new_tokens=32))
    assert first.token_ids == reference_greedy(ref, tok.encode(prompt), 32, eos)
    longer = prompt + tok.decode(first.token_ids[:3]) + "if"
    ids = tok.encode(longer)
    result = session.generate(ids, GenerationParams(max_new_tokens=32))
    assert result.reused_tokens > 0 and result.prefill_tokens == len(ids) - result.reused_tokens
    assert result.token_ids == reference_greedy(ref, ids, 32, eos)


def test_bfloat16_is_sane(ckpt):
    path, _, lm = ckpt
    half = load_model(str(path), dtype="bfloat16")
    idx = ids_batch(4, 1, 24)
    with torch.no_grad():
        got, expected = half.model(idx), lm.model(idx)
    assert got.dtype == torch.float32 and torch.isfinite(got).all()
    assert torch.nn.functional.cosine_similarity(got.flatten(1), expected.flatten(1)).min() > 0.99


def test_sharded_checkpoint_loads_the_same(tmp_path):
    """A checkpoint in several safetensors shards (model.safetensors.index.json) gives the same logits."""
    one = make_llama_checkpoint(tmp_path / "one", seed=3)
    many = make_llama_checkpoint(tmp_path / "many", seed=3, max_shard_size="5MB")
    assert (many / "model.safetensors.index.json").is_file()
    idx = ids_batch(6, 1, 20)
    with torch.no_grad():
        a = load_model(str(one)).model(idx)
        b = load_model(str(many)).model(idx)
    assert torch.equal(a, b)


@pytest.fixture(scope="module")
def qwen_05b(tmp_path_factory):
    """A random-weight checkpoint in Qwen2.5-Coder-0.5B's exact shape and the reference model."""
    from transformers import AutoModelForCausalLM

    shape = dict(QWEN_05B_SHAPE)
    path = make_llama_checkpoint(
        tmp_path_factory.mktemp("qwen05b"),
        **{k: shape.pop(k) for k in ("model_type", "n_layer", "hidden_size", "n_head", "n_kv_head")},
        **shape,
        init_std=1.0,
    )
    return path, AutoModelForCausalLM.from_pretrained(path).eval()


def test_qwen25_coder_05b_shape(qwen_05b):
    """The exact shape: logits without and with the cache, and 32 greedy tokens, as transformers."""
    path, ref = qwen_05b
    lm = load_model(str(path), dtype="float32")
    cfg = lm.config
    assert (cfg.n_layer, cfg.hidden_size, cfg.n_head, cfg.kv_heads) == (24, 896, 14, 2)
    assert (cfg.intermediate_size, cfg.vocab_size, cfg.tie_word_embeddings) == (4864, 151936, True)
    assert lm.model.lm_head.weight is lm.model.embed_tokens.weight  # tied: one tensor
    idx = ids_batch(7, 1, 40)
    with torch.no_grad():
        expected = ref(idx).logits
        assert max_diff(lm.model(idx), expected) < TOL
        cache = KVCache(cfg.n_layer, cfg.kv_heads, cfg.head_dim, 64)
        pieces = [lm.model(idx[:, a:b], torch.arange(a, b), cache) for a, b in [(0, 30), (30, 31), (31, 40)]]
    assert max_diff(torch.cat(pieces, dim=1), expected) < TOL
    ids = lm.tokenizer.encode("import os\n\ndef main():\n    ")
    result = Engine(lm).generate("a.py", ids, GenerationParams(max_new_tokens=32))
    assert result.token_ids == reference_greedy(ref, ids, 32, lm.config.eos_token_id)


BASE = dict(
    model_type="qwen2",
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=160,
    vocab_size=1000,
)


@pytest.mark.parametrize(
    "extra, message",
    [
        ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "rope_scaling type 'yarn' is not supported"),
        ({"rope_parameters": {"rope_type": "dynamic"}}, "rope_scaling type 'dynamic' is not supported"),
        ({"rope_scaling": {"type": "linear"}}, "rope_scaling 'linear' lacks factor"),
        ({"num_key_value_heads": 3}, "num_attention_heads=4 is not a multiple of num_key_value_heads=3"),
        ({"hidden_act": "gelu"}, "hidden_act 'gelu' is not supported"),
        ({"hidden_size": 66}, "no even head dim"),
    ],
    ids=["yarn", "dynamic", "linear-without-factor", "gqa-heads-do-not-divide", "gelu", "odd-head-dim"],
)
def test_bad_configs_are_clear_errors(extra, message):
    with pytest.raises(ModelLoadError, match=message):
        LlamaConfig.from_dict({**BASE, **extra})


def test_bad_config_through_the_loader(tmp_path):
    """An unknown rope kind in a checkpoint's config.json: the loader's error names it."""
    path = make_llama_checkpoint(tmp_path)
    cfg = json.loads((path / "config.json").read_text())
    cfg["rope_parameters"] = {"rope_type": "longrope", "rope_theta": 10000.0}
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelLoadError, match="'longrope' is not supported"):
        load_model(str(path), allow_fallback=False)
