"""`codegen-lsp complete | serve | synthesize | export`. Logs go to stderr; stdout carries only the result."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import re
import sys
import warnings
from pathlib import Path

from lsp_server.constants import DEFAULT_MODEL, FIM_MODES, FIM_SUFFIX_TOKENS, LANGUAGE_BY_SUFFIX, MODES

LOG_LEVELS = ("debug", "info", "warning", "error")

log = logging.getLogger("codegen_lsp.cli")


class CliError(Exception):
    """Bad command-line input; the message is shown as is."""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with the four subcommands."""
    p = argparse.ArgumentParser(
        prog="codegen-lsp", description="AI code completion from local CodeGen models."
    )
    sub = p.add_subparsers(dest="command", required=True)
    add_complete(sub.add_parser("complete", help="print the completion at a position of a file"))
    s = sub.add_parser("serve", help="run the language server (stdio by default)")
    s.add_argument("--tcp", action="store_true", help="listen on TCP instead of stdio")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=2087)
    s.add_argument("--log-level", default="info", choices=LOG_LEVELS)
    add_synthesize(sub.add_parser("synthesize", help="multi-turn program synthesis: one comment per turn"))
    add_export(sub.add_parser("export", help="write a CodeGen checkpoint as GPT-J (what vLLM serves)"))
    return p


def add_complete(c: argparse.ArgumentParser) -> None:
    """The options of `complete`."""
    c.add_argument("--model", default=DEFAULT_MODEL, help="checkpoint directory, hub id or 'builtin'")
    c.add_argument("--file", required=True, help="source file; the text before the position is the prompt")
    c.add_argument("--line", type=int, default=None, help="0-based line (default: end of file)")
    c.add_argument("--character", type=int, default=None, help="0-based column in characters (default: end)")
    c.add_argument("--max-new-tokens", type=int, default=64)
    c.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    c.add_argument("--top-p", type=float, default=1.0)
    c.add_argument("--seed", type=int, default=None)
    c.add_argument(
        "--max-latency-ms", type=float, default=0, help="past it, stop at the next line end (0 = none)"
    )
    c.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N")
    c.add_argument(
        "--dtype",
        default="auto",
        help="auto (default: int8 or float32 on CPU), float32, bfloat16, float16, int8",
    )
    c.add_argument(
        "--raw", action="store_true", help="print the generated text without stop-pattern trimming"
    )
    c.add_argument("--language", default=None, help="LSP language id (default: from the file suffix)")
    c.add_argument("--mode", choices=MODES, default=None, help="completion mode (default: the server's)")
    c.add_argument(
        "--fim",
        choices=FIM_MODES,
        default="auto",
        help="fill-in-the-middle: the text after the position in the model's template (auto: if it has one "
        "and its tokenizer does not turn auto off)",
    )
    c.add_argument(
        "--fim-suffix-tokens", type=int, default=FIM_SUFFIX_TOKENS, help="token budget of the text after it"
    )
    c.add_argument(
        "--no-token-healing",
        dest="token_healing",
        action="store_false",
        help="send trailing spaces in the prompt as they are (default: the completion spells them)",
    )
    c.add_argument("--log-level", default="warning", choices=LOG_LEVELS)
    c.add_argument("--remote-url", default=None, help="OpenAI-compatible server, e.g. http://host:8000/v1")
    c.add_argument("--remote-model", default=None, help="the served model's name (with --remote-url)")
    c.add_argument(
        "--remote-tokenizer",
        default=None,
        help="tokenizer of the served model (default: codegen-350M-mono's)",
    )


def add_synthesize(y: argparse.ArgumentParser) -> None:
    """The options of `synthesize`."""
    y.add_argument("--model", default=DEFAULT_MODEL)
    y.add_argument("--device", default="cpu")
    y.add_argument("--dtype", default="float32")
    y.add_argument("--max-new-tokens-per-turn", type=int, default=128)
    y.add_argument("--temperature", type=float, default=0.2)
    y.add_argument("--top-p", type=float, default=0.95)
    y.add_argument("--seed", type=int, default=None)
    y.add_argument("--file", default=None, help="existing program the turns continue (optional)")
    y.add_argument("--log-level", default="warning", choices=LOG_LEVELS)
    y.add_argument("turns", nargs="+", help="one instruction per turn")


