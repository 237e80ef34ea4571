"""Sudoku of any box shape: solver, validator, generator, augmentation, equivalence invariant.

Boards are numpy arrays ``[N, N]`` (or flat ``[N*N]``) of values 0..N, 0 = blank, for boxes of
``R`` rows by ``C`` columns (N = R*C): 2x2 -> 4x4, 2x3 -> 6x6, 3x3 -> 9x9. No TensorFlow.
"""

from __future__ import annotations

import numpy as np

from trm.data.format import DataError


def parse_box(box: str) -> tuple[int, int]:
    try:
        r, c = (int(x) for x in str(box).lower().split("x"))
    except ValueError:
        raise DataError(f"box must look like RxC (e.g. 2x3), got {box!r}") from None
    if not (1 <= r <= 4 and 1 <= c <= 4) or r * c < 2:
        raise DataError(f"box {box!r}: rows and columns per box must be in 1..4")
    return r, c


class Geometry:
    """Cell/unit tables and a bitmask backtracking solver for an RxC-box Sudoku."""

    def __init__(self, rows_per_box: int, cols_per_box: int):
        self.R, self.C = rows_per_box, cols_per_box
        self.N = n = rows_per_box * cols_per_box
        self.full = (1 << n) - 1
        self.row = [i // n for i in range(n * n)]
        self.col = [i % n for i in range(n * n)]
        self.box = [(r // self.R) * (n // self.C) + c // self.C
                    for r, c in zip(self.row, self.col)]

    # -------------------------------------------------------------------------------- checks
    def is_valid_solution(self, grid: np.ndarray) -> bool:
        """True if ``grid`` is a complete board whose rows, columns and boxes hold 1..N."""
        n, g = self.N, np.asarray(grid).reshape(self.N, self.N)
        want = np.arange(1, n + 1)
        boxes = g.reshape(n // self.R, self.R, n // self.C, self.C).transpose(0, 2, 1, 3) \
            .reshape(n, n)
        return all(np.array_equal(np.sort(u, axis=1), np.broadcast_to(want, (n, n)))
                   for u in (g, g.T, boxes))

    def valid_solutions_mask(self, grids: np.ndarray) -> np.ndarray:
        """Vectorised :meth:`is_valid_solution` over ``[k, N*N]`` boards -> bool ``[k]``."""
        n, k = self.N, len(grids)
        g = np.asarray(grids).reshape(k, n, n)
        boxes = g.reshape(k, n // self.R, self.R, n // self.C, self.C).transpose(0, 1, 3, 2, 4) \
            .reshape(k, n, n)
        want = np.arange(1, n + 1)
        ok = np.ones(k, bool)
        for u in (g, g.transpose(0, 2, 1), boxes):
            ok &= (np.sort(u, axis=2) == want).all(axis=(1, 2))
        return ok

    # -------------------------------------------------------------------------------- search
    def _units(self, board):
        n = self.N
        rows, cols, boxes = [0] * n, [0] * n, [0] * n
        empties = []
        for i, v in enumerate(board):
            if v:
                bit = 1 << (v - 1)
                r, c, b = self.row[i], self.col[i], self.box[i]
                if (rows[r] | cols[c] | boxes[b]) & bit:
                    return None
                rows[r] |= bit
                cols[c] |= bit
                boxes[b] |= bit
            else:
                empties.append(i)
        return rows, cols, boxes, empties

    def count_solutions(self, board, limit: int = 2, rng: np.random.Generator | None = None,
                        restrict: tuple[int, int] | None = None) -> tuple[int, list | None]:
        """Counts solutions up to ``limit``; returns (count, first solution found).

        ``rng`` randomises the digit order (for generating random full grids); ``restrict``
        = (cell, mask) limits one empty cell to the digits in ``mask``.
        """
        board = [int(v) for v in np.asarray(board).reshape(-1)]
        units = self._units(board)
        if units is None:
            return 0, None
        rows, cols, boxes, empties = units
        full, row, col, box = self.full, self.row, self.col, self.box
        rcell, rmask = restrict if restrict is not None else (-1, full)
        found = [0, None]

        def search(k: int) -> bool:  # fills empties[k:]; True = stop
            if k == len(empties):
                found[0] += 1
                if found[1] is None:
                    found[1] = list(board)
                return found[0] >= limit
            best_j, best_m, best_n = -1, 0, 99
            for j in range(k, len(empties)):
                i = empties[j]
                m = full & ~(rows[row[i]] | cols[col[i]] | boxes[box[i]])
                if i == rcell:
                    m &= rmask
                c = m.bit_count()
                if c < best_n:
                    best_j, best_m, best_n = j, m, c
                    if c <= 1:
                        break
            if best_n == 0:
                return False
            empties[k], empties[best_j] = empties[best_j], empties[k]
            i = empties[k]
            r, c, b = row[i], col[i], box[i]
            bits = []
            m = best_m
            while m:
                bit = m & -m
                bits.append(bit)
                m ^= bit
            if rng is not None and len(bits) > 1:
                bits = [bits[t] for t in rng.permutation(len(bits))]
            for bit in bits:
                board[i] = bit.bit_length()
                rows[r] |= bit
                cols[c] |= bit
                boxes[b] |= bit
                stop = search(k + 1)
                rows[r] ^= bit
                cols[c] ^= bit
                boxes[b] ^= bit
                board[i] = 0
                if stop:
                    empties[k], empties[best_j] = empties[best_j], empties[k]
                    return True
            empties[k], empties[best_j] = empties[best_j], empties[k]
            return False

        search(0)
        return found[0], found[1]

    def solve(self, board) -> np.ndarray | None:
        """The unique solution of ``board``, or None if it has none or several."""
        count, sol = self.count_solutions(board, limit=2)
        return np.asarray(sol, np.int64).reshape(self.N, self.N) if count == 1 else None

    # -------------------------------------------------------------------------------- generate
    def random_solution(self, rng: np.random.Generator) -> list[int]:
        count, sol = self.count_solutions([0] * (self.N * self.N), limit=1, rng=rng)
        assert count == 1
        return sol

    def generate(self, rng: np.random.Generator, blanks: int,
                 max_tries: int = 50) -> tuple[np.ndarray, np.ndarray]:
        """A puzzle with exactly ``blanks`` blank cells and a unique solution: (puzzle, solution).

        Greedy: from a random full grid, blank cells in random order, keeping a removal only if
        the solution stays unique (checked by searching for a solution that differs in the
        removed cell).
        """
        n2 = self.N * self.N
        if not 0 <= blanks < n2:
            raise DataError(f"blanks must be in [0, {n2}), got {blanks}")
        row, col, box, full = self.row, self.col, self.box, self.full
        for _ in range(max_tries):
            sol = self.random_solution(rng)
            board = list(sol)
            removed = 0
            for i in rng.permutation(n2):
                if removed == blanks:
                    break
                i = int(i)
                v = board[i]
                board[i] = 0
                # Candidates of cell i given the remaining board: a naked single stays unique.
                used = 0
                for j in range(n2):
                    if board[j] and (row[j] == row[i] or col[j] == col[i] or box[j] == box[i]):
                        used |= 1 << (board[j] - 1)
                others = full & ~used & ~(1 << (v - 1))
                if others and self.count_solutions(board, limit=1, restrict=(i, others))[0]:
                    board[i] = v  # another solution exists: keep this cell
                else:
                    removed += 1
            if removed == blanks:
                return (np.asarray(board, np.int64).reshape(self.N, self.N),
                        np.asarray(sol, np.int64).reshape(self.N, self.N))
        raise DataError(f"could not make a {self.N}x{self.N} puzzle with {blanks} blanks and a "
                        f"unique solution in {max_tries} tries: use fewer blanks")

    # -------------------------------------------------------------------------------- augment
    def augment(self, rng: np.random.Generator, *grids: np.ndarray) -> list[np.ndarray]:
        """Applies one random validity-preserving transformation to all ``grids``.

        Draws, in order: a digit relabelling, a transpose flag (square boxes only), the band
        order and the row order in each band, the stack order and the column order in each
        stack (the reference's order for 9x9). The same transform applies to every grid.
        """
        n, R, C = self.N, self.R, self.C
        digit_map = np.concatenate([[0], rng.permutation(n) + 1])
        transpose = (rng.random() < 0.5) if R == C else False
        bands = rng.permutation(n // R)
        row_perm = np.concatenate([b * R + rng.permutation(R) for b in bands])
        stacks = rng.permutation(n // C)
        col_perm = np.concatenate([s * C + rng.permutation(C) for s in stacks])
        out = []
        for g in grids:
            g = np.asarray(g).reshape(n, n)
            if transpose:
                g = g.T
            out.append(digit_map[g[row_perm][:, col_perm]])
        return out

    # -------------------------------------------------------------------------------- invariant
    def invariant(self, board: np.ndarray, rounds: int = 3) -> int:
        """A hash that is equal for boards related by the augmentation group.

        Colour refinement (1-WL) on the graph of rows, columns, digits, bands, stacks and the
        given cells (a given links its row, column and digit); rows link their band, columns
        their stack. Equivalent boards always get equal values; unequal values prove that two
        boards are not equivalent. (Rare equal values of non-equivalent boards only make the
        generator reject a puzzle it could have kept.)
        """
        n, R, C = self.N, self.R, self.C
        flat = np.asarray(board).reshape(-1)
        square = R == C
        # node ids: rows 0..n-1, cols n..2n-1, digits 2n..3n-1, bands, stacks, then givens
        nb, ns = n // R, n // C
        band0, stack0, given0 = 3 * n, 3 * n + nb, 3 * n + nb + ns
        colour = [1] * n + [1 if square else 2] * n + [3] * n + [4] * nb + \
            [4 if square else 5] * ns
        adj: list[list[int]] = [[] for _ in range(given0)]
        for r in range(n):
            adj[r].append(band0 + r // R)
            adj[band0 + r // R].append(r)
        for c in range(n):
            adj[n + c].append(stack0 + c // C)
            adj[stack0 + c // C].append(n + c)
        for i in np.flatnonzero(flat):
            node = len(adj)
            r, c, d = int(i) // n, int(i) % n, int(flat[i]) - 1
            adj.append([r, n + c, 2 * n + d])
            adj[r].append(node)
            adj[n + c].append(node)
            adj[2 * n + d].append(node)
            colour.append(6)
        for _ in range(rounds):
            colour = [hash((colour[v], tuple(sorted(colour[u] for u in adj[v]))))
                      for v in range(len(adj))]
        return hash(tuple(sorted(colour)))
