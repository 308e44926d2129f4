"""GPT-NeoX-Japanese sub-word tokenizer (Japanese-BPEEncoder_V2): `vocab.txt` + `emoji.json`.

Encoding reproduces `transformers`' GPTNeoXJapaneseTokenizer id for id (the reference is
tanreinama/Japanese-BPEEncoder_V2, MIT); the left-to-right matching is the same, only precomputed:
for each 1-, 2- and 3-character window the winning (id, length) is looked up in one dict.
Decoding maps every id to its exact bytes, so byte-fallback tokens join into UTF-8 across ids and
nothing is stripped (two known defects of the reference).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from itertools import chain
from pathlib import Path

from tokenizer.incremental import IncrementalDecoder
from tokenizer.text import encodable

ENDOFTEXT = "<|endoftext|>"
STARTOFTEXT = "<|startoftext|>"
# The reference splits its registered special tokens out before sub-word matching.
SPECIAL_TOKENS = (ENDOFTEXT, STARTOFTEXT)
_SPECIAL_SPLIT = re.compile("(" + "|".join(re.escape(t) for t in SPECIAL_TOKENS) + ")")

# Applied in this order before matching (str.replace, like the reference).
_WHITESPACE_RULES = (
    (" ", "<SP>"),
    ("\u3000", "<SP>"),
    ("\r\n", "<BR>"),
    ("\n", "<BR>"),
    ("\r", "<BR>"),
    ("\t", "<TAB>"),
    ("\u2014", "ー"),  # em dash
    ("\u2212", "ー"),  # minus sign
)

# Decoding of the tags that do not stand for themselves.
_TAG_TEXT = {"<SP>": " ", "<BR>": "\n", "<TAB>": "\t", "<BLOCK>": "▀", "<KIGOU>": "ǀ", "<U2000U2BFF>": "‖"}

# Clean-text mode: the reference's regexes. Its price regex uses possessive quantifiers (Python 3.11+);
# `(?=(X))\N` is the same atomic match on every Python version.
_URL = re.compile(r"(https?|ftp)(:\/\/[-_\.!~*\'()a-zA-Z0-9;\/?:\@&=\+$,%#]+)")
_EMAIL = re.compile(r"[A-Za-z0-9\._+]*@[\-_0-9A-Za-z]+(\.[A-Za-z]+)*")
_TEL = re.compile(r"[\(]{0,1}[0-9]{2,4}[\)\-\(]{0,1}[0-9]{2,4}[\)\-]{0,1}[0-9]{3,4}")
_TIME_SUFFIX = (
    r"(\d{1,2}|:|\d{1,2}時|\d{1,2}分|\(日\)|\(月\)|\(火\)|\(水\)|\(木\)|\(金\)|\(土\)|㈰|㈪|㈫|㈬|㈭|㈮|㈯)*"
)
_DATE = re.compile(
    r"([12]\d{3}[/\-年])*(0?[1-9]|1[0-2])[/\-月]((0?[1-9]|[12][0-9]|3[01])日?)*" + _TIME_SUFFIX
)
_ERA_DATE = re.compile(
    r"(明治|大正|昭和|平成|令和|㍾|㍽|㍼|㍻|\u32ff)\d{1,2}年(0?[1-9]|1[0-2])月(0?[1-9]|[12][0-9]|3[01])日"
    + _TIME_SUFFIX
)
_PRICE = re.compile(
    r"(?=((?:\d,\d{3}|[\d億])*))\1"
    r"(?=((?:\d,\d{3}|[\d万])*))\2"
    r"(?=((?:\d,\d{3}|[\d千])*))\3"
    r"(?:千円|万円|千万円|円|千ドル|万ドル|千万ドル|ドル|千ユーロ|万ユーロ|千万ユーロ|ユーロ)+"
    r"(?:\(税込\)|\(税抜\)|\+tax)*"
)
_TWO_DIGITS = re.compile(r"[0-9]{2}")
_DIGIT_THEN_SEP = re.compile(r"[0-9][/\-月]")
_KEISEN = (
    "─━│┃┄┅┆┇┈┉┊┋┌┍┎┏┐┑┒┓└┕┖┗┘┙┚┛├┝┞┟┠┡┢┣┤┥┦┧┨┩┪┫┬┭┮┯┰┱┲┳┴┵┶┷┸┹┺┻┼┽┾┿"
    "╀╁╂╃╄╅╆╇╈╉╊╋╌╍╎╏═║╒╓╔╕╖╗╘╙╚╛╜╝╞╟╠╡╢╣╤╥╦╧╨╩╪╫╬╭╮╯╰╱╲╳╴╵╶╷╸╹╺╻╼╽╾╿"
)
_BLOCKS = "▀▁▂▃▄▅▆▇█▉▊▋▌▍▎▏▐░▒▓▔▕▖▗▘▙▚▛▜▝▞▟"
_BLOCK_TRANS = str.maketrans(dict.fromkeys(_KEISEN + _BLOCKS, "<BLOCK>"))


def clean_text(text: str) -> str:
    """The reference's clean-text mode: URLs, e-mails, phones, dates, prices, box drawing -> tags."""
    # Each guard is a substring every match must contain, so skipping a pattern never changes the result.
    if "://" in text:
        text = _URL.sub("<URL>", text)
    if "@" in text:
        text = _EMAIL.sub("<EMAIL>", text)
    if _TWO_DIGITS.search(text):
        text = _TEL.sub("<TEL>", text)
    if _DIGIT_THEN_SEP.search(text):
        text = _DATE.sub("<DATE>", text)
    if "年" in text:
        text = _ERA_DATE.sub("<DATE>", text)
    if "円" in text or "ドル" in text or "ユーロ" in text:
        text = _PRICE.sub("<PRICE>", text)
    text = text.translate(_BLOCK_TRANS)
    while "<BLOCK><BLOCK>" in text:
        text = text.replace("<BLOCK><BLOCK>", "<BLOCK>")
    return text


