"""config.json -> a dataclass per model family; `model_type` selects the family (see registry.py)."""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from inference.errors import ModelLoadError


@dataclass
class ModelConfig:
    """Fields every family has; the session and the decode loop only use these."""

    n_layer: int
    n_head: int
    head_dim: int
    n_positions: int
    vocab_size: int
    eos_token_id: int | None = None
    bos_token_id: int | None = None
    n_kv_head: int | None = None  # key/value heads (grouped-query attention); None: n_head

    @property
    def kv_heads(self) -> int:
        """Heads the KV cache holds: n_kv_head under grouped-query attention, else n_head."""
        return self.n_kv_head or self.n_head


@dataclass
class CodeGenConfig(ModelConfig):
    """CodeGen (Salesforce/codegen-*): parallel residual, GPT-J rotary, 4-shard fused qkv."""

    n_embd: int = 0
    rotary_dim: int | None = None
    n_inner: int | None = None
    activation_function: str = "gelu_new"
    layer_norm_epsilon: float = 1e-5
    tie_word_embeddings: bool = False

    @property
    def inner_dim(self) -> int:
        """MLP width (`n_inner`, null means 4 * n_embd)."""
        return self.n_inner if self.n_inner is not None else 4 * self.n_embd

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CodeGenConfig:
        """Build from a config.json dict, checking what the forward pass relies on."""
        need = ("vocab_size", "n_embd", "n_layer", "n_head")
        missing = [k for k in need if k not in d]
        if missing:
            raise ModelLoadError(f"config.json lacks {', '.join(missing)} (needed for model_type 'codegen')")
        n_embd, n_head = int(d["n_embd"]), int(d["n_head"])
        if n_head % 4 or n_embd % n_head:
            raise ModelLoadError(
                f"config.json: n_embd={n_embd} and n_head={n_head} do not fit CodeGen's layout "
                "(n_head must be a multiple of 4 and divide n_embd)"
            )
        head_dim = n_embd // n_head
        rotary_dim = d.get("rotary_dim")
        if rotary_dim is not None and (rotary_dim % 2 or rotary_dim > head_dim):
            raise ModelLoadError(
                f"config.json: rotary_dim={rotary_dim} must be even and <= head dim {head_dim}"
            )
        act = d.get("activation_function", "gelu_new")
        if act != "gelu_new":
            raise ModelLoadError(
                f"config.json: activation_function {act!r} is not supported (only 'gelu_new')"
            )
        return cls(
            n_layer=int(d["n_layer"]),
            n_head=n_head,
            head_dim=head_dim,
            n_positions=int(d.get("n_positions", 2048)),
            vocab_size=int(d["vocab_size"]),
            eos_token_id=d.get("eos_token_id", 50256),
            bos_token_id=d.get("bos_token_id", 50256),
            n_embd=n_embd,
            rotary_dim=rotary_dim,
            n_inner=d.get("n_inner"),
            activation_function=act,
            layer_norm_epsilon=float(d.get("layer_norm_epsilon", 1e-5)),
            tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
        )

    def to_dict(self) -> dict[str, Any]:
        """The config.json form (Hugging Face field names)."""
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("head_dim", "n_kv_head")}
        d.update(model_type="codegen", architectures=["CodeGenForCausalLM"], n_ctx=self.n_positions)
        return d


def read_config_json(directory: Path) -> dict[str, Any]:
    """Read and parse `config.json`, with errors that name the file and the problem."""
    path = Path(directory) / "config.json"
    if not path.is_file():
        raise ModelLoadError(
            f"{directory} has no config.json; a model directory needs config.json and weights"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelLoadError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ModelLoadError(f"{path} must hold a JSON object, got {type(data).__name__}")
    return data
