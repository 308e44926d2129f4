"""Model name -> local directory: a path, `builtin`, or a Hugging Face hub id (cache first, then download)."""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from inference.errors import ModelLoadError

log = logging.getLogger(__name__)

BUILTIN = "builtin"
BUILTIN_DIR = Path(__file__).resolve().parent / "builtin"
DEFAULT_MODEL = "Salesforce/codegen-350M-mono"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_FIRST_TRY = ["*.json", "*.safetensors", "*.txt"]  # config, tokenizer, safetensors weights
_LEGACY = ["pytorch_model*.bin"]


@dataclass
class Resolved:
    """Where a model's files are, and a one-line notice when a fallback was used (show it once)."""

    name: str
    path: Path
    message: str | None = None


def hf_cache_dir() -> Path:
    """The hub cache directory, read from the environment at call time (HF_HUB_CACHE, HF_HOME)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "huggingface"
    )
    return Path(home) / "hub"


def hf_offline() -> bool:
    """True when HF_HUB_OFFLINE asks for no network."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def builtin_dir() -> Path:
    """The built-in model's directory, or a ModelLoadError when its files are missing."""
    d = BUILTIN_DIR
    missing = [f for f in ("config.json", "model.safetensors") if not (d / f).is_file()]
    if not (d / "tokenizer.json").is_file() and not (d / "vocab.json").is_file():
        missing.append("tokenizer.json")
    if missing:
        raise ModelLoadError(
            f"the built-in model is incomplete: {', '.join(missing)} missing from {d} "
            "(reinstall codegen-lsp, or pass --model with a checkpoint directory or hub id)"
        )
    return d


def looks_like_path(name: str) -> bool:
    """Paths start with / . ~ or exist; everything else of the form org/name is a hub id."""
    return name.startswith(("/", ".", "~")) or os.sep in name.strip("/") and not _HUB_ID.match(name)


def resolve(name: str, allow_fallback: bool = True) -> Resolved:
    """Resolve a model name to a local directory; an unreachable hub id falls back to `builtin` if allowed."""
    name = name.strip()
    if not name:
        raise ModelLoadError("no model given: pass a checkpoint directory, a hub id, or 'builtin'")
    if name == BUILTIN:
        return Resolved(name, builtin_dir())
    local = Path(name).expanduser()
    if local.is_dir():
        return Resolved(name, local.resolve())
    if looks_like_path(name) or not _HUB_ID.match(name):
        raise ModelLoadError(
            f"model {name!r}: no such directory, and not a hub id of the form org/name (or 'builtin')"
        )
    try:
        return Resolved(name, fetch(name))
    except ModelLoadError as exc:
        if not allow_fallback:
            raise
        try:
            path = builtin_dir()
        except ModelLoadError as builtin_exc:
            raise ModelLoadError(f"{exc}; and {builtin_exc}") from exc
        message = f"{exc}. Using the built-in model for now."
        log.info("%s", message)  # the caller shows it to the user once
        return Resolved(BUILTIN, path, message=message)


def fetch(repo_id: str) -> Path:
    """A hub snapshot directory: from the local cache, else downloaded (progress on stderr) unless offline."""
    from huggingface_hub import snapshot_download

    cache_dir = hf_cache_dir()
    how = (
        f"to get it, run `hf download {repo_id}` (or `huggingface-cli download {repo_id}`) on a machine with "
        f"network access and copy {cache_dir} here, or pass --model with a local checkpoint directory"
    )
    try:
        path = Path(snapshot_download(repo_id, cache_dir=cache_dir, local_files_only=True))
        if _has_weights(path):
            return path
    except Exception as exc:  # not cached (LocalEntryNotFoundError and friends)
        log.debug("%s not in the hub cache %s: %s", repo_id, cache_dir, exc)
    if hf_offline():
        raise ModelLoadError(
            f"model {repo_id!r} is not in the Hugging Face cache {cache_dir} (HF_HUB_OFFLINE=1); {how}"
        )
    try:
        log.info("downloading %s from the Hugging Face hub into %s", repo_id, cache_dir)
        path = Path(snapshot_download(repo_id, cache_dir=cache_dir, allow_patterns=_FIRST_TRY))
        if not _has_weights(path):
            path = Path(snapshot_download(repo_id, cache_dir=cache_dir, allow_patterns=_LEGACY))
    except Exception as exc:
        raise ModelLoadError(
            f"model {repo_id!r} is not in the Hugging Face cache {cache_dir} and could not be downloaded "
            f"({type(exc).__name__}); {how}"
        ) from exc
    return path


def _has_weights(path: Path) -> bool:
    from inference.weights import WEIGHT_FILES

    return (path / "config.json").is_file() and any((path / f).is_file() for f in WEIGHT_FILES)
