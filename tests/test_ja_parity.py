"""The engine's GPT-NeoX-Japanese forward pass against transformers' GPTNeoXJapaneseForCausalLM, float32."""

from __future__ import annotations

import contextlib
import logging
import shutil

import pytest
import torch

from inference.engine import Engine
from inference.errors import ModelLoadError
from inference.generate import GenerationParams
from inference.kv_cache import BLOCK, LAYOUTS, KVCache
from inference.loader import load_model
from inference.neox_japanese import NeoXJapaneseConfig
from tests.checkpoints import make_neox_japanese_checkpoint

TOL = 1e-4
SHAPES = {
    # whole-head rotary, tied output embedding (transformers 5 then stores no embed_out.weight)
    "h4-rot16of16-tied": dict(n_layer=2, hidden_size=64, n_head=4, rotary_pct=1.0, tie_word_embeddings=True),
    # quarter-head rotary, untied, narrower MLP
    "h6-rot4of16-untied-mlp2x": dict(
        n_layer=3,
        hidden_size=96,
        n_head=6,
        rotary_pct=0.25,
        intermediate_multiple_size=2,
        tie_word_embeddings=False,
    ),
    # old config.json style (rotary_pct / rotary_emb_base, no tie_word_embeddings) with both embeddings stored
    "h8-rot8of16-legacy-config": dict(
        n_layer=2,
        hidden_size=128,
        n_head=8,
        rotary_pct=0.5,
        rotary_emb_base=5000,
        tie_word_embeddings=False,
        legacy_config=True,
    ),
    # old config.json style, tied (only embed_in stored), pytorch_model.bin with the old attention buffers
    "h2-rot24of32-legacy-tied-bin": dict(
        n_layer=1, hidden_size=64, n_head=2, rotary_pct=0.75, legacy_config=True, safe_serialization=False
    ),
}
PROMPT = "吾輩は猫である。名前はまだ無い。"


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny models: one intra-op thread is as fast, and far faster on a busy machine (no spinning)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module", params=list(SHAPES.values()), ids=list(SHAPES))
def ckpt(request, tmp_path_factory):
    transformers = pytest.importorskip("transformers")
    path = make_neox_japanese_checkpoint(tmp_path_factory.mktemp("ja-parity"), **request.param)
    ref = transformers.GPTNeoXJapaneseForCausalLM.from_pretrained(path).eval()
    with _loader_warnings() as warnings:
        lm = load_model(str(path), allow_fallback=False)
    assert not warnings, warnings  # every checkpoint tensor is used or a known non-learned buffer
    return path, ref, lm


@contextlib.contextmanager
def _loader_warnings():
    """Collect the loader's warnings (e.g. unexpected checkpoint tensors)."""
    records: list[str] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: records.append(record.getMessage())
    logger = logging.getLogger("inference.loader")
    logger.addHandler(handler)
    try:
        yield records
    finally:
        logger.removeHandler(handler)


def ids_batch(seed: int, batch: int, length: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 32000, (batch, length), generator=g)


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape
    return (a.float() - b.float()).abs().max().item()


def reference_greedy(ref, ids: list[int], eos: int, steps: int = 64) -> list[int]:
    with torch.no_grad():
        out = ref.generate(torch.tensor([ids]), max_new_tokens=steps, do_sample=False, pad_token_id=eos)
    return out[0, len(ids) :].tolist()


def test_loaded_as_the_japanese_family(ckpt):
    path, ref, lm = ckpt
    assert lm.family == "gpt_neox_japanese"
    assert lm.config.rotary_ndims == int(
        lm.config.head_dim * ref.config.rope_parameters["partial_rotary_factor"]
    )
    assert type(lm.tokenizer).__name__ == "NeoXJapaneseTokenizer"
    tied = ref.embed_out.weight is ref.gpt_neox_japanese.embed_in.weight
    assert (lm.model.embed_out.weight is lm.model.embed_in.weight) == tied


def test_logits_without_cache(ckpt):
    _, ref, lm = ckpt
    idx = ids_batch(1, 2, 41)
    with torch.no_grad():
        expected = ref(idx).logits
        got = lm.model(idx)
    assert got.dtype == torch.float32
    assert max_diff(got, expected) < TOL
    assert expected.std(dim=-1).min() > 0.05  # logits far from uniform: the comparison is not trivial


@pytest.mark.parametrize("layout", LAYOUTS)
def test_logits_with_cache_in_chunks(ckpt, layout):
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
    assert max_diff(last[:, 0], expected[:, 39]) < TOL


