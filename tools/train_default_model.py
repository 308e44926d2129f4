"""Train the built-in default model (inference/builtin/) on the CPython standard library, reproducibly.

The shipped checkpoint came from two commands (67.5 minutes of wall time on 1 thread of a shared 2-core
CPU; see inference/builtin/README.md):

    python tools/train_default_model.py --steps 502                     # warmup, stable lr, decay
    python tools/train_default_model.py --steps 936 --rewarm-from 502   # continue: re-warm, stable, decay

Stages, each cached under --work-dir so an interrupted run resumes where it stopped:
  1. corpus: the stdlib `.py` files of this Python (tests, site-packages and HELD_OUT excluded), sorted;
  2. tokenizer: byte-level BPE (`tokenizers`), `<|endoftext|>` between files;
  3. training: the engine's own CodeGen forward pass (inference.codegen), AdamW, warmup-stable-decay lr,
     batches drawn from a generator seeded by (seed, step), checkpoints every few minutes;
  4. export: config.json + model.safetensors in the Hugging Face CodeGen layout, tokenizer files.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import sys
import sysconfig
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

log = logging.getLogger("train_default_model")

EOS = "<|endoftext|>"
# Modules kept out of training, for evaluation (paths relative to the stdlib directory).
HELD_OUT = (
    "calendar.py",
    "configparser.py",
    "difflib.py",
    "fractions.py",
    "ftplib.py",
    "gettext.py",
    "ipaddress.py",
    "json/decoder.py",
    "json/encoder.py",
    "pprint.py",
    "shlex.py",
    "statistics.py",
    "textwrap.py",
)
EXCLUDED_DIRS = {"test", "tests", "idle_test", "site-packages", "pydoc_data", "__pycache__"}
# Pre-tokenizer split: newline runs and indentation runs become their own pieces, so a prompt that ends
# at the start of a line ends at a token boundary that training has seen.
SPLIT_PATTERN = r"\n+| {2,}|\t+"


@dataclass
class TrainConfig:
    """Model size and optimisation settings (defaults = the shipped model)."""

    n_layer: int = 4
    n_embd: int = 256
    n_head: int = 8
    rotary_dim: int = 16
    n_positions: int = 384
    vocab_size: int = 4096
    batch_size: int = 12
    steps: int = 502
    warmup: int = 40
    decay_steps: int = 100
    rewarm_from: int = 0  # > 0: this run extends a finished run from that step, re-warming the lr
    lr: float = 2e-3
    min_lr: float = 1e-4
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    seed: int = 1234


# ---------------------------------------------------------------- corpus


def stdlib_dir() -> Path:
    """The standard library directory of the running Python."""
    return Path(sysconfig.get_paths()["stdlib"])


def corpus_files(root: Path | None = None) -> tuple[list[Path], list[Path]]:
    """(training files, held-out files), both sorted, from the stdlib's `.py` files."""
    root = root or stdlib_dir()
    train, held = [], []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if EXCLUDED_DIRS.intersection(rel.parts[:-1]) or rel.name.startswith("_sysconfigdata"):
            continue
        if rel.parts[0] == "encodings" and "decoding_table" in read_source(path):
            continue  # generated charmap tables, not code
        (held if rel.as_posix() in HELD_OUT else train).append(path)
    missing = set(HELD_OUT) - {p.relative_to(root).as_posix() for p in held}
    assert not missing, f"held-out modules not found: {missing}"
    return train, held


def read_source(path: Path) -> str:
    """File text with universal newlines; undecodable bytes replaced."""
    return path.read_text(encoding="utf-8", errors="replace").replace("\r\n", "\n").replace("\r", "\n")


def corpus_digest(files: list[Path], root: Path) -> str:
    """sha256 over the relative paths and contents, to pin the data in the model card."""
    h = hashlib.sha256()
    for path in files:
        h.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


# ---------------------------------------------------------------- tokenizer


def train_tokenizer(texts: list[str], vocab_size: int):
    """Byte-level BPE with `<|endoftext|>` as id 0."""
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
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    assert tok.token_to_id(EOS) == 0 and tok.get_vocab_size() == vocab_size
    return tok


