"""GPT-NeoX-Japanese tokenizer: id-for-id parity with transformers on the real vocabulary, exact decoding."""

from __future__ import annotations

import pytest

from tests.checkpoints import NEOX_JA_TOKENIZER_DIR
from tests.ja_corpus import make_corpus
from tokenizer import TokenizerError, load_tokenizer
from tokenizer.neox_japanese import NeoXJapaneseTokenizer, load

KNOWN_TEXT = "吾輩は猫である🐯。実は慶応(慶應)大学出身"
KNOWN_IDS = [
    30014,
    26883,
    26638,
    27228,
    25,
    26650,
    31732,
    31679,
    27809,
    26638,
    17749,
    31592,
    17749,
    31593,
    321,
    1281,
]

# Hand-written cases: (id, text). Each is checked with clean-text off and on.
CASES = [
    ("hiragana", "あいうえおかきくけこ、ひらがなだけのぶん。"),
    ("katakana", "カタカナ・コンピュータ・プログラミング"),
    ("half-width-katakana", "ｶﾀｶﾅﾃﾞｽ ｰ ﾞﾟ"),
    ("kanji", "日本語自然言語処理人工知能東京都"),
    ("heterographs", "慶應義塾と慶応義塾、會社と会社、日夲と日本、𠮷野家"),
    ("emoji", "😀😃🐯🇯🇵👩‍❤️‍💋‍👨🏴‍☠️ ☺️☺ 1️⃣#⃣"),
    ("emoticons", "(^_^) o(>_<)o m(_ _)m ヽ(> <)ノ　(丱o>∀<) "),
    ("full-width", "ＡＢＣ　ａｂｃ　０１２３！？（）［］"),
    ("half-width-symbols", "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"),
    ("latin", "The quick brown fox jumps over the lazy dog. Ça va? naïve café"),
    ("code", "def f(x):\n    if x <= 0:\n\treturn [a for a in range(10)]\n    return x << 2  # 注釈\n"),
    ("html", '<div class="main"><p>本文</p></div><br/><SP><BR>'),
    ("literal-tags", "<SP><BR><TAB><URL><|byte0|><|byte254|><|emoji12|><|emoji13|><KIGOU><U2000U2BFF><"),
    ("special-tokens", "前<|endoftext|>後<|startoftext|><|endoftext|>\r<|endoftext|>\n"),
    ("urls", "詳しくは https://example.com/a/b?c=d&e=f#g を見てください。ftp://x.org/ と http://日本"),
    ("emails", "連絡先: taro.yamada+news@example.co.jp, hanako@mail.example.com; @user"),
    ("phones", "電話 03-1234-5678 / (06)1234-5678 / 09012345678 / 0120-123-456"),
    ("dates", "2023年4月1日(土)10時30分、2024/12/31 23:59、令和5年4月1日、平成31年4月30日(火)、㍻元年"),
    ("prices", "1,000円、3万円、5千万円(税込)、100ドル、20ユーロ+tax、1億2千万円、12,345,678円(税抜)"),
    ("blocks", "┌──┬──┐\n│表│表│\n└──┴──┘ ▀▄█▌░▒▓"),
    ("byte-fallback", "𝐀𝐁 \U0001f9ff \U000e0001 한국어 ภาษาไทย ✓ \x00\x01\x7f \ufeff\u200b"),
    ("kigou-and-u2000", "¡¿ǀǁʹˆ˜̀́ ‖†‡•‥…‰′″※‼⁉€℃№™Ω⅓Ⅰⅰ←↑→↓⇒⇔∀∂∃∇∈∋∑√∞∧∨∩∪∫∴∵≈≠≡≦≧⊂⊃⌘⏎"),
    ("kigou-and-u2000-more", "①②⑴⒈⓪─■□▲△◆◇○●★☆☀☁♀♂♪♭♯✓✔❤➡⬅⬆"),
    ("dashes", "—−‐‑‒–―ー－"),
    ("whitespace", "  \u3000\t\t\n\n\r\n\r \u00a0\u2002\u2003\u2009"),
    ("crlf", "一行目\r\n二行目\r三行目\n\r四行目"),
    ("leading-trailing-space", "  前後に空白  "),
    ("long-tag-prefix", "<|byte12|><|byte1|><|byte|><|emoji1|>x<SP"),
    ("lt-at-end", "a <"),
    ("empty", ""),
]


