"""Session: one document's token ids + KV cache; reuses the longest common prefix; generate()."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Hashable, Sequence

import torch

from inference.generate import GenerationParams, GenerationResult, Lookup, decode_loop
from inference.kv_cache import CachePool
from inference.lookup import pays
from inference.rules import StopReason, prompt_limit

log = logging.getLogger(__name__)

# Tokens per prefill forward, for a request's prefill and a prefill ahead of one (prefill on open) alike. A
# prefill stops between chunks when it is cancelled or superseded, so a newer keystroke's request waits at
# most one chunk's forward; larger chunks prefill faster. Measured on the 350M shape, 2 cores, a cold
# 1007-token prompt (docs/PERFORMANCE.md, issue 16): int8 1297 / 1129 / 1148 ms and float32 4788 / 3862 /
# 3618 ms with chunks of 128 / 256 / 512; 256 keeps int8's speed and halves 512's wait. It also bounds the
# attention scores' memory ([H, 256, T] per layer).
PREFILL_CHUNK = 256


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common prefix of two id lists."""
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class Session:
    """Token ids whose K/V are in this session's cache (prompt + generated), keyed in the engine's pool."""

    def __init__(self, key: Hashable, loaded, pool: CachePool, lock=None, capacity: int | None = None):
        self.key = key
        self.capacity = capacity or loaded.config.n_positions  # positions of this session's window
        self.loaded = loaded
        self.pool = pool
        self.ids: list[int] = []  # ids whose K/V are valid in the cache, positions 0..len-1
        self._lock = lock

    @property
    def lookup_pays(self) -> bool:
        """Whether prompt lookup speeds this model up (inference.lookup.pays, decided once per model)."""
        loaded = self.loaded
        if not hasattr(loaded, "lookup_pays"):
            loaded.lookup_pays, why = pays(loaded.model, loaded.device)
            log.info("prompt lookup %s for %s: %s", "on" if loaded.lookup_pays else "off", loaded.name, why)
        return loaded.lookup_pays

    def reset(self) -> None:
        """Forget the cached ids (the pool keeps or recycles the memory)."""
        self.ids = []

    def generate(
        self,
        prompt: Sequence[int],
        params: GenerationParams | None = None,
        should_cancel: Callable[[], bool] | None = None,
    ) -> GenerationResult:
        """Complete the token ids `prompt`, reusing the cached prefix; the cache then holds prompt + generated
        ids. A prompt over prompt_limit() tokens is refused (ValueError): the caller cuts it (one cutter,
        lsp_server/prompt.py), the engine never cuts a second way."""
        params = params or GenerationParams()
        self.check(prompt, params)
        if self._lock is None:
            return self._generate(prompt, params, should_cancel)
        with self._lock:
            return self._generate(prompt, params, should_cancel)

    def check(self, prompt: Sequence[int], params: GenerationParams) -> None:
        """ValueError unless `prompt` is token ids of this vocabulary within prompt_limit() tokens."""
        if isinstance(prompt, str):
            raise TypeError("Session.generate takes token ids; encode (and cut) the text first")
        vocab = self.loaded.config.vocab_size
        if any(not 0 <= i < vocab for i in prompt):
            raise ValueError(f"prompt token ids must be in [0, {vocab})")
        limit = prompt_limit(self.capacity, params.max_new_tokens)
        if len(prompt) > limit:
            raise ValueError(
                f"the prompt has {len(prompt)} tokens; a {self.capacity}-token window with "
                f"max_new_tokens={params.max_new_tokens} takes at most {limit}: cut it first"
            )

    def prefill(
        self, prompt: list[int], should_cancel: Callable[[], bool] | None = None, chunk: int = PREFILL_CHUNK
    ) -> int:
        """Put `prompt`'s K/V in the cache ahead of a request (no logits, no generation): tokens computed.

        Stops between chunks when `should_cancel()` turns true; what was computed stays reusable. A prompt
        longer than the window is refused (ValueError), like generate()'s.
        """
        if len(prompt) > self.capacity:
            raise ValueError(f"the prompt has {len(prompt)} tokens; the window has {self.capacity}")
        if self._lock is None:
            return self._prefill_only(prompt, should_cancel, chunk)
        with self._lock:
            return self._prefill_only(prompt, should_cancel, chunk)

    @torch.inference_mode()
    def _prefill_only(self, prompt: list[int], should_cancel, chunk: int) -> int:
        cache, fresh = self.pool.acquire(self.key)
        if fresh:
            self.ids = []
        ids = list(prompt)
        reuse = common_prefix(self.ids, ids)
        self._run_prefill(cache, ids, reuse, should_cancel, chunk)
        return len(self.ids) - reuse

    def _run_prefill(self, cache, ids: list[int], start: int, should_cancel, chunk: int):
        """Forward ids[start:] in chunks, growing self.ids: the last logits [V], or None if cancelled."""
        self.ids = ids[:start]
        positions = torch.arange(cache.capacity, device=self.loaded.device)
        logits = None
        while start < len(ids):
            if should_cancel is not None and should_cancel():
                return None
            end = min(start + chunk, len(ids))
            x = torch.tensor([ids[start:end]], dtype=torch.long, device=self.loaded.device)
            logits = self.loaded.model(x, positions[start:end], cache, last_only=True)[0, -1]
            self.ids = ids[:end]
            start = end
        return logits

    @torch.inference_mode()
    def _generate(self, prompt, params: GenerationParams, should_cancel) -> GenerationResult:
        t0, c0 = time.perf_counter(), time.process_time()
        model, tok = self.loaded.model, self.loaded.tokenizer
        cache, fresh = self.pool.acquire(self.key)
        if fresh:
            self.ids = []
        ids = list(prompt)
        if not ids:  # an empty prompt starts from the beginning-of-text token
            bos = self.loaded.config.bos_token_id
            ids = [bos if bos is not None else tok.eos_token_id]
        reuse = min(common_prefix(self.ids, ids), len(ids) - 1)
        logits = self._run_prefill(cache, ids, reuse, should_cancel, PREFILL_CHUNK)
        if logits is None:
            return self._result("", [], StopReason.CANCELLED, ids, reuse, t0, t0, 0)
        t1, c1 = time.perf_counter(), time.process_time()
        deadline = t0 + params.max_latency_ms / 1e3 if params.max_latency_ms > 0 else None
        lookup = (
            Lookup(ids) if params.prompt_lookup and params.temperature == 0 and self.lookup_pays else None
        )
        text, gen, fed, reason, steps = decode_loop(
            model,
            cache,
            logits,
            len(ids),
            params,
            tok,
            self.loaded.config.eos_token_id,
            should_cancel,
            deadline,
            lookup=lookup,
        )
        self.ids = ids + fed
        result = self._result(text, gen, reason, ids, reuse, t0, t1, steps)
        c2 = time.process_time()  # CPU time of the whole process: meaningful where others share the CPU
        result.extra.update(prefill_cpu_ms=(c1 - c0) * 1e3, decode_cpu_ms=(c2 - c1) * 1e3)
        if lookup is not None:
            result.extra.update(lookup.counts())
        return result

    def _result(self, text, gen, reason, ids, reuse, t0, t1, steps) -> GenerationResult:
        t2 = time.perf_counter()
        return GenerationResult(
            text=text,
            token_ids=gen,
            stop_reason=reason,
            prompt_tokens=len(ids),
            reused_tokens=reuse,
            prefill_tokens=len(ids) - reuse,
            prefill_ms=(t1 - t0) * 1e3,
            decode_ms=(t2 - t1) * 1e3,
            total_ms=(t2 - t0) * 1e3,
            decode_steps=steps,
        )
