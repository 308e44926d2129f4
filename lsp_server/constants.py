"""Constants shared by the server, the settings and the CLI: the default model, modes, languages by suffix."""

from __future__ import annotations

from inference.hub import DEFAULT_MODEL

__all__ = ["DEFAULT_MODEL", "LANGUAGE_BY_SUFFIX", "MODES", "PROSE_LANGUAGES"]

MODES = ("line", "block", "free", "sentence")  # completion modes
PROSE_LANGUAGES = ("markdown", "plaintext", "restructuredtext")  # sentence mode, no block scope
# File suffix -> LSP language id (the CLI's `complete` trims, `synthesize` comments, as for that language).
LANGUAGE_BY_SUFFIX = {
    ".py": "python", ".pyi": "python", ".md": "markdown", ".markdown": "markdown", ".rst": "restructuredtext",
    ".txt": "plaintext", ".js": "javascript", ".ts": "typescript", ".c": "c", ".h": "c", ".cpp": "cpp",
    ".cc": "cpp", ".java": "java", ".go": "go", ".rs": "rust", ".rb": "ruby", ".sh": "shellscript",
    ".lua": "lua", ".sql": "sql", ".php": "php", ".cs": "csharp", ".kt": "kotlin", ".swift": "swift",
}  # fmt: skip
FIM_MODES = ("auto", "on", "off")
FIM_SUFFIX_TOKENS = 32  # a keystroke in the middle re-reads the suffix (docs/PERFORMANCE.md measures it)
