"""Byte-level BPE tokenizers through the `tokenizers` library: CodeGen's (GPT-2 BPE plus whitespace-run
tokens) and any `tokenizer.json` of that kind (Qwen2, Llama 3, DeepSeek-Coder, StarCoder), special tokens
included.

A special token's text typed in a document is encoded as plain text, never as the token: only the prompt
builder puts special tokens in a prompt, by id (`special_id`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

from tokenizer.incremental import IncrementalDecoder
from tokenizer.text import encodable

ENDOFTEXT = "<|endoftext|>"


@lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """GPT-2's printable-unicode-character -> byte table (inverse of bytes_to_unicode)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs, strict=True)}


class CodeGenTokenizer:
    """encode/decode exactly (never strips), plus an incremental decoder for streaming."""

    # False when the model's FIM prompts do worse than plain ones (tokenizer_config.json's
    # `codegen_lsp_fim_auto`, the built-in model's): the server's `fim: auto` then leaves FIM off.
    fim_auto: bool = True

    def __init__(self, tok: Tokenizer, eos_token: str = ENDOFTEXT, bos_token: str | None = ENDOFTEXT):
        self._tok = tok
        tok.encode_special_tokens = True  # a special token's text in a document is text
        self.eos_token_id: int = self._require_id(eos_token)
        bos = tok.token_to_id(bos_token) if bos_token else None
        self.bos_token_id: int | None = bos
        self._special = {t.content: i for i, t in tok.get_added_tokens_decoder().items()}
        self.vocab_size: int = tok.get_vocab_size(with_added_tokens=True)
        self._bytes = self._build_byte_table()

    def _require_id(self, token: str) -> int:
        i = self._tok.token_to_id(token)
        if i is None:
            raise ValueError(f"tokenizer has no token {token!r}")
        return i

    def _build_byte_table(self) -> list[bytes]:
        """id -> the exact bytes that id stands for."""
        added = {t.content for t in self._tok.get_added_tokens_decoder().values()}
        bd = _byte_decoder()
        table: list[bytes] = []
        for i in range(self.vocab_size):
            piece = self._tok.id_to_token(i)
            if piece is None:
                table.append(b"")
            elif piece in added or any(ch not in bd for ch in piece):
                table.append(piece.encode("utf-8"))
            else:
                table.append(bytes(bd[ch] for ch in piece))
        return table

    def special_id(self, content: str) -> int | None:
        """The id of the added (special) token spelled `content`, or None when the vocabulary has none."""
        return self._special.get(content)

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes of one id (b"" for ids past the vocabulary, e.g. embedding padding rows)."""
        return self._bytes[token_id] if 0 <= token_id < len(self._bytes) else b""

    def encode(self, text: str) -> list[int]:
        """Text -> ids, added whitespace tokens split out before BPE; special tokens' text stays text."""
        return self._tok.encode(encodable(text), add_special_tokens=False).ids

    def decode(self, ids: Sequence[int], truncate_before_pattern: Sequence[str] = ()) -> str:
        """Ids -> exact text; optionally cut with `truncate_before_pattern`."""
        text = b"".join(self.token_bytes(int(i)) for i in ids).decode("utf-8", errors="replace")
        return _truncate(text, truncate_before_pattern) if truncate_before_pattern else text

    def incremental_decoder(self) -> IncrementalDecoder:
        """A fresh streaming decoder."""
        return IncrementalDecoder(self.token_bytes)


def load_tokenizer_json(path: Path) -> CodeGenTokenizer:
    """Load `tokenizer.json` (and eos/bos names, `codegen_lsp_fim_auto` from tokenizer_config.json)."""
    eos, bos, data = ENDOFTEXT, ENDOFTEXT, {}
    cfg = path.parent / "tokenizer_config.json"
    if cfg.is_file():
        data = json.loads(cfg.read_text(encoding="utf-8"))
        eos = _token_str(data.get("eos_token")) or eos
        bos = _token_str(data.get("bos_token")) or bos
    tok = CodeGenTokenizer(Tokenizer.from_file(str(path)), eos, bos)
    tok.fim_auto = data.get("codegen_lsp_fim_auto") is not False
    return tok


def load_vocab_merges(directory: Path) -> CodeGenTokenizer:
    """Build the same tokenizer from the classic vocab.json + merges.txt (+ added_tokens.json)."""
    vocab = json.loads((directory / "vocab.json").read_text(encoding="utf-8"))
    merges = []
    for line in (directory / "merges.txt").read_text(encoding="utf-8").splitlines():
        if line and not line.startswith("#version"):
            a, b = line.split(" ")
            merges.append((a, b))
    tok = Tokenizer(models.BPE(vocab, merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    added_file = directory / "added_tokens.json"
    added = json.loads(added_file.read_text(encoding="utf-8")) if added_file.is_file() else {}
    for content, idx in sorted(added.items(), key=lambda kv: kv[1]):
        n = tok.add_tokens([AddedToken(content, normalized=False)])
        if n and tok.token_to_id(content) != idx:
            raise ValueError(f"added token {content!r} got id {tok.token_to_id(content)}, expected {idx}")
    if tok.token_to_id(ENDOFTEXT) is not None:
        tok.add_special_tokens([AddedToken(ENDOFTEXT, normalized=False, special=True)])
    return CodeGenTokenizer(tok)


def _token_str(value) -> str | None:
    """tokenizer_config.json stores tokens as a string or as {"content": ...}."""
    if isinstance(value, dict):
        return value.get("content")
    return value


_SECOND_PRINT = re.compile(r"^print", re.MULTILINE)
_SECOND_DEF = re.compile(r"^def", re.MULTILINE)


def truncate_before_pattern(text: str, patterns: Sequence[str]) -> str:
    """CodeGen's truncate_before_pattern: cut before the 2nd `print` / `def` line, then at the first match."""
    if not patterns:
        return text

    for regex in (_SECOND_PRINT, _SECOND_DEF):
        starts = [m.start() for m in regex.finditer(text)]
        if len(starts) > 1:
            text = text[: starts[1]]
    positions = [m.start() for m in (re.search(p, text, re.MULTILINE) for p in patterns) if m]
    return text[: min(positions)] if positions else text


_truncate = truncate_before_pattern  # decode()'s keyword argument shadows the function's name
