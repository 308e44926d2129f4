"""Pure next-token choice functions: greedy, temperature, top-p (nucleus)."""

from __future__ import annotations

import torch
from torch import Tensor


def greedy(logits: Tensor) -> int:
    """The most likely token. logits: [V]."""
    return int(torch.argmax(logits))


def top_p_filter(logits: Tensor, top_p: float) -> Tensor:
    """Keep the smallest set of tokens whose probability reaches top_p (at least one); others -> -inf."""
    assert 0.0 < top_p <= 1.0, f"top_p must be in (0, 1], got {top_p}"
    if top_p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, descending=False)
    cum = torch.softmax(sorted_logits, dim=-1).cumsum(dim=-1)
    remove = cum <= 1.0 - top_p
    remove[-1] = False  # always keep the most likely token
    mask = torch.zeros_like(remove).scatter(-1, order, remove)
    return logits.masked_fill(mask, float("-inf"))


def sample(
    logits: Tensor, temperature: float = 0.0, top_p: float = 1.0, generator: torch.Generator | None = None
) -> int:
    """Greedy when temperature is 0, else a draw from softmax(logits / temperature) restricted to top_p."""
    assert temperature >= 0.0, f"temperature must be >= 0, got {temperature}"
    if temperature == 0.0:
        return greedy(logits)
    probs = torch.softmax(top_p_filter(logits.float() / temperature, top_p), dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator))
