"""Train the built-in default model (inference/builtin/) on tools/build_corpus.py's corpus, reproducibly.

    python tools/train_default_model.py --out DIR --minutes 67   # corpus, tokenizer, training, export

Stages, each cached under --work-dir so an interrupted run resumes where it stopped:
  1. corpus: tools/build_corpus.py (the stdlib and pinned permissive PyPI packages, deduplicated, held-out
     modules apart);
  2. tokenizer: byte-level BPE (`tokenizers`) with the FIM and repository tokens (tools/train_data.py);
  3. training: the engine's own CodeGen forward pass (inference.codegen), AdamW, warmup-stable-decay lr,
     rows of plain, fill-in-the-middle and project-context samples drawn by (seed, step), bfloat16 autocast
     where the CPU has native bfloat16; checkpoints every few minutes; the run ends by --steps or --minutes
     (then the lr decays over the last decay_steps of the time);
  4. export: config.json + model.safetensors in the Hugging Face CodeGen layout, tokenizer files, and
     training.json (step, tokens seen, the data position, the loss log).
A later session continues from what was committed: `--continue-from tools/checkpoints/builtin-next` takes its
weights, tokenizer and step (the data position), re-warms the lr (the optimizer state is not committed) and
trains on (tools/checkpoints/builtin-next/README.md).
"""

from __future__ import annotations

import argparse
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
sys.path.insert(0, str(ROOT / "tools"))

log = logging.getLogger("train_default_model")

# Modules kept out of training, for evaluation (paths relative to the stdlib directory); the whole `json`
# package is held out for the project-context evaluation (tools/eval_context.py).
EVAL_MODULES = (  # tools/eval_default_model.py's held-out modules (those of the first built-in model)
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
HELD_OUT = (*EVAL_MODULES, "json/__init__.py", "json/scanner.py", "json/tool.py")
EXCLUDED_DIRS = {"test", "tests", "idle_test", "site-packages", "pydoc_data", "__pycache__"}


@dataclass
class TrainConfig:
    """Model size and optimisation settings (defaults = the shipped model)."""

    n_layer: int = 4
    n_embd: int = 256
    n_head: int = 8
    rotary_dim: int = 16
    n_positions: int = 512
    vocab_size: int = 4096
    batch_size: int = 12
    steps: int = 100_000  # an upper bound: --minutes usually ends the run
    warmup: int = 100
    decay_steps: int = 400
    rewarm_from: int = 0  # > 0: this run extends a finished run from that step, re-warming the lr
    lr: float = 2e-3
    min_lr: float = 1e-4
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    seed: int = 1234
    fim: float = 0.5  # share of fill-in-the-middle rows
    project: float = 0.2  # share of project-context rows


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


def save_checkpoint(
    path: Path, model, opt, step: int, cfg: TrainConfig, elapsed: float, tokens: float
) -> None:
    """Training state, written to a temporary file then renamed (an interruption never corrupts it)."""
    state = {"model": model.state_dict(), "opt": opt.state_dict(), "step": step, "cfg": asdict(cfg)}
    torch.save(state | {"elapsed": elapsed, "tokens": tokens}, path.with_suffix(".tmp"))
    path.with_suffix(".tmp").replace(path)


def native_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX-512 BF16 or AMX), so autocast pays."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def prepare_data(cfg: TrainConfig, work: Path, out: Path, tokenizer: Path | None):
    """Corpus -> tokenizer (trained, or `tokenizer` when continuing) -> cached id streams.

    Returns (tokenizer, training files, train stream, train starts, held-out stream, corpus sha256)."""
    from build_corpus import build
    from tokenizers import Tokenizer
    from train_data import encode_all, read_corpus, save_tokenizer, train_tokenizer

    corpus = work / "corpus"
    if not (corpus / "files.jsonl").is_file():
        build(corpus, work / "corpus-wheels", 8)
    sha = json.loads((corpus / "manifest.json").read_text())["sha256"]
    train_files, held = read_corpus(corpus / "files.jsonl")
    tag = "continued" if tokenizer else "trained"
    cache = work / f"data-{sha[:16]}-{cfg.vocab_size}-{tag}.pt"
    if cache.is_file():
        saved = torch.load(cache)
        tok = Tokenizer.from_str(saved["tokenizer"])
    else:
        t0 = time.perf_counter()
        if tokenizer:
            tok = Tokenizer.from_file(str(tokenizer))
        else:
            tok = train_tokenizer([f["text"] for f in train_files], cfg.vocab_size)
        stream, starts = encode_all(tok, [f["text"] for f in train_files])
        heldout, _ = encode_all(tok, [f["text"] for f in held])
        saved = {"tokenizer": tok.to_str(), "train": stream, "starts": starts, "heldout": heldout}
        work.mkdir(parents=True, exist_ok=True)
        torch.save(saved, cache)
        log.info("tokenizer + encoding: %.1fs", time.perf_counter() - t0)
    assert tok.get_vocab_size() == cfg.vocab_size, "the tokenizer's size is not --vocab-size"
    save_tokenizer(tok, out, cfg.n_positions)
    chars = sum(len(f["text"]) for f in train_files)
    log.info(
        "corpus sha256 %s: %d training files (%.1f M chars, %.2f M tokens, %.2f chars/token), "
        "%d held-out files (%d tokens)",
        sha, len(train_files), chars / 1e6, len(saved["train"]) / 1e6, chars / len(saved["train"]),
        len(held), len(saved["heldout"]),
    )  # fmt: skip
    return tok, train_files, saved["train"], saved["starts"], saved["heldout"], sha


