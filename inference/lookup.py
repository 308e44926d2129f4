"""Prompt-lookup speculation: propose the tokens that followed the latest n-gram's last earlier occurrence
(in the prompt or the text generated so far); the decode loop checks them in one forward pass.

Code repeats itself (names, call shapes, the line above with one change), so the continuation of an n-gram
seen before is often the continuation the model would write. A decode step on a CPU is bound by reading the
weights, and a pass over a few rows reads them once, so a pass that checks k proposed tokens costs about a
step; the longest run the model agrees with is kept (`accepted`), plus the model's own next token.

Exactness: the pass runs under `ops.exact_rows()`, where every product gives each row what it gives that row
alone, so the verified logits are the one-token steps' logits bit for bit and the output is plain greedy
decoding's (tests/test_lookup.py checks both on every family and precision).
"""

from __future__ import annotations

from array import array
from collections.abc import Sequence

import torch

NGRAM_MAX = 3  # the longest n-gram matched (the latest one that occurred before wins, longest first)
NGRAM_MIN = 1  # down to the last id alone (measured on held-out code: more accepted than a bigram minimum)
MAX_PROPOSED = 7  # tokens proposed per pass: a pass forwards at most 8 rows
# Below this many bytes of weights the products run from the CPU's caches, bound by arithmetic: each checked
# row then costs about a sixth of a step on the built-in model (docs/PERFORMANCE.md), and lookup does not pay.
MEMORY_BOUND_BYTES = 64 << 20
FIRST_PROPOSED = 2  # then one more after a pass that agreed in full, as many as agreed after one that did not


class History:
    """Token ids so far (prompt + generated) as 4-byte ints, searched with bytes.rfind (C speed)."""

    def __init__(self, ids: Sequence[int]):
        self.ids = array("i", ids)
        self._bytes = self.ids.tobytes()

    def extend(self, ids: Sequence[int]) -> None:
        """Append generated ids."""
        self.ids.extend(ids)
        self._bytes = self.ids.tobytes()

    def propose(self, k: int) -> list[int]:
        """Up to k ids that followed the latest earlier occurrence of the last n ids (n = 3, then 2)."""
        n_ids = len(self.ids)
        if k <= 0:
            return []
        for n in range(NGRAM_MAX, NGRAM_MIN - 1, -1):
            if n_ids <= n:
                continue
            tail = self._bytes[-4 * n :]
            end = len(self._bytes) - 4  # an occurrence must end before the last id: it has a continuation
            while True:
                at = self._bytes.rfind(tail, 0, end)
                if at < 0:
                    break
                if at % 4 == 0:  # aligned on an id, not inside two
                    start = at // 4 + n
                    return self.ids[start : start + k].tolist()
                end = at + 4 * n - 1
        return []


def pays(model, device, min_bytes: int = MEMORY_BOUND_BYTES) -> tuple[bool, str]:
    """Whether a pass over a few rows reads the weights once, so checking proposals costs about a step; and
    why. Float32 weights stored transposed are read once for all rows (ops.bag_linear); any other weight takes
    a call per row (int8: fbgemm quantizes a call's rows with one scale: exactness needs a call a row)."""
    from inference import ops

    if torch.device(device).type != "cpu":
        return False, "CPU only (its exact row products are the CPU's kernels)"
    per_row, nbytes = [], 0
    for module_name, module in model.named_modules():
        for name, _ in getattr(module, "int8_weights", ()):
            w = getattr(module, name, None)
            if not (isinstance(w, torch.Tensor) and w.dtype == torch.float32 and ops.is_transposed(w)):
                per_row.append(f"{module_name}.{name}" if module_name else name)
            else:
                nbytes += w.numel() * w.element_size()
    if per_row:
        return False, f"{len(per_row)} products (e.g. {per_row[0]}) take a call per checked row"
    if nbytes < min_bytes:
        return False, f"{nbytes >> 20} MiB of weights run from the CPU's caches: rows cost arithmetic"
    return True, "float32 products read their weights once for all checked rows"


def accepted(proposed: Sequence[int], greedy: Sequence[int]) -> int:
    """How many proposed ids greedy decoding agrees with, from the first: greedy[j] follows proposed[j-1]
    (greedy[0] follows the id fed before them)."""
    m = 0
    while m < len(proposed) and proposed[m] == greedy[m]:
        m += 1
    return m
