"""Terminal frames from screen text, and text back from frames by exact glyph matching.

A terminal frame is a ``(rows * cell_h, cols * cell_w)`` uint8 grayscale image: light glyphs of
DejaVu Sans Mono (the copy that ships inside matplotlib) on black, one glyph per cell of the
fixed grid, the cursor drawn as an inverted cell. Because the grid is known, a frame is read
back cell by cell: every cell is compared with every glyph of the atlas (plain and inverted)
and the nearest one wins — an OCR that is exact on clean frames and degrades smoothly on
generated ones.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["CHARSET", "GlyphAtlas", "OcrResult", "font_path", "get_atlas"]

CHARSET = "".join(chr(c) for c in range(32, 127))  # printable ASCII; anything else draws as '?'


def font_path() -> str:
    """Path of DejaVu Sans Mono inside matplotlib's package data."""
    import matplotlib

    p = os.path.join(os.path.dirname(matplotlib.__file__), "mpl-data", "fonts", "ttf",
                     "DejaVuSansMono.ttf")  # fmt: skip
    if not os.path.isfile(p):
        raise FileNotFoundError(f"{p} is missing: reinstall matplotlib (it ships DejaVu Sans Mono)")
    return p


@dataclass
class OcrResult:
    lines: list[str]  # rows strings of exactly cols characters
    cursor: tuple[int, int] | None  # (col, row) of the cell read as inverted, or None
    distance: np.ndarray  # (rows, cols) mean squared distance of each cell to its glyph


class GlyphAtlas:
    """Glyph bitmaps of one font size on one cell size; renders screens and reads them back."""

    def __init__(self, size: int = 10, cell: tuple[int, int] = (6, 12)):
        from PIL import Image, ImageDraw, ImageFont

        self.cell_w, self.cell_h = cell
        font = ImageFont.truetype(font_path(), size)
        glyphs = []
        for ch in CHARSET:
            im = Image.new("L", (self.cell_w, self.cell_h), 0)
            ImageDraw.Draw(im).text((0, -1), ch, fill=255, font=font)
            glyphs.append(np.asarray(im, dtype=np.uint8))
        self.glyphs = np.stack(glyphs)  # (G, ch, cw) uint8
        self.index = {c: i for i, c in enumerate(CHARSET)}
        flat = self.glyphs.reshape(len(CHARSET), -1).astype(np.float32) / 255.0
        ref = np.concatenate([flat, 1.0 - flat])  # (2G, ch*cw): plain, then inverted
        # torch for the matmul: its thread count is under the caller's control (numpy's BLAS
        # spins its own threads, which crawl on a busy 2-core machine)
        self._ref_t = torch.from_numpy(np.ascontiguousarray(ref.T))
        self._ref_sq = torch.from_numpy((ref**2).sum(1))
        self._chars = list(CHARSET)

    def frame_shape(self, rows: int, cols: int) -> tuple[int, int]:
        return rows * self.cell_h, cols * self.cell_w

    def render(
        self, lines: list[str], cursor: tuple[int, int] | None, rows: int, cols: int
    ) -> np.ndarray:
        """``(rows * cell_h, cols * cell_w)`` uint8 frame of ``lines`` with the cursor cell
        ``(col, row)`` inverted (``None``: hidden)."""
        idx = np.zeros((rows, cols), dtype=np.int64)  # 0 is ' '
        q = self.index["?"]
        for r, line in enumerate(lines[:rows]):
            for c, ch in enumerate(line[:cols]):
                idx[r, c] = self.index.get(ch, q)
        cells = self.glyphs[idx]  # (rows, cols, ch, cw)
        if cursor is not None:
            cx, cy = cursor
            if 0 <= cy < rows and 0 <= cx < cols:
                cells[cy, cx] = 255 - cells[cy, cx]
        return cells.transpose(0, 2, 1, 3).reshape(rows * self.cell_h, cols * self.cell_w)

    def cells(self, frame: np.ndarray, rows: int, cols: int) -> np.ndarray:
        """``(rows, cols, cell_h * cell_w)`` float32 in [0, 1]: the frame cut into cells."""
        f = np.asarray(frame, dtype=np.float32)
        if f.max() > 1.0:
            f = f / 255.0
        f = f[: rows * self.cell_h, : cols * self.cell_w]
        return (
            f.reshape(rows, self.cell_h, cols, self.cell_w)
            .transpose(0, 2, 1, 3)
            .reshape(rows, cols, -1)
        )

    def read(self, frame: np.ndarray, rows: int, cols: int) -> OcrResult:
        """Exact glyph matching on the known grid: nearest atlas glyph (plain or inverted) per
        cell. The cursor is the inverted cell that matches best (an inverted space is a block)."""
        x = torch.from_numpy(self.cells(frame, rows, cols).reshape(rows * cols, -1))
        d = (x**2).sum(1, keepdim=True) - 2 * x @ self._ref_t + self._ref_sq[None]  # (N, 2G)
        dmin, best_t = d.min(1)
        best = best_t.numpy()
        g = len(CHARSET)
        ch = self._chars
        idx = (best % g).tolist()
        chars = [[ch[i] for i in idx[r * cols : (r + 1) * cols]] for r in range(rows)]
        inverted = (best >= g).reshape(rows, cols)
        dist = (dmin.numpy() / x.shape[1]).reshape(rows, cols)
        cursor = None
        if inverted.any():
            inv_d = np.where(inverted, dist, np.inf)
            r, c = np.unravel_index(int(inv_d.argmin()), inv_d.shape)
            cursor = (int(c), int(r))
        return OcrResult(["".join(row) for row in chars], cursor, dist)


@functools.lru_cache(maxsize=4)
def get_atlas(size: int = 10, cell: tuple[int, int] = (6, 12)) -> GlyphAtlas:
    """The shared atlas for a font size and cell (built once per process)."""
    return GlyphAtlas(size, cell)
