"""The built-in model's training data: tokenizer and samples in the three prompt layouts the server sends.

Samples (tools/build_corpus.py's files, held-out ones never), each one training row of T + 1 ids, drawn from
a generator seeded by (seed, step) so a resumed run sees exactly what an unbroken one would:
  - plain: a window of the file stream (files joined by `<|endoftext|>`);
  - fill-in-the-middle (lsp_server/fim.py's qwen2.5-coder template, as the server builds it): the cursor at a
    random point of a file, the middle from there to the end of its line and 0-4 more lines, the suffix after
    it cut to a random budget by the server's own cut (lsp_server.prompt.cut_suffix), the prefix filling the
    rest: `<|fim_prefix|>P<|fim_suffix|>S<|fim_middle|>M<|endoftext|>` (a quarter with an empty suffix, as at
    the end of a file);
  - project context (lsp_server/context_layout.py's repository format): excerpts of 1-3 other files of the
    same package, then the current file, plain or fill-in-the-middle.
A row shorter than T + 1 is completed with a plain window after `<|endoftext|>`.
"""

from __future__ import annotations

import json
import random
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lsp_server.prompt import cut_suffix  # noqa: E402

EOS, FIM_PREFIX, FIM_MIDDLE, FIM_SUFFIX, FIM_PAD, REPO_NAME, FILE_SEP = (
    "<|endoftext|>",
    "<|fim_prefix|>",
    "<|fim_middle|>",
    "<|fim_suffix|>",
    "<|fim_pad|>",
    "<|repo_name|>",
    "<|file_sep|>",
)
SPECIALS = (EOS, FIM_PREFIX, FIM_MIDDLE, FIM_SUFFIX, FIM_PAD, REPO_NAME, FILE_SEP)  # ids 0..6
# Pre-tokenizer split: newline runs and indentation runs become their own pieces, so a prompt that ends
# at the start of a line ends at a token boundary that training has seen.
SPLIT_PATTERN = r"\n+| {2,}|\t+"
MAX_SUFFIX = 64  # tokens: the server's default fimSuffixTokens is 32


@dataclass(frozen=True)
class Mix:
    """Shares of the sample kinds (the rest is plain)."""

    fim: float = 0.5
    project: float = 0.2
    project_fim: float = 0.5  # of project samples, the current file as fill-in-the-middle
    no_suffix: float = 0.25  # of fill-in-the-middle samples, an empty suffix (the cursor at a file's end)


def read_corpus(path: Path) -> tuple[list[dict], list[dict]]:
    """(training files, held-out files) of tools/build_corpus.py's files.jsonl."""
    train, held = [], []
    with open(path) as fh:
        for line in fh:
            f = json.loads(line)
            (held if f["held_out"] else train).append(f)
    return train, held


