"""The Llama layout (Llama, Qwen2, Qwen3) in plain PyTorch: RMSNorm, SwiGLU, grouped-query attention."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from inference.kv_cache import KVCache, first_position
from inference.llama_config import LlamaConfig, rotary_tables
from inference.ops import Embedding, Linear, cached_attention, linear


class RMSNorm(nn.Module):
    """x / rms(x) * weight, the mean taken in float32 (as the reference)."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        if x.dtype == self.weight.dtype == torch.float32:  # one fused op, the same arithmetic
            return torch.rms_norm(x, self.weight.shape, self.weight, self.eps)
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


def apply_rotary(x: Tensor, cos: Tensor, sin_signed: Tensor) -> Tensor:
    """NeoX rotary over the whole head: x * cos + rotate_half(x) * sin, rotate_half([a, b]) = [-b, a].

    x: [B, T, H, D]; cos, sin_signed: [T, D] float32, sin_signed = [-sin_a, sin_b] so that
    rotate_half(x) * sin = roll(x, D/2) * sin_signed (the same products: a sign moved, nothing rounded).
    """
    cos, sin_signed = cos[:, None].to(x.dtype), sin_signed[:, None].to(x.dtype)  # [T, 1, D]
    y = x * cos
    return y.add_(x.roll(x.shape[-1] // 2, dims=-1) * sin_signed)


class Block(nn.Module):
    """h = x + o_proj(attn(rms_1(x))); h + down_proj(silu(gate_proj(a)) * up_proj(a)), a = rms_2(h)."""

    def __init__(self, c: LlamaConfig):
        super().__init__()
        E, D, inner = c.hidden_size, c.head_dim, c.intermediate_size
        self.n_head, self.n_kv, self.head_dim, self.inner = c.n_head, c.kv_heads, D, inner
        self.input_layernorm = RMSNorm(E, c.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(E, c.rms_norm_eps)
        # Checkpoint layout (parity, training); fuse() joins q/k/v and gate/up into one product each.
        self.q_proj = nn.Linear(E, self.n_head * D, bias=c.qkv_bias)
        self.k_proj = nn.Linear(E, self.n_kv * D, bias=c.qkv_bias)
        self.v_proj = nn.Linear(E, self.n_kv * D, bias=c.qkv_bias)
        self.o_proj = Linear(self.n_head * D, E, bias=c.o_bias)
        self.gate_proj = nn.Linear(E, inner, bias=c.mlp_bias)
        self.up_proj = nn.Linear(E, inner, bias=c.mlp_bias)
        self.down_proj = Linear(inner, E, bias=c.mlp_bias)
        self.q_norm = RMSNorm(D, c.rms_norm_eps) if c.qk_norm else None
        self.k_norm = RMSNorm(D, c.rms_norm_eps) if c.qk_norm else None
        self.fused = False

    @torch.no_grad()
    def fuse(self) -> None:
        """One product for [q; k; v] and one for [gate; up] (each pair reads the same normed input)."""
        qkv = (self.q_proj, self.k_proj, self.v_proj)
        self.w_qkv = nn.Parameter(torch.cat([m.weight for m in qkv]), requires_grad=False)  # [(H+2K)D, E]
        b = [m.bias for m in qkv]
        self.b_qkv = nn.Parameter(torch.cat(b), requires_grad=False) if b[0] is not None else None
        self.w_gu = nn.Parameter(torch.cat((self.gate_proj.weight, self.up_proj.weight)), requires_grad=False)
        gb = self.gate_proj.bias
        self.b_gu = (
            nn.Parameter(torch.cat((gb, self.up_proj.bias)), requires_grad=False) if gb is not None else None
        )
        del self.q_proj, self.k_proj, self.v_proj, self.gate_proj, self.up_proj
        self.fused = True
        self.int8_weights = (("w_qkv", "b_qkv"), ("w_gu", "b_gu"))  # o_proj, down_proj: Linear's own

    def _qkv(self, a: Tensor) -> tuple[Tensor, Tensor]:
        """a: [B, T, E] -> qk [B, T, H + K, D] (queries then keys, before rotary), v [B, T, K, D]."""
        B, T, _ = a.shape
        H, K, D = self.n_head, self.n_kv, self.head_dim
        if self.fused:
            qk, v = linear(a, self.w_qkv, self.b_qkv).split(((H + K) * D, K * D), dim=-1)
        else:
            qk, v = torch.cat((self.q_proj(a), self.k_proj(a)), dim=-1), self.v_proj(a)
        qk = qk.view(B, T, H + K, D)
        if self.q_norm is not None:  # Qwen3: RMSNorm over each head, before rotary
            qk = torch.cat((self.q_norm(qk[:, :, :H]), self.k_norm(qk[:, :, H:])), dim=2)
        return qk, v.view(B, T, K, D)

    def _mlp(self, a: Tensor) -> Tensor:
        """a: [B, T, E] -> silu(gate) * up: [B, T, I]."""
        if self.fused:
            gate, up = linear(a, self.w_gu, self.b_gu).split(self.inner, dim=-1)
        else:
            gate, up = self.gate_proj(a), self.up_proj(a)
        return F.silu(gate) * up

    def forward(
        self, x: Tensor, cos: Tensor, sin: Tensor, layer: int, start: int, cache: KVCache | None
    ) -> Tensor:
        B, T, _ = x.shape
        qk, v = self._qkv(self.input_layernorm(x))
        q, k = apply_rotary(qk, cos, sin).transpose(1, 2).split((self.n_head, self.n_kv), dim=1)
        y = cached_attention(q, k, v.transpose(1, 2), start, cache, layer)  # y: [B, H, T, D]
        h = x + self.o_proj(y.transpose(1, 2).reshape(B, T, self.n_head * self.head_dim))
        return h + self.down_proj(self._mlp(self.post_attention_layernorm(h)))


class Llama(nn.Module):
    """LlamaForCausalLM / Qwen2ForCausalLM / Qwen3ForCausalLM's arithmetic; logits are float32."""

    def __init__(self, config: LlamaConfig):
        super().__init__()
        self.config = config
        self.embed_tokens = Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        # Always a parameter: the loader fills it from lm_head.weight, or from embed_tokens when the
        # checkpoint is tied and does not store it; prepare_for_inference() then shares the storage again.
        self.lm_head = Linear(config.hidden_size, config.vocab_size, bias=False)
        self.init_buffers("cpu" if torch.get_default_device().type == "meta" else None)

    def init_buffers(self, device=None) -> None:
        """(Re)compute the non-learned rotary tables on `device`."""
        cos, sin = rotary_tables(self.config, device)
        half = sin.shape[-1] // 2
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", torch.cat((-sin[:, :half], sin[:, half:]), dim=-1), persistent=False)

    def prepare_block(self, block: Block) -> None:
        """Fuse one block's products once its weights are in (the loader; on meta for the prepared cache)."""
        if not block.fused:
            block.fuse()

    @torch.no_grad()
    def prepare_for_inference(self) -> None:
        """Fuse each block's products; share embed_tokens and lm_head when they hold the same values."""
        for block in self.layers:
            if not block.fused:
                block.fuse()
        w_in, w_out = self.embed_tokens.weight, self.lm_head.weight
        if w_in is not w_out and w_in.shape == w_out.shape and torch.equal(w_in, w_out):
            self.lm_head.weight = w_in

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
        cos, sin = self.rope_cos[start : start + T], self.rope_sin[start : start + T]  # [T, D]
        x = self.embed_tokens(idx)  # x: [B, T, E]
        for i, block in enumerate(self.layers):
            x = block(x, cos, sin, i, start, cache)
        if last_only:
            x = x[:, -1:]
        return self.lm_head(self.norm(x)).float()
