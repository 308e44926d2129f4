"""CodeGen checkpoint -> GPT-J checkpoint (what vLLM and GPTJForCausalLM load), streamed tensor by tensor.

CodeGen is GPT-J with q, k and v fused into `qkv_proj` in a 4-shard [q | v | k] layout (docs: MODELS.md):
split it into `q_proj`, `k_proj`, `v_proj`; every other tensor keeps its name and values.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import Tensor

from inference import hub
from inference.codegen import hf_qkv_to_qkv
from inference.config import CodeGenConfig, read_config_json
from inference.errors import ModelLoadError
from inference.loader import parse_dtype
from inference.registry import CODEGEN_IGNORED
from inference.weights import WeightSource, open_weights

log = logging.getLogger(__name__)

FORMATS = ("gptj",)
DEFAULT_SHARD_BYTES = 2 * 1024**3
TOKENIZER_FILES = (
    "tokenizer.json",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "special_tokens_map.json",
    "tokenizer_config.json",
)
_QKV = re.compile(r"transformer\.h\.(\d+)\.attn\.qkv_proj\.weight")
# Names every CodeGen tensor other than qkv_proj keeps in GPT-J (the layouts are the same).
_KEPT = re.compile(
    r"transformer\.wte\.weight|transformer\.ln_f\.(weight|bias)|lm_head\.(weight|bias)"
    r"|transformer\.h\.\d+\.(ln_1\.(weight|bias)|attn\.out_proj\.weight|mlp\.fc_(in|out)\.(weight|bias))"
)
_SKIPPED = re.compile("|".join(f"(?:{p})" for p in CODEGEN_IGNORED))


@dataclass(frozen=True)
class Planned:
    """One output tensor: its GPT-J name, shape, and how to read it from the source."""

    name: str
    shape: tuple[int, ...]
    source: str  # the checkpoint tensor it comes from
    read: Callable[[], Tensor]


def gptj_config(src: dict, config: CodeGenConfig, dtype_name: str) -> dict:
    """The GPT-J config.json of a CodeGen config (same sizes; rotary_dim always explicit)."""
    return {
        "model_type": "gptj",
        "architectures": ["GPTJForCausalLM"],
        "vocab_size": config.vocab_size,
        "n_positions": config.n_positions,
        "n_embd": config.n_embd,
        "n_layer": config.n_layer,
        "n_head": config.n_head,
        # GPT-J reads a null rotary_dim as n_embd (not head_dim as CodeGen does): write the head dim.
        "rotary_dim": config.rotary_dim or config.head_dim,
        "n_inner": config.n_inner,
        "activation_function": config.activation_function,
        "layer_norm_epsilon": config.layer_norm_epsilon,
        "initializer_range": src.get("initializer_range", 0.02),
        "bos_token_id": config.bos_token_id,
        "eos_token_id": config.eos_token_id,
        "tie_word_embeddings": False,  # CodeGen's lm_head is its own tensor (with a bias)
        "use_cache": True,
        "torch_dtype": dtype_name,
    }


def plan(source: WeightSource, config: CodeGenConfig, dtype: torch.dtype | None) -> list[Planned]:
    """The output tensors in source order; a clear error for a tensor that is not CodeGen's."""
    E = config.n_embd
    out: list[Planned] = []
    for name in source.names():
        cast = _caster(source, name, dtype)
        m = _QKV.fullmatch(name)
        if m:
            shape = tuple(source.shape(name))
            if shape != (3 * E, E):
                raise ModelLoadError(f"tensor {name!r} has shape {list(shape)}, expected {[3 * E, E]}")
            pre = f"transformer.h.{m.group(1)}.attn."
            for i, part in enumerate(("q", "k", "v")):  # hf_qkv_to_qkv returns (Wq, Wk, Wv)
                out.append(Planned(f"{pre}{part}_proj.weight", (E, E), name, _qkv_part(cast, E, i)))
        elif _KEPT.fullmatch(name):
            out.append(Planned(name, tuple(source.shape(name)), name, cast))
        elif not _SKIPPED.fullmatch(name):
            raise ModelLoadError(f"tensor {name!r} is not part of a CodeGen checkpoint; nothing was written")
    return out


