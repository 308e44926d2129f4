"""Trimming: stop patterns per language, modes, scope limit, suffix de-duplication."""

from __future__ import annotations

import pytest

from lsp_server import postprocess as pp


def trim(text, language="python", mode="block", line_prefix="", overrides=None):
    return pp.trim(text, pp.patterns_for(language, mode, line_prefix, overrides))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("return x\n\n\n\nfoo()", "return x"),
        ("a = 1\n\ndef g():\n    pass", "a = 1"),
        ("a = 1\nclass B:\n    pass", "a = 1"),
        ("a = 1\nasync def g():", "a = 1"),
        ("a = 1\nif __name__ == '__main__':", "a = 1"),
        ("a = 1\n# comment\nb = 2", "a = 1"),
        ("a = 1\n@decorator\ndef f(): pass", "a = 1"),
        ("x = 1<|endoftext|>junk", "x = 1"),
        ("x = 1\n    # indented comment is fine\ny = 2", "x = 1\n    # indented comment is fine\ny = 2"),
        ("def f():\n    return 1", "def f():\n    return 1"),  # a top-level def at the very start stays
    ],
    ids=[
        "blank-run",
        "def",
        "class",
        "async-def",
        "main-guard",
        "top-comment",
        "decorator",
        "endoftext",
        "indented-comment",
        "def-at-start",
    ],
)
def test_python_stop_patterns_top_level(text, expected):
    assert trim(text) == expected


@pytest.mark.parametrize(
    ("line_prefix", "text", "expected"),
    [
        ("    ", "return x\n    y = 1\nz = 2", "return x\n    y = 1"),
        ("    if x:", "\n        a()\n    b()\nc()", "\n        a()\n    b()"),
        ("        ", "a()\n    b()", "a()"),
        ("\tx = ", "1\n\ty = 2\nz = 3", "1\n\ty = 2"),
        ("", "a = 1\nb = 2", "a = 1\nb = 2"),
        ("    ", "a()\n\n    b()", "a()\n\n    b()"),  # a blank line inside the block does not end it
    ],
    ids=["body", "if-header", "deeper", "tabs", "top-level", "blank-inside"],
)
def test_scope_limit(line_prefix, text, expected):
    assert trim(text, line_prefix=line_prefix) == expected


def test_modes():
    text = "foo(1)\nbar(2)\n"
    assert trim(text, mode="line") == "foo(1)"
    assert trim("\n    foo(1)\n    bar()", mode="line", line_prefix="def f():") == "\n    foo(1)"
    assert trim(text, mode="free", line_prefix="    ") == "foo(1)\nbar(2)"
    assert trim("foo\nbar", mode="block", line_prefix="  ") == "foo"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("今日は晴れです。明日は雨です。", "今日は晴れです。"),
        ("本当？うそ！", "本当？"),
        ("It is 3.14 today. And more.", "It is 3.14 today."),
        ("Wow! Next", "Wow!"),
        ("no end yet", "no end yet"),
    ],
    ids=["kuten", "zenkaku-question", "decimal-point", "exclamation", "unfinished"],
)
def test_sentence_mode(text, expected):
    assert trim(text, language="markdown", mode="sentence") == expected


@pytest.mark.parametrize(
    ("language", "text", "expected"),
    [
        ("markdown", "first paragraph\ncontinues\n\nsecond", "first paragraph\ncontinues"),
        ("markdown", "text\n## Heading\nmore", "text"),
        ("markdown", "text\n#hashtag is not a heading", "text\n#hashtag is not a heading"),
        ("plaintext", "line one\n  \nline two", "line one"),
        ("restructuredtext", "para\nTitle\n=====\n", "para\nTitle"),
    ],
    ids=["md-paragraph", "md-heading", "md-hashtag", "plain-blank", "rst-underline"],
)
def test_prose_patterns_block_mode(language, text, expected):
    assert trim(text, language=language, mode="block") == expected


def test_user_patterns_replace_language_defaults():
    assert trim("a\n\n\nb", overrides={"python": ["b"]}) == "a"
    assert trim("a;b", language="go", overrides={"*": [";"]}) == "a"
    assert trim("a\n\n\nb", language="go") == "a"


@pytest.mark.parametrize(
    ("text", "suffix", "expected"),
    [
        ("x + 1)", ")", ("x + 1", 0)),
        ("x + 1)  ", ")\r", ("x + 1", 0)),
        ('name")', '")', ("name", 0)),
        ("x + 1", ")", ("x + 1", 0)),
        ("a, b):\n    return a", "):", ("a, b):\n    return a", 2)),
        ("a, b\n    c", ")", ("a, b", 0)),
        ("abc", "", ("abc", 0)),
        (")", ")", ("", 0)),
    ],
    ids=[
        "drop-paren",
        "trailing-ws",
        "quote-paren",
        "no-dup",
        "multi-line-replaces",
        "multi-line-first-line",
        "no-suffix",
        "only-suffix",
    ],
)
def test_fit_suffix(text, suffix, expected):
    assert pp.fit_suffix(text, suffix) == expected


@pytest.mark.parametrize(
    ("suffix", "expected"),
    [("abc", True), ("_x", True), ("é", True), (")", False), ("", False), (" x", False)],
)
def test_mid_word(suffix, expected):
    assert pp.mid_word(suffix) is expected


def test_trim_is_idempotent_and_strips_trailing_space():
    pats = pp.patterns_for("python", "block", "    ")
    once = pp.trim("return x   \n    \nfoo\n", pats)
    assert once == "return x" and pp.trim(once, pats) == once


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a = 1\nn = n\nn = n\nn = n\nn = n", "a = 1"),
        ("x)\n    y += 1\n    y += 1\n    y += 1\n", "x)"),
        ("n = n\nn = n\nn = n\n", ""),
        ("a = 1\nn = n\nn = n\nb = 2", "a = 1\nn = n\nn = n\nb = 2"),
        ("a = 1\nn = n\nn = n\nn = n", "a = 1\nn = n\nn = n\nn = n"),
        ("a()\n\n\n", "a()"),
        ("x\n    n\n  n\nn\n", "x\n    n\n  n\nn"),
        ("a = 1\n" + "    if n < 0:\n        return n\n" * 3, "a = 1"),
        ("a = 1\n" + "if a:\n    b()\n\n    c = [\n" * 3, "a = 1"),
        (
            "a = 1\n" + "if a:\n    b()\n\n    c = [\n    ]\n" * 3,
            ("a = 1\n" + "if a:\n    b()\n\n    c = [\n    ]\n" * 3).rstrip(),
        ),
        ("a\nb\n" * 2 + "a\n", "a\nb\na\nb\na"),
        ("a\n" + "\nb\n" * 3, "a\n\nb\n\nb\n\nb"),
        ("a\n" + "\nb\n" * 4, "a"),
    ],
    ids=[
        "loop",
        "indented-loop",
        "loop-from-start",
        "twice-is-fine",
        "third-unfinished",
        "blank",
        "indents-differ",
        "two-line-loop",
        "four-line-loop",
        "five-lines-are-not-a-loop",
        "block-two-and-a-half-times",
        "blank-first-three-times",
        "blank-first-four-times",
    ],
)
def test_a_decoding_loop_ends_the_completion(text, expected):
    assert trim(text, mode="free") == expected
    assert trim(text, language="markdown", mode="free") == expected.split("\n\n")[0]
