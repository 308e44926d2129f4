"""Random-weight checkpoints in the exact Hugging Face layout, written by `transformers` (tests only)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch

# the real tokenizers and model documentation: ../shared beside the checkout, or $CODEGEN_LSP_SHARED
SHARED = Path(os.environ.get("CODEGEN_LSP_SHARED") or Path(__file__).resolve().parents[1].parent / "shared")
SHARED_DATA = SHARED / "data"
CODEGEN_TOKENIZER_DIR = SHARED_DATA / "codegen-350M-mono-tokenizer"
NEOX_JA_TOKENIZER_DIR = SHARED_DATA / "gpt-neox-japanese-tokenizer"
CODEGEN_TOKENIZER_FILES = (
    "tokenizer.json",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "special_tokens_map.json",
    "tokenizer_config.json",
)


def copy_codegen_tokenizer(dest: Path, files=CODEGEN_TOKENIZER_FILES) -> None:
    """Copy the real codegen-350M-mono tokenizer files into a checkpoint directory."""
    for name in files:
        shutil.copy(CODEGEN_TOKENIZER_DIR / name, dest / name)


def make_codegen_checkpoint(
    dest: Path,
    *,
    n_layer: int = 2,
    n_embd: int = 64,
    n_head: int = 4,
    rotary_dim: int = 8,
    n_inner: int | None = None,
    n_positions: int = 512,
    vocab_size: int = 51200,
    seed: int = 0,
    safe_serialization: bool = True,
    max_shard_size: str | None = None,
    init_std: float = 0.5,
) -> Path:
    """Write a random-weight CodeGen checkpoint (config.json + weights + real tokenizer) to `dest`."""
    from transformers import CodeGenConfig, CodeGenForCausalLM

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    config = CodeGenConfig(
        vocab_size=vocab_size,
        n_positions=n_positions,
        n_embd=n_embd,
        n_layer=n_layer,
        n_head=n_head,
        rotary_dim=rotary_dim,
        n_inner=n_inner,
    )
    torch.manual_seed(seed)
    model = CodeGenForCausalLM(config).eval()
    # Larger-than-default random weights so logits are far from uniform and greedy paths are decisive.
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, init_std / (p.shape[-1] ** 0.5) if p.dim() > 1 else 0.1)
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(dest, **kwargs)
    if not safe_serialization:
        to_pytorch_bin(dest, n_layer=n_layer, n_positions=n_positions)
    copy_codegen_tokenizer(dest)
    return dest


def to_pytorch_bin(dest: Path, *, n_layer: int, n_positions: int) -> None:
    """Turn a safetensors checkpoint into the legacy `pytorch_model.bin` layout (with old attn buffers)."""
    from safetensors.torch import load_file

    state = load_file(dest / "model.safetensors")
    # Old CodeGen checkpoints also carry the non-learned causal-mask buffers.
    for i in range(n_layer):
        causal = torch.tril(torch.ones(n_positions, n_positions, dtype=torch.bool))
        state[f"transformer.h.{i}.attn.bias"] = causal[None, None]
        state[f"transformer.h.{i}.attn.masked_bias"] = torch.tensor(-1e9)
    torch.save(state, dest / "pytorch_model.bin")
    (dest / "model.safetensors").unlink()


NEOX_JA_TOKENIZER_FILES = ("vocab.txt", "emoji.json")


def make_neox_japanese_checkpoint(
    dest: Path,
    *,
    n_layer: int = 2,
    hidden_size: int = 64,
    n_head: int = 4,
    intermediate_multiple_size: int = 4,
    rotary_pct: float = 1.0,
    rotary_emb_base: int = 10000,
    max_position_embeddings: int = 512,
    vocab_size: int = 32000,
    tie_word_embeddings: bool = True,
    legacy_config: bool = False,
    safe_serialization: bool = True,
    seed: int = 0,
    init_std: float = 0.5,
) -> Path:
    """Write a random-weight GPTNeoXJapaneseForCausalLM (config, safetensors, real vocab.txt + emoji.json).

    transformers 5 writes `rope_parameters` and omits `embed_out.weight` when tied; `legacy_config=True`
    rewrites config.json the old way (`rotary_pct`, `rotary_emb_base`, no `tie_word_embeddings`);
    `safe_serialization=False` writes `pytorch_model.bin` with the old non-learned attention buffers.
    """
    import json

    from transformers import GPTNeoXJapaneseConfig, GPTNeoXJapaneseForCausalLM

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    config = GPTNeoXJapaneseConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        num_hidden_layers=n_layer,
        num_attention_heads=n_head,
        intermediate_multiple_size=intermediate_multiple_size,
        max_position_embeddings=max_position_embeddings,
        rotary_pct=rotary_pct,
        rotary_emb_base=rotary_emb_base,
        tie_word_embeddings=tie_word_embeddings,
    )
    torch.manual_seed(seed)
    model = GPTNeoXJapaneseForCausalLM(config).eval()
    # Larger-than-default random weights (incl. LayerNorms and dense_bias) so greedy paths are decisive.
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, init_std / (p.shape[-1] ** 0.5) if p.dim() > 1 else 0.1)
        for name, p in model.named_parameters():
            if name.endswith("layernorm.weight") or name.endswith("final_layer_norm.weight"):
                p.add_(1.0)
    model.save_pretrained(dest)
    if legacy_config:
        path = dest / "config.json"
        cfg = json.loads(path.read_text(encoding="utf-8"))
        rope = cfg.pop("rope_parameters", {}) or {}
        cfg.pop("tie_word_embeddings", None)
        cfg["rotary_pct"] = rope.get("partial_rotary_factor", rotary_pct)
        cfg["rotary_emb_base"] = rope.get("rope_theta", rotary_emb_base)
        path.write_text(json.dumps(cfg, indent=2), encoding="utf-8")
    if not safe_serialization:
        from safetensors.torch import load_file

        state = load_file(dest / "model.safetensors")
        head_dim = hidden_size // n_head
        rot = int(head_dim * rotary_pct)
        for i in range(n_layer):
            pre = f"gpt_neox_japanese.layers.{i}.attention."
            n = max_position_embeddings
            state[pre + "bias"] = torch.tril(torch.ones(n, n, dtype=torch.bool))[None, None]
            state[pre + "masked_bias"] = torch.tensor(-1e9)
            inv_freq = 1.0 / (rotary_emb_base ** (torch.arange(0, rot, 2).float() / rot))
            state[pre + "rotary_emb.inv_freq"] = inv_freq
        torch.save(state, dest / "pytorch_model.bin")
        (dest / "model.safetensors").unlink()
    for name in NEOX_JA_TOKENIZER_FILES:
        shutil.copy(NEOX_JA_TOKENIZER_DIR / name, dest / name)
    return dest


QWEN_TOKENIZER_DIR = SHARED_DATA / "qwen2.5-coder-tokenizer"
QWEN_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
# Qwen2.5-Coder-0.5B's exact shape (../shared/data/qwen2.5-coder-tokenizer/README.md)
QWEN_05B_SHAPE = dict(
    model_type="qwen2",
    n_layer=24,
    hidden_size=896,
    n_head=14,
    n_kv_head=2,
    intermediate_size=4864,
    vocab_size=151936,
    tie_word_embeddings=True,
    rope_theta=1e6,
    rms_norm_eps=1e-6,
    max_position_embeddings=32768,
)


def make_llama_checkpoint(
    dest: Path,
    *,
    model_type: str = "qwen2",
    n_layer: int = 2,
    hidden_size: int = 64,
    n_head: int = 4,
    n_kv_head: int = 2,
    intermediate_size: int = 160,
    vocab_size: int = 151936,
    tie_word_embeddings: bool = False,
    rope_theta: float = 10000.0,
    rope_scaling: dict | None = None,
    rms_norm_eps: float = 1e-6,
    max_position_embeddings: int = 512,
    attention_bias: bool = False,
    head_dim: int | None = None,
    seed: int = 0,
    init_std: float = 0.5,
    max_shard_size: str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Path:
    """Write a random-weight Llama / Qwen2 / Qwen3 checkpoint (config, safetensors, the Qwen2 tokenizer)."""
    import transformers

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    names = {"llama": "Llama", "qwen2": "Qwen2", "qwen3": "Qwen3"}[model_type]
    config_cls = getattr(transformers, f"{names}Config")
    model_cls = getattr(transformers, f"{names}ForCausalLM")
    kwargs = dict(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        num_hidden_layers=n_layer,
        num_attention_heads=n_head,
        num_key_value_heads=n_kv_head,
        intermediate_size=intermediate_size,
        tie_word_embeddings=tie_word_embeddings,
        rms_norm_eps=rms_norm_eps,
        max_position_embeddings=max_position_embeddings,
        bos_token_id=151643,
        eos_token_id=151643,
    )
    rope = {"rope_type": "default", "rope_theta": rope_theta, **(rope_scaling or {})}
    kwargs["rope_parameters"] = rope
    if model_type != "qwen2":
        kwargs["attention_bias"] = attention_bias
    if head_dim is not None:
        kwargs["head_dim"] = head_dim
    config = config_cls(**kwargs)
    torch.manual_seed(seed)
    model = model_cls(config).eval()
    # Larger-than-default random weights (norm weights near 1) so logits are far from uniform.
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.normal_(0.0, init_std / (p.shape[-1] ** 0.5) if p.dim() > 1 else 0.1)
            if name.endswith("norm.weight"):
                p.add_(1.0)
    model.to(dtype)
    save = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(dest, **save)
    for name in QWEN_TOKENIZER_FILES:
        shutil.copy(QWEN_TOKENIZER_DIR / name, dest / name)
    return dest
