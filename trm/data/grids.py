"""Grid helpers shared by the builders and the ARC evaluator (numpy only, no TensorFlow).

Dihedral transforms (TRM_SPEC 10.4), the ARC 30x30 token canvas (10.3) and its crop (11).
"""

from __future__ import annotations

import numpy as np

# 0 identity, 1 rot90 (counter-clockwise), 2 rot180, 3 rot270, 4 fliplr, 5 flipud,
# 6 transpose, 7 anti-diagonal reflection (fliplr of rot90).
DIHEDRAL_INVERSE = (0, 3, 2, 1, 4, 5, 6, 7)

ARC_SIZE = 30
ARC_PAD, ARC_EOS, ARC_COLOUR_OFFSET = 0, 1, 2
ARC_VOCAB = 12


def dihedral(grid: np.ndarray, t: int) -> np.ndarray:
    """Applies dihedral transform ``t`` (0..7) to a 2-D array."""
    if t == 0:
        return grid
    if t == 1:
        return np.rot90(grid, 1)
    if t == 2:
        return np.rot90(grid, 2)
    if t == 3:
        return np.rot90(grid, 3)
    if t == 4:
        return np.fliplr(grid)
    if t == 5:
        return np.flipud(grid)
    if t == 6:
        return grid.T
    if t == 7:
        return np.fliplr(np.rot90(grid, 1))
    raise ValueError(f"dihedral transform id must be 0..7, got {t}")


def inverse_dihedral(grid: np.ndarray, t: int) -> np.ndarray:
    return dihedral(grid, DIHEDRAL_INVERSE[t])


def arc_to_canvas(grid: np.ndarray, row: int = 0, col: int = 0) -> np.ndarray:
    """Places an ARC grid (colours 0..9) on the 900-token canvas at (row, col).

    Colours become tokens 2..11, the rest PAD 0; EOS (1) marks the row just below the grid
    (over its columns) and the column just right of it (over its rows) where inside the canvas.
    """
    g = np.asarray(grid)
    h, w = g.shape
    canvas = np.zeros((ARC_SIZE, ARC_SIZE), np.uint8)
    canvas[row:row + h, col:col + w] = g + ARC_COLOUR_OFFSET
    if row + h < ARC_SIZE:
        canvas[row + h, col:col + w] = ARC_EOS
    if col + w < ARC_SIZE:
        canvas[row:row + h, col + w] = ARC_EOS
    return canvas.reshape(-1)


def arc_crop(tokens: np.ndarray) -> np.ndarray:
    """Recovers a grid from a 900-token canvas whose grid sits at the top-left.

    Walks down the rows; each row's usable width is the run of colour tokens from column 0,
    never wider than the row above; keeps the (rows, width) of largest area.
    """
    canvas = np.asarray(tokens).reshape(ARC_SIZE, ARC_SIZE)
    is_colour = (canvas >= ARC_COLOUR_OFFSET) & (canvas < ARC_COLOUR_OFFSET + 10)
    # run length of colour tokens from column 0, per row
    runs = np.where(is_colour.all(axis=1), ARC_SIZE, np.argmin(is_colour, axis=1))
    widths = np.minimum.accumulate(runs)
    areas = widths * np.arange(1, ARC_SIZE + 1)
    best = int(np.argmax(areas))  # first maximum, as the row-by-row scan keeps it
    if areas[best] == 0:
        return np.zeros((0, 0), np.uint8)
    return (canvas[:best + 1, :widths[best]] - ARC_COLOUR_OFFSET).astype(np.uint8)


def grid_key(grid: np.ndarray) -> tuple:
    """A hashable, exact key of a grid (shape and values)."""
    g = np.ascontiguousarray(np.asarray(grid, np.uint8))
    return (g.shape, g.tobytes())
