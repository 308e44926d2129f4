"""`codegen-lsp synthesize`: multi-turn MTPB synthesis from the command line; the program on stdout."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from lsp_server import mtpb
from lsp_server.constants import LANGUAGE_BY_SUFFIX


def main(args: Any) -> int:
    """Print the program for the given turns; per-turn figures go to stderr."""
    from inference.engine import Engine, GenerationParams
    from inference.errors import ModelLoadError
    from inference.loader import load_model

    try:
        turns = mtpb.validate_turns(list(args.turns))
        text_before, language_id = "", "python"
        if getattr(args, "file", None):
            path = Path(args.file)
            text_before = path.read_text(encoding="utf-8")
            language_id = LANGUAGE_BY_SUFFIX.get(path.suffix.lower(), "python")
        params = GenerationParams(
            max_new_tokens=mtpb.validate_max_new_tokens(args.max_new_tokens_per_turn),
            temperature=args.temperature,
            top_p=args.top_p,
            seed=args.seed,
        )
        loaded = load_model(args.model, device=args.device, dtype=args.dtype)
        mtpb.validate_max_new_tokens(params.max_new_tokens, loaded.config.n_positions)
    except (mtpb.SynthesisError, ModelLoadError, OSError, UnicodeDecodeError, ValueError) as exc:
        print(f"codegen-lsp synthesize: error: {exc}", file=sys.stderr)
        return 2
    if getattr(loaded, "notice", None):
        print(f"codegen-lsp: {loaded.notice}", file=sys.stderr)

    def report(k: int, turn: mtpb.TurnResult) -> None:
        print(
            f"turn {k}/{len(turns)}: {turn.tokens} tokens, {turn.stop_reason}, {turn.ms:.0f} ms, "
            f"prefill {turn.prefill_tokens}/{turn.prompt_tokens}",
            file=sys.stderr,
        )

    result = mtpb.synthesize(
        Engine(loaded), turns, params, text_before=text_before, language_id=language_id, on_turn=report
    )
    print(
        f"prefilled {result['prefillTokens']} tokens in all for a final prompt of {result['promptTokens']}",
        file=sys.stderr,
    )
    sys.stdout.write(result["program"])
    sys.stdout.flush()
    return 0
