"""Token healing of a prompt's trailing spaces: the prompt ends before them, and the first generated tokens
must spell them out (a byte-level BPE joins a space to the word after it, so a prompt ending in `return `
ends in a token the model has rarely seen there, and its next token is a poor guess)."""

from __future__ import annotations

import torch
from torch import Tensor


def split(before: str) -> tuple[str, str]:
    """(`before` without its trailing spaces and tabs, those spaces and tabs)."""
    kept = before.rstrip(" \t")
    return kept, before[len(kept) :]


def byte_table(tokenizer) -> list[bytes]:
    """id -> bytes of every id of `tokenizer`, made once and kept on it."""
    table = getattr(tokenizer, "_heal_bytes", None)
    if table is None:
        table = [tokenizer.token_bytes(i) for i in range(tokenizer.vocab_size)]
        tokenizer._heal_bytes = table
    return table


def barred(tokenizer, need: bytes, vocab: int) -> Tensor:
    """[V] bool, True where an id cannot come next while `need` is still to be spelled: allowed are the ids
    whose bytes start with `need` and the non-empty ones that are a start of it. Cached per `need`."""
    assert need, "nothing to heal"
    cache = tokenizer.__dict__.setdefault("_heal_masks", {})
    key = (need, vocab)
    if key not in cache:
        table = byte_table(tokenizer)
        ok = [bool(b) and (b.startswith(need) or need.startswith(b)) for b in table[:vocab]]
        ok += [False] * (vocab - len(ok))  # embedding rows past the vocabulary
        cache[key] = ~torch.tensor(ok, dtype=torch.bool)
    return cache[key]


class Healing:
    """What of the healed text is still to be spelled out, and what to cut from the decoded text."""

    def __init__(self, tokenizer, text: str):
        self.tokenizer, self.need, self.cut = tokenizer, text.encode("utf-8"), len(text)

    def constrain(self, logits: Tensor) -> Tensor:
        """logits [V] with the ids that cannot spell the rest masked (unchanged once it is spelled)."""
        if not self.need:
            return logits
        mask = barred(self.tokenizer, self.need, logits.shape[-1]).to(logits.device)
        if bool(mask.all()):  # no id can spell it (cannot happen with a byte-level vocabulary): give up,
            self.need, self.cut = b"", 0  # the text then continues the prompt without the spaces
            return logits
        return logits.masked_fill(mask, float("-inf"))

    def spelled(self, tok: int, piece: str) -> str:
        """An id was chosen and decoded to `piece`: what it spelled of the healed text is done; the piece
        less that text."""
        if self.need:
            b = self.tokenizer.token_bytes(tok)
            self.need = self.need[len(b) :] if self.need.startswith(b) else b""
        return self.visible(piece)

    def visible(self, piece: str) -> str:
        """A decoded piece less what is left of the healed text (which the document already has)."""
        k = min(self.cut, len(piece))
        self.cut -= k
        return piece[k:]