def add_export(e: argparse.ArgumentParser) -> None:
    """The options of `export`."""
    e.add_argument("--format", choices=("gptj",), default="gptj", help="output architecture (gptj)")
    e.add_argument(
        "--dtype", choices=("float32", "bfloat16", "float16"), default=None, help="default: as stored"
    )
    e.add_argument("--max-shard-size", default="2GB", help="largest weight file, e.g. 500MB, 2GB (default)")
    e.add_argument("--log-level", default="info", choices=LOG_LEVELS)
    e.add_argument("src", help="CodeGen checkpoint directory or hub id")
    e.add_argument("dst", help="new (or empty) output directory")


def parse_size(text: str) -> int:
    """'500MB', '2GB', '1.5GiB', '4096' -> bytes."""
    units = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}
    t = text.strip().upper()
    num = t.rstrip("KMGIB")
    try:
        value = float(num)
        unit = units[t[len(num) :]]
    except (ValueError, KeyError):
        raise CliError(f"--max-shard-size {text!r}: use a size like 500MB or 2GB") from None
    if value <= 0:
        raise CliError(f"--max-shard-size {text!r} must be positive")
    return int(value * unit)


def export(args: argparse.Namespace) -> int:
    """`codegen-lsp export`: convert a CodeGen checkpoint; stdout gets the output directory."""
    from inference.errors import ModelLoadError
    from inference.export import export_gptj

    try:
        out = export_gptj(args.src, Path(args.dst), args.dtype, parse_size(args.max_shard_size))
    except (CliError, ModelLoadError, OSError) as exc:
        print(f"codegen-lsp export: error: {exc}", file=sys.stderr)
        return 2
    sys.stdout.write(f"{out}\n")
    return 0


def text_before(text: str, line: int | None, character: int | None) -> str:
    """The text before (line, character), both 0-based; None means the end of the file / of the line."""
    if line is None:
        if character is not None:
            raise CliError("--character needs --line")
        return text
    lines = text.splitlines(keepends=True)
    if line < 0 or line > len(lines) or (line == len(lines) and text and not text.endswith(("\n", "\r"))):
        raise CliError(f"--line {line} is outside the file ({len(lines)} lines, 0-based)")
    offset = sum(len(x) for x in lines[:line])
    content = lines[line].rstrip("\r\n") if line < len(lines) else ""
    if character is None:
        character = len(content)
    if not 0 <= character <= len(content):
        raise CliError(f"--character {character} is outside line {line} ({len(content)} characters)")
    return text[: offset + character]


def stop_patterns(path: Path, prompt: str, language: str | None, mode: str | None) -> tuple[re.Pattern, ...]:
    """The server's stop patterns for this file's language, mode and cursor line (the same trimming)."""
    from lsp_server import postprocess
    from lsp_server.settings import Settings

    language = language or LANGUAGE_BY_SUFFIX.get(path.suffix.lower(), "*")
    mode = mode or Settings().mode_for(language)
    return postprocess.patterns_for(language, mode, prompt[prompt.rfind("\n") + 1 :])


def complete(args: argparse.Namespace) -> int:
    """`codegen-lsp complete`: print the completion for the text before the position."""
    from inference.errors import ModelLoadError
    from inference.generate import GenerationParams
    from inference.rules import StopReason

    try:
        path = Path(args.file)
        text = read_source(path)
        before = text_before(text, args.line, args.character)
        stops = () if args.raw else stop_patterns(path, before, args.language, args.mode)
        params = GenerationParams(
            max_new_tokens=args.max_new_tokens,
            temperature=args.temperature,
            top_p=args.top_p,
            seed=args.seed,
            stop_patterns=stops,
            max_latency_ms=args.max_latency_ms,
        )
        engine = remote_engine(args) if args.remote_url or args.remote_model else local_engine(args)
    except (CliError, ModelLoadError, ValueError) as exc:
        print(f"codegen-lsp complete: error: {exc}", file=sys.stderr)
        return 2
    ids, window, params = cli_prompt(args, engine, before, text[len(before) :], params)
    result = engine.session("cli").generate(ids, params)
    if result.stop_reason == StopReason.REMOTE_UNAVAILABLE:
        print(f"codegen-lsp complete: remote_unavailable: {result.extra['remote_error']}", file=sys.stderr)
        return 1
    log.info(
        "%d prompt tokens%s, %d generated (%s), prefill %.0f ms, decode %.0f ms",
        result.prompt_tokens,
        " (cut from the left)" if window.start > 0 else "",
        len(result.token_ids),
        result.stop_reason,
        result.prefill_ms,
        result.decode_ms,
    )
    sys.stdout.write(result.text if args.raw else result.text.rstrip())  # the engine cut at the stops
    sys.stdout.flush()
    return 0


