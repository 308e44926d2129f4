"""KVCache: one session's keys/values, preallocated. CachePool: byte budget across sessions, LRU."""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from collections.abc import Callable, Hashable

import torch
from torch import Tensor

from inference.quant import fbgemm_cpu

log = logging.getLogger(__name__)


BLOCK = 64  # positions per key block in the "blocked" layout (see KVCache)


def kv_cache_dtype(precision: str | torch.dtype, device) -> torch.dtype:
    """The KV cache's dtype for weights in `precision` on `device`: float16 under int8, else theirs.

    Under int8 (CPUs with fbgemm only, whose layout is "blocked") the cache is float16: fbgemm's
    embedding_bag reads float16 rows, so a decode step reads half the KV bytes (at 1,000 positions of the
    350M shape 82 MB instead of 164, next to 306 MB of int8 weights). Its rounding (2^-11 relative on keys,
    values, scores and probabilities) is far below int8's; tests/test_ops.py bounds it and
    tests/test_int8.py measures the quality with it. Float32 models keep a float32 cache (their parity
    with transformers is checked at 1e-4).
    """
    if precision == "int8":
        assert default_layout(device) == "blocked", "int8 runs where fbgemm runs: the blocked layout"
        return torch.float16
    assert isinstance(precision, torch.dtype), f"unknown precision {precision!r}"
    return precision


def default_layout(device) -> str:
    """The KV layout attention reads fastest on `device` (see KVCache)."""
    if torch.device(device).type != "cpu":
        return "positions_first"
    return "blocked" if fbgemm_cpu() else "positions_last"


