"""CodeGen forward pass (parallel residual, GPT-J rotary, 4-shard fused qkv) in plain PyTorch."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from inference.config import CodeGenConfig
from inference.kv_cache import KVCache, first_position

MP_NUM = 4  # CodeGen's qkv_proj output is laid out for 4 model-parallel shards


def rotary_tables(n_positions: int, rotary_dim: int, device=None) -> tuple[Tensor, Tensor]:
    """cos, sin: [n_positions, rotary_dim // 2] in float32, computed as the reference does."""
    inv_freq = 1.0 / (
        10000 ** (torch.arange(0, rotary_dim, 2, dtype=torch.int64, device=device) / rotary_dim)
    )
    angles = torch.arange(n_positions, dtype=torch.int64, device=device).float()[:, None] * inv_freq
    return torch.cos(angles), torch.sin(angles)


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor, rotary_dim: int) -> Tensor:
    """GPT-J rotary (interleaved pairs) on the first rotary_dim dims. x: [B, T, H, D]; cos/sin: [T, R/2]."""
    rot = x[..., :rotary_dim].float().unflatten(-1, (-1, 2))  # [B, T, H, R/2, 2]
    x0, x1 = rot.unbind(-1)
    cos, sin = cos[:, None, :], sin[:, None, :]  # [T, 1, R/2]
    out = torch.stack((x0 * cos - x1 * sin, x1 * cos + x0 * sin), dim=-1).flatten(-2).to(x.dtype)
    if rotary_dim == x.shape[-1]:
        return out
    return torch.cat((out, x[..., rotary_dim:]), dim=-1)


def hf_qkv_to_qkv(w: Tensor, n_embd: int) -> tuple[Tensor, Tensor, Tensor]:
    """Split the 4-shard [3E, E] qkv_proj weight (per shard: query, value, key) into Wq, Wk, Wv [E, E]."""
    wq, wv, wk = w.view(MP_NUM, 3, n_embd // MP_NUM, n_embd).unbind(1)
    return wq.reshape(n_embd, n_embd), wk.reshape(n_embd, n_embd), wv.reshape(n_embd, n_embd)


class Block(nn.Module):
    """a = ln_1(x); x + out_proj(attn(a)) + fc_out(gelu_new(fc_in(a)))."""

    def __init__(self, config: CodeGenConfig):
        super().__init__()
        E, inner = config.n_embd, config.inner_dim
        self.n_head, self.head_dim, self.n_embd, self.inner = config.n_head, config.head_dim, E, inner
        self.rotary_dim = config.rotary_dim or config.head_dim
        self.ln_1 = nn.LayerNorm(E, eps=config.layer_norm_epsilon)
        # Checkpoint layout (training, parity); prepare_for_inference() fuses them into w_in / w_out.
        self.qkv_proj = nn.Linear(E, 3 * E, bias=False)
        self.out_proj = nn.Linear(E, E, bias=False)
        self.fc_in = nn.Linear(E, inner)
        self.fc_out = nn.Linear(inner, E)
        self.fused = False

    @torch.no_grad()
    def fuse(self) -> None:
        """One matmul for [q; k; v; fc_in] (all read ln_1's output) and one for [out_proj | fc_out]."""
        E = self.n_embd
        wq, wk, wv = hf_qkv_to_qkv(self.qkv_proj.weight, E)
        w = self.fc_in.weight
        w_in = torch.cat((wq, wk, wv, w), dim=0)  # [3E + I, E]
        b_in = torch.cat((torch.zeros(3 * E, dtype=w.dtype, device=w.device), self.fc_in.bias))
        w_out = torch.cat((self.out_proj.weight, self.fc_out.weight), dim=1)  # [E, E + I]
        self.w_in = nn.Parameter(w_in, requires_grad=False)
        self.b_in = nn.Parameter(b_in, requires_grad=False)
        self.w_out = nn.Parameter(w_out, requires_grad=False)
        self.b_out = nn.Parameter(self.fc_out.bias.detach(), requires_grad=False)
        del self.qkv_proj, self.out_proj, self.fc_in, self.fc_out
        self.fused = True

    def _project_in(self, a: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """a: [B, T, E] -> q, k, v [B, T, H, D] (q/k before rotary) and the MLP pre-activation [B, T, I]."""
        B, T, E = a.shape
        H, D = self.n_head, self.head_dim
        if self.fused:
            q, k, v, m = F.linear(a, self.w_in, self.b_in).split((E, E, E, self.inner), dim=-1)
        else:
            qkv = self.qkv_proj(a).view(B, T, MP_NUM, 3, E // MP_NUM)
            q, v, k = qkv.unbind(3)  # each [B, T, 4, E/4]; heads ordered (shard, head-in-shard)
            m = self.fc_in(a)
        return q.reshape(B, T, H, D), k.reshape(B, T, H, D), v.reshape(B, T, H, D), m

    def _project_out(self, y: Tensor, m: Tensor) -> Tensor:
        """y: [B, T, E] attention output, m: [B, T, I] activated MLP -> [B, T, E]."""
        if self.fused:
            return F.linear(torch.cat((y, m), dim=-1), self.w_out, self.b_out)
        return self.out_proj(y) + self.fc_out(m)

    def forward(
        self, x: Tensor, cos: Tensor, sin: Tensor, layer: int, start: int, cache: KVCache | None
    ) -> Tensor:
        B, T, E = x.shape
        a = self.ln_1(x)
        q, k, v, m = self._project_in(a)
        q = apply_rotary(q, cos, sin, self.rotary_dim).transpose(1, 2)  # q: [B, H, T, D]
        k = apply_rotary(k, cos, sin, self.rotary_dim).transpose(1, 2)  # k: [B, H, T, D]
        v = v.transpose(1, 2)  # v: [B, H, T, D]
        if cache is not None:
            k, v = cache.update(layer, start, k, v)  # k, v: [B, H, start+T, D]
        y = attention(q, k, v, start)
        y = y.transpose(1, 2).reshape(B, T, E)
        return x + self._project_out(y, F.gelu(m, approximate="tanh"))


def attention(q: Tensor, k: Tensor, v: Tensor, start: int) -> Tensor:
    """Causal attention of q [B, H, T, D] at positions start.. over k, v [B, H, S, D] (S = start + T)."""
    T, S = q.shape[2], k.shape[2]
    if T == 1:
        return F.scaled_dot_product_attention(q, k, v)
    if start == 0:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    mask = torch.ones(T, S, dtype=torch.bool, device=q.device).tril(diagonal=S - T)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


class CodeGen(nn.Module):
    """CodeGenForCausalLM's arithmetic; logits are float32."""

    def __init__(self, config: CodeGenConfig):
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.h = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=True)
        self.init_buffers()

    def init_buffers(self, device=None) -> None:
        """(Re)compute the non-learned rotary tables on `device`."""
        cos, sin = rotary_tables(
            self.config.n_positions, self.config.rotary_dim or self.config.head_dim, device
        )
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)

    def prepare_for_inference(self) -> None:
        """Fuse each block's matmuls (called by the loader after the weights are in)."""
        for block in self.h:
            if not block.fused:
                block.fuse()

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
        x = self.wte(idx)  # x: [B, T, E]
        for i, block in enumerate(self.h):
            x = block(x, cos, sin, i, start, cache)
        if last_only:
            x = x[:, -1:]
        return self.lm_head(self.ln_f(x)).float()