def parse_vocab(lines: Sequence[str]) -> list[list[str]]:
    """vocab.txt lines (with their newlines) -> variants per id, split exactly as the reference does."""
    return [[t.rstrip("\n")] if (t == "," or "," not in t) else t.rstrip("\n").split(",") for t in lines]


def _fallback_kind(ch: str) -> str | None:
    """`<KIGOU>` for the reference's 2-byte symbol ranges, `<U2000U2BFF>` for U+2000..U+2BFF, else None."""
    cp = ord(ch)
    # UTF-8 (b0 << 8 | b1) in C2A1..C2BF, C780..C783, CAB9..CBBF, CC80..CDA2, as code points:
    if 0xA1 <= cp <= 0xBF or 0x1C0 <= cp <= 0x1C3 or 0x2B9 <= cp <= 0x2FF or 0x300 <= cp <= 0x362:
        return "<KIGOU>"
    # 3-byte UTF-8 in E28080..E2B07F, i.e. E2 80 80 .. E2 AF BF:
    if 0x2000 <= cp <= 0x2BFF:
        return "<U2000U2BFF>"
    return None


def _spans(codes: list[int]) -> list[tuple[int, int]]:
    """Sorted code points -> (first, last) of each run of consecutive ones."""
    spans: list[tuple[int, int]] = []
    for c in codes:
        if spans and spans[-1][1] == c - 1:
            spans[-1] = (spans[-1][0], c)
        else:
            spans.append((c, c))
    return spans


