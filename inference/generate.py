"""The decode loop: sample, stream-decode, stop at EOS / max tokens / first stop-pattern match / cancel."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from inference.kv_cache import KVCache
from inference.sampling import sample


@dataclass
class GenerationParams:
    """What to generate and when to stop."""

    max_new_tokens: int = 64
    temperature: float = 0.0  # 0 -> greedy
    top_p: float = 1.0
    seed: int | None = None
    stop_patterns: Sequence[str] = ()  # regexes (re.MULTILINE) searched in the generated text
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
        for p in self.stop_patterns:
            try:
                re.compile(p, re.MULTILINE)
            except re.error as exc:
                raise ValueError(f"bad stop pattern {p!r}: {exc}") from exc


@dataclass
class GenerationResult:
    """The completion and how it was made."""

    text: str
    token_ids: list[int]
    stop_reason: str  # "eos" | "stop_pattern" | "max_tokens" | "cancelled" | "context_full" | "time_budget"
    prompt_tokens: int = 0
    reused_tokens: int = 0
    prefill_tokens: int = 0
    prefill_ms: float = 0.0
    decode_ms: float = 0.0
    total_ms: float = 0.0
    decode_steps: int = 0  # forward passes after the prefill
    truncated: bool = False  # the prompt was cut from the left to fit the window
    extra: dict = field(default_factory=dict)  # e.g. prefill_cpu_ms / decode_cpu_ms (process CPU time)


def first_match(text: str, patterns: Sequence[re.Pattern]) -> int:
    """Start of the earliest match of any pattern in text, or -1."""
    starts = [m.start() for m in (p.search(text) for p in patterns) if m]
    return min(starts) if starts else -1


def line_end_after(text: str, since: int) -> int:
    """End of the first non-blank line of text that ends at or after `since`, or -1."""
    nl = text.find("\n", since)
    while nl >= 0 and not text[:nl].strip():
        nl = text.find("\n", nl + 1)  # a blank first line is not worth showing
    return nl


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
) -> tuple[str, list[int], list[int], str, int]:
    """From the prefill's last logits [V], `pos` = next free slot: text, ids, fed ids, reason, steps.

    After `deadline` (a `clock()` reading), the text ends at the next line end (reason "time_budget").
    """
    patterns = [re.compile(p, re.MULTILINE) for p in params.stop_patterns]
    generator = None
    if params.temperature > 0:
        generator = torch.Generator(device=logits.device)
        generator.manual_seed(params.seed if params.seed is not None else torch.seed())
    decoder = tokenizer.incremental_decoder()
    idx = torch.empty(1, 1, dtype=torch.long, device=logits.device)  # reused every step
    positions = torch.arange(cache.capacity, device=logits.device)
    text, ids, fed, steps = "", [], [], 0
    reason, spent_at = "max_tokens", None  # spent_at: len(text) when the time budget ran out
    while True:
        if should_cancel is not None and should_cancel():
            reason = "cancelled"
            break
        tok = sample(logits, params.temperature, params.top_p, generator)
        ids.append(tok)
        if tok == eos_token_id:
            reason = "eos"
            break
        piece = decoder.push(tok)
        if piece:
            text += piece
            cut = first_match(text, patterns)
            if cut >= 0:
                text, reason = text[:cut], "stop_pattern"
                break
            if spent_at is None and deadline is not None and clock() >= deadline:
                spent_at = len(text) - len(piece)
            end = line_end_after(text, spent_at) if spent_at is not None else -1
            if end >= 0:
                text, reason = text[:end], "time_budget"
                break
        if len(ids) >= params.max_new_tokens:
            break
        if pos >= cache.capacity:
            reason = "context_full"
            break
        idx[0, 0] = tok
        logits = model(idx, positions[pos : pos + 1], cache)[0, -1]
        fed.append(tok)
        pos += 1
        steps += 1
    if reason != "stop_pattern":
        text += decoder.flush()
        cut = first_match(text, patterns)
        if cut >= 0:
            text, reason = text[:cut], "stop_pattern"
    return text, ids, fed, reason, steps
