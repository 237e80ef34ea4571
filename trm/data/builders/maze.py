"""Maze builders: ``maze_csv`` (Maze-Hard CSV) and ``maze_gen`` (generated mazes).

Encoding (TRM_SPEC 10.2): characters ``# SGo`` -> tokens 1..5 ('#' wall, ' ' open, 'S' start,
'G' goal, 'o' path), PAD 0, vocab 6, seq_len = side^2. Labels are the maze with the shortest
path's cells (S and G excluded) marked 'o'. Each maze (and each dihedral transform of it, with
``aug``) is its own puzzle with one example and identifier 0; a maze and its transforms form a
group.
"""

from __future__ import annotations

import math
from collections import deque

import numpy as np

from trm import progress
from trm.data.builders.sources import (find_overlaps, read_puzzle_csv, report_overlaps,
                                       resolve_source_file)
from trm.data.format import BLANK_IDENTIFIER_NAME, DataError
from trm.data.grids import dihedral
from trm.data.writer import SetArrays

CHARSET = "# SGo"
WALL, OPEN, START, GOAL, PATH = range(5)  # values; tokens are value + 1
_STEPS = ((1, 0), (-1, 0), (0, 1), (0, -1))


def bfs(free: np.ndarray, start: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Distances from ``start`` over free cells (-1 = unreachable) and shortest-path counts
    (capped at 2)."""
    h, w = free.shape
    ok = free.reshape(-1).tolist()
    dist = [-1] * (h * w)
    count = [0] * (h * w)
    s = start[0] * w + start[1]
    dist[s], count[s] = 0, 1
    queue = deque([s])
    pop, push = queue.popleft, queue.append
    while queue:
        i = pop()
        d, ci = dist[i] + 1, count[i]
        r, c = divmod(i, w)
        for j, inside in ((i - w, r > 0), (i + w, r < h - 1), (i - 1, c > 0),
                          (i + 1, c < w - 1)):
            if inside and ok[j]:
                if dist[j] < 0:
                    dist[j], count[j] = d, ci
                    push(j)
                elif dist[j] == d and count[j] < 2:
                    count[j] = min(2, count[j] + ci)
    return (np.asarray(dist, np.int64).reshape(h, w), np.asarray(count, np.int64).reshape(h, w))


def check_solution(question: np.ndarray, answer: np.ndarray) -> str | None:
    """None if ``answer`` is ``question`` with exactly one shortest S->G path marked; else why."""
    starts, goals = np.argwhere(question == START), np.argwhere(question == GOAL)
    if len(starts) != 1 or len(goals) != 1:
        return f"question needs exactly one S and one G (has {len(starts)} and {len(goals)})"
    if (question == PATH).any():
        return "question contains path cells 'o'"
    s, g = tuple(starts[0]), tuple(goals[0])
    dist, _ = bfs(question != WALL, s)
    d = dist[g]
    if d < 0:
        return "maze is unsolvable (G not reachable from S)"
    changed = answer != question
    if not (answer[changed] == PATH).all() or not (question[changed] == OPEN).all():
        return "answer differs from the question other than by marking open cells with 'o'"
    on_path = (answer == PATH) | (answer == START) | (answer == GOAL)
    d_path, _ = bfs(on_path, s)
    if on_path.sum() != d + 1 or d_path[g] != d:
        return f"marked cells are not a shortest S->G path (shortest has {d} steps)"
    return None


def _decode(strings: list[str], lines: list[int], path: str, side: int,
            allowed: str) -> np.ndarray:
    lut = np.full(256, 255, np.uint8)
    for i, ch in enumerate(CHARSET):
        lut[ord(ch)] = i
    out = np.empty((len(strings), side, side), np.uint8)
    for k, (s, line) in enumerate(zip(strings, lines)):
        if len(s) != side * side:
            raise DataError(f"{path}: line {line}: {len(s)} characters, expected {side * side}")
        bad = set(s) - set(allowed)
        if bad:
            raise DataError(f"{path}: line {line}: unknown character(s) {sorted(bad)} "
                            f"(allowed: {allowed!r})")
        out[k] = lut[np.frombuffer(s.encode("ascii"), np.uint8)].reshape(side, side)
    return out


def _set_arrays(questions: np.ndarray, answers: np.ndarray, aug: bool) -> SetArrays:
    k = 8 if aug else 1
    n, side = len(questions), questions.shape[1]
    inputs = np.empty((n * k, side * side), np.uint8)
    labels = np.empty_like(inputs)
    for i in range(n):
        for t in range(k):
            inputs[i * k + t] = dihedral(questions[i], t).reshape(-1) + 1
            labels[i * k + t] = dihedral(answers[i], t).reshape(-1) + 1
    return SetArrays(inputs=inputs, labels=labels, puzzle_identifiers=np.zeros(n * k, np.int32),
                     puzzle_indices=np.arange(n * k + 1, dtype=np.int64),
                     group_indices=np.arange(0, n * k + 1, k, dtype=np.int64))


def _result(side: int, train: SetArrays, test: SetArrays, overlap: dict | None = None) -> dict:
    extra = dict(grid=dict(kind="maze", rows=side, cols=side, charset=CHARSET))
    if overlap is not None:
        extra["overlap"] = overlap
    return dict(seq_len=side * side, vocab_size=len(CHARSET) + 1, pad_id=0, ignore_label_id=0,
                blank_identifier_id=0, identifiers=[BLANK_IDENTIFIER_NAME],
                splits={"train": {"all": train}, "test": {"all": test}},
                extra_metadata=extra)


def build_csv(args: dict) -> dict:
    rng = np.random.default_rng(args["seed"])
    data, side, where = {}, None, {}
    for split in ("train", "test"):
        path = resolve_source_file(args["source"], f"{split}.csv")
        qs, ans, _, lines = read_puzzle_csv(path)
        s = math.isqrt(len(qs[0]))
        if s * s != len(qs[0]) or s < 2:
            raise DataError(f"{path}: line {lines[0]}: {len(qs[0])} characters is not a square "
                            "grid")
        if side is not None and s != side:
            raise DataError(f"{path}: grid side {s} differs from train.csv's {side}")
        side = s
        q = _decode(qs, lines, path, side, CHARSET[:4])
        a = _decode(ans, lines, path, side, CHARSET)
        for k in range(len(q)):
            why = check_solution(q[k], a[k])
            if why:
                raise DataError(f"{path}: line {lines[k]}: {why}")
        idx = np.arange(len(q))
        if split == "train" and args["subsample_size"] is not None:
            if args["subsample_size"] < 1:
                raise DataError(f"subsample_size must be >= 1, got {args['subsample_size']}")
            if args["subsample_size"] < len(idx):
                idx = np.sort(rng.choice(idx, args["subsample_size"], replace=False))
        data[split] = (q[idx], a[idx])
        where[split] = (path, np.asarray(lines)[idx])
    # Duplicates and test mazes in train: up to the 8 dihedral transforms with --aug (a
    # canonical form: the smallest transform), exactly otherwise.
    canon = _canonical if args["aug"] else (lambda m: m.tobytes())
    keys = {split: [canon(m) for m in data[split][0]] for split in data}
    dups, leaks = find_overlaps(keys)
    up_to = ("up to the 8 dihedral transforms (the augmentations applied)" if args["aug"]
             else "(identical questions; no augmentation applied)")

    def name(split, i):
        path, lines = where[split]
        return f"{path.rsplit('/', 1)[-1]} line {int(lines[i])}"

    overlap = report_overlaps("maze_csv", dups, leaks, name, up_to, args["allow_overlap"],
                              unit="mazes")
    return _result(side, _set_arrays(*data["train"], args["aug"]),
                   _set_arrays(*data["test"], False), overlap)


# ----------------------------------------------------------------------------------- maze_gen


def generate_maze(size: int, rng: np.random.Generator, min_path_len: int,
                  loop_fraction: float, max_tries: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """A ``size`` x ``size`` maze (values 0..4) with a unique shortest path of at least
    ``min_path_len`` steps, and its solution. Raises DataError when it cannot find one."""
    m = (size - 1) // 2  # lattice cells per side, at odd coordinates
    if m < 1:
        raise DataError(f"maze size must be >= 3, got {size}")
    for _ in range(max_tries):
        grid = np.full((size, size), WALL, np.uint8)
        visited = np.zeros((m, m), bool)
        stack = [(int(rng.integers(m)), int(rng.integers(m)))]
        visited[stack[0]] = True
        grid[2 * stack[0][0] + 1, 2 * stack[0][1] + 1] = OPEN
        while stack:  # randomised depth-first carving: a perfect maze
            i, j = stack[-1]
            nbrs = [(i + di, j + dj) for di, dj in _STEPS
                    if 0 <= i + di < m and 0 <= j + dj < m and not visited[i + di, j + dj]]
            if not nbrs:
                stack.pop()
                continue
            ni, nj = nbrs[int(rng.integers(len(nbrs)))]
            visited[ni, nj] = True
            grid[2 * ni + 1, 2 * nj + 1] = OPEN
            grid[i + ni + 1, j + nj + 1] = OPEN  # the wall between the two cells
            stack.append((ni, nj))
        walls = [(r, c) for r in range(1, size - 1) for c in range(1, size - 1)
                 if grid[r, c] == WALL and ((r % 2 == 1 and c % 2 == 0 and c + 1 < size - 1)
                                            or (r % 2 == 0 and c % 2 == 1 and r + 1 < size - 1))]
        n_loops = int(round(loop_fraction * len(walls)))
        for k in rng.permutation(len(walls))[:n_loops]:
            grid[walls[k]] = OPEN
        free = np.argwhere(grid == OPEN)
        for _ in range(3):
            # start near one end of a long path: the farthest cell from a random one
            far, _ = bfs(grid != WALL, tuple(free[int(rng.integers(len(free)))]))
            ends = np.argwhere(far >= max(1, far.max() * 3 // 4))
            s = tuple(ends[int(rng.integers(len(ends)))])
            dist, count = bfs(grid != WALL, s)
            ok = np.argwhere((dist >= max(1, min_path_len)) & (count == 1))
            if not len(ok):
                continue
            g = tuple(ok[int(rng.integers(len(ok)))])
            answer = grid.copy()
            r, c = g
            while dist[r, c] > 1:  # walk back along the unique shortest path
                r, c = next((r + dr, c + dc) for dr, dc in _STEPS
                            if 0 <= r + dr < size and 0 <= c + dc < size
                            and dist[r + dr, c + dc] == dist[r, c] - 1)
                answer[r, c] = PATH
            grid[s], grid[g], answer[s], answer[g] = START, GOAL, START, GOAL
            assert check_solution(grid, answer) is None
            return grid, answer
    raise DataError(f"could not generate a {size}x{size} maze with a unique shortest path of "
                    f">= {min_path_len} steps in {max_tries} tries: lower min_path_len or "
                    "loop_fraction")


def _canonical(q: np.ndarray) -> bytes:
    return min(dihedral(q, t).tobytes() for t in range(8))


def build_gen(args: dict) -> dict:
    size = args["size"]
    min_len = args["min_path_len"] if args["min_path_len"] is not None else size * size // 8
    if not 0.0 <= args["loop_fraction"] <= 1.0:
        raise DataError(f"loop_fraction must be in [0, 1], got {args['loop_fraction']}")
    for name in ("num_train", "num_test"):
        if args[name] < 1:
            raise DataError(f"{name} must be >= 1, got {args[name]}")
    rng = np.random.default_rng(args["seed"])
    seen: set[bytes] = set()
    data = {}
    budget = 1000 + 20 * (args["num_train"] + args["num_test"])
    for split, count in (("train", args["num_train"]), ("test", args["num_test"])):
        qs, ans = [], []
        with progress.sub(f"generating {split} mazes", count, unit="mazes") as bar:
            while len(qs) < count:
                q, a = generate_maze(size, rng, min_len, args["loop_fraction"])
                key = _canonical(q)
                if key in seen:  # same maze as one already kept, up to a dihedral transform
                    budget -= 1
                    if budget < 0:
                        raise DataError(f"maze_gen: found only {len(seen)} distinct "
                                        f"{size}x{size} mazes; ask for fewer")
                    continue
                seen.add(key)
                qs.append(q)
                ans.append(a)
                bar.update(len(qs))
        data[split] = (np.stack(qs), np.stack(ans))
    return _result(size, _set_arrays(*data["train"], args["aug"]),
                   _set_arrays(*data["test"], False))


def build(args: dict) -> dict:
    return build_csv(args) if args["builder"] == "maze_csv" else build_gen(args)
