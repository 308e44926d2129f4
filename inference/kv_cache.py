"""KVCache: one session's keys/values, preallocated. CachePool: byte budget across sessions, LRU."""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable, Hashable

import torch
from torch import Tensor

log = logging.getLogger(__name__)


class KVCache:
    """k, v: [L, B, H, S, D], allocated once; positions are written in place.

    With positions_last (the CPU layout) they are stored as [L, B, H, D, S]: a query's scores (q @ K^T)
    and output (p @ V) then read contiguous rows (1.6x the bandwidth of the [S, D] layout for one query).
    update() returns [B, H, S, D] views either way.
    """

    def __init__(
        self,
        n_layer,
        n_head,
        head_dim,
        capacity,
        batch=1,
        device="cpu",
        dtype=torch.float32,
        positions_last: bool | None = None,
    ):
        if positions_last is None:
            positions_last = torch.device(device).type == "cpu"
        self.positions_last = positions_last
        dims = (head_dim, capacity) if positions_last else (capacity, head_dim)
        shape = (n_layer, batch, n_head, *dims)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.capacity = capacity
        self._layers = list(zip(self.k.unbind(0), self.v.unbind(0), strict=True))  # per-layer views

    @property
    def nbytes(self) -> int:
        """Bytes held by k and v."""
        return self.k.nbytes + self.v.nbytes

    def update(self, layer: int, start: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Write k, v [B, H, T, D] at positions start..start+T-1; return views of positions 0..start+T-1."""
        end = start + k.shape[2]
        assert end <= self.capacity, f"KV cache full: {end} > {self.capacity}"
        k_all, v_all = self._layers[layer]
        if not self.positions_last:
            k_all[:, :, start:end] = k
            v_all[:, :, start:end] = v
            return k_all[:, :, :end], v_all[:, :, :end]
        k_all[..., start:end] = k.transpose(-1, -2)
        v_all[..., start:end] = v.transpose(-1, -2)
        return k_all[..., :end].transpose(-1, -2), v_all[..., :end].transpose(-1, -2)


def first_position(T: int, input_pos: Tensor | None, cache: KVCache | None, n_positions: int) -> int:
    """The position of a forward's first token (0 without a cache), checking the preconditions."""
    if input_pos is None:
        assert cache is None, "a cached forward needs input_pos"
        return 0
    assert input_pos.numel() == T, "input_pos must give one position per token"
    start = int(input_pos[0])
    assert start + T <= n_positions, f"positions {start}..{start + T - 1} exceed n_positions {n_positions}"
    return start


def kv_cache_nbytes(n_layer, n_head, head_dim, capacity, batch=1, dtype=torch.float32) -> int:
    """What a KVCache of that shape would take, without allocating it."""
    elem = torch.empty((), dtype=dtype).element_size()
    return 2 * n_layer * batch * n_head * capacity * head_dim * elem


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