def cli_prompt(args, engine, before: str, after: str, params):
    """The server's one prompt cutter with the engine's limit (a long file keeps its last lines), in the
    model's FIM template under --fim: (ids, window, params with the template's end tokens)."""
    from inference.heal import split as split_heal
    from lsp_server import fim
    from lsp_server.prompt import fim_prompt_ids, prompt_ids

    tok, limit = engine.loaded.tokenizer, engine.prompt_limit(params.max_new_tokens)
    if args.token_healing and getattr(engine, "heals", False):
        before, heal = split_heal(before)
        params = dataclasses.replace(params, heal=heal)
    auto_off = args.fim == "auto" and not getattr(tok, "fim_auto", True)  # FIM worse than plain for it
    template = None if args.fim == "off" or auto_off else fim.template_for(tok)
    if template is None:
        if args.fim == "on":
            print(
                "codegen-lsp: --fim on, but the model's tokenizer has no FIM tokens; prefix only",
                file=sys.stderr,
            )
        ids, window = prompt_ids(before, tok, limit)
        return ids, window, params
    after = after.replace("\r\n", "\n")
    prompt, window = fim_prompt_ids(before, after, tok, template, limit, args.fim_suffix_tokens)
    log.info(
        "FIM (%s): %d prefix and %d suffix tokens", template.name, prompt.prefix_tokens, prompt.suffix_tokens
    )
    return prompt.ids, window, dataclasses.replace(params, stop_ids=fim.stop_ids(template, tok))


def read_source(path: Path) -> str:
    """The file's text, or a CliError saying why not."""
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CliError(f"no such file: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CliError(f"cannot read {path}: {exc}") from exc


def local_engine(args: argparse.Namespace):
    """The local engine of `complete --model M` (its notices on stderr)."""
    from inference.engine import Engine
    from inference.loader import load_model

    loaded = load_model(args.model, device=args.device, dtype=args.dtype)
    if loaded.notice:
        print(f"codegen-lsp: {loaded.notice}", file=sys.stderr)
    if loaded.why:
        print(f"codegen-lsp: running in {loaded.precision}: {loaded.why}", file=sys.stderr)
    return Engine(loaded, max_context=None)


def remote_engine(args: argparse.Namespace):
    """The remote backend of `complete --remote-url U --remote-model M`."""
    from inference.errors import ModelLoadError
    from lsp_server.remote import DEFAULT_TOKENIZER, RemoteEngine, RemoteSpec, load_tokenizer_for

    if not (args.remote_url and args.remote_model):
        raise CliError("--remote-url and --remote-model go together")
    spec = RemoteSpec.from_dict(
        {
            "url": args.remote_url,
            "model": args.remote_model,
            "tokenizer": args.remote_tokenizer or DEFAULT_TOKENIZER,
        }
    )
    try:
        tokenizer = load_tokenizer_for(spec.tokenizer)
    except Exception as exc:
        raise ModelLoadError(f"cannot load the tokenizer {spec.tokenizer!r}: {exc}") from exc
    return RemoteEngine(spec, tokenizer)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `codegen-lsp` console script."""
    # torch warns at import when NumPy (not a dependency of ours) is absent; nothing here needs it.
    warnings.filterwarnings("ignore", message="Failed to initialize NumPy")
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        from lsp_server.server import serve

        return serve(args) or 0
    logging.basicConfig(
        stream=sys.stderr,
        level=getattr(logging, args.log_level.upper()),
        format="%(levelname)s %(name)s: %(message)s",
    )
    if args.command == "complete":
        return complete(args)
    if args.command == "export":
        return export(args)
    from lsp_server.cli_synthesize import main as synthesize_main

    return synthesize_main(args) or 0


if __name__ == "__main__":
    sys.exit(main())
