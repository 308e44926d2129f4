"""config.json of the Llama layout (Llama, Qwen2, Qwen3) -> LlamaConfig; rotary frequencies per rope kind."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from inference.config import ModelConfig
from inference.errors import ModelLoadError

ROPE_KINDS = ("default", "linear", "llama3")  # the kinds the supported code checkpoints use
# The window the engine serves (KV cache, rotary tables): these checkpoints claim 32K-128K positions, but an
# editor's prompt is a few thousand tokens, and a 32K cache of Qwen2.5-Coder-0.5B is 805 MB per document in
# float32. `max_position_embeddings` stays in the config; contextWindow can ask for less, never more.
WINDOW_CAP = 4096


@dataclass
class LlamaConfig(ModelConfig):
    """RMSNorm, SwiGLU MLP, grouped-query attention, NeoX rotary over the whole head (model_type llama; qwen2:
    q/k/v biases always; qwen3: RMSNorm on q and k per head)."""

    model_type: str = "llama"
    hidden_size: int = 0
    intermediate_size: int = 0
    rms_norm_eps: float = 1e-6
    qkv_bias: bool = False  # Qwen2: q/k/v projections have biases
    o_bias: bool = False  # Llama's attention_bias puts one on o_proj too
    mlp_bias: bool = False
    qk_norm: bool = False  # Qwen3: RMSNorm over each head of q and k before rotary
    tie_word_embeddings: bool = False
    rope_theta: float = 10000.0
    rope: dict[str, Any] = field(default_factory=dict)  # rope_scaling / rope_parameters, kind checked
    max_position_embeddings: int = 0  # what the checkpoint was trained for (n_positions: what is served)

    @property
    def rope_kind(self) -> str:
        """'default', 'linear' or 'llama3'."""
        return self.rope.get("rope_type", self.rope.get("type", "default")) or "default"

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LlamaConfig:
        """Build from config.json (transformers 4's rope_scaling or 5's rope_parameters), checking it."""
        model_type = d.get("model_type", "llama")
        need = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size")
        missing = [k for k in need if k not in d]
        if missing:
            raise ModelLoadError(
                f"config.json lacks {', '.join(missing)} (needed for model_type {model_type!r})"
            )
        hidden, n_head = int(d["hidden_size"]), int(d["num_attention_heads"])
        n_kv = int(d.get("num_key_value_heads") or n_head)
        if n_head <= 0 or n_kv <= 0 or n_head % n_kv:
            raise ModelLoadError(
                f"config.json: num_attention_heads={n_head} is not a multiple of num_key_value_heads={n_kv} "
                "(grouped-query attention shares each key/value head among a whole number of query heads)"
            )
        head_dim = d.get("head_dim") or (hidden // n_head if hidden % n_head == 0 else None)
        if not head_dim or head_dim % 2:
            raise ModelLoadError(
                f"config.json: hidden_size={hidden} with num_attention_heads={n_head} gives no even head dim "
                "(set head_dim)"
            )
        act = d.get("hidden_act", "silu")
        if act != "silu":
            raise ModelLoadError(f"config.json: hidden_act {act!r} is not supported (only 'silu')")
        rope = dict(d.get("rope_parameters") or d.get("rope_scaling") or {})
        theta = float(rope.get("rope_theta", d.get("rope_theta", 10000.0)))
        bias = bool(d.get("attention_bias", False))
        config = cls(
            n_layer=int(d["num_hidden_layers"]),
            n_head=n_head,
            n_kv_head=n_kv,
            head_dim=int(head_dim),
            n_positions=min(int(d.get("max_position_embeddings", 2048)), WINDOW_CAP),
            vocab_size=int(d["vocab_size"]),
            eos_token_id=_first(d.get("eos_token_id")),
            bos_token_id=_first(d.get("bos_token_id")),
            model_type=model_type,
            hidden_size=hidden,
            intermediate_size=int(d["intermediate_size"]),
            rms_norm_eps=float(d.get("rms_norm_eps", 1e-6)),
            qkv_bias=model_type == "qwen2" or bias,
            o_bias=model_type != "qwen2" and bias,  # Llama's and Qwen3's attention_bias covers o_proj too
            mlp_bias=bool(d.get("mlp_bias", False)),
            qk_norm=model_type == "qwen3",
            tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
            rope_theta=theta,
            rope=rope,
            max_position_embeddings=int(d.get("max_position_embeddings", 2048)),
        )
        config.check_rope()
        return config

    def check_rope(self) -> None:
        """A ModelLoadError naming the rope kind unless it is one of ROPE_KINDS with its fields."""
        kind = self.rope_kind
        if kind not in ROPE_KINDS:
            raise ModelLoadError(
                f"config.json: rope_scaling type {kind!r} is not supported "
                f"(supported: {', '.join(ROPE_KINDS)})"
            )
        need = {"linear": ("factor",), "llama3": ("factor", "low_freq_factor", "high_freq_factor")}
        missing = [k for k in need.get(kind, ()) if k not in self.rope]
        if missing:
            raise ModelLoadError(f"config.json: rope_scaling {kind!r} lacks {', '.join(missing)}")


def _first(v):
    """eos/bos ids may be a list in config.json: the first one."""
    return v[0] if isinstance(v, list) and v else v


def inv_frequencies(config: LlamaConfig, device=None) -> Tensor:
    """[D/2] float32 inverse frequencies of the rotary, scaled as the config's rope kind says."""
    D, rope = config.head_dim, config.rope
    inv = 1.0 / (config.rope_theta ** (torch.arange(0, D, 2, dtype=torch.int64, device=device).float() / D))
    kind = config.rope_kind
    if kind == "linear":
        return inv / float(rope["factor"])
    if kind == "llama3":  # Llama 3.1: long wavelengths slowed by `factor`, short ones kept, a ramp between
        factor, lo, hi = (
            float(rope["factor"]),
            float(rope["low_freq_factor"]),
            float(rope["high_freq_factor"]),
        )
        old = float(rope.get("original_max_position_embeddings", 8192))
        wavelen = 2 * math.pi / inv
        scaled = torch.where(wavelen > old / lo, inv / factor, inv)
        smooth = (old / wavelen - lo) / (hi - lo)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = ~(wavelen < old / hi) & ~(wavelen > old / lo)
        return torch.where(medium, smoothed, scaled)
    return inv


def rotary_tables(config: LlamaConfig, device=None) -> tuple[Tensor, Tensor]:
    """cos, sin: [n_positions, D] float32 (the half-size angle table repeated twice, as the reference)."""
    inv = inv_frequencies(config, device)
    angles = torch.arange(config.n_positions, device=device).float()[:, None] * inv  # [S, D/2]
    emb = torch.cat((angles, angles), dim=-1)  # [S, D]
    return emb.cos(), emb.sin()
