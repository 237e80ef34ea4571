"""The CPU study's runs: its arms, and the ``cpu_study`` sweep built from them.

An arm is one configuration of the study (a CPU twin's gin file plus optional bindings); every
arm runs with the seeds :data:`SEEDS`, one arm's seeds after another, so a study run in parts
answers whole ablations early. The report (:mod:`studies.cpu_study.analysis`) reads the same
:data:`ARMS`, so the runs and the report can never disagree about what an arm is. Arms shared by
several ablations (the baseline) are run once.

The launchers find the sweep by name (``--sweep=cpu_study``) through the ``studies/*/sweep.py``
discovery of :mod:`launchers.named_sweeps`: this module's :data:`SWEEPS`. It imports nothing
heavier than the launchers themselves (no numpy), so ``python -m launchers.tpu`` runs it on a
machine without the analysis dependencies.
"""

from __future__ import annotations

import dataclasses
from typing import Dict, Mapping, Tuple

from launchers.named_sweeps import Axis, Point, Sweep

SEEDS = (0, 1, 2)
STUDY_STEPS = 1500  # optimizer steps of every run (cpu_e1_1_baseline.gin)


@dataclasses.dataclass(frozen=True)
class Arm:
    """One configuration of the study: a CPU twin file plus optional bindings."""

    label: str
    gin_file: str
    bindings: Mapping[str, str] = dataclasses.field(default_factory=dict)
    description: str = ""


def _arm(label: str, gin_file: str, description: str, **bindings: str) -> Arm:
    return Arm(label, gin_file, dict(bindings), description)


#: Every configuration of the study, in the order the sweep runs them (cheap, decisive
#: contrasts first, so a study run in parts answers whole ablations early).
ARMS: Tuple[Arm, ...] = (
    _arm("base", "cpu_e1_1_baseline.gin", "baseline twin: MLP, T=2, n=3, EMA, 8 supervision "
         "steps, hidden 64, 1000 puzzles, lr 1e-3, batch 64"),
    _arm("ema_off", "cpu_e2_1_ema_off.gin", "EMA off"),
    _arm("t2_n2", "cpu_e2_2_t2_n2.gin", "T=2, n=2"),
    _arm("t3_n6", "cpu_e2_2_t3_n6.gin", "T=3, n=6"),
    _arm("ds1", "cpu_e2_4_ds1.gin", "1 supervision step (no deep supervision)"),
    _arm("attention", "cpu_e2_3_attention.gin", "self-attention mixer"),
    _arm("p250", "cpu_e3_2_data250.gin", "250 training puzzles"),
    _arm("p4000", "cpu_e3_2_data4000.gin", "4000 training puzzles"),
    _arm("h32", "cpu_e3_1_h32.gin", "hidden 32"),
    _arm("h128", "cpu_e3_1_h128.gin", "hidden 128"),
    _arm("t2_n6", "cpu_e2_2_t2_n6.gin", "T=2, n=6"),
    _arm("t3_n4", "cpu_e2_2_t3_n4.gin", "T=3, n=4"),
    _arm("t4_n6", "cpu_e2_2_t4_n6.gin", "T=4, n=6"),
    _arm("t1_n1", "cpu_e1_1_baseline.gin", "T=1, n=1 (below the study's points: where depth "
         "starts to matter)", H_CYCLES="1", L_CYCLES="1"),
    _arm("b64_lr3e-3", "cpu_e3_3_lr.gin", "batch 64, lr 3e-3", LR="3e-3", PUZZLE_EMB_LR="3e-3"),
    _arm("b32_lr1e-3", "cpu_e3_3_lr.gin", "batch 32, lr 1e-3", GLOBAL_BATCH_SIZE="32"),
    _arm("b32_lr3e-3", "cpu_e3_3_lr.gin", "batch 32, lr 3e-3", GLOBAL_BATCH_SIZE="32",
         LR="3e-3", PUZZLE_EMB_LR="3e-3"),
    _arm("ds2", "cpu_e2_4_ds4.gin", "2 supervision steps (the twin of the paper's 4 of 16)"),
)
ARM_BY_LABEL: Dict[str, Arm] = {a.label: a for a in ARMS}


#: Round two (issue #24, pre-registered in docs/results/cpu_study/README.md): the T/n arms
#: (2,2), (2,6), (3,6) with 10 seeds. Seeds 3..9 run 1500 steps; seeds 0..2 run 3000 steps and
#: are read at step 1500 for the primary endpoint (the LR is constant after warm-up, so a
#: 3000-step run's step-1500 evaluation equals a 1500-step run's final one).
ROUND2_ARMS: Tuple[Arm, ...] = tuple(ARM_BY_LABEL[a] for a in ("t2_n2", "t2_n6", "t3_n6"))
ROUND2_SEEDS = (3, 4, 5, 6, 7, 8, 9)
ROUND2_LONG_SEEDS = (0, 1, 2)
ROUND2_STEPS = 1500
ROUND2_LONG_STEPS = 3000
ROUND2_EVAL_EVERY = 500


def _round2_sweep(name: str, seeds: Tuple[int, ...], steps: int, what: str) -> Sweep:
    fixed = (f"TRAIN_STEPS={steps}", f"EVAL_EVERY={ROUND2_EVAL_EVERY}",
             f"CHECKPOINT_EVERY={ROUND2_EVAL_EVERY}", "EVAL_RAW_WEIGHTS=True")
    points = tuple(Point(a.label, a.bindings, (a.gin_file,)) for a in ROUND2_ARMS)
    return Sweep(name, (ROUND2_ARMS[0].gin_file,), (Axis("arm", points),), seeds, fixed,
                 description=f"CPU study round two (T/n, pre-registered): {what}, EMA and raw "
                             "weights evaluated every 500 steps",
                 seeds_first=True)


#: What ``studies/*/sweep.py`` discovery registers: the study and its round two.
SWEEPS = (
    Sweep("cpu_study", (ARMS[0].gin_file,),
          (Axis("arm", tuple(Point(a.label, a.bindings, (a.gin_file,)) for a in ARMS)),),
          SEEDS,
          description="the CPU study: E2.1 EMA, E2.2 T/n, E2.3 mixer, E2.4 deep supervision, "
                      "E3.1 width, E3.2 data, E3.3 LR x batch on 9x9 Sudoku twins, 3 seeds "
                      "(report: python -m studies.cpu_study.analysis)",
          seeds_first=True),
    _round2_sweep("cpu_tn_round2", ROUND2_SEEDS, ROUND2_STEPS, "seeds 3-9, 1500 steps"),
    _round2_sweep("cpu_tn_round2_long", ROUND2_LONG_SEEDS, ROUND2_LONG_STEPS,
                  "seeds 0-2, 3000 steps"),
)
