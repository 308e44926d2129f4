"""GPT-NeoX-Japanese forward pass (sequential residual, NeoX rotary on part of each head) in plain PyTorch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from inference.config import ModelConfig
from inference.errors import ModelLoadError
from inference.kv_cache import KVCache, first_position
from inference.ops import Embedding, Linear, cached_attention


@dataclass
class NeoXJapaneseConfig(ModelConfig):
    """abeja/gpt-neox-japanese-*: two LayerNorms a block, no Linear biases, `dense_bias` in the last layer."""

    hidden_size: int = 0
    intermediate_size: int = 0
    rotary_ndims: int = 0
    rope_theta: float = 10000.0
    layer_norm_eps: float = 1e-5
    tie_word_embeddings: bool = True

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> NeoXJapaneseConfig:
        """Build from config.json: old style (rotary_pct, rotary_emb_base) or new (rope_parameters)."""
        need = ("hidden_size", "num_hidden_layers", "num_attention_heads")
        missing = [k for k in need if k not in d]
        if missing:
            raise ModelLoadError(
                f"config.json lacks {', '.join(missing)} (needed for model_type 'gpt_neox_japanese')"
            )
        hidden, n_head = int(d["hidden_size"]), int(d["num_attention_heads"])
        if n_head <= 0 or hidden % n_head:
            raise ModelLoadError(
                f"config.json: hidden_size={hidden} is not divisible by num_attention_heads={n_head}"
            )
        head_dim = hidden // n_head
        # transformers 5 folds the old keys into rope_parameters; an explicit rope_parameters wins.
        rope = d.get("rope_scaling") or d.get("rope_parameters") or {}
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if rope_type != "default":
            raise ModelLoadError(f"config.json: rope type {rope_type!r} is not supported (only 'default')")
        theta = rope.get("rope_theta", d.get("rotary_emb_base", 10000))
        pct = rope.get("partial_rotary_factor", d.get("rotary_pct", 1.0))
        rotary_ndims = int(head_dim * pct)
        if rotary_ndims % 2 or not 0 <= rotary_ndims <= head_dim:
            raise ModelLoadError(
                f"config.json: rotary_pct={pct} gives {rotary_ndims} rotary dims of a {head_dim}-dim head; "
                "it must be an even number"
            )
        act = d.get("hidden_act", "gelu")
        if act != "gelu":
            raise ModelLoadError(f"config.json: hidden_act {act!r} is not supported (only 'gelu')")
        eos = d.get("eos_token_id", 31999)
        return cls(
            n_layer=int(d["num_hidden_layers"]),
            n_head=n_head,
            head_dim=head_dim,
            n_positions=int(d.get("max_position_embeddings", 2048)),
            vocab_size=int(d.get("vocab_size", 32000)),
            eos_token_id=eos[0] if isinstance(eos, list) else eos,
            bos_token_id=d.get("bos_token_id", 31996),
            hidden_size=hidden,
            intermediate_size=int(hidden * d.get("intermediate_multiple_size", 4)),
            rotary_ndims=rotary_ndims,
            rope_theta=theta,
            layer_norm_eps=float(d.get("layer_norm_eps", 1e-5)),
            tie_word_embeddings=bool(d.get("tie_word_embeddings", True)),
        )


def rotary_tables(n_positions: int, rotary_ndims: int, theta: float, device=None) -> tuple[Tensor, Tensor]:
    """cos, sin: [n_positions, rotary_ndims] in float32 (NeoX: the half-size table repeated twice)."""
    inv_freq = 1.0 / (
        theta ** (torch.arange(0, rotary_ndims, 2, dtype=torch.float, device=device) / rotary_ndims)
    )
    freqs = torch.arange(n_positions, device=device).float()[:, None] * inv_freq  # [S, R/2]
    emb = torch.cat((freqs, freqs), dim=-1)  # [S, R]
    return emb.cos(), emb.sin()


def rotate_half(x: Tensor) -> Tensor:
    """[a, b] -> [-b, a] along the last dim."""
    a, b = x.chunk(2, dim=-1)
    return torch.cat((-b, a), dim=-1)


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor, rotary_ndims: int) -> Tensor:
    """NeoX rotary on the first rotary_ndims dims. x: [B, H, T, D]; cos/sin: [T, R]."""
    if rotary_ndims == 0:
        return x
    rot, rest = x[..., :rotary_ndims], x[..., rotary_ndims:]
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    rot = rot * cos + rotate_half(rot) * sin
    return torch.cat((rot, rest), dim=-1)


class Attention(nn.Module):
    """Per-head fused qkv (W.view(H, 3, D, E)), rotary, causal attention, dense (+ dense_bias if last)."""

    def __init__(self, config: NeoXJapaneseConfig, last: bool):
        super().__init__()
        E = config.hidden_size
        self.n_head, self.head_dim, self.rotary_ndims = config.n_head, config.head_dim, config.rotary_ndims
        self.query_key_value = Linear(E, 3 * E, bias=False)
        self.dense = Linear(E, E, bias=False)
        self.dense_bias = nn.Parameter(torch.zeros(E)) if last else None

    def forward(
        self, x: Tensor, cos: Tensor, sin: Tensor, layer: int, start: int, cache: KVCache | None
    ) -> Tensor:
        B, T, E = x.shape
        H, D = self.n_head, self.head_dim
        qkv = self.query_key_value(x).view(B, T, H, 3 * D).transpose(1, 2)  # qkv: [B, H, T, 3D]
        q, k, v = qkv.split(D, dim=-1)  # each [B, H, T, D]
        q = apply_rotary(q, cos, sin, self.rotary_ndims)
        k = apply_rotary(k, cos, sin, self.rotary_ndims)
        y = cached_attention(q, k, v, start, cache, layer)  # y: [B, H, T, D]
        y = self.dense(y.transpose(1, 2).reshape(B, T, E))
        return y + self.dense_bias if self.dense_bias is not None else y


class Layer(nn.Module):
    """h = x + attn(input_layernorm(x)); x = h + mlp(post_attention_layernorm(h))."""

    def __init__(self, config: NeoXJapaneseConfig, last: bool):
        super().__init__()
        E, inner = config.hidden_size, config.intermediate_size
        self.input_layernorm = nn.LayerNorm(E, eps=config.layer_norm_eps)
        self.post_attention_layernorm = nn.LayerNorm(E, eps=config.layer_norm_eps)
        self.attention = Attention(config, last)
        self.mlp = nn.ModuleDict(
            {
                "dense_h_to_4h": Linear(E, inner, bias=False),
                "dense_4h_to_h": Linear(inner, E, bias=False),
            }
        )

    def forward(
        self, x: Tensor, cos: Tensor, sin: Tensor, layer: int, start: int, cache: KVCache | None
    ) -> Tensor:
        h = x + self.attention(self.input_layernorm(x), cos, sin, layer, start, cache)
        m = self.mlp["dense_h_to_4h"](self.post_attention_layernorm(h))
        return h + self.mlp["dense_4h_to_h"](F.gelu(m))  # exact (erf) GELU


class NeoXJapanese(nn.Module):
    """GPTNeoXJapaneseForCausalLM's arithmetic; logits are float32."""

    def __init__(self, config: NeoXJapaneseConfig):
        super().__init__()
        self.config = config
        L = config.n_layer
        self.embed_in = Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(Layer(config, last=i == L - 1) for i in range(L))
        self.final_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        # Always a parameter: the loader fills it from embed_out.weight, or from embed_in when the checkpoint
        # is tied and does not store it; prepare_for_inference() then shares the storage again.
        self.embed_out = Linear(config.hidden_size, config.vocab_size, bias=False)
        # on the meta device (the loader's), tables computed there would cost torch._refs' first-use import
        # of torch._dynamo (about a second); the loader recomputes them on the model's device anyway
        self.init_buffers("cpu" if torch.get_default_device().type == "meta" else None)

    def init_buffers(self, device=None) -> None:
        """(Re)compute the non-learned rotary tables on `device`."""
        c = self.config
        cos, sin = rotary_tables(c.n_positions, c.rotary_ndims, c.rope_theta, device)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)

    def prepare_block(self, block: nn.Module) -> None:
        """Nothing to fuse: a layer's weights are final as loaded (the loader quantizes them at once)."""

    @torch.no_grad()
    def prepare_for_inference(self) -> None:
        """Share one tensor between embed_in and embed_out when they hold the same values (tied)."""
        w_in, w_out = self.embed_in.weight, self.embed_out.weight
        if w_in is not w_out and w_in.shape == w_out.shape and torch.equal(w_in, w_out):
            self.embed_out.weight = w_in

    def forward(
        self,
        idx: Tensor,
        input_pos: Tensor | None = None,
        cache: KVCache | None = None,
        last_only: bool = False,
    ) -> Tensor:
        """idx: [B, T] -> logits [B, T, V] float32 ([B, 1, V] with last_only)."""
        B, T = idx.shape
        start = first_position(T, input_pos, cache, self.config.n_positions)
        cos, sin = self.rope_cos[start : start + T], self.rope_sin[start : start + T]
        x = self.embed_in(idx)  # x: [B, T, E]
        for i, layer in enumerate(self.layers):
            x = layer(x, cos, sin, i, start, cache)
        if last_only:
            x = x[:, -1:]
        return self.embed_out(self.final_layer_norm(x)).float()
