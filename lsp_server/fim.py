"""Fill-in-the-middle: each family's prompt template, found by the tokenizer's special tokens (a table).

A template is a sequence of parts: `{prefix}`, `{suffix}`, a special token (put in by id, never encoded from
text), or plain text. With no other context the prompt is exactly the template. Generation ends at the
template's end tokens (`stop_ids`).
"""

from __future__ import annotations

from dataclasses import dataclass

PREFIX, SUFFIX = "{prefix}", "{suffix}"


@dataclass(frozen=True)
class FimTemplate:
    """One family's infill format."""

    name: str
    parts: tuple[str, ...]  # PREFIX, SUFFIX, special tokens ("<...>"), or plain text
    stops: tuple[str, ...]  # special tokens that end the middle (those the vocabulary has)
    repo_name: str | None = None  # project-context tokens, where the family has them
    file_sep: str | None = None

    @property
    def specials(self) -> tuple[str, ...]:
        """The special tokens the template itself needs (its sentinels)."""
        return tuple(p for p in self.parts if is_special(p))


def is_special(part: str) -> bool:
    """Whether a template part is a special token (the rest is text or a placeholder)."""
    return part not in (PREFIX, SUFFIX) and len(part) > 2 and part[0] == "<" and part[-1] == ">"


TEMPLATES = (
    FimTemplate(
        "qwen2.5-coder",
        ("<|fim_prefix|>", PREFIX, "<|fim_suffix|>", SUFFIX, "<|fim_middle|>"),
        stops=("<|endoftext|>", "<|fim_pad|>", "<|file_sep|>", "<|im_end|>"),
        repo_name="<|repo_name|>",
        file_sep="<|file_sep|>",
    ),
    FimTemplate(
        "deepseek-coder",
        ("<｜fim▁begin｜>", PREFIX, "<｜fim▁hole｜>", SUFFIX, "<｜fim▁end｜>"),
        stops=("<｜end▁of▁sentence｜>", "<|EOT|>"),
    ),
    FimTemplate(
        "starcoder",
        ("<fim_prefix>", PREFIX, "<fim_suffix>", SUFFIX, "<fim_middle>"),
        stops=("<|endoftext|>", "<file_sep>"),
        repo_name="<reponame>",
        file_sep="<file_sep>",
    ),
    FimTemplate(
        "codellama",
        ("<PRE>", " ", PREFIX, " ", "<SUF>", SUFFIX, " ", "<MID>"),
        stops=("<EOT>", "</s>"),
    ),
    FimTemplate(  # CodeGen2 / CodeGen2.5: the CodeGen family's own infill
        "codegen2",
        (PREFIX, "<mask_1>", SUFFIX, "<|endoftext|>", "<sep>", "<mask_1>"),
        stops=("<eom>", "<|endoftext|>"),
    ),
)


def template_for(tokenizer) -> FimTemplate | None:
    """The first template whose sentinels the tokenizer has as special tokens, or None."""
    special_id = getattr(tokenizer, "special_id", None)
    if special_id is None:
        return None
    for t in TEMPLATES:
        if all(special_id(s) is not None for s in t.specials):
            return t
    return None


def stop_ids(template: FimTemplate, tokenizer) -> tuple[int, ...]:
    """Ids of the template's end tokens that the vocabulary has."""
    return tuple(i for s in template.stops if (i := tokenizer.special_id(s)) is not None)


def build(template: FimTemplate, tokenizer, prefix_ids: list[int], suffix_ids: list[int]) -> list[int]:
    """The prompt ids: the template's parts with the prefix's and suffix's ids in their places."""
    out: list[int] = []
    for part in template.parts:
        if part == PREFIX:
            out += prefix_ids
        elif part == SUFFIX:
            out += suffix_ids
        elif is_special(part):
            out.append(tokenizer.special_id(part))
        else:
            out += tokenizer.encode(part)
    return out


def overhead(template: FimTemplate, tokenizer) -> int:
    """Tokens the template adds around the prefix and the suffix."""
    return len(build(template, tokenizer, [], []))
