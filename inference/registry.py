"""model_type -> (family, config class, model class, weight-name map). Data, not code paths."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from inference.errors import ModelLoadError

# Internal parameter name -> checkpoint tensor name(s), `{i}` = layer index. With several candidates
# the first one present in the checkpoint is used.
CODEGEN_WEIGHTS: dict[str, tuple[str, ...]] = {
    "wte.weight": ("transformer.wte.weight",),
    "h.{i}.ln_1.weight": ("transformer.h.{i}.ln_1.weight",),
    "h.{i}.ln_1.bias": ("transformer.h.{i}.ln_1.bias",),
    "h.{i}.qkv_proj.weight": ("transformer.h.{i}.attn.qkv_proj.weight",),
    "h.{i}.out_proj.weight": ("transformer.h.{i}.attn.out_proj.weight",),
    "h.{i}.fc_in.weight": ("transformer.h.{i}.mlp.fc_in.weight",),
    "h.{i}.fc_in.bias": ("transformer.h.{i}.mlp.fc_in.bias",),
    "h.{i}.fc_out.weight": ("transformer.h.{i}.mlp.fc_out.weight",),
    "h.{i}.fc_out.bias": ("transformer.h.{i}.mlp.fc_out.bias",),
    "ln_f.weight": ("transformer.ln_f.weight",),
    "ln_f.bias": ("transformer.ln_f.bias",),
    "lm_head.weight": ("lm_head.weight",),
    "lm_head.bias": ("lm_head.bias",),
}
# Checkpoint tensors that are not learned (old causal-mask buffers): ignored without a warning.
CODEGEN_IGNORED = (
    r"transformer\.h\.\d+\.attn\.(bias|masked_bias)",
    r"transformer\.h\.\d+\.attn\.rotary_emb\..*",
)

_NJ = "gpt_neox_japanese."
NEOX_JAPANESE_WEIGHTS: dict[str, tuple[str, ...]] = {
    "embed_in.weight": (_NJ + "embed_in.weight",),
    "layers.{i}.input_layernorm.weight": (_NJ + "layers.{i}.input_layernorm.weight",),
    "layers.{i}.input_layernorm.bias": (_NJ + "layers.{i}.input_layernorm.bias",),
    "layers.{i}.post_attention_layernorm.weight": (_NJ + "layers.{i}.post_attention_layernorm.weight",),
    "layers.{i}.post_attention_layernorm.bias": (_NJ + "layers.{i}.post_attention_layernorm.bias",),
    "layers.{i}.attention.query_key_value.weight": (_NJ + "layers.{i}.attention.query_key_value.weight",),
    "layers.{i}.attention.dense.weight": (_NJ + "layers.{i}.attention.dense.weight",),
    "layers.{i}.attention.dense_bias": (_NJ + "layers.{i}.attention.dense_bias",),  # last layer only
    "layers.{i}.mlp.dense_h_to_4h.weight": (_NJ + "layers.{i}.mlp.dense_h_to_4h.weight",),
    "layers.{i}.mlp.dense_4h_to_h.weight": (_NJ + "layers.{i}.mlp.dense_4h_to_h.weight",),
    "final_layer_norm.weight": (_NJ + "final_layer_norm.weight",),
    "final_layer_norm.bias": (_NJ + "final_layer_norm.bias",),
    # Like transformers 5: a stored embed_out is used (even when the config says tied); a tied checkpoint
    # that omits it reuses embed_in.
    "embed_out.weight": ("embed_out.weight", _NJ + "embed_in.weight"),
}
NEOX_JAPANESE_IGNORED = (r"gpt_neox_japanese\.layers\.\d+\.attention\.(bias|masked_bias|rotary_emb\..*)",)

_L = "model.layers.{i}."
LLAMA_WEIGHTS: dict[str, tuple[str, ...]] = {
    "embed_tokens.weight": ("model.embed_tokens.weight",),
    **{
        f"layers.{{i}}.{name}.{kind}": (f"{_L}{path}.{name}.{kind}",)
        for path, names in (
            ("self_attn", ("q_proj", "k_proj", "v_proj", "o_proj", "q_norm", "k_norm")),
            ("mlp", ("gate_proj", "up_proj", "down_proj")),
        )
        for name in names
        for kind in ("weight", "bias")
    },
    "layers.{i}.input_layernorm.weight": (_L + "input_layernorm.weight",),
    "layers.{i}.post_attention_layernorm.weight": (_L + "post_attention_layernorm.weight",),
    "norm.weight": ("model.norm.weight",),
    # a tied checkpoint usually omits lm_head: it reuses the embedding (prepare_for_inference shares them)
    "lm_head.weight": ("lm_head.weight", "model.embed_tokens.weight"),
}
LLAMA_IGNORED = (r"model\.layers\.\d+\.self_attn\.rotary_emb\..*",)


@dataclass(frozen=True)
class Family:
    """One model family: everything the loader needs, as data. Classes may be 'module:attr' strings."""

    family: str
    config_cls: Any
    model_cls: Any
    weights: dict[str, tuple[str, ...]] | Callable[[Any], dict[str, tuple[str, ...]]]
    ignored: tuple[str, ...] = field(default_factory=tuple)

    def config_class(self):
        """The config dataclass (imported lazily)."""
        return _resolve(self.config_cls)

    def model_class(self):
        """The nn.Module class (imported lazily)."""
        return _resolve(self.model_cls)

    def weight_map(self, config) -> dict[str, tuple[str, ...]]:
        """The internal-name -> checkpoint-names map for this config."""
        return self.weights(config) if callable(self.weights) else self.weights


REGISTRY: dict[str, Family] = {
    "codegen": Family(
        family="codegen",
        config_cls="inference.config:CodeGenConfig",
        model_cls="inference.codegen:CodeGen",
        weights=CODEGEN_WEIGHTS,
        ignored=CODEGEN_IGNORED,
    ),
    "gpt_neox_japanese": Family(
        family="gpt_neox_japanese",
        config_cls="inference.neox_japanese:NeoXJapaneseConfig",
        model_cls="inference.neox_japanese:NeoXJapanese",
        weights=NEOX_JAPANESE_WEIGHTS,
        ignored=NEOX_JAPANESE_IGNORED,
    ),
    **{
        model_type: Family(
            family="llama",
            config_cls="inference.llama_config:LlamaConfig",
            model_cls="inference.llama:Llama",
            weights=LLAMA_WEIGHTS,
            ignored=LLAMA_IGNORED,
        )
        for model_type in ("llama", "qwen2", "qwen3")
    },
}


def _resolve(obj):
    if isinstance(obj, str):
        module, _, attr = obj.partition(":")
        return getattr(importlib.import_module(module), attr)
    return obj


def family_for(config_dict: dict) -> Family:
    """The registry entry for a config.json dict, or a ModelLoadError naming the supported architectures."""
    model_type = config_dict.get("model_type")
    if model_type in REGISTRY:
        return REGISTRY[model_type]
    supported = ", ".join(sorted(REGISTRY))
    archs = config_dict.get("architectures")
    what = f"model_type {model_type!r}" if model_type else "config.json has no model_type"
    if archs:
        what += f" (architectures {archs})"
    raise ModelLoadError(f"unsupported architecture: {what}; supported model_type values: {supported}")


def expand(weight_map: dict[str, tuple[str, ...]], internal_name: str) -> tuple[str, ...]:
    """Checkpoint candidates for one internal parameter name (layer index filled in), or ()."""
    if internal_name in weight_map:
        return weight_map[internal_name]
    parts = internal_name.split(".")
    for i, part in enumerate(parts):
        if part.isdigit():
            template = ".".join(parts[:i] + ["{i}"] + parts[i + 1 :])
            if template in weight_map:
                return tuple(c.format(i=part) for c in weight_map[template])
    return ()


def to_checkpoint_state_dict(family: str, state: dict[str, Any]) -> dict[str, Any]:
    """Rename an unfused internal state dict to the checkpoint's names (first candidate), e.g. for saving."""
    weight_map = REGISTRY[family].weights
    assert not callable(weight_map), "callable weight maps need a config"
    out = {}
    for name, tensor in state.items():
        names = expand(weight_map, name)
        assert names, f"no checkpoint name for {name}"
        out[names[0]] = tensor
    return out
