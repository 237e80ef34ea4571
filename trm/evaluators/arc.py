"""The ARC evaluator (TRM_SPEC 11): un-augment, vote over augmentations, pass@K, submission.

Usage, once per evaluation::

    ev = ARCEvaluator(data_path)
    ev.begin_eval()
    for set_name, batch, _ in eval_batches(...):
        outputs = ...  # model outputs after the last halting step
        ev.update(batch, {"preds": preds, "q_halt_logits": q_halt_logits})
    metrics = ev.result(output_dir)   # {"ARC/pass@1": ..., ...}; writes submission.json

Differences from the reference (documented in docs/DATA.md):
- works in a single process: ``gather_fn`` (e.g. an all-gather of Python objects) is used
  only when given, instead of requiring an initialised ``torch.distributed`` group;
- the submission lists every test pair of every test puzzle; a pair without predictions gets
  ``[[0]]`` attempts instead of being omitted;
- ``aggregated_voting`` (predictions of earlier evaluations keep voting) is an option, off by
  default.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Sequence

import numpy as np

from trm.data.grids import arc_crop, grid_key, inverse_dihedral

_SEP = "|||"


def _to_numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach()
        if x.dtype.is_floating_point:
            x = x.double()
        x = x.cpu().numpy()
    return np.asarray(x)


def parse_augmentation(name: str) -> tuple[str, int, np.ndarray | None]:
    """``"<id>|||t<t>|||<10 digits>"`` -> (id, t, colour map); a plain id -> (id, 0, None)."""
    if _SEP not in name:
        return name, 0, None
    base, t, digits = name.split(_SEP)
    return base, int(t[1:]), np.asarray([int(c) for c in digits], np.uint8)


def _key_to_grid(key: tuple) -> np.ndarray:
    shape, data = key
    return np.frombuffer(data, np.uint8).reshape(shape)


class ARCEvaluator:
    """Collects ARC predictions over an evaluation and scores them.

    Args:
        data_path: the ARC dataset folder(s) (local or gs://) given to the eval stream; their
            identifiers (combined as the pipeline does) and ``test_puzzles.json`` are read.
        submission_k: attempts per test pair in ``submission.json``.
        pass_ks: the K of the reported ``ARC/pass@K`` metrics.
        aggregated_voting: keep the predictions of earlier evaluations voting (the reference's
            default); off by default.
    """

    required_outputs = ("preds", "q_halt_logits")

    def __init__(self, data_path: str | Sequence[str], submission_k: int = 2,
                 pass_ks: Sequence[int] = (1, 2, 5, 10, 100, 1000),
                 aggregated_voting: bool = False):
        from trm.data.format import TEST_PUZZLES_FILE
        from trm.data.pipeline import load_metadata, read_dataset_json

        paths = [data_path] if isinstance(data_path, str) else list(data_path)
        meta = load_metadata(paths, split="test")
        self.identifiers = meta.identifiers
        self.blank_identifier_id = meta.blank_identifier_id
        self.test_puzzles: dict[str, Any] = {}
        for p, raw in zip(paths, meta.raw):
            if TEST_PUZZLES_FILE in raw.get("files", {}):
                self.test_puzzles.update(read_dataset_json(p, TEST_PUZZLES_FILE))
        if not self.test_puzzles:
            from trm.data.format import DataError

            raise DataError(f"{paths}: no {TEST_PUZZLES_FILE}: not an ARC dataset with a test set")
        self.submission_k = int(submission_k)
        self.pass_ks = tuple(int(k) for k in pass_ks)
        self.aggregated_voting = bool(aggregated_voting)
        # {puzzle id: {input grid key: [(prediction grid key, q)]}}
        self._preds: dict[str, dict[tuple, list[tuple[tuple, float]]]] = {}

    def begin_eval(self) -> None:
        if not self.aggregated_voting:
            self._preds = {}

    def update(self, batch: dict, outputs: dict) -> None:
        """Records one batch: ``batch`` has ``inputs``, ``puzzle_identifiers`` (and ``mask``);
        ``outputs`` has ``preds [b, 900]`` and ``q_halt_logits [b]``."""
        ids = _to_numpy(batch["puzzle_identifiers"]).astype(np.int64)
        valid = ids != self.blank_identifier_id
        if "mask" in batch:
            valid &= _to_numpy(batch["mask"]).astype(bool)
        rows = np.flatnonzero(valid)
        if not len(rows):
            return
        inputs = _to_numpy(batch["inputs"])[rows]
        preds = _to_numpy(outputs["preds"])[rows]
        q = 1.0 / (1.0 + np.exp(-_to_numpy(outputs["q_halt_logits"]).astype(np.float64)[rows]))
        for k, row_id in enumerate(ids[rows]):
            base, t, cmap = parse_augmentation(self.identifiers[row_id])
            grids = []
            for tokens in (inputs[k], preds[k]):
                g = inverse_dihedral(arc_crop(tokens), t)
                if cmap is not None:
                    g = np.argsort(cmap).astype(np.uint8)[g]
                grids.append(grid_key(g))
            self._preds.setdefault(base, {}).setdefault(grids[0], []).append(
                (grids[1], float(q[k])))

    def result(self, output_dir: str | None = None,
               gather_fn: Callable[[Any], list | None] | None = None) -> dict[str, float] | None:
        """pass@K over the test puzzles; writes ``submission.json`` into ``output_dir``.

        ``gather_fn(obj)`` must return the list of every process's ``obj`` (or None on
        processes that do not receive it, which then return None). Without it the evaluator
        scores what this process saw.
        """
        parts = [self._preds] if gather_fn is None else gather_fn(self._preds)
        if parts is None:
            return None
        merged: dict[str, dict[tuple, list]] = {}
        for part in parts:
            for name, by_input in part.items():
                for key, cands in by_input.items():
                    merged.setdefault(name, {}).setdefault(key, []).extend(cands)
        scores = np.zeros(len(self.pass_ks))
        submission = {}
        for name, puzzle in self.test_puzzles.items():
            solved = np.zeros(len(self.pass_ks))
            attempts_all = []
            for pair in puzzle["test"]:
                label = grid_key(np.asarray(pair["output"], np.uint8))
                votes: dict[tuple, list] = {}
                for pred, q in merged.get(name, {}).get(grid_key(np.asarray(pair["input"],
                                                                            np.uint8)), []):
                    v = votes.setdefault(pred, [0, 0.0])
                    v[0] += 1
                    v[1] += q
                ranked = sorted(votes, key=lambda k: (-votes[k][0], -votes[k][1] / votes[k][0]))
                for i, k in enumerate(self.pass_ks):
                    solved[i] += label in ranked[:k]
                top = [_key_to_grid(k).tolist() for k in ranked[:self.submission_k]] or [[[0]]]
                top += [top[0]] * (self.submission_k - len(top))
                attempts_all.append({f"attempt_{i + 1}": g for i, g in enumerate(top)})
            scores += solved / max(1, len(puzzle["test"]))
            submission[name] = attempts_all
        if output_dir is not None:
            from trm.data import fsutil

            fsutil.write_bytes(fsutil.join(output_dir, "submission.json"),
                               json.dumps(submission).encode())
        n = max(1, len(self.test_puzzles))
        return {f"ARC/pass@{k}": float(s / n) for k, s in zip(self.pass_ks, scores)}
