"""Tokenizers for the supported model families, behind one `load_tokenizer(path)`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

from tokenizer.codegen import truncate_before_pattern
from tokenizer.incremental import IncrementalDecoder

__all__ = ["IncrementalDecoder", "Tokenizer", "TokenizerError", "load_tokenizer", "truncate_before_pattern"]


class TokenizerError(ValueError):
    """No usable tokenizer files in a directory, or unreadable ones."""


@runtime_checkable
class Tokenizer(Protocol):
    """What the engine and the server need from any tokenizer."""

    eos_token_id: int
    bos_token_id: int | None

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...

    def incremental_decoder(self) -> IncrementalDecoder: ...


def load_tokenizer(path: str | Path) -> Tokenizer:
    """Load the tokenizer of a checkpoint directory (or a tokenizer.json file), by the files present."""
    path = Path(path)
    if path.is_file():
        path, only = path.parent, path.name
    else:
        only = None
    try:
        # Hook for GPT-NeoX-Japanese: its own sub-word vocabulary (vocab.txt + emoji.json).
        if only is None and (path / "vocab.txt").is_file() and (path / "emoji.json").is_file():
            from tokenizer import neox_japanese

            return neox_japanese.load(path)
        from tokenizer import codegen

        if (path / (only or "tokenizer.json")).is_file():
            return codegen.load_tokenizer_json(path / (only or "tokenizer.json"))
        if (path / "vocab.json").is_file() and (path / "merges.txt").is_file():
            return codegen.load_vocab_merges(path)
    except TokenizerError:
        raise
    except Exception as exc:  # malformed files: name them, keep the cause
        raise TokenizerError(f"cannot read the tokenizer in {path}: {exc}") from exc
    raise TokenizerError(
        f"no tokenizer in {path}: expected tokenizer.json, vocab.json + merges.txt, or vocab.txt + emoji.json"
    )
