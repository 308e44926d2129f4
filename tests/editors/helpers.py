"""Where the editor tests find their tools (installed by editors/ci-setup.sh) and the server."""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
CACHE = Path(os.environ.get("CODEGEN_LSP_CI_CACHE", Path.home() / ".cache" / "codegen-lsp-ci"))
ARTIFACTS = ROOT / "test-artifacts"


def missing(what: str) -> None:
    """Fail under CI (the setup script must have installed it), skip elsewhere."""
    if IN_CI:
        pytest.fail(f"{what} (CI runs editors/ci-setup.sh before pytest; it should have installed it)", False)
    pytest.skip(f"{what}; run `bash editors/ci-setup.sh` to install the editor test tools")


def ci_tools() -> dict[str, str]:
    """Paths written by editors/ci-setup.sh into $CACHE/env.sh; the environment overrides them."""
    tools: dict[str, str] = {}
    env_sh = CACHE / "env.sh"
    if env_sh.exists():
        for line in env_sh.read_text().splitlines():
            parts = shlex.split(line)
            if len(parts) == 2 and parts[0] == "export" and "=" in parts[1]:
                key, value = parts[1].split("=", 1)
                tools[key] = value
    for key in list(tools) + [
        "CODEGEN_LSP_NODE",
        "CODEGEN_LSP_CODE_SERVER",
        "CODEGEN_LSP_CHROMIUM",
        "CODEGEN_LSP_PLAYWRIGHT",
        "CODEGEN_LSP_VSIX",
    ]:
        if os.environ.get(key):
            tools[key] = os.environ[key]
    return tools


def server_command() -> list[str]:
    """`codegen-lsp serve` from this interpreter's environment (the console script if installed)."""
    script = Path(sys.executable).parent / "codegen-lsp"
    if script.exists():
        return [str(script), "serve"]
    return [sys.executable, "-m", "lsp_server", "serve"]
