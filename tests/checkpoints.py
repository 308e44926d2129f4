"""Random-weight checkpoints in the exact Hugging Face on-disk layout, written by `transformers` (tests only)."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
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
    """Turn a safetensors checkpoint into the legacy `pytorch_model.bin` layout (with the old attn buffers)."""
    from safetensors.torch import load_file

    state = load_file(dest / "model.safetensors")
    # Old CodeGen checkpoints also carry the non-learned causal-mask buffers.
    for i in range(n_layer):
        state[f"transformer.h.{i}.attn.bias"] = torch.tril(torch.ones(n_positions, n_positions, dtype=torch.bool))[
            None, None
        ]
        state[f"transformer.h.{i}.attn.masked_bias"] = torch.tensor(-1e9)
    torch.save(state, dest / "pytorch_model.bin")
    (dest / "model.safetensors").unlink()