def save_tokenizer(tok, out: Path, n_positions: int) -> None:
    """tokenizer.json plus the small JSON files that name the special tokens."""
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"))
    special = {"bos_token": EOS, "eos_token": EOS, "unk_token": EOS}
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": n_positions, **special}
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    (out / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")


def encode_files(tok, files: list[Path]) -> torch.Tensor:
    """All files as one id stream, each file followed by `<|endoftext|>`: [N] int16."""
    eos = tok.token_to_id(EOS)
    ids: list[int] = []
    for enc in tok.encode_batch([read_source(p) for p in files]):
        ids.extend(enc.ids)
        ids.append(eos)
    return torch.tensor(ids, dtype=torch.int16)


# ---------------------------------------------------------------- model


def hf_config(cfg: TrainConfig, eos_id: int = 0) -> dict:
    """config.json in the Hugging Face CodeGen layout."""
    return {
        "architectures": ["CodeGenForCausalLM"],
        "model_type": "codegen",
        "vocab_size": cfg.vocab_size,
        "n_positions": cfg.n_positions,
        "n_ctx": cfg.n_positions,
        "n_embd": cfg.n_embd,
        "n_layer": cfg.n_layer,
        "n_head": cfg.n_head,
        "rotary_dim": cfg.rotary_dim,
        "n_inner": None,
        "activation_function": "gelu_new",
        "layer_norm_epsilon": 1e-5,
        "initializer_range": 0.02,
        "resid_pdrop": 0.0,
        "embd_pdrop": 0.0,
        "attn_pdrop": 0.0,
        "bos_token_id": eos_id,
        "eos_token_id": eos_id,
        "tie_word_embeddings": False,
        "use_cache": True,
        "torch_dtype": "float32",
    }


def build_model(cfg: TrainConfig, seed: int):
    """The engine's CodeGen module (unfused, the checkpoint layout), GPT-2-style initialisation."""
    from inference.codegen import CodeGen
    from inference.config import CodeGenConfig

    torch.manual_seed(seed)
    model = CodeGen(CodeGenConfig.from_dict(hf_config(cfg)))
    resid_std = 0.02 / math.sqrt(2 * cfg.n_layer)
    for name, p in model.named_parameters():
        if p.dim() >= 2:
            std = resid_std if name.endswith(("out_proj.weight", "fc_out.weight")) else 0.02
            torch.nn.init.normal_(p, 0.0, std)
        elif ".ln" in f".{name}":
            torch.nn.init.ones_(p) if name.endswith("weight") else torch.nn.init.zeros_(p)
        else:
            torch.nn.init.zeros_(p)
    return model


def lr_at(cfg: TrainConfig, step: int) -> float:
    """Warmup-stable-decay: linear warmup, constant lr, cosine decay to min_lr over the last decay_steps.

    Until the decay starts the lr does not depend on `steps`, so a run can be extended (resumed with a
    larger --steps) while it is in the stable phase and still match a run started with that --steps.
    """
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    if cfg.rewarm_from and cfg.rewarm_from <= step < cfg.rewarm_from + cfg.warmup:
        return cfg.min_lr + (cfg.lr - cfg.min_lr) * (step + 1 - cfg.rewarm_from) / cfg.warmup
    t = (step - (cfg.steps - cfg.decay_steps)) / cfg.decay_steps
    if t <= 0:
        return cfg.lr
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * min(1.0, t)))


def get_batch(data: torch.Tensor, cfg: TrainConfig, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """x, y: [B, T] random windows; the generator is seeded by (seed, step), so resuming changes nothing."""
    g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
    starts = torch.randint(0, len(data) - cfg.n_positions - 1, (cfg.batch_size,), generator=g)
    rows = torch.stack([data[s : s + cfg.n_positions + 1] for s in starts.tolist()]).long()
    return rows[:, :-1], rows[:, 1:]


@torch.no_grad()
def eval_loss(model, data: torch.Tensor, cfg: TrainConfig, windows: int = 16) -> float:
    """Mean loss over the first `windows` consecutive held-out windows."""
    model.eval()
    n = cfg.n_positions
    rows = torch.stack([data[i * n : i * n + n + 1] for i in range(windows)]).long()
    logits = model(rows[:, :-1])
    model.train()
    return F.cross_entropy(logits.flatten(0, 1), rows[:, 1:].flatten()).item()


def export(model, cfg: TrainConfig, out: Path, dtype: torch.dtype) -> None:
    """config.json + model.safetensors (CodeGen names, 4-shard qkv as trained) written atomically."""
    from safetensors.torch import save_file

    from inference.registry import to_checkpoint_state_dict

    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to(dtype).contiguous() for k, v in model.state_dict().items()}
    tmp = out / "model.safetensors.tmp"
    save_file(to_checkpoint_state_dict("codegen", state), str(tmp), metadata={"format": "pt"})
    tmp.chmod(0o644)
    tmp.replace(out / "model.safetensors")
    config = hf_config(cfg) | {"torch_dtype": str(dtype).removeprefix("torch.")}
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")


def save_checkpoint(path: Path, model, opt, step: int, cfg: TrainConfig, elapsed: float) -> None:
    """Training state, written to a temporary file then renamed (an interruption never corrupts it)."""
    state = {"model": model.state_dict(), "opt": opt.state_dict(), "step": step, "cfg": asdict(cfg)}
    torch.save(state | {"elapsed": elapsed}, path.with_suffix(".tmp"))
    path.with_suffix(".tmp").replace(path)


