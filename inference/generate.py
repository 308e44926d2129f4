"""The decode loop: sample, stream-decode, stop at EOS / max tokens / first stop-pattern match / cancel."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from inference import ops
from inference.heal import Healing
from inference.kv_cache import KVCache
from inference.lookup import FIRST_PROPOSED, MAX_PROPOSED, History, accepted
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
    stop_ids: Sequence[int] = ()  # token ids that end the text like EOS (e.g. a FIM template's end tokens)
    prompt_lookup: bool = False  # greedy only: check proposed continuations per pass (inference/lookup.py)
    # the prompt's trailing spaces, left out of it (inference/heal.py): the first tokens spell them, and the
    # text returned starts after them
    heal: str = ""

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if not self.max_latency_ms >= 0:
            raise ValueError(f"max_latency_ms must be >= 0, got {self.max_latency_ms}")
        if self.heal.strip(" \t"):
            raise ValueError(f"heal takes spaces and tabs only, got {self.heal!r}")
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
    lookup: Lookup | None = None,
) -> tuple[str, list[int], list[int], StopReason, int]:
    """From the prefill's last logits [V], `pos` = next free slot: text, ids, fed ids, reason, steps. After
    `deadline` (a `clock()` reading) the text ends at the next line end (TIME_BUDGET); `lookup` (greedy): each
    pass checks inference/lookup.py's proposals, same ids; `params.heal`: spelled first, not in the text."""
    out = StopText(params.stop_patterns, deadline, clock)  # compiled once, in GenerationParams
    generator = sampling_generator(params, logits.device)
    assert lookup is None or generator is None, "prompt lookup is for greedy decoding"
    decoder = tokenizer.incremental_decoder()
    positions = torch.arange(cache.capacity, device=logits.device)
    ids, fed, steps, ends = [], [], 0, {eos_token_id, *params.stop_ids} - {None}
    healing = Healing(tokenizer, params.heal)  # a no-op without params.heal

    def take(tok: int) -> StopReason | None:
        """A generated id: the reason to stop after it, or None (it is then fed at `pos`)."""
        ids.append(tok)
        if tok in ends:
            return StopReason.EOS
        piece = healing.spelled(tok, decoder.push(tok))
        if piece and (stop := out.add(piece)):
            return stop
        if len(ids) >= params.max_new_tokens:
            return StopReason.MAX_TOKENS
        return StopReason.CONTEXT_FULL if pos >= cache.capacity else None

    while True:
        if should_cancel is not None and should_cancel():
            reason = StopReason.CANCELLED
            break
        tok = sample(healing.constrain(logits), params.temperature, params.top_p, generator)
        if reason := take(tok):
            break
        room = min(params.max_new_tokens - len(ids), cache.capacity - pos) - 1
        proposed = lookup.propose(tok, room) if lookup and not healing.need else []
        rows = forward_rows(model, [tok, *proposed], positions[pos : pos + 1 + len(proposed)], cache)
        fed.append(tok)
        pos, steps = pos + 1, steps + 1
        m = lookup.check(proposed, rows) if proposed else 0
        for d in proposed[:m]:  # each agreed id is a generated one, through the same checks
            if reason := take(d):
                break
            fed.append(d)
            pos += 1
        if reason:
            break
        logits = rows[m]
    if reason != StopReason.STOP_PATTERN:
        reason = out.finish(healing.visible(decoder.flush())) or reason
    return out.text, ids, fed, reason, steps


def sampling_generator(params: GenerationParams, device) -> torch.Generator | None:
    """The seeded random generator of a sampled generation (None for greedy)."""
    if params.temperature == 0:
        return None
    generator = torch.Generator(device=device)
    generator.manual_seed(params.seed if params.seed is not None else torch.seed())
    return generator


def forward_rows(model, tokens: list[int], positions: Tensor, cache: KVCache) -> Tensor:
    """Logits [len(tokens), V] of feeding `tokens` at `positions`; several rows are computed as one-row
    steps would compute each (ops.exact_rows)."""
    x = torch.tensor([tokens], dtype=torch.long, device=positions.device)
    if len(tokens) == 1:
        return model(x, positions, cache)[0]
    with ops.exact_rows():
        return model(x, positions, cache)[0]


class Lookup:
    """Prompt-lookup speculation over one generation (inference/lookup.py), with its counts."""

    def __init__(self, context: Sequence[int]):
        self.history = History(context)
        self.passes = self.proposed = self.accepted = 0
        self.k = FIRST_PROPOSED  # how many to propose next

    def propose(self, tok: int, room: int) -> list[int]:
        """Ids to check after `tok` (the id about to be fed), at most `room` and the current k."""
        self.history.extend([tok])
        self.passes += 1
        proposed = self.history.propose(min(room, self.k))
        self.proposed += len(proposed)
        return proposed

    def check(self, proposed: list[int], rows: Tensor) -> int:
        """How many proposed ids greedy decoding agrees with (rows: the pass's logits); adapts k."""
        m = accepted(proposed, rows.argmax(dim=-1).tolist())
        self.history.extend(proposed[:m])
        self.accepted += m
        self.k = min(MAX_PROPOSED, self.k + 1) if m == len(proposed) else max(1, m)
        return m

    def counts(self) -> dict:
        """Passes, ids proposed and accepted (GenerationResult.extra)."""
        return {
            "lookup_passes": self.passes,
            "lookup_proposed": self.proposed,
            "lookup_accepted": self.accepted,
        }