@pytest.fixture(scope="module")
def ours() -> NeoXJapaneseTokenizer:
    return load(NEOX_JA_TOKENIZER_DIR)


@pytest.fixture(scope="module")
def ours_clean() -> NeoXJapaneseTokenizer:
    tok = load(NEOX_JA_TOKENIZER_DIR)
    tok.do_clean_text = True
    return tok


def _oracle(clean: bool):
    transformers = pytest.importorskip("transformers")
    d = NEOX_JA_TOKENIZER_DIR
    return transformers.GPTNeoXJapaneseTokenizer(
        str(d / "vocab.txt"), str(d / "emoji.json"), do_clean_text=clean
    )


@pytest.fixture(scope="module")
def oracle():
    return _oracle(False)


@pytest.fixture(scope="module")
def oracle_clean():
    return _oracle(True)


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    return make_corpus(NEOX_JA_TOKENIZER_DIR, n=2000, seed=1234)


def _pick(clean, ours, ours_clean, oracle, oracle_clean):
    return (ours_clean, oracle_clean) if clean else (ours, oracle)


def oracle_text(oracle, ids: list[int]) -> str:
    """The reference's own id -> text mapping, with byte runs joined into UTF-8 and no stripping."""
    out, run = [], bytearray()
    for i in ids:
        token = oracle.subword_tokenizer.ids_to_tokens[i][0]
        if token.startswith("<|byte") and token.endswith("|>"):
            run.append(int(token[6:-2]))
            continue
        if run:
            out.append(run.decode("utf-8", errors="replace"))
            run = bytearray()
        out.append(oracle.subword_tokenizer.convert_id_to_token(i))
    if run:
        out.append(run.decode("utf-8", errors="replace"))
    return "".join(out)


def test_known_answer(ours):
    assert ours.encode(KNOWN_TEXT) == KNOWN_IDS
    assert ours.decode(KNOWN_IDS) == "吾輩は猫である🐯。実は慶応(慶応)大学出身"


def test_load_tokenizer_picks_the_japanese_tokenizer():
    tok = load_tokenizer(NEOX_JA_TOKENIZER_DIR)
    assert isinstance(tok, NeoXJapaneseTokenizer)
    assert (tok.eos_token_id, tok.bos_token_id, tok.vocab_size) == (31999, 31996, 32000)
    assert tok.encode(KNOWN_TEXT) == KNOWN_IDS


@pytest.mark.parametrize("clean", [False, True], ids=["plain", "clean-text"])
@pytest.mark.parametrize("text", [t for _, t in CASES], ids=[i for i, _ in CASES])
def test_hand_written_cases_match_transformers(text, clean, ours, ours_clean, oracle, oracle_clean):
    tok, ref = _pick(clean, ours, ours_clean, oracle, oracle_clean)
    assert tok.encode(text) == ref(text)["input_ids"]


@pytest.mark.parametrize("clean", [False, True], ids=["plain", "clean-text"])
def test_corpus_matches_transformers_id_for_id(corpus, clean, ours, ours_clean, oracle, oracle_clean):
    tok, ref = _pick(clean, ours, ours_clean, oracle, oracle_clean)
    assert len(corpus) >= 2000
    mismatches = [s for s in corpus if tok.encode(s) != ref(s)["input_ids"]]
    assert not mismatches, f"{len(mismatches)} strings differ, e.g. {mismatches[:3]!r}"


def test_every_character_below_u3100_matches_transformers(ours, oracle):
    # Covers the <KIGOU> and <U2000U2BFF> ranges and byte fallback; one character per line.
    text = "\n".join(chr(c) for c in range(0x3100) if c not in (0x0D,))
    assert ours.encode(text) == oracle(text)["input_ids"]


def test_corpus_decodes_to_the_normalised_text(corpus, ours, oracle):
    for s in corpus:
        ids = ours.encode(s)
        assert ours.decode(ids) == oracle_text(oracle, ids), repr(s)


def test_clean_text_tags_decode_literally(ours_clean):
    ids = ours_clean.encode("https://example.com と 03-1234-5678")
    assert ours_clean.decode(ids) == "<URL> と <TEL>"


