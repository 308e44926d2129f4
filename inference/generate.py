"""The decode loop: sample, stream-decode, stop at EOS / max tokens / first stop-pattern match / cancel."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from inference.kv_cache import KVCache
from inference.rules import StopReason, compile_stops, first_match, line_end_after
from inference.sampling import sample


@dataclass
class GenerationParams:
    """What to generate and when to stop."""

    max_new_tokens: int = 64
    temperature: float = 0.0  # 0 -> greedy
    top_p: float = 1.0
    seed: int | None = None
    # regexes (re.MULTILINE) searched in the generated text; compiled here once (compile_stops)
    stop_patterns: Sequence[str | re.Pattern] = ()
    max_latency_ms: float = 0.0  # 0 = none; once spent (prefill + decode), stop at the next line end

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if not self.max_latency_ms >= 0:
            raise ValueError(f"max_latency_ms must be >= 0, got {self.max_latency_ms}")
        self.stop_patterns = compile_stops(self.stop_patterns)


@dataclass
class GenerationResult:
    """The completion and how it was made."""

    text: str
    token_ids: list[int]
    stop_reason: StopReason
    prompt_tokens: int = 0
    reused_tokens: int = 0
    prefill_tokens: int = 0
    prefill_ms: float = 0.0
    decode_ms: float = 0.0
    total_ms: float = 0.0
    decode_steps: int = 0  # forward passes after the prefill
    extra: dict = field(default_factory=dict)  # e.g. prefill_cpu_ms / decode_cpu_ms (process CPU time)


@dataclass
class StopText:
    """The generated text, cut where it must end: the first stop-pattern match, or after `deadline` (a
    `clock()` reading) the next line end."""

    patterns: Sequence[re.Pattern]
    deadline: float | None = None
    clock: Callable[[], float] = time.perf_counter
    text: str = ""
    spent_at: int | None = None  # len(text) when the time budget ran out

    def add(self, piece: str) -> StopReason | None:
        """Append a decoded piece: the reason to stop now (the text is cut), or None."""
        self.text += piece
        cut = first_match(self.text, self.patterns)
        if cut >= 0:
            self.text = self.text[:cut]
            return StopReason.STOP_PATTERN
        if self.spent_at is None and self.deadline is not None and self.clock() >= self.deadline:
            self.spent_at = len(self.text) - len(piece)
        end = line_end_after(self.text, self.spent_at) if self.spent_at is not None else -1
        if end >= 0:
            self.text = self.text[:end]
            return StopReason.TIME_BUDGET
        return None

    def finish(self, rest: str) -> StopReason | None:
        """Append the decoder's last piece: STOP_PATTERN when a pattern then matches (the text is cut)."""
        self.text += rest
        cut = first_match(self.text, self.patterns)
        if cut < 0:
            return None
        self.text = self.text[:cut]
        return StopReason.STOP_PATTERN


def decode_loop(
    model,
    cache: KVCache,
    logits: Tensor,
    pos: int,
    params: GenerationParams,
    tokenizer,
    eos_token_id: int | None,
    should_cancel: Callable[[], bool] | None = None,
    deadline: float | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> tuple[str, list[int], list[int], StopReason, int]:
    """From the prefill's last logits [V], `pos` = next free slot: text, ids, fed ids, reason, steps.

    After `deadline` (a `clock()` reading), the text ends at the next line end (reason TIME_BUDGET).
    """
    out = StopText(params.stop_patterns, deadline, clock)  # compiled once, in GenerationParams
    generator = None
    if params.temperature > 0:
        generator = torch.Generator(device=logits.device)
        generator.manual_seed(params.seed if params.seed is not None else torch.seed())
    decoder = tokenizer.incremental_decoder()
    idx = torch.empty(1, 1, dtype=torch.long, device=logits.device)  # reused every step
    positions = torch.arange(cache.capacity, device=logits.device)
    ids, fed, steps = [], [], 0
    reason = StopReason.MAX_TOKENS
    while True:
        if should_cancel is not None and should_cancel():
            reason = StopReason.CANCELLED
            break
        tok = sample(logits, params.temperature, params.top_p, generator)
        ids.append(tok)
        if tok == eos_token_id:
            reason = StopReason.EOS
            break
        piece = decoder.push(tok)
        if piece and (stop := out.add(piece)):
            reason = stop
            break
        if len(ids) >= params.max_new_tokens:
            break
        if pos >= cache.capacity:
            reason = StopReason.CONTEXT_FULL
            break
        idx[0, 0] = tok
        logits = model(idx, positions[pos : pos + 1], cache)[0, -1]
        fed.append(tok)
        pos += 1
        steps += 1
    if reason != StopReason.STOP_PATTERN:
        reason = out.finish(decoder.flush()) or reason
    return out.text, ids, fed, reason, steps