def test_greedy_64_steps_token_identical(ckpt):
    _, ref, lm = ckpt
    eos = lm.config.eos_token_id
    expected = reference_greedy(ref, lm.tokenizer.encode(PROMPT), eos)
    result = Engine(lm).generate("doc", PROMPT, GenerationParams(max_new_tokens=64))
    assert result.token_ids == expected
    assert len(expected) == 64 or expected[-1] == eos
    assert result.reused_tokens == 0
    shown = result.token_ids[:-1] if result.stop_reason == "eos" else result.token_ids
    assert result.text == lm.tokenizer.decode(shown)


def test_greedy_with_cache_reuse_token_identical(ckpt):
    _, ref, lm = ckpt
    eos = lm.config.eos_token_id
    session = Engine(lm).session("doc.md")
    first = session.generate(lm.tokenizer.encode(PROMPT), GenerationParams(max_new_tokens=64))
    # The user accepts part of the completion and types on: the cached prompt (+ generated ids) is reused.
    accepted = lm.tokenizer.decode(first.token_ids[:5])
    for prompt in (PROMPT + accepted + "そして", PROMPT[:8] + "犬である。"):
        ids = lm.tokenizer.encode(prompt)
        result = session.generate(ids, GenerationParams(max_new_tokens=64))
        assert result.reused_tokens > 0 and result.prefill_tokens == len(ids) - result.reused_tokens
        assert result.token_ids == reference_greedy(ref, ids, eos), prompt


def test_hub_id_resolved_from_the_local_cache(ckpt, tmp_path, monkeypatch):
    """`abeja/gpt-neox-japanese-2.7b` as a hub id, served offline from a huggingface_hub cache layout."""
    path, ref, _ = ckpt
    repo_id, commit = "abeja/gpt-neox-japanese-2.7b", "b" * 40
    repo = tmp_path / "hub" / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    shutil.copytree(path, repo / "snapshots" / commit)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    lm = load_model(repo_id, allow_fallback=False)
    assert lm.name == repo_id and lm.family == "gpt_neox_japanese" and lm.notice is None
    idx = ids_batch(5, 1, 17)
    with torch.no_grad():
        assert max_diff(lm.model(idx), ref(idx).logits) < TOL


def test_bfloat16_is_sane(ckpt):
    path, _, lm = ckpt
    half = load_model(str(path), dtype="bfloat16", allow_fallback=False)
    assert all(p.dtype == torch.bfloat16 for p in half.model.parameters())
    idx = ids_batch(4, 1, 24)
    with torch.no_grad():
        got, expected = half.model(idx), lm.model(idx)
    assert got.dtype == torch.float32 and torch.isfinite(got).all()
    assert torch.nn.functional.cosine_similarity(got.flatten(1), expected.flatten(1)).min() > 0.99


# --- config.json styles (pure) ---------------------------------------------------------------------------
BASE = dict(model_type="gpt_neox_japanese", hidden_size=64, num_hidden_layers=2, num_attention_heads=4)


@pytest.mark.parametrize(
    "extra",
    [
        dict(rotary_pct=0.5, rotary_emb_base=20000),
        dict(rope_parameters=dict(rope_type="default", rope_theta=20000, partial_rotary_factor=0.5)),
        dict(rope_parameters=dict(rope_theta=20000, partial_rotary_factor=0.5), rotary_pct=1.0),
        dict(rope_scaling=dict(rope_theta=20000, partial_rotary_factor=0.5)),
    ],
    ids=["old-keys", "rope-parameters", "rope-parameters-win", "rope-scaling"],
)
def test_old_and_new_config_styles(extra):
    cfg = NeoXJapaneseConfig.from_dict({**BASE, **extra})
    assert (cfg.rotary_ndims, cfg.rope_theta, cfg.head_dim) == (8, 20000, 16)
    assert cfg.tie_word_embeddings is True  # absent means tied
    assert (cfg.intermediate_size, cfg.eos_token_id, cfg.bos_token_id, cfg.n_positions) == (
        256,
        31999,
        31996,
        2048,
    )


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (dict(rope_parameters=dict(rope_type="linear", factor=2.0)), "rope type 'linear'"),
        (dict(rotary_pct=0.2), "even number"),
        (dict(hidden_act="relu"), "hidden_act 'relu'"),
        (dict(num_attention_heads=5), "not divisible"),
    ],
    ids=["rope-linear", "odd-rotary-dims", "relu", "heads-do-not-divide"],
)
def test_bad_configs_are_clear_errors(extra, message):
    with pytest.raises(ModelLoadError, match=message):
        NeoXJapaneseConfig.from_dict({**BASE, **extra})


def test_missing_fields_are_named():
    with pytest.raises(ModelLoadError, match="num_hidden_layers"):
        NeoXJapaneseConfig.from_dict(
            dict(model_type="gpt_neox_japanese", hidden_size=64, num_attention_heads=4)
        )