def resume(cfg: TrainConfig, work: Path, model, opt, continue_from: Path | None) -> tuple[int, float, float]:
    """(step, elapsed, tokens) to start from: work/checkpoint.pt when it matches cfg, else the committed
    model of `continue_from` (weights, step; the lr re-warmed), else a fresh start."""
    ckpt_path = work / "checkpoint.pt"
    if ckpt_path.is_file():
        state = torch.load(ckpt_path)
        old = {**asdict(TrainConfig()), **state["cfg"]}
        keep = ("steps", "rewarm_from")
        finished = state["step"] >= old["steps"]  # a finished run is continued from `continue_from` instead
        if {k: v for k, v in old.items() if k not in keep} == {
            k: v for k, v in asdict(cfg).items() if k not in keep
        } and not (finished and continue_from):
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["opt"])
            cfg.steps, cfg.rewarm_from = old["steps"], old["rewarm_from"]
            log.info("resumed at step %d (%.0fs of training so far)", state["step"], state["elapsed"])
            return state["step"], state["elapsed"], state.get("tokens", 0.0)
        log.warning("ignoring %s: other settings", ckpt_path)
    if continue_from:
        from safetensors.torch import load_file

        from inference.registry import to_checkpoint_state_dict

        info = json.loads((continue_from / "training.json").read_text())
        names = to_checkpoint_state_dict("codegen", model.state_dict())
        weights = load_file(str(continue_from / "model.safetensors"))
        ours = dict(zip(names, model.state_dict(), strict=True))  # checkpoint name -> module name
        model.load_state_dict({ours[k]: v.float() for k, v in weights.items()})
        cfg.rewarm_from = info["step"]
        log.info(
            "continuing %s from step %d (%.2f M tokens seen)",
            continue_from,
            info["step"],
            info["tokens"] / 1e6,
        )
        return info["step"], info["elapsed"], info["tokens"]
    return 0, 0.0, 0.0


