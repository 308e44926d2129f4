"""Engine: one LoadedModel, a CachePool under a byte budget, and sessions by key (one per document)."""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable

from inference.generate import GenerationParams, GenerationResult
from inference.kv_cache import CachePool, KVCache, kv_cache_nbytes
from inference.loader import LoadedModel
from inference.rules import prompt_limit
from inference.session import Session

log = logging.getLogger(__name__)

DEFAULT_CACHE_BUDGET = 1 << 30  # 1 GiB: three full-window sessions of codegen-350M in float32
MAX_SESSIONS = 512  # session objects (token ids only) kept; the least recently used beyond are dropped


class Engine:
    """Owns the model and every session's KV cache; safe to call from one worker thread (or several)."""

    heals = True  # GenerationParams.heal is honoured (inference/heal.py)

    def __init__(
        self,
        loaded: LoadedModel,
        cache_budget_bytes: int = DEFAULT_CACHE_BUDGET,
        max_context: int | None = None,
    ):
        self.loaded = loaded
        cfg = loaded.config
        self.capacity = min(max_context or cfg.n_positions, cfg.n_positions)
        assert self.capacity >= 2, "the context window must hold at least 2 tokens"
        shape = (cfg.n_layer, cfg.kv_heads, cfg.head_dim, self.capacity)
        self.pool = CachePool(
            cache_budget_bytes,
            factory=lambda: KVCache(*shape, batch=1, device=loaded.device, dtype=loaded.kv_dtype),
            cache_nbytes=kv_cache_nbytes(*shape, batch=1, dtype=loaded.kv_dtype, device=loaded.device),
        )
        self.sessions: OrderedDict[Hashable, Session] = OrderedDict()
        self._lock = threading.RLock()

    def session(self, key: Hashable) -> Session:
        """The session for `key`, created when new."""
        with self._lock:
            if key not in self.sessions:
                self.sessions[key] = Session(key, self.loaded, self.pool, self._lock, self.capacity)
                while len(self.sessions) > MAX_SESSIONS:
                    old_key, _ = self.sessions.popitem(last=False)
                    self.pool.drop(old_key)
            self.sessions.move_to_end(key)
            return self.sessions[key]

    def prompt_limit(self, max_new_tokens: int) -> int:
        """Most prompt tokens a session takes with `max_new_tokens` to generate (more are refused)."""
        return prompt_limit(self.capacity, max_new_tokens)

    def generate(
        self,
        key: Hashable,
        prompt: str | list[int],
        params: GenerationParams | None = None,
        should_cancel: Callable[[], bool] | None = None,
    ) -> GenerationResult:
        """Shorthand for engine.session(key).generate(...); a text is encoded whole (never cut)."""
        ids = self.loaded.tokenizer.encode(prompt) if isinstance(prompt, str) else prompt
        return self.session(key).generate(ids, params, should_cancel)

    def drop_session(self, key: Hashable) -> None:
        """Forget a session and free its cache (e.g. the document was closed)."""
        with self._lock:
            self.sessions.pop(key, None)
            self.pool.drop(key)

    def try_drop_session(self, key: Hashable) -> bool:
        """drop_session(key) when no generation holds the engine (never waits); False when one does."""
        if not self._lock.acquire(blocking=False):
            return False
        try:
            self.drop_session(key)
        finally:
            self._lock.release()
        return True

    def set_cache_budget(self, budget_bytes: int) -> None:
        """Resize the KV-cache pool (frees the least recently used caches beyond the new budget)."""
        with self._lock:
            self.pool.resize(budget_bytes)

    def clear_cache(self) -> None:
        """Free every KV cache; sessions start from scratch next time."""
        with self._lock:
            self.pool.clear()
            for s in self.sessions.values():
                s.reset()

    def stats(self) -> dict:
        """Model, device and cache figures (codegen.status) without the lock: never waits for a generation.

        Reads plain ints and a copy of the session table (list() of a dict is one step under the GIL); the
        figures may be one step stale while the inference thread works.
        """
        lm = self.loaded
        sessions = list(self.sessions.items())
        return {
            "model": lm.name,
            "path": str(lm.path),
            "family": lm.family,
            "device": str(lm.device),
            "dtype": lm.precision,
            "dtype_reason": lm.why,
            "kv_dtype": str(lm.kv_dtype).removeprefix("torch."),
            "context_window": self.capacity,
            "sessions": len(sessions),
            "cached_sessions": len(self.pool),
            "cache_bytes": self.pool.nbytes,
            "cache_budget_bytes": self.pool.budget_bytes,
            "evictions": self.pool.evictions,
            "cached_tokens": {str(k): len(s.ids) for k, s in sessions if k in self.pool},
        }