def _caster(source: WeightSource, name: str, dtype: torch.dtype | None) -> Callable[[], Tensor]:
    return lambda: source.get(name).to(dtype or source.dtype(name)).contiguous()


def _qkv_part(read: Callable[[], Tensor], n_embd: int, index: int) -> Callable[[], Tensor]:
    return lambda: hf_qkv_to_qkv(read(), n_embd)[index].contiguous()


def shards(tensors: list[Planned], itemsize: Callable[[Planned], int], limit: int) -> list[list[Planned]]:
    """Consecutive groups of at most `limit` bytes (a bigger tensor gets a shard of its own)."""
    groups: list[list[Planned]] = [[]]
    size = 0
    for t in tensors:
        n = itemsize(t) * _numel(t.shape)
        if groups[-1] and size + n > limit:
            groups.append([])
            size = 0
        groups[-1].append(t)
        size += n
    return groups


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def export_gptj(
    src: str,
    dst: Path,
    dtype: str | None = None,
    max_shard_bytes: int = DEFAULT_SHARD_BYTES,
    progress: Callable[[str], None] | None = None,
) -> Path:
    """Write the CodeGen checkpoint `src` (directory or hub id) to `dst` as GPT-J; dtype None keeps each
    tensor's stored dtype. Holds at most one shard in memory."""
    report = progress or (lambda msg: log.info("%s", msg))
    dst = Path(dst).expanduser()
    if dst.exists() and (not dst.is_dir() or any(dst.iterdir())):
        raise ModelLoadError(f"destination {dst} exists and is not an empty directory; choose a new one")
    dt = parse_dtype(dtype) if dtype else None
    path = hub.resolve(src, allow_fallback=False).path
    config_dict = read_config_json(path)
    if config_dict.get("model_type") != "codegen":
        raise ModelLoadError(
            f"{src} is not a CodeGen checkpoint (model_type {config_dict.get('model_type')!r}); "
            "export --format gptj converts model_type 'codegen' only"
        )
    config = CodeGenConfig.from_dict(config_dict)
    source = open_weights(path)
    try:
        tensors = plan(source, config, dt)
        groups = shards(tensors, lambda t: (dt or source.dtype(t.source)).itemsize, max_shard_bytes)
        dst.mkdir(parents=True, exist_ok=True)
        dtype_name = str(dt or source.dtype(tensors[0].source)).removeprefix("torch.")
        _write(dst, groups, report)
    finally:
        source.close()
    cfg = gptj_config(config_dict, config, dtype_name)
    (dst / "config.json").write_text(json.dumps(cfg, indent=2) + "\n", encoding="utf-8")
    copied = [f for f in TOKENIZER_FILES if (path / f).is_file()]
    for f in copied:
        shutil.copy(path / f, dst / f)
    report(f"wrote {dst}: GPT-J, {len(tensors)} tensors in {len(groups)} file(s), tokenizer {copied}")
    return dst


def _write(dst: Path, groups: list[list[Planned]], report: Callable[[str], None]) -> None:
    """model.safetensors, or model-0000i-of-0000n.safetensors + model.safetensors.index.json."""
    n = len(groups)
    weight_map: dict[str, str] = {}
    total = 0
    for i, group in enumerate(groups, 1):
        fname = "model.safetensors" if n == 1 else f"model-{i:05d}-of-{n:05d}.safetensors"
        state = {t.name: t.read() for t in group}
        total += sum(t.numel() * t.element_size() for t in state.values())
        save_file(state, str(dst / fname), metadata={"format": "pt"})
        del state
        weight_map.update((t.name, fname) for t in group)
        report(f"wrote {fname} ({i}/{n})")
    if n > 1:
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (dst / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n", "utf-8")