def train(cfg: TrainConfig, work: Path, out: Path, dtype: torch.dtype, minutes: float, ckpt_minutes: float,
          continue_from: Path | None) -> None:  # fmt: skip
    """Train (resuming when it can) and export to `out`."""
    from train_data import Mix, Sampler

    tokenizer = continue_from / "tokenizer.json" if continue_from else None
    tok, files, stream, starts, heldout, sha = prepare_data(cfg, work, out, tokenizer)
    sampler = Sampler(files, tok, stream, starts, cfg.n_positions, Mix(fim=cfg.fim, project=cfg.project))
    model = build_model(cfg, cfg.seed)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.95), eps=1e-8)
    step, elapsed, seen = resume(cfg, work, model, opt, continue_from)
    bf16 = native_bf16()
    n_params = sum(p.numel() for p in model.parameters())
    log.info(
        "model: %s, %.2fM parameters, %s", cfg, n_params / 1e6, "bfloat16 autocast" if bf16 else "float32"
    )
    history = work / "log.jsonl"
    model.train()
    t_start = t_last = t_ckpt = time.perf_counter()
    elapsed0, tokens, first = elapsed, 0, step
    while step < cfg.steps:
        for group in opt.param_groups:
            group["lr"] = lr_at(cfg, step)
        x, y = sampler.batch(cfg.seed, step, cfg.batch_size)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = model(x)  # [B, T, V] float32
        loss = F.cross_entropy(logits.flatten(0, 1), y.flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        tokens += x.numel()
        seen += x.numel()
        now = time.perf_counter()
        elapsed = elapsed0 + now - t_start
        per_step = (now - t_start) / (step - first)
        if (
            minutes
            and cfg.steps - step > cfg.decay_steps
            and now - t_start + cfg.decay_steps * per_step > minutes * 60
        ):
            cfg.steps = step + cfg.decay_steps  # the time is nearly up: decay the lr from here
            log.info("decaying the lr over steps %d-%d", step, cfg.steps)
        row = {"step": step, "tokens": seen, "loss": round(loss.item(), 4), "elapsed": round(elapsed, 1)}
        if step % 10 == 0 or step == cfg.steps:
            log.info(
                "step %d/%d loss %.4f lr %.2e %.0f tok/s elapsed %.0fs",
                step, cfg.steps, loss.item(), lr_at(cfg, step - 1), tokens / (now - t_last), elapsed,
            )  # fmt: skip
            t_last, tokens = now, 0
        if step % 100 == 0 or step == cfg.steps:
            row["heldout"] = round(eval_loss(model, heldout, cfg), 4)
            log.info("step %d held-out loss %.4f", step, row["heldout"])
        if step % 10 == 0 or "heldout" in row:
            with open(history, "a") as fh:
                fh.write(json.dumps(row) + "\n")
        if now - t_ckpt > ckpt_minutes * 60 or step == cfg.steps:
            save_checkpoint(work / "checkpoint.pt", model, opt, step, cfg, elapsed, seen)
            export(model, cfg, out, dtype)
            info = {"step": step, "tokens": seen, "elapsed": round(elapsed, 1), "corpus_sha256": sha,
                    "config": asdict(cfg), "bfloat16": bf16, "threads": torch.get_num_threads()}  # fmt: skip
            (out / "training.json").write_text(json.dumps(info, indent=1) + "\n")
            t_ckpt = time.perf_counter()
            log.info("checkpoint at step %d saved and exported to %s", step, out)
    log.info("done: %d steps, %.2f M tokens, %.0fs of training", step, seen / 1e6, elapsed)


def main(argv: list[str] | None = None) -> int:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    defaults = TrainConfig()
    for f in defaults.__dataclass_fields__.values():
        parser.add_argument(f"--{f.name.replace('_', '-')}", type=type(getattr(defaults, f.name)))
    parser.add_argument("--out", type=Path, default=ROOT / "inference" / "builtin")
    parser.add_argument("--work-dir", type=Path, default=ROOT / ".cache" / "default_model")
    parser.add_argument("--dtype", default="float16", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--minutes", type=float, default=0.0, help="end the run (lr decayed) after this long")
    parser.add_argument("--ckpt-minutes", type=float, default=5.0)
    parser.add_argument("--continue-from", type=Path, help="a committed model to continue (weights, step)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    torch.set_num_threads(args.threads)
    overrides = {k: v for k, v in vars(args).items() if k in defaults.__dataclass_fields__ and v is not None}
    cfg = TrainConfig(**{**asdict(defaults), **overrides})
    train(
        cfg,
        args.work_dir,
        args.out,
        getattr(torch, args.dtype),
        args.minutes,
        args.ckpt_minutes,
        args.continue_from,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
