"""What project context may read: files inside the workspace folders (symlinks resolved), not git-ignored,
not excluded by name, not secret by shape, text and small. Every file skipped is logged once, never an error.
"""

from __future__ import annotations

import logging
import os
import re
import stat
import subprocess
from pathlib import Path
from urllib.parse import unquote, urlparse

from lsp_server.settings import SECRET_GLOBS

log = logging.getLogger(__name__)

MAX_FILE_BYTES = 1 << 20  # larger files are generated or data, not code a completion needs
SNIFF_BYTES = 8192  # a NUL byte in the first this many bytes: binary
ALWAYS_EXCLUDE = SECRET_GLOBS  # excluded whatever projectContext.exclude says
SECRET_SHAPES = re.compile(
    r"-----BEGIN [A-Z ]*PRIVATE KEY-----"  # PEM private keys
    r"|\bAKIA[0-9A-Z]{16}\b"  # AWS access key ids
    r"|\bgh[pousr]_[A-Za-z0-9]{36}\b"  # GitHub tokens
    r"|\bsk-[A-Za-z0-9_-]{32,}"  # API secret keys of the sk- shape
    r"|\bxox[baprs]-[A-Za-z0-9-]{10,}"  # Slack tokens
)


def glob_regex(pattern: str) -> re.Pattern:
    """A glob on a workspace-relative path: `**` any folders, `*` and `?` within one name; a pattern without
    `/` matches a name at any depth."""
    if "/" not in pattern.rstrip("/"):
        pattern = "**/" + pattern
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out + "(?:/.*)?\\Z")  # a folder's pattern excludes what is under it


def uri_path(uri: str) -> Path | None:
    """The local path of a file: URI, or None (untitled:, remote schemes)."""
    parsed = urlparse(uri)
    if parsed.scheme != "file":
        return None
    return Path(unquote(parsed.path))


def path_uri(path: Path) -> str:
    """The file: URI of an absolute path."""
    return path.as_uri()


class Files:
    """Reads workspace files under the rules above; remembers what it told the log."""

    def __init__(self) -> None:
        self.folders: list[Path] = []
        self.exclude: list[re.Pattern] = [glob_regex(p) for p in ALWAYS_EXCLUDE]
        self._told: set[tuple[str, str]] = set()
        self._ignored: dict[Path, bool] = {}
        self._texts: dict[Path, tuple[float, int, str | None]] = {}  # path -> (mtime, size, text or None)

    def skip(self, what: str, why: str) -> None:
        """One log line per skipped file and reason."""
        if (what, why) not in self._told:
            self._told.add((what, why))
            log.info("project context: skipped %s: %s", what, why)

    def configure(self, folders: list[str], exclude: list[str]) -> None:
        """The workspace folders (paths or file: URIs) and the exclude globs; clears the git-ignore cache."""
        resolved = []
        for f in folders:
            p = uri_path(f) if "://" in f else Path(f)
            try:
                if p is None or not p.is_dir():
                    self.skip(f, "the workspace folder does not exist")
                    continue
                resolved.append(p.resolve(strict=True))
            except (OSError, RuntimeError) as e:
                self.skip(f, f"the workspace folder cannot be read ({e})")
        self.folders = list(dict.fromkeys(resolved))
        self.exclude = [glob_regex(p) for p in (*ALWAYS_EXCLUDE, *exclude)]
        self._ignored.clear()

    def place(self, path: Path) -> tuple[Path, str] | None:
        """(workspace folder, relative path) of an allowed file, else None (logged once)."""
        try:
            real = path.resolve(strict=False)
        except (OSError, RuntimeError) as e:  # a symlink loop, a vanished parent
            self.skip(str(path), f"cannot resolve ({e})")
            return None
        folder = next((f for f in self.folders if real == f or f in real.parents), None)
        if folder is None:
            return None  # outside the workspace: never read, not worth a log line per file
        rel = real.relative_to(folder).as_posix()
        if any(p.match(rel) for p in self.exclude):
            self.skip(rel, "excluded by name (projectContext.exclude)")
            return None
        if self._git_ignored(folder, real):
            self.skip(rel, "ignored by git")
            return None
        return folder, rel

    def _git_ignored(self, folder: Path, path: Path) -> bool:
        """Whether git ignores the file (no git, or not a repository: not ignored)."""
        if path not in self._ignored:
            try:
                run = subprocess.run(
                    ["git", "check-ignore", "-q", "--", str(path)],
                    cwd=folder,
                    capture_output=True,
                    timeout=5,
                    env={**os.environ, "GIT_OPTIONAL_LOCKS": "0"},
                )
                self._ignored[path] = run.returncode == 0
            except (OSError, subprocess.SubprocessError) as e:
                self.skip("git check-ignore", f"unavailable ({e})")
                self._ignored[path] = False
        return self._ignored[path]

    def read(self, path: Path) -> str | None:
        """The text of an allowed workspace file on disk, or None (skipped with one log line)."""
        if self.place(path) is None:
            return None
        try:
            st = path.stat()
            cached = self._texts.get(path)
            if cached is not None and cached[:2] == (st.st_mtime, st.st_size):
                return cached[2]
            text = None
            if not stat.S_ISREG(st.st_mode):  # a FIFO or a device: a read could block or never end
                self.skip(str(path), "not a regular file")
            elif st.st_size > MAX_FILE_BYTES:
                self.skip(str(path), f"over {MAX_FILE_BYTES} bytes")
            else:
                text = self.check_text(str(path), path.read_bytes())
            self._texts[path] = (st.st_mtime, st.st_size, text)
            return text
        except (OSError, RuntimeError) as e:
            self.skip(str(path), f"unreadable ({e.__class__.__name__}: {e})")
            return None

    def check_text(self, what: str, data: bytes | str) -> str | None:
        """The text when it is small, not binary, valid UTF-8 and holds no secret; else None."""
        if isinstance(data, str):
            if len(data) > MAX_FILE_BYTES:
                self.skip(what, f"over {MAX_FILE_BYTES} characters")
                return None
            text = data
        else:
            if b"\0" in data[:SNIFF_BYTES]:
                self.skip(what, "binary")
                return None
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError:
                self.skip(what, "not valid UTF-8")
                return None
        if SECRET_SHAPES.search(text):
            self.skip(what, "holds what looks like a secret")
            return None
        return text
