"""Project context as prompt ids, per family: the repository format where the tokenizer has its tokens
(Qwen2.5-Coder, StarCoder: `<|repo_name|>name`, `<|file_sep|>path` + text per chunk, then `<|file_sep|>` and
the current file's path), else each chunk as a comment block headed by its path in the current file's
language. Each chunk is encoded on its own, so a chunk added at the end only extends the ids before it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# line comment of each language id (LSP's names); a language not here gets no comment-block context
LINE_COMMENT = {
    **dict.fromkeys(
        ("python", "shellscript", "ruby", "perl", "r", "yaml", "toml", "dockerfile", "makefile", "julia",
         "elixir", "powershell", "coffeescript", "nim", "cmake"),
        "#",
    ),
    **dict.fromkeys(("lua", "sql", "haskell", "elm", "ada"), "--"),
    **dict.fromkeys(("clojure", "scheme", "lisp", "racket"), ";;"),
    **dict.fromkeys(
        ("javascript", "typescript", "javascriptreact", "typescriptreact", "c", "cpp", "java", "go", "rust",
         "csharp", "kotlin", "swift", "scala", "dart", "php", "objective-c", "objective-cpp", "zig", "groovy",
         "proto", "solidity", "vue", "svelte"),
        "//",
    ),
}  # fmt: skip


@dataclass(frozen=True)
class Chunk:
    """A piece of another file: where it is and its text at the time it was chosen."""

    uri: str
    path: str  # shown in the prompt: relative to its workspace folder
    start: int  # first line (0-based)
    end: int  # line after the last
    text: str
    source: str  # "definition" | "file" (a definition read from disk) | "recent" | "open"
    short: str = field(default="", compare=False)  # a shorter text (a definition's outline), or ""

    def status(self, tokens: int) -> dict:
        """codegen.status's row: uri, 1-based inclusive line range, tokens, source."""
        return {"uri": self.uri, "lines": [self.start + 1, self.end], "tokens": tokens, "source": self.source}


@dataclass
class Layout:
    """The context's ids: `head` before the whole prompt, `inner` at the start of a FIM prompt's prefix."""

    head: list[int] = field(default_factory=list)
    inner: list[int] = field(default_factory=list)
    chunks: list[tuple[Chunk, int]] = field(default_factory=list)  # each chunk and its tokens

    def __len__(self) -> int:
        return len(self.head) + len(self.inner)


class Renderer:
    """Chunks -> ids for one tokenizer, FIM template and current file."""

    def __init__(self, tokenizer, template, fim_on: bool, language: str, repo: str, path: str) -> None:
        self.tok, self.repo, self.path = tokenizer, repo, path
        special = getattr(tokenizer, "special_id", lambda _s: None)
        ids = template and (special(template.repo_name or ""), special(template.file_sep or ""))
        self.repo_ids = ids if ids and None not in ids else None
        self.comment = LINE_COMMENT.get(language)
        self.inner = fim_on and self.repo_ids is None  # inside the FIM prefix, after its sentinel
        self.usable = self.repo_ids is not None or self.comment is not None

    def chunk_ids(self, c: Chunk) -> list[int]:
        """One chunk's ids."""
        text = c.text if c.text.endswith("\n") else c.text + "\n"
        if self.repo_ids is not None:
            return [self.repo_ids[1], *self.tok.encode(f"{c.path}\n{text}")]
        lines = "".join(f"{self.comment} {ln}".rstrip() + "\n" for ln in text.splitlines())
        return self.tok.encode(f"{self.comment} Path: {c.path}\n{lines}")

    def frame(self) -> tuple[list[int], list[int]]:
        """(ids before the chunks, ids after them: the current file's header)."""
        if self.repo_ids is not None:
            head = [self.repo_ids[0], *self.tok.encode(f"{self.repo}\n")]
            return head, [self.repo_ids[1], *self.tok.encode(f"{self.path}\n")]
        return [], self.tok.encode(f"{self.comment} Path: {self.path}\n")

    def layout(self, chunks: list[tuple[Chunk, list[int]]]) -> Layout:
        """The ids of these chunks (with their ids) in this order; nothing without chunks."""
        if not chunks:
            return Layout()
        before, after = self.frame()
        ids = before + [i for _, cids in chunks for i in cids] + after
        rows = [(c, len(cids)) for c, cids in chunks]
        return Layout(inner=ids, chunks=rows) if self.inner else Layout(head=ids, chunks=rows)