class NeoXJapaneseTokenizer:
    """encode exactly like the reference; decode to exact text; stream with an incremental decoder."""

    def __init__(self, variants: list[list[str]], emoji: dict, do_clean_text: bool = False):
        self.do_clean_text = do_clean_text
        self.vocab_size = len(variants)
        vocab: dict[str, int] = {}
        for idx, words in enumerate(variants):
            for w in words:
                vocab[w] = idx  # a spelling listed twice keeps its last id, as in the reference
        self.vocab = vocab
        self.eos_token_id: int = self._require(vocab, ENDOFTEXT)
        self.bos_token_id: int | None = vocab.get(STARTOFTEXT)
        self._emoji_rules(emoji["emoji"])
        self._match_tables(vocab)
        self._fallback: dict[str, tuple[int, ...]] = {}
        self._bytes = [self._id_bytes(words[0], emoji["emoji_inv"]) for words in variants]

    @staticmethod
    def _require(vocab: dict[str, int], token: str) -> int:
        if token not in vocab:
            raise ValueError(f"vocab.txt has no {token!r} entry")
        return vocab[token]

    def _emoji_rules(self, emoji: dict[str, str]) -> None:
        """Emoji replacements keep their order; only those whose first character can occur are tried."""
        self._emoji_by_first: dict[str, list[tuple[int, str, str]]] = {}
        for order, (k, v) in enumerate(emoji.items()):
            if k:
                self._emoji_by_first.setdefault(k[0], []).append((order, k, v))
        # Replacing inserts tags such as <|emoji12|>; keys starting with those characters are always tried.
        tag_chars = set("".join(emoji.values()))
        self._emoji_always = sorted(r for c in tag_chars for r in self._emoji_by_first.get(c, ()))
        self._emoji_first = frozenset(self._emoji_by_first) - tag_chars

    def _match_tables(self, vocab: dict[str, int]) -> None:
        """Winner (id, length) per window of 1..3 characters: smallest id, a tie goes to the longer one."""
        by_len: dict[int, list[tuple[str, int]]] = {1: [], 2: [], 3: []}
        for w, i in vocab.items():
            if 0 < len(w) <= 3 and w[0] != "<":
                by_len[len(w)].append((w, i))
        best: dict[str, tuple[int, int]] = {}
        for n in (1, 2, 3):
            for w, i in by_len[n]:
                # the best shorter candidate is already known: the window one shorter, else the first char
                prev = best.get(w[:2]) if n == 3 else None
                prev = prev or (best.get(w[0]) if n > 1 else None)
                best[w] = (i, n) if prev is None or i <= prev[0] else prev
        self._best = best
        # Characters that begin a 2- or 3-character entry (or a tag) need the window lookups. Any other
        # vocabulary character is matched on its own; runs of those below U+0800 (ASCII letters, digits,
        # punctuation, Latin, Greek, Cyrillic: a short character class) are mapped character by character.
        self._starts_longer = frozenset(w[0] for w in best if len(w) > 1) | {"<"}
        self._single = {w: (i,) for w, (i, _) in best.items() if len(w) == 1 and w not in self._starts_longer}
        spans = _spans(sorted(ord(c) for c in self._single if ord(c) < 0x800))
        self._single_run = re.compile("[" + "".join(f"\\u{a:04x}-\\u{b:04x}" for a, b in spans) + "]+")
        # Text at '<': the longest tag (an entry that starts with '<' and is longer than 2) wins at once;
        # tag lengths are indexed by their first two characters.
        tags: dict[str, list[int]] = {}
        for w in vocab:
            if w[:1] == "<" and len(w) > 2:
                tags.setdefault(w[:2], []).append(len(w))
        self._tag_lengths = {k: sorted(set(v), reverse=True) for k, v in tags.items()}
        short = [(vocab[w], -len(w), w) for w in vocab if w[:1] == "<" and len(w) <= 2]
        self._lt_short = {w: (i, -neg) for i, neg, w in short}

    def _id_bytes(self, word: str, emoji_inv: dict[str, str]) -> bytes:
        """The exact bytes one id decodes to (its first variant, tags mapped back)."""
        if word[:6] == "<|byte" and word[-2:] == "|>":
            return bytes([int(word[6:-2])])
        if word[:7] == "<|emoji" and word[-2:] == "|>":
            return emoji_inv[word].encode("utf-8")
        return _TAG_TEXT.get(word, word).encode("utf-8")

    # -- encoding -----------------------------------------------------------------------------------
    def normalize(self, text: str) -> str:
        """Whitespace tags, dash folding, emoji tags, then clean-text when enabled (the reference's order)."""
        for a, b in _WHITESPACE_RULES:
            if a in text:
                text = text.replace(a, b)
        firsts = self._emoji_first.intersection(text)
        if firsts:
            rules = sorted([r for c in firsts for r in self._emoji_by_first[c]] + self._emoji_always)
        else:
            rules = self._emoji_always
        for _, k, v in rules:
            if k in text:
                text = text.replace(k, v)
        if self.do_clean_text:
            text = clean_text(text)
        return text

    def encode(self, text: str) -> list[int]:
        """Text -> ids, exactly as the reference tokenizer (special tokens split out first)."""
        text = encodable(text)
        if "<|" in text:
            ids: list[int] = []
            for part in _SPECIAL_SPLIT.split(text):
                if part in SPECIAL_TOKENS:
                    ids.append(self.vocab[part])
                elif part:
                    ids.extend(self._match(self.normalize(part)))
            return ids
        return self._match(self.normalize(text))

    def _match(self, text: str) -> list[int]:
        """Left-to-right matching on normalised text."""
        get = self._best.get
        starts_longer, run_at, single = self._starts_longer, self._single_run.match, self._single
        ids: list[int] = []
        append = ids.append
        pos, n = 0, len(text)
        while pos < n:
            c = text[pos]
            if c not in starts_longer:
                m = run_at(text, pos)
                if m is not None:  # a run of characters that are always matched alone
                    end = m.end()
                    ids.extend(chain.from_iterable(map(single.__getitem__, text[pos:end])))
                    pos = end
                    continue
            if c == "<":
                r = self._match_lt(text, pos)
            else:
                r = get(text[pos : pos + 3]) or get(text[pos : pos + 2]) or get(c)
            if r is not None:
                append(r[0])
                pos += r[1]
            else:
                ids.extend(self._fallback_ids(c))
                pos += 1
        return ids

    def _match_lt(self, text: str, pos: int) -> tuple[int, int] | None:
        """Matching at a '<': longest tag, else the smallest id among '<x' and '<'."""
        vocab, left = self.vocab, len(text) - pos
        for m in self._tag_lengths.get(text[pos : pos + 2], ()):
            if m <= left:
                i = vocab.get(text[pos : pos + m])
                if i is not None:
                    return (i, m)
        short = self._lt_short
        two, one = short.get(text[pos : pos + 2]), short.get("<")
        if two is None or one is None:
            return two or one
        return two if two[0] <= one[0] else one

    def _fallback_ids(self, ch: str) -> tuple[int, ...]:
        """A character with no vocabulary entry: <KIGOU>, <U2000U2BFF>, or one byte token per UTF-8 byte."""
        ids = self._fallback.get(ch)
        if ids is None:
            kind = _fallback_kind(ch)
            if kind is not None:
                ids = (self.vocab[kind],)
            else:
                # Lone surrogates (possible in JSON) pass through as their 3 bytes instead of failing.
                ids = tuple(self.vocab[f"<|byte{b}|>"] for b in ch.encode("utf-8", "surrogatepass"))
            self._fallback[ch] = ids
        return ids

    # -- decoding -----------------------------------------------------------------------------------
    def token_bytes(self, token_id: int) -> bytes:
        """The bytes of one id (b"" for ids past the vocabulary, e.g. embedding padding rows)."""
        return self._bytes[token_id] if 0 <= token_id < len(self._bytes) else b""

    def decode(self, ids: Sequence[int]) -> str:
        """Ids -> exact text: byte tokens join into UTF-8 across ids, nothing is stripped."""
        return b"".join(self.token_bytes(int(i)) for i in ids).decode("utf-8", errors="replace")

    def incremental_decoder(self) -> IncrementalDecoder:
        """A fresh streaming decoder."""
        return IncrementalDecoder(self.token_bytes)


def load(directory: Path) -> NeoXJapaneseTokenizer:
    """Load `vocab.txt` + `emoji.json` (+ `do_clean_text` from tokenizer_config.json when present)."""
    directory = Path(directory)
    with open(directory / "vocab.txt", encoding="utf-8") as f:
        lines = f.readlines()
    emoji = json.loads((directory / "emoji.json").read_text(encoding="utf-8"))
    clean = False
    cfg = directory / "tokenizer_config.json"
    if cfg.is_file():
        clean = bool(json.loads(cfg.read_text(encoding="utf-8")).get("do_clean_text", False))
    return NeoXJapaneseTokenizer(parse_vocab(lines), emoji, do_clean_text=clean)