def prepare_data(cfg: TrainConfig, work: Path, out: Path):
    """Corpus -> tokenizer (saved into `out`) -> cached id streams; returns (tokenizer, train, heldout)."""
    from tokenizers import Tokenizer

    root = stdlib_dir()
    train_files, held_files = corpus_files(root)
    digest = corpus_digest(train_files, root)
    cache = work / f"data-{digest[:16]}-{cfg.vocab_size}.pt"
    if cache.is_file():
        saved = torch.load(cache)
        tok = Tokenizer.from_str(saved["tokenizer"])
    else:
        t0 = time.perf_counter()
        tok = train_tokenizer([read_source(p) for p in train_files], cfg.vocab_size)
        saved = {
            "tokenizer": tok.to_str(),
            "train": encode_files(tok, train_files),
            "heldout": encode_files(tok, held_files),
        }
        work.mkdir(parents=True, exist_ok=True)
        torch.save(saved, cache)
        log.info("tokenizer + encoding: %.1fs", time.perf_counter() - t0)
    save_tokenizer(tok, out, cfg.n_positions)
    chars = sum(len(read_source(p)) for p in train_files)
    log.info(
        "corpus %s: %d training files (%d chars, %d tokens), %d held-out files (%d tokens), sha256 %s",
        root,
        len(train_files),
        chars,
        len(saved["train"]),
        len(held_files),
        len(saved["heldout"]),
        digest,
    )
    return tok, saved["train"], saved["heldout"]


def train(cfg: TrainConfig, work: Path, out: Path, dtype: torch.dtype, ckpt_minutes: float) -> None:
    """Train (resuming from work/checkpoint.pt when it matches cfg) and export to `out`."""
    _, data, heldout = prepare_data(cfg, work, out)
    model = build_model(cfg, cfg.seed)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.95), eps=1e-8)
    ckpt_path, step, elapsed = work / "checkpoint.pt", 0, 0.0
    if ckpt_path.is_file():
        state = torch.load(ckpt_path)
        old = {**asdict(TrainConfig()), **state["cfg"]}
        same = {**old, "steps": cfg.steps} == asdict(cfg)
        stable = state["step"] <= min(old["steps"], cfg.steps) - cfg.decay_steps
        extend = cfg.rewarm_from == state["step"] == old["steps"] and {
            **old,
            "steps": cfg.steps,
            "rewarm_from": cfg.rewarm_from,
        } == asdict(cfg)
        if (same and (stable or old["steps"] == cfg.steps)) or extend:
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["opt"])
            step, elapsed = state["step"], state["elapsed"]
            log.info("resumed at step %d (%.0fs of training so far)", step, elapsed)
        else:
            log.warning("ignoring %s: other settings, or past the decay start", ckpt_path)
    n_params = sum(p.numel() for p in model.parameters())
    log.info("model: %s, %.2fM parameters", cfg, n_params / 1e6)
    model.train()
    t_start = t_last = t_ckpt = time.perf_counter()
    elapsed0, tokens = elapsed, 0  # elapsed: wall time of the training loop, checkpoints and evals included
    while step < cfg.steps:
        for group in opt.param_groups:
            group["lr"] = lr_at(cfg, step)
        x, y = get_batch(data, cfg, step)
        logits = model(x)  # [B, T, V] float32
        loss = F.cross_entropy(logits.flatten(0, 1), y.flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        tokens += x.numel()
        now = time.perf_counter()
        if step % 10 == 0 or step == cfg.steps:
            elapsed = elapsed0 + now - t_start
            log.info(
                "step %d/%d loss %.4f lr %.2e %.0f tok/s elapsed %.0fs",
                step,
                cfg.steps,
                loss.item(),
                lr_at(cfg, step - 1),
                tokens / (now - t_last),
                elapsed,
            )
            t_last, tokens = now, 0
        if step % 100 == 0 or step == cfg.steps:
            log.info("step %d held-out loss %.4f", step, eval_loss(model, heldout, cfg))
        if now - t_ckpt > ckpt_minutes * 60 or step == cfg.steps:
            elapsed = elapsed0 + time.perf_counter() - t_start
            save_checkpoint(ckpt_path, model, opt, step, cfg, elapsed)
            export(model, cfg, out, dtype)
            t_ckpt = time.perf_counter()
            log.info("checkpoint at step %d saved and exported to %s", step, out)
    log.info("done: %d steps, %.0fs of training", step, elapsed)


def main(argv: list[str] | None = None) -> int:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    defaults = TrainConfig()
    for f in defaults.__dataclass_fields__.values():
        parser.add_argument(f"--{f.name.replace('_', '-')}", type=type(getattr(defaults, f.name)))
    parser.add_argument("--out", type=Path, default=ROOT / "inference" / "builtin")
    parser.add_argument("--work-dir", type=Path, default=ROOT / ".cache" / "default_model")
    parser.add_argument("--dtype", default="float16", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--ckpt-minutes", type=float, default=3.0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    torch.set_num_threads(args.threads)
    overrides = {k: v for k, v in vars(args).items() if k in defaults.__dataclass_fields__ and v is not None}
    cfg = TrainConfig(**{**asdict(defaults), **overrides})
    train(cfg, args.work_dir, args.out, getattr(torch, args.dtype), args.ckpt_minutes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
