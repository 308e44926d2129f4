"""CodeGen forward pass (parallel residual, GPT-J rotary, 4-shard fused qkv) in plain PyTorch."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from inference.config import CodeGenConfig
from inference.kv_cache import KVCache, first_position
from inference.ops import Embedding, Linear, cached_attention, linear

MP_NUM = 4  # CodeGen's qkv_proj output is laid out for 4 model-parallel shards


def rotary_tables(n_positions: int, rotary_dim: int, device=None) -> Tensor:
    """(cos, sin) of each position's angles: [n_positions, rotary_dim // 2, 2] float32, as the reference."""
    inv_freq = 1.0 / (
        10000 ** (torch.arange(0, rotary_dim, 2, dtype=torch.int64, device=device) / rotary_dim)
    )
    angles = torch.arange(n_positions, dtype=torch.int64, device=device).float()[:, None] * inv_freq
    return torch.stack((torch.cos(angles), torch.sin(angles)), dim=-1)


def apply_rotary(x: Tensor, freqs: Tensor, rotary_dim: int) -> Tensor:
    """GPT-J rotary on the first rotary_dim dims: each pair (x0, x1) as x0 + i*x1, times cos + i*sin.

    x: [B, T, H, D]; freqs: [T, 1, R/2] complex (rotary_freqs). Rotates x in place when that is safe
    (float32, no autograd).
    """
    pairs = x[..., :rotary_dim].unflatten(-1, (-1, 2))  # [B, T, H, R/2, 2]
    if x.dtype == torch.float32 and not torch.is_grad_enabled():
        pairs.copy_(torch.view_as_real(torch.view_as_complex(pairs) * freqs))
        return x
    out = torch.view_as_real(torch.view_as_complex(pairs.float().contiguous()) * freqs).flatten(-2)
    return torch.cat((out.to(x.dtype), x[..., rotary_dim:]), dim=-1)


def rotary_freqs(rope: Tensor) -> Tensor:
    """rope [T, R/2, 2] (cos, sin) -> [T, 1, R/2] complex cos + i*sin, computed once a forward."""
    return torch.view_as_complex(rope)[:, None]


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
        self.int8_weights = (("w_in", "b_in"), ("w_out", "b_out"))  # quantized after fusing, per fused row

    def _project_in(self, a: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """a: [B, T, E] -> qk [B, T, 2H, D] (queries, keys; before rotary), v [B, T, H, D], MLP [B, T, I]."""
        B, T, E = a.shape
        H, D = self.n_head, self.head_dim
        if self.fused:
            qk, v, m = linear(a, self.w_in, self.b_in).split((2 * E, E, self.inner), dim=-1)
            return qk.view(B, T, 2 * H, D), v.view(B, T, H, D), m
        qkv = self.qkv_proj(a).view(B, T, MP_NUM, 3, E // MP_NUM)
        q, v, k = qkv.unbind(3)  # each [B, T, 4, E/4]; heads ordered (shard, head-in-shard)
        qk = torch.cat((q.reshape(B, T, H, D), k.reshape(B, T, H, D)), dim=2)
        return qk, v.reshape(B, T, H, D), self.fc_in(a)

    def _project_out(self, y: Tensor, m: Tensor) -> Tensor:
        """y: [B, T, E] attention output, m: [B, T, I] activated MLP -> [B, T, E]."""
        if self.fused:
            return linear(torch.cat((y, m), dim=-1), self.w_out, self.b_out)
        return self.out_proj(y) + self.fc_out(m)

    def forward(self, x: Tensor, freqs: Tensor, layer: int, start: int, cache: KVCache | None) -> Tensor:
        B, T, E = x.shape
        a = self.ln_1(x)
        qk, v, m = self._project_in(a)
        q, k = apply_rotary(qk, freqs, self.rotary_dim).transpose(1, 2).split(self.n_head, dim=1)
        v = v.transpose(1, 2)  # q, k, v: [B, H, T, D]
        y = cached_attention(q, k, v, start, cache, layer)  # y: [B, H, T, D]
        y = y.transpose(1, 2).reshape(B, T, E)
        return x + self._project_out(y, F.gelu(m, approximate="tanh"))


class CodeGen(nn.Module):
    """CodeGenForCausalLM's arithmetic; logits are float32."""

    def __init__(self, config: CodeGenConfig):
        super().__init__()
        self.config = config
        self.wte = Embedding(config.vocab_size, config.n_embd)
        self.h = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.lm_head = Linear(config.n_embd, config.vocab_size, bias=True)
        # on the meta device (the loader's), tables computed there would cost torch._refs' first-use import
        # of torch._dynamo (about a second); the loader recomputes them on the model's device anyway
        self.init_buffers("cpu" if torch.get_default_device().type == "meta" else None)

    def init_buffers(self, device=None) -> None:
        """(Re)compute the non-learned rotary table on `device`."""
        rope = rotary_tables(self.config.n_positions, self.config.rotary_dim or self.config.head_dim, device)
        self.register_buffer("rope", rope, persistent=False)

    def prepare_block(self, block: Block) -> None:
        """Fuse one block's matmuls once its weights are in (the loader; on meta for the prepared cache)."""
        if not block.fused:
            block.fuse()

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
        freqs = rotary_freqs(self.rope[start : start + T])  # [T, 1, R/2] complex
        x = self.wte(idx)  # x: [B, T, E]
        for i, block in enumerate(self.h):
            x = block(x, freqs, i, start, cache)
        if last_only:
            x = x[:, -1:]
        return self.lm_head(self.ln_f(x)).float()
