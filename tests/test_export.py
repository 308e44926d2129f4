"""`codegen-lsp export --format gptj`: CodeGen checkpoints rewritten as GPT-J give transformers' logits."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from inference.codegen import hf_qkv_to_qkv
from inference.errors import ModelLoadError
from inference.export import export_gptj
from inference.weights import open_weights
from lsp_server.cli import main
from tests.checkpoints import make_codegen_checkpoint, make_neox_japanese_checkpoint

# Logits bound, float32. The conversion only moves values (checked bit for bit below), so both models run
# the same float32 operations on the same numbers, except that CodeGen computes q, k and v in one
# [3E, E] matmul and GPT-J in three [E, E] ones. Every projected element is still the same dot product of
# E terms; a BLAS may only sum them in another order, which changes it by at most
# gamma_E * sum|a_i w_i| with gamma_E = E u / (1 - E u), u = 2^-24 (Higham, Accuracy and Stability, 3.1).
# For E <= 128 that is <= 7.6e-6 relative to sum|a_i w_i|; a_i are LayerNorm outputs (|a| ~ 1, sum of
# squares E) and |w| ~ 0.5/sqrt(E), so sum|a_i w_i| <= ||a|| ||w|| ~ 0.5 * sqrt(E) ~ 5, giving an absolute
# perturbation of q/k/v below ~4e-5 in the worst case and ~sqrt(E) u ~ 7e-7 typically (random signs).
# Attention is an average (weights sum to 1) and LayerNorm renormalises, so the perturbation reaches the
# logits without growth in these shallow models: 1e-5 (the bound) holds with a margin for the
# typical case; a layout mistake (q, k, v swapped or heads permuted) gives differences of order 1.
TOL = 1e-5
SHAPES = {
    # rotary_dim < head_dim, one head per qkv shard
    "h4-rot8of16": dict(n_layer=2, n_embd=64, n_head=4, rotary_dim=8),
    # two heads per shard, rotary_dim < head_dim, n_inner set
    "h8-rot4of16-inner200": dict(n_layer=3, n_embd=128, n_head=8, rotary_dim=4, n_inner=200),
    # four heads per shard (head 8), rotary_dim < head_dim
    "h16-rot4of8": dict(n_layer=2, n_embd=128, n_head=16, rotary_dim=4),
    # rotary over the whole head (24), n_head 4
    "h4-rot24of24": dict(n_layer=1, n_embd=96, n_head=4, rotary_dim=24),
}


def ids_batch(seed: int, vocab: int, batch: int = 2, length: int = 37) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (batch, length), generator=g)


def logits_pair(src, dst, idx):
    from transformers import CodeGenForCausalLM, GPTJForCausalLM

    ref = CodeGenForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
    gptj = GPTJForCausalLM.from_pretrained(dst, dtype=torch.float32).eval()
    with torch.no_grad():
        return ref(idx).logits, gptj(idx).logits


@pytest.mark.parametrize("shape", list(SHAPES.values()), ids=list(SHAPES))
def test_gptj_logits_equal_codegen(tmp_path, shape):
    src = make_codegen_checkpoint(tmp_path / "src", vocab_size=1024, n_positions=128, **shape)
    dst = export_gptj(str(src), tmp_path / "gptj")
    expected, got = logits_pair(src, dst, ids_batch(0, 1024))
    assert expected.std(dim=-1).min() > 0.05  # logits far from uniform: the comparison is not trivial
    assert (got - expected).abs().max().item() <= TOL
    cfg = json.loads((dst / "config.json").read_text())
    head_dim = shape["n_embd"] // shape["n_head"]
    assert cfg["model_type"] == "gptj" and cfg["rotary_dim"] == (shape["rotary_dim"] or head_dim)
    assert cfg["n_inner"] == shape.get("n_inner") and cfg["tie_word_embeddings"] is False


def test_tensors_are_moved_not_computed(tmp_path):
    """q, k, v are the 4-shard [q | v | k] slices of qkv_proj exactly; every other tensor is unchanged."""
    src = make_codegen_checkpoint(tmp_path / "src", vocab_size=512, n_embd=64, n_head=8, rotary_dim=4)
    dst = export_gptj(str(src), tmp_path / "gptj")
    a, b = open_weights(src), open_weights(dst)
    for i in range(2):
        wq, wk, wv = hf_qkv_to_qkv(a.get(f"transformer.h.{i}.attn.qkv_proj.weight"), 64)
        for part, w in zip("qkv", (wq, wk, wv), strict=True):
            assert torch.equal(b.get(f"transformer.h.{i}.attn.{part}_proj.weight"), w)
    kept = [n for n in a.names() if "qkv_proj" not in n]
    assert sorted(b.names()) == sorted(
        kept + [f"transformer.h.{i}.attn.{p}_proj.weight" for i in range(2) for p in "qkv"]
    )
    for n in kept:
        assert torch.equal(a.get(n), b.get(n))
    for f in ("tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json"):
        assert (dst / f).read_bytes() == (src / f).read_bytes()


def test_pytorch_bin_source_with_old_buffers(tmp_path):
    src = make_codegen_checkpoint(
        tmp_path / "src", vocab_size=512, n_positions=64, safe_serialization=False, n_embd=64, n_head=4
    )
    dst = export_gptj(str(src), tmp_path / "gptj")
    assert not any("attn.bias" in n or "masked_bias" in n for n in open_weights(dst).names())
    expected, got = logits_pair(src, dst, ids_batch(1, 512))
    assert (got - expected).abs().max().item() <= TOL


def test_sharded_output_with_index(tmp_path):
    src = make_codegen_checkpoint(tmp_path / "src", vocab_size=1024, n_layer=3, n_embd=64, n_head=4)
    limit = 200_000  # bytes; the [1024, 64] float32 embedding and lm_head (262 kB) get shards of their own
    dst = export_gptj(str(src), tmp_path / "gptj", max_shard_bytes=limit)
    index = json.loads((dst / "model.safetensors.index.json").read_text())
    files = sorted(set(index["weight_map"].values()))
    assert len(files) > 3 and not (dst / "model.safetensors").exists()
    assert files[0] == f"model-00001-of-{len(files):05d}.safetensors"
    total = 0
    for f in files:
        with safe_open(str(dst / f), "pt") as h:
            sizes = [h.get_slice(k).get_shape() for k in h.keys()]
            nbytes = sum(4 * torch.Size(s).numel() for s in sizes)
            assert nbytes <= limit or len(sizes) == 1  # a shard holds at most `limit` bytes, or one tensor
            total += nbytes
    assert index["metadata"]["total_size"] == total
    expected, got = logits_pair(src, dst, ids_batch(2, 1024))
    assert (got - expected).abs().max().item() <= TOL


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=str)
def test_dtype(tmp_path, dtype):
    src = make_codegen_checkpoint(tmp_path / "src", vocab_size=512, n_embd=64, n_head=4)
    name = str(dtype).removeprefix("torch.")
    dst = export_gptj(str(src), tmp_path / "gptj", dtype=name)
    a, b = open_weights(src), open_weights(dst)
    for n in b.names():
        assert b.get(n).dtype == dtype
    assert torch.equal(b.get("lm_head.weight"), a.get("lm_head.weight").to(dtype))
    wq = hf_qkv_to_qkv(a.get("transformer.h.0.attn.qkv_proj.weight"), 64)[0]
    assert torch.equal(b.get("transformer.h.0.attn.q_proj.weight"), wq.to(dtype))
    assert json.loads((dst / "config.json").read_text())["torch_dtype"] == name


def test_stored_dtype_kept_by_default(tmp_path):
    from safetensors.torch import load_file, save_file

    src = make_codegen_checkpoint(tmp_path / "src", vocab_size=512)
    state = {k: v.half() for k, v in load_file(src / "model.safetensors").items()}
    save_file(state, src / "model.safetensors")  # a float16 checkpoint, as the hub's big CodeGens are
    dst = export_gptj(str(src), tmp_path / "gptj")
    assert {open_weights(dst).get(n).dtype for n in open_weights(dst).names()} == {torch.float16}
    assert json.loads((dst / "config.json").read_text())["torch_dtype"] == "float16"


def test_non_codegen_source_is_refused(tmp_path):
    src = make_neox_japanese_checkpoint(tmp_path / "ja")
    with pytest.raises(ModelLoadError, match="not a CodeGen checkpoint.*gpt_neox_japanese"):
        export_gptj(str(src), tmp_path / "out")
    assert not (tmp_path / "out").exists()
    gptj = export_gptj(str(make_codegen_checkpoint(tmp_path / "cg", vocab_size=512)), tmp_path / "gptj")
    with pytest.raises(ModelLoadError, match="model_type 'gptj'"):
        export_gptj(str(gptj), tmp_path / "again")


def test_non_empty_destination_is_refused_and_kept(tmp_path):
    src = make_codegen_checkpoint(tmp_path / "src", vocab_size=512)
    dst = tmp_path / "out"
    dst.mkdir()
    (dst / "notes.txt").write_text("mine")
    with pytest.raises(ModelLoadError, match="exists and is not an empty directory"):
        export_gptj(str(src), dst)
    assert [p.name for p in dst.iterdir()] == ["notes.txt"] and (dst / "notes.txt").read_text() == "mine"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert (export_gptj(str(src), empty) / "model.safetensors").is_file()  # an empty directory is fine


def test_unexpected_tensor_is_named(tmp_path):
    from safetensors.torch import load_file, save_file

    src = make_codegen_checkpoint(tmp_path / "src", vocab_size=512)
    state = load_file(src / "model.safetensors")
    state["transformer.h.0.attn.extra.weight"] = torch.zeros(2)
    save_file(state, src / "model.safetensors")
    with pytest.raises(ModelLoadError, match="transformer.h.0.attn.extra.weight"):
        export_gptj(str(src), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_cli_export(tmp_path, capsys):
    src = make_codegen_checkpoint(tmp_path / "src", vocab_size=512)
    dst = tmp_path / "gptj"
    assert main(["export", "--format", "gptj", "--dtype", "bfloat16", str(src), str(dst)]) == 0
    assert capsys.readouterr().out.strip() == str(dst)
    assert json.loads((dst / "config.json").read_text())["torch_dtype"] == "bfloat16"
    assert main(["export", "--format", "gptj", str(src), str(dst)]) == 2
    assert "not an empty directory" in capsys.readouterr().err
    assert main(["export", "--max-shard-size", "lots", str(src), str(tmp_path / "x")]) == 2
    assert "--max-shard-size 'lots'" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "missing"), str(tmp_path / "y")]) == 2
    assert "no such directory" in capsys.readouterr().err


def test_null_rotary_dim_becomes_the_head_dim():
    """CodeGen reads rotary_dim null as the whole head; GPT-J would read it as n_embd: write it out."""
    from inference.config import CodeGenConfig
    from inference.export import gptj_config

    d = dict(vocab_size=512, n_embd=128, n_layer=2, n_head=8, rotary_dim=None)
    assert gptj_config(d, CodeGenConfig.from_dict(d), "float32")["rotary_dim"] == 16