class KVCache:
    """One session's keys and values for every layer, allocated once; positions are written in place.

    Three layouts (update() returns [B, H, S, D] views or copies of the positions in use in each):
    - "positions_first" (GPU): k, v [L, B, H, capacity, D], what scaled_dot_product_attention reads.
    - "blocked" (CPU with fbgemm, i.e. x86 with AVX2): keys in blocks of BLOCK positions, positions last in
      a block, k [L, B, H, capacity / BLOCK, D, BLOCK]; values positions first, v [L, B, H, capacity, D].
      A few queries then read both with torch's embedding_bag (fbgemm's row kernels, ops.bag_attention):
      scores are weighted sums of key rows (one row: D-th coordinate of BLOCK positions), outputs weighted
      sums of value rows. Every row read is contiguous and each head's positions in use are one span.
    - "positions_last" (other CPUs): k, v [L, B, H, D, capacity], read by batched matmuls (small_attention).
    """

    def __init__(
        self, n_layer, n_head, head_dim, capacity, batch=1, device="cpu", dtype=torch.float32, layout=None
    ):
        self.layout = layout or default_layout(device)
        assert self.layout in LAYOUTS, f"unknown KV layout {self.layout!r}"
        self.capacity = capacity
        k_shape, v_shape = layout_shapes(self.layout, n_layer, batch, n_head, head_dim, capacity)
        self.k = torch.zeros(k_shape, device=device, dtype=dtype)
        self.v = torch.zeros(v_shape, device=device, dtype=dtype)
        self._layers = list(zip(self.k.unbind(0), self.v.unbind(0), strict=True))  # per-layer views
        if self.layout == "blocked":  # each layer's rows as ops.bag_attention reads them
            self._rows = [(k.view(-1, BLOCK), v.view(-1, head_dim)) for k, v in self._layers]
        self._bag_key, self._bag_indices, self._key_bags, self._value_rows = None, None, (None, None), None

    @property
    def nbytes(self) -> int:
        """Bytes held by k and v."""
        return self.k.nbytes + self.v.nbytes

    def write(self, layer: int, start: int, k: Tensor, v: Tensor) -> None:
        """Write k, v [B, H, T, D] at positions start..start+T-1."""
        end = start + k.shape[2]
        assert end <= self.capacity, f"KV cache full: {end} > {self.capacity}"
        k_all, v_all = self._layers[layer]
        if self.layout == "positions_first":
            k_all[:, :, start:end] = k
            v_all[:, :, start:end] = v
        elif self.layout == "positions_last":
            k_all[..., start:end] = k.transpose(-1, -2)
            v_all[..., start:end] = v.transpose(-1, -2)
        elif end == start + 1:  # one position: one strided copy each (select: no indexing machinery)
            v_all.select(2, start).copy_(v.select(2, 0))
            k_all.select(2, start // BLOCK).select(-1, start % BLOCK).copy_(k.select(2, 0))
        else:
            v_all[:, :, start:end] = v
            pos = start
            while pos < end:  # block by block: k_all[:, :, j, :, off] holds position j * BLOCK + off
                j, off = divmod(pos, BLOCK)
                n = min(BLOCK - off, end - pos)
                k_all[:, :, j, :, off : off + n] = k[:, :, pos - start : pos - start + n].transpose(-1, -2)
                pos += n

    def update(self, layer: int, start: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Write k, v [B, H, T, D] at start..start+T-1; return positions 0..start+T-1 as [B, H, S, D]."""
        self.write(layer, start, k, v)
        end = start + k.shape[2]
        k_all, v_all = self._layers[layer]
        if self.layout == "positions_first":
            return k_all[:, :, :end], v_all[:, :, :end]
        if self.layout == "positions_last":
            return k_all[..., :end].transpose(-1, -2), v_all[..., :end].transpose(-1, -2)
        B, H, _, D, _ = k_all.shape
        n = -(-end // BLOCK)  # blocks in use
        keys = k_all[:, :, :n].transpose(-1, -2).reshape(B, H, n * BLOCK, D)  # a copy
        return keys[:, :, :end], v_all[:, :, :end]

    def bag_weights(self, layer: int) -> tuple[Tensor, Tensor]:
        """A blocked layer's keys as rows [B*H*NB*D, BLOCK] and values as rows [B*H*capacity, D]."""
        return self._rows[layer]

    def bag_indices(self, T: int, S: int) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
        """(indices, offsets) of the rows each bag of ops.bag_attention sums, for T queries over S positions.

        Keys: bag (b, h, t, j) sums rows ((b*H + h)*NB + j)*D + d, d < D (block j of n in use); values:
        bag (b, h, t) rows (b*H + h)*capacity + s, s < S. int32; computed once a step, for every layer
        (the keys' only when the number of blocks in use changes).
        """
        if self._bag_key != (T, S):
            n, dev, i32 = -(-S // BLOCK), self.k.device, torch.int32
            if self._key_bags[0] != (T, n):
                B, H, NB, D, _ = self._layers[0][0].shape
                bh = torch.arange(B * H, device=dev, dtype=i32)[:, None, None, None]
                j = torch.arange(n, device=dev, dtype=i32)[:, None]
                keys = ((bh * NB + j) * D + torch.arange(D, device=dev, dtype=i32)).expand(B * H, T, n, D)
                k_off = torch.arange(0, keys.numel(), D, device=dev, dtype=i32)
                self._key_bags = ((T, n), (keys.reshape(-1), k_off))
            if self._value_rows is None:
                bh_rows = torch.arange(self.v.shape[1] * self.v.shape[2], device=dev, dtype=i32)[:, None]
                self._value_rows = bh_rows * self.capacity + torch.arange(
                    self.capacity, device=dev, dtype=i32
                )
            values = self._value_rows[:, None, :S].expand(-1, T, S).reshape(-1)  # [B*H*T*S]
            v_off = torch.arange(0, values.numel(), S, device=dev, dtype=i32)
            self._bag_key, self._bag_indices = (T, S), (self._key_bags[1], (values, v_off))
        return self._bag_indices


LAYOUTS = ("positions_first", "positions_last", "blocked")


def layout_shapes(layout, n_layer, batch, n_head, head_dim, capacity) -> tuple[tuple, tuple]:
    """Shapes of k and v in `layout` (blocked keys are padded to whole blocks)."""
    lead = (n_layer, batch, n_head)
    if layout == "positions_last":
        return (*lead, head_dim, capacity), (*lead, head_dim, capacity)
    if layout == "blocked":
        return (*lead, -(-capacity // BLOCK), head_dim, BLOCK), (*lead, capacity, head_dim)
    return (*lead, capacity, head_dim), (*lead, capacity, head_dim)


def first_position(T: int, input_pos: Tensor | None, cache: KVCache | None, n_positions: int) -> int:
    """The position of a forward's first token (0 without a cache), checking the preconditions."""
    if input_pos is None:
        assert cache is None, "a cached forward needs input_pos"
        return 0
    assert input_pos.numel() == T, "input_pos must give one position per token"
    start = int(input_pos[0])
    assert start + T <= n_positions, f"positions {start}..{start + T - 1} exceed n_positions {n_positions}"
    return start


def kv_cache_nbytes(n_layer, n_head, head_dim, capacity, batch=1, dtype=torch.float32, device="cpu") -> int:
    """What a KVCache of that shape would take on `device` (in its default layout), without allocating it."""
    elem = torch.empty((), dtype=dtype).element_size()
    shapes = layout_shapes(default_layout(device), n_layer, batch, n_head, head_dim, capacity)
    return sum(math.prod(s) for s in shapes) * elem


class CachePool:
    """Caches by key within a byte budget; the least recently used ones are evicted (and recycled) first."""

    def __init__(self, budget_bytes: int, factory: Callable[[], KVCache], cache_nbytes: int):
        assert budget_bytes > 0
        self.budget_bytes = budget_bytes
        self._factory = factory
        self._cache_nbytes = cache_nbytes
        self._caches: OrderedDict[Hashable, KVCache] = OrderedDict()
        self.evictions = 0
        if cache_nbytes > budget_bytes:
            log.warning(
                "one KV cache needs %d MiB, more than the %d MiB budget; keeping one session at a time",
                cache_nbytes >> 20,
                budget_bytes >> 20,
            )

    @property
    def nbytes(self) -> int:
        """Bytes held by all live caches."""
        return len(self._caches) * self._cache_nbytes

    def __contains__(self, key: Hashable) -> bool:
        return key in self._caches

    def __len__(self) -> int:
        return len(self._caches)

    def has_room_for(self, key: Hashable) -> bool:
        """Whether `key` has a cache, or one more fits without evicting another session's."""
        return key in self._caches or self.nbytes + self._cache_nbytes <= self.budget_bytes

    def acquire(self, key: Hashable) -> tuple[KVCache, bool]:
        """The cache for `key` (marked most recently used) and whether it is fresh (holds nothing valid)."""
        if key in self._caches:
            self._caches.move_to_end(key)
            return self._caches[key], False
        recycled = None
        while self._caches and self.nbytes + self._cache_nbytes > self.budget_bytes:
            old_key, recycled = self._caches.popitem(last=False)
            self.evictions += 1
            log.debug("evicted KV cache of session %r", old_key)
        cache = recycled if recycled is not None else self._factory()
        self._caches[key] = cache
        return cache, True

    def resize(self, budget_bytes: int) -> None:
        """A new budget; the least recently used caches beyond it are freed now (one is always kept)."""
        assert budget_bytes > 0
        self.budget_bytes = budget_bytes
        while len(self._caches) > 1 and self.nbytes > budget_bytes:
            old_key, _ = self._caches.popitem(last=False)
            self.evictions += 1
            log.debug("evicted KV cache of session %r (budget now %d MiB)", old_key, budget_bytes >> 20)

    def drop(self, key: Hashable) -> None:
        """Free the cache of `key` (no-op when absent)."""
        self._caches.pop(key, None)

    def clear(self) -> None:
        """Free every cache."""
        self._caches.clear()