def train_tokenizer(texts, vocab_size: int):
    """Byte-level BPE with SPECIALS at ids 0..6 (special tokens: never produced from a document's text)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(SPECIALS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    assert [tok.token_to_id(s) for s in SPECIALS] == list(range(len(SPECIALS)))
    assert tok.get_vocab_size() == vocab_size
    return tok


def save_tokenizer(tok, out: Path, n_positions: int) -> None:
    """tokenizer.json plus the small JSON files that name the special tokens."""
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"))
    special = {"bos_token": EOS, "eos_token": EOS, "unk_token": EOS}
    extra = {"additional_special_tokens": list(SPECIALS[1:])}
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": n_positions,
        **special,
        **extra,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    (out / "special_tokens_map.json").write_text(json.dumps(special | extra, indent=2) + "\n")


def encode_all(tok, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """All texts as one stream, each followed by `<|endoftext|>`: (ids [N] int16, starts [F + 1] int64)."""
    tok.encode_special_tokens = True
    ids: list[int] = []
    starts = [0]
    for enc in tok.encode_batch(texts, add_special_tokens=False):
        ids.extend(enc.ids)
        ids.append(0)
        starts.append(len(ids))
    return torch.tensor(ids, dtype=torch.int16), torch.tensor(starts, dtype=torch.int64)


def package_of(f: dict) -> str:
    """A file's package: the PyPI distribution, or the stdlib's top-level package (modules: 'stdlib')."""
    if f["source"] != "stdlib":
        return f["source"].split("==")[0]
    parts = f["path"].split("/")
    return parts[0] if len(parts) > 1 else "stdlib"


class Sampler:
    """Training rows for (seed, step): plain, fill-in-the-middle and project-context samples."""

    def __init__(self, files: list[dict], tok, stream: torch.Tensor, starts: torch.Tensor, n_positions: int,
                 mix: Mix = Mix()) -> None:  # fmt: skip
        self.files, self.tok, self.stream, self.starts = files, tok, stream, starts
        self.T, self.mix = n_positions, mix
        self.packages: dict[str, list[int]] = {}
        for i, f in enumerate(files):
            self.packages.setdefault(package_of(f), []).append(i)
        self.multi = sorted(p for p, idx in self.packages.items() if len(idx) > 1)
        tok.encode_special_tokens = True

    def enc(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False).ids if text else []

    def batch(self, seed: int, step: int, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
        """x, y: [B, T] for this step."""
        rng = random.Random(seed * 1_000_003 + step)
        out = torch.stack([torch.tensor(self.row(rng), dtype=torch.long) for _ in range(rows)])
        return out[:, :-1], out[:, 1:]

    def row(self, rng: random.Random) -> list[int]:
        """One row of T + 1 ids."""
        r, n = rng.random(), self.T + 1
        if r < self.mix.fim:
            ids = self.fim(rng, self.files[self.file_at(rng)], n, [])
        elif r < self.mix.fim + self.mix.project:
            ids = self.project(rng, n)
        else:
            ids = []
        return self.fill(rng, ids, n)

    def file_at(self, rng: random.Random) -> int:
        """A file drawn with probability proportional to its tokens."""
        pos = rng.randrange(len(self.stream))
        return int(torch.searchsorted(self.starts, pos, right=True)) - 1

    def fill(self, rng: random.Random, ids: list[int], n: int) -> list[int]:
        """`ids` (cut to n) completed with a plain window."""
        ids = ids[:n]
        if len(ids) < n:
            need = n - len(ids) - (1 if ids else 0)
            s = rng.randrange(len(self.stream) - need)
            ids = ids + ([0] if ids else []) + self.stream[s : s + need].tolist()
        assert len(ids) == n
        return ids

    def fim(self, rng: random.Random, f: dict, budget: int, head: list[int]) -> list[int]:
        """`head` then one FIM sample of file `f` within `budget` ids: the server's layout, middle and EOS."""
        text = f["text"]
        c = rng.randrange(len(text))
        if rng.random() < 0.5:  # at a line start half the time: a new line's completion
            c = text.rfind("\n", 0, c) + 1
        end = text.find("\n", c)
        for _ in range(rng.choice((0, 0, 0, 1, 1, 2, 3, 4))):
            end = text.find("\n", end + 1) if end >= 0 else -1
        end = len(text) if end < 0 else end + 1
        suffix_budget = 0 if rng.random() < self.mix.no_suffix else rng.randrange(MAX_SUFFIX + 1)
        return self.fim_ids(
            head, text[:c], text[c:end], text[end : end + MAX_SUFFIX * 8], suffix_budget, budget
        )

    def fim_ids(self, head: list[int], before: str, middle: str, after: str, suffix_budget: int, budget: int):
        """`head`, the server's FIM prompt (suffix: `after` cut as the server cuts it), the middle, and EOS
        when the middle is whole, within `budget` ids (the prefix keeps what is left, from its end)."""
        middle_ids = self.enc(middle)
        eos = [0] if len(middle_ids) <= self.T // 4 else []  # a middle cut short does not end
        middle_ids = middle_ids[: self.T // 4]
        suffix = cut_suffix(after, suffix_budget, lambda t: len(self.enc(t)))
        suffix_ids = self.enc(suffix)
        room = budget - len(head) - len(middle_ids) - len(suffix_ids) - 4
        before_ids = self.enc(before[max(0, len(before) - room * 6) :])[-room:] if room > 0 else []
        return [*head, 1, *before_ids, 3, *suffix_ids, 2, *middle_ids, *eos]

    def repo_start(self, package: str) -> list[int]:
        """The repository format's start: `<|repo_name|>name` and a newline (context_layout's frame)."""
        return [5, *self.enc(f"{package}\n")]

    def chunk_ids(self, path: str, excerpt: str) -> list[int]:
        """One other file's excerpt: `<|file_sep|>path`, a newline, the text (ending in a newline)."""
        return [6, *self.enc(f"{path}\n{excerpt}")]

    def file_header(self, path: str) -> list[int]:
        """The current file's header after the chunks: `<|file_sep|>path` and a newline."""
        return [6, *self.enc(f"{path}\n")]

    def project(self, rng: random.Random, n: int) -> list[int]:
        """Excerpts of other files of one package in the repository format, then the current file."""
        package = rng.choice(self.multi)
        members = self.packages[package]
        target, *others = rng.sample(members, min(len(members), 1 + rng.randint(1, 3)))
        head = self.repo_start(package)
        for i in others:
            lines = self.files[i]["text"].split("\n")
            start = rng.randrange(len(lines))
            excerpt = "\n".join(lines[start : start + rng.randint(8, 40)]).rstrip() + "\n"
            chunk = self.chunk_ids(self.files[i]["path"], excerpt)
            if len(head) + len(chunk) > n // 2:
                break
            head += chunk
        f = self.files[target]
        head += self.file_header(f["path"])
        if rng.random() < self.mix.project_fim:
            return self.fim(rng, f, n, head)
        lines = f["text"].split("\n")
        start = rng.randrange(len(lines)) if rng.random() < 0.5 else 0
        return head + self.enc("\n".join(lines[start:]))[: n - len(head)]