@pytest.mark.parametrize(
    ("text", "normalised"),
    [
        ("慶應義塾", "慶応義塾"),
        ("a\r\nb\rc", "a\nb\nc"),
        ("全角\u3000空白", "全角 空白"),
        ("A—B−C", "AーBーC"),
        ("🐶と🐱", "🐯と🐯"),
        ("¡", "ǀ"),
        ("‰", "‖"),
    ],
    ids=["heterograph", "crlf-and-cr", "full-width-space", "dashes", "emoji-group", "kigou", "u2000-range"],
)
def test_decode_gives_the_normalised_text(ours, text, normalised):
    assert ours.decode(ours.encode(text)) == normalised


@pytest.mark.parametrize(
    "text",
    ["  前後の空白を保つ  ", "\n\n改行\t\n", "𝐀 한국어 🫠", "象形文字𓀀と音符𝄞"],
    ids=["spaces", "newlines-tabs", "byte-fallback", "byte-fallback-4-byte"],
)
def test_decode_is_exact_where_transformers_is_not(ours, oracle, text):
    ids = ours.encode(text)
    assert ours.decode(ids) == text
    # transformers strips and turns multi-byte fallbacks into U+FFFD: the documented defect we fix.
    assert oracle.decode(ids) != text


def test_byte_tokens_join_across_ids(ours):
    ids = ours.encode("🫠")  # not in emoji.json, not in the vocabulary: 4 byte tokens
    assert len(ids) == 4 and all(31741 <= i <= 31995 for i in ids)
    assert ours.decode(ids) == "🫠"
    assert ours.decode(ids[:2]) == "\ufffd"  # half a character is never made up


def test_incremental_decoding_streams_exact_text(corpus, ours):
    for s in corpus[:500]:
        ids = ours.encode(s)
        dec = ours.incremental_decoder()
        pieces = [dec.push(i) for i in ids]
        pieces.append(dec.flush())
        assert "".join(pieces) == ours.decode(ids)
        if "\ufffd" not in ours.decode(ids):
            assert all("\ufffd" not in p for p in pieces)


def test_incremental_decoding_holds_back_partial_characters(ours):
    ids = ours.encode("a🫠b")
    dec = ours.incremental_decoder()
    out = [dec.push(i) for i in ids]
    assert out == ["a", "", "", "", "🫠", "b"]
    assert dec.flush() == ""


def test_ids_past_the_vocabulary_decode_to_nothing(ours):
    assert ours.decode([31999 + 1, 40000, -1]) == ""
    assert ours.decode([31999]) == "<|endoftext|>"


def test_lone_surrogate_does_not_crash(ours):
    ids = ours.encode("a\ud800b")
    assert len(ids) == 5
    assert ours.decode(ids).startswith("a") and ours.decode(ids).endswith("b")


def _tokenizer_dir(tmp_path, files: dict[str, str] | None = None):
    """A copy of the real vocab.txt + emoji.json, with some files replaced or added."""
    for name in ("vocab.txt", "emoji.json"):
        (tmp_path / name).write_bytes((NEOX_JA_TOKENIZER_DIR / name).read_bytes())
    for name, text in (files or {}).items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    return tmp_path


def test_clean_text_mode_comes_from_tokenizer_config(tmp_path):
    tok = load_tokenizer(_tokenizer_dir(tmp_path, {"tokenizer_config.json": '{"do_clean_text": true}'}))
    assert tok.do_clean_text
    assert tok.decode(tok.encode("https://example.com")) == "<URL>"


def test_malformed_emoji_table_is_a_clear_error(tmp_path):
    with pytest.raises(TokenizerError, match="cannot read the tokenizer in"):
        load_tokenizer(_tokenizer_dir(tmp_path, {"emoji.json": "{not json"}))


def test_vocabulary_without_endoftext_is_a_clear_error(tmp_path):
    d = _tokenizer_dir(tmp_path)
    (d / "vocab.txt").write_text("あ\nい\n", encoding="utf-8")
    with pytest.raises(TokenizerError, match="no '<\\|endoftext\\|>' entry"):
        load_tokenizer(d)


def test_lone_surrogates_encode_as_the_replacement_character(ours):
    assert ours.encode("あ\ud83dい") == ours.encode("あ\ufffdい")
