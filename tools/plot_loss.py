"""Draw a training run's loss curve (train and held-out) as a PNG, with no plotting library.

    python tools/plot_loss.py .cache/default_model/log.jsonl inference/builtin/loss.png

x: tokens seen (millions), y: loss (nats per token); train loss (blue, mean of each 10-step row's window)
and held-out loss (orange dots joined). Tick labels use a 3x5 pixel digit font.
"""

from __future__ import annotations

import json
import struct
import sys
import zlib
from pathlib import Path

W, H, PAD_L, PAD_B, PAD_T, PAD_R = 720, 420, 56, 40, 16, 16
BLUE, ORANGE, GREY, BLACK, WHITE = (31, 119, 180), (255, 127, 14), (220, 220, 220), (0, 0, 0), (255, 255, 255)
DIGITS = {  # 3x5 glyphs, rows top to bottom
    "0": "111101101101111", "1": "010110010010111", "2": "111001111100111", "3": "111001111001111",
    "4": "101101111001001", "5": "111100111001111", "6": "111100111101111", "7": "111001001001001",
    "8": "111101111101111", "9": "111101111001111", ".": "000000000000010", "M": "101111111101101",
}  # fmt: skip


class Canvas:
    """An RGB image with lines, dots and digit text."""

    def __init__(self) -> None:
        self.px = [[WHITE] * W for _ in range(H)]

    def dot(self, x: int, y: int, c, r: int = 0) -> None:
        for dy in range(-r, r + 1):
            for dx in range(-r, r + 1):
                if 0 <= x + dx < W and 0 <= y + dy < H:
                    self.px[y + dy][x + dx] = c

    def line(self, x0: float, y0: float, x1: float, y1: float, c, r: int = 0) -> None:
        n = int(max(abs(x1 - x0), abs(y1 - y0))) + 1
        for i in range(n + 1):
            t = i / n
            self.dot(round(x0 + (x1 - x0) * t), round(y0 + (y1 - y0) * t), c, r)

    def text(self, x: int, y: int, s: str, c=BLACK, scale: int = 2) -> None:
        for k, ch in enumerate(s):
            glyph = DIGITS.get(ch)
            for i, bit in enumerate(glyph or ""):
                if bit == "1":
                    for sy in range(scale):
                        for sx in range(scale):
                            self.dot(x + k * 4 * scale + (i % 3) * scale + sx, y + (i // 3) * scale + sy, c)

    def png(self) -> bytes:
        raw = b"".join(b"\0" + bytes(v for p in row for v in p) for row in self.px)

        def chunk(kind: bytes, data: bytes) -> bytes:
            return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

        head = struct.pack(">IIBBBBB", W, H, 8, 2, 0, 0, 0)
        return (
            b"\x89PNG\r\n\x1a\n"
            + chunk(b"IHDR", head)
            + chunk(b"IDAT", zlib.compress(raw, 9))
            + chunk(b"IEND", b"")
        )


def plot(rows: list[dict]) -> bytes:
    """The PNG of the rows of log.jsonl."""
    train = [(r["tokens"] / 1e6, r["loss"]) for r in rows]
    held = [(r["tokens"] / 1e6, r["heldout"]) for r in rows if "heldout" in r]
    smooth = []
    for i in range(len(train)):
        window = train[max(0, i - 9) : i + 1]
        smooth.append((train[i][0], sum(v for _, v in window) / len(window)))
    xmax = max(x for x, _ in train)
    ys = [y for _, y in smooth[len(smooth) // 50 :]] + [y for _, y in held]
    ymin, ymax = int(min(ys)), int(max(ys)) + 1
    c = Canvas()

    def at(x: float, y: float) -> tuple[float, float]:
        return (
            PAD_L + (W - PAD_L - PAD_R) * x / xmax,
            H - PAD_B - (H - PAD_B - PAD_T) * (min(max(y, ymin), ymax) - ymin) / (ymax - ymin),
        )

    step = max(1, round(xmax / 8))
    for t in range(0, int(xmax) + 1, step):
        x, _ = at(t, ymin)
        c.line(x, PAD_T, x, H - PAD_B, GREY)
        c.text(round(x) - 6, H - PAD_B + 8, f"{t}M")
    for v in range(ymin, ymax + 1):
        _, y = at(0, v)
        c.line(PAD_L, y, W - PAD_R, y, GREY)
        c.text(PAD_L - 16, round(y) - 5, str(v))
    c.line(PAD_L, PAD_T, PAD_L, H - PAD_B, BLACK)
    c.line(PAD_L, H - PAD_B, W - PAD_R, H - PAD_B, BLACK)
    for (xa, ya), (xb, yb) in zip(smooth, smooth[1:], strict=False):
        c.line(*at(xa, ya), *at(xb, yb), BLUE, 1)
    for (xa, ya), (xb, yb) in zip(held, held[1:], strict=False):
        c.line(*at(xa, ya), *at(xb, yb), ORANGE, 0)
    for x, y in held:
        c.dot(*map(round, at(x, y)), ORANGE, 2)
    return c.png()


def main() -> int:
    """Command line entry point: log.jsonl -> PNG."""
    src, dst = Path(sys.argv[1]), Path(sys.argv[2])
    rows = [json.loads(line) for line in src.read_text().splitlines() if line.strip()]
    dst.write_bytes(plot(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
