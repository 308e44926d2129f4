"""A deterministic corpus of varied strings for the GPT-NeoX-Japanese tokenizer tests and bench."""

from __future__ import annotations

import json
import random
from pathlib import Path

HIRAGANA = [chr(c) for c in range(0x3041, 0x3097)]
KATAKANA = [chr(c) for c in range(0x30A1, 0x30FB)] + ["ー"]
HALF_KATAKANA = [chr(c) for c in range(0xFF61, 0xFFA0)]
FULL_ASCII = [chr(c) for c in range(0xFF01, 0xFF5F)]
COMMON_KANJI = list("日本語大学東京時間会社自分世界使用必要情報代表出来現在以上以下利用京都")
COMMON_KANJI += list("吾輩猫慶応應實國學體")
RARE_CJK = [chr(c) for c in range(0x4E00, 0x9FFF, 97)] + [chr(c) for c in range(0x20000, 0x2A6DF, 911)]
SYMBOLS = list("。、・「」『』（）［］【】〈〉《》！？：；…‥〜～※→←↑↓○●◎△▲□■◇◆★☆♪♯§¶†‡°±×÷¥£€¢")
LATIN1 = [chr(c) for c in range(0xA0, 0x180)]
KIGOU_RANGE = [chr(c) for c in (*range(0xA1, 0xC0), *range(0x1C0, 0x1C4), *range(0x2B9, 0x363, 3))]
U2000 = [chr(c) for c in range(0x2000, 0x2C00, 13)]
OTHER_SCRIPTS = list("αβγδΩЖжЯ한국어ภาษาไทยعربيहिन्दी") + ["e\u0301", "\u200b", "\ufeff", "\U0001d400"]
ASCII = [chr(c) for c in range(0x21, 0x7F)]
WHITESPACE = [" ", "  ", "\u3000", "\t", "\n", "\r\n", "\r", "\n\n", "—", "−", "-"]
LITERAL_TAGS = [
    "<SP>",
    "<BR>",
    "<TAB>",
    "<URL>",
    "<|byte3|>",
    "<|emoji1|>",
    "<|endoftext|>",
    "<|startoftext|>",
    "<",
    "<<",
    "<|",
    "<>",
    "<S",
    "<|byte",
    "<|emoji99|>",
    "a<b",
    "x<=y",
    "<div>",
    "</p>",
]
WORDS_JA = [
    "吾輩は猫である",
    "名前はまだ無い",
    "どこで生れたかとんと見当がつかぬ",
    "東京都渋谷区",
    "慶應義塾大学",
    "人工知能",
    "機械学習",
    "自然言語処理",
    "プログラミング",
    "コンピュータ",
    "ありがとうございます",
    "よろしくお願いします",
    "今日は良い天気ですね",
    "ｶﾀｶﾅ",
    "ＡＢＣ１２３",
    "①②③",
    "㈱",
    "㍻",
    "髙橋",
    "﨑",
]
CODE = [
    "def f(x):\n    return x + 1\n",
    "for (int i = 0; i < n; i++) {\n\tsum += a[i];\n}",
    "if a <= b and c >= d:",
    "print('こんにちは')",
    "const s = `テンプレート${x}`;",
    "# コメント\nx = 1",
    '<div class="x">本文</div>',
    "SELECT * FROM users WHERE 名前 = '太郎';",
    "a->b; x << 2; y >> 3;",
]
CLEANABLE = [
    "https://example.com/path?q=1&r=2#frag",
    "http://日本.jp",
    "ftp://files.example.org/a.txt",
    "メールは taro.yamada+tag@example.co.jp まで",
    "a@b",
    "@mention",
    "03-1234-5678",
    "(03)1234-5678",
    "090-1234-5678",
    "0120123456",
    "2023年4月1日",
    "2023/04/01",
    "4月1日(月)",
    "12/31 23:59",
    "1-2",
    "令和5年4月1日",
    "平成31年4月30日(火)",
    "㍻元年",
    "1,000円",
    "3万円",
    "5千万円(税込)",
    "100ドル",
    "20ユーロ+tax",
    "1億2千万円",
    "1,234,567円(税抜)",
    "┌──┐\n│表│\n└──┘",
    "▀▄█▌",
    "━━━",
    "1,2,3",
]


def emoji_keys(tokenizer_dir: Path) -> list[str]:
    """The emoji and emoticons listed in emoji.json."""
    return list(json.loads((tokenizer_dir / "emoji.json").read_text(encoding="utf-8"))["emoji"])


def heterograph_variants(tokenizer_dir: Path, limit: int = 3000) -> list[str]:
    """Alternative spellings from vocab.txt lines with commas (they share one id)."""
    out: list[str] = []
    with open(tokenizer_dir / "vocab.txt", encoding="utf-8") as f:
        for line in f:
            line = line.rstrip("\n")
            if "," in line and len(line) > 1:
                out.extend(v for v in line.split(",")[1:] if v)
            if len(out) >= limit:
                break
    return out


def vocab_words(tokenizer_dir: Path) -> list[str]:
    """First spellings of every vocabulary entry (real sub-words, so strings look like real text)."""
    with open(tokenizer_dir / "vocab.txt", encoding="utf-8") as f:
        return [line.rstrip("\n").split(",")[0] for line in f if line.strip() and not line.startswith("<")]


def make_corpus(tokenizer_dir: Path, n: int = 2000, seed: int = 1234) -> list[str]:
    """`n` strings mixing every kind of input the tokenizer must handle, the same for a given seed."""
    rng = random.Random(seed)
    emoji = emoji_keys(tokenizer_dir)
    variants = heterograph_variants(tokenizer_dir)
    words = vocab_words(tokenizer_dir)
    char_pools = [
        HIRAGANA,
        KATAKANA,
        HALF_KATAKANA,
        FULL_ASCII,
        COMMON_KANJI,
        RARE_CJK,
        SYMBOLS,
        LATIN1,
        KIGOU_RANGE,
        U2000,
        OTHER_SCRIPTS,
        ASCII,
        WHITESPACE,
    ]
    piece_pools = [emoji, variants, words, words, words, LITERAL_TAGS, WORDS_JA, CODE, CLEANABLE]
    corpus = []
    for _ in range(n):
        parts = []
        for _ in range(rng.randint(1, 12)):
            if rng.random() < 0.5:
                pool = rng.choice(char_pools)
                parts.append("".join(rng.choice(pool) for _ in range(rng.randint(1, 6))))
            else:
                parts.append(rng.choice(rng.choice(piece_pools)))
        corpus.append("".join(parts))
    return corpus
