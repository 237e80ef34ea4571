"""Loading runs: a root of run directories (local or ``gs://``) into tidy pandas tables.

A *run directory* follows the workdir contract of docs/DESIGN.md: ``run.json``,
``command.json``, ``config.gin``, ``operative_config.gin``, ``tb/`` (TensorBoard events),
``eval/step_XXXXXXXXX/metrics.json``. :func:`load_runs` finds every directory under the root
that holds a ``run.json`` or a ``tb/`` folder, at any depth (sweeps nest runs, e.g.
``ROOT/e2_2_tn/t3_n6_s0/``; the root may itself be one run), and does not look inside a run for
more runs. Every file is read through :mod:`analysis.reader`, the one reader of the workdir
format (remote roots are staged locally through :mod:`trm.run.storage`).

Tables of the returned :class:`Runs`:

* ``scalars``: one row per (run, tag, step): ``run, experiment, step, tag, kind, set, metric,
  value, wall_time`` and the run's canonical hyperparameters (:mod:`analysis.hparams`): the
  training curves of ``tb/`` as TensorBoard shows them (:func:`analysis.reader.read_events`:
  TensorBoard's multiplexer, its purge of the points a resumed process logs again), both
  ``simple_value`` scalars and TF2 scalar tensors. Evaluation values found only in
  ``eval/*/metrics.json`` are added as ``eval/...`` rows; ``eval/all/<metric>`` is renamed
  ``eval/<metric>`` (the contract's name for the ``all`` set).
* ``eval_cli``: the results of ``python -m trm.eval`` (``tb/eval_cli/<setting>/``), one row
  per ``run, setting, step, tag, value, wall_time``: beside the training curves, never in
  them (an evaluation of step 10 is not a training point at step 10).
* ``hparams``: one row per run, canonical hyperparameters from ``hparams.json`` (gin's own
  resolution, written by ``trm.train``) over ``operative_config.gin``; for runs without
  ``hparams.json``: parsed from ``config.gin``, then ``command.json`` bindings, then
  ``operative_config.gin`` (later wins).
* ``summary``: one row per run: status, steps, times, parameters, FLOPs, the final value of
  every ``train/``, ``eval/``, ``ARC/`` tag (``final_<tag>`` with ``/`` -> ``_``), the best
  value of every ``eval/`` and ``ARC/`` tag (``best_<tag>``: max, min for losses), and the
  hyperparameters.

Status: ``completed``, ``running``, ``interrupted`` (run.json says ``preempted``), ``failed``,
or ``unknown`` (no run.json). Runs without an end time load fine; their wall time runs to their
last event.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import fnmatch
import json
import math
import os
import re
import shutil
import tempfile
import warnings
from typing import Any, Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, \
    Tuple, Union

import numpy as np
import pandas as pd

from analysis import hparams as _hp
from analysis import reader as _rd
from analysis.reader import RUN_FILES, find_run_dirs, read_events
from trm import progress
from trm.run.storage import is_remote

__all__ = ["Run", "Runs", "load_runs", "load_run", "find_run_dirs", "read_events",
           "tag_column", "RUN_FILES", "STATUS_MAP"]

STATUS_MAP = {"completed": "completed", "running": "running", "preempted": "interrupted",
              "interrupted": "interrupted", "failed": "failed", "killed": "interrupted"}

SCALAR_COLUMNS = ["run", "experiment", "step", "tag", "kind", "set", "metric", "value",
                  "wall_time"]
EVAL_CLI_COLUMNS = ["run", "setting", "step", "tag", "value", "wall_time"]


def tag_column(tag: str) -> str:
    """``eval/hard/exact_accuracy`` -> ``eval_hard_exact_accuracy`` (summary column stem)."""
    return re.sub(r"[^\w@]+", "_", tag).strip("_")


def _split_tag(tag: str) -> Tuple[str, Optional[str], str]:
    parts = tag.split("/")
    kind = parts[0] if len(parts) > 1 else ""
    metric = parts[-1]
    sset = None
    if kind == "eval":
        sset = "/".join(parts[1:-1]) if len(parts) > 2 else "all"
    return kind, sset, metric


# --------------------------------------------------------------------------------------------
# Runs


def _parse_time(v: Any) -> Optional[float]:
    if v is None or isinstance(v, bool):
        return None
    if isinstance(v, (int, float)):
        return float(v) if math.isfinite(v) else None
    if isinstance(v, str):
        s = v.strip()
        try:
            return float(s)
        except ValueError:
            pass
        try:
            t = _dt.datetime.fromisoformat(s.replace("Z", "+00:00"))
        except ValueError:
            return None
        if t.tzinfo is None:
            t = t.replace(tzinfo=_dt.timezone.utc)
        return t.timestamp()
    return None


@dataclasses.dataclass
class Run:
    """One loaded run (its tables live in :class:`Runs`)."""

    id: str  # path relative to the root ("." -> the root's basename)
    path: str  # where it was loaded from (local path or URL)
    experiment: str  # first path component when nested, else ""
    meta: Dict[str, Any]  # run.json
    command: Dict[str, Any]  # command.json
    config: _hp.GinConfig  # merged gin config
    hparams: Dict[str, Any]
    status: str
    has_operative_config: bool = False

    def binding(self, name: str, default: Any = None) -> Any:
        """A raw gin value by any name :meth:`GinConfig.get` understands (macro, key, param)."""
        return self.config.get(name, default)


def _load_one(local_dir: str, run_id: str, path: str, experiment: str
              ) -> Tuple[Run, pd.DataFrame, pd.DataFrame]:
    meta = _rd.read_json(os.path.join(local_dir, "run.json"))
    command = _rd.read_json(os.path.join(local_dir, "command.json"))
    resolved = _rd.read_text(os.path.join(local_dir, "hparams.json"))
    op = _rd.read_text(os.path.join(local_dir, "operative_config.gin"))
    cfg = _hp.GinConfig()
    if resolved:
        # Written by trm.train from the resolved TrainConfig (trm.hparams); it wins over the
        # operative config, which adds the defaults the run used (values no binding set).
        try:
            data = json.loads(resolved)
            if op:
                cfg.update(_hp.parse_gin(op, "operative_config.gin"))
            cfg.update(_hp.from_hparams_json(data))
        except ValueError as e:
            warnings.warn(f"{path}/hparams.json is not valid JSON ({e}); reading config.gin "
                          "instead.")
            resolved = None
    if not resolved:  # runs that predate hparams.json: parse the gin text
        cfg = _hp.GinConfig()
        text = _rd.read_text(os.path.join(local_dir, "config.gin"))
        if text:
            cfg.update(_hp.parse_gin(text, "config.gin"))
        bindings = (command.get("gin_params") or command.get("gin_bindings")
                    or command.get("bindings") or [])
        if isinstance(bindings, list) and bindings:
            cfg.update(_hp.parse_bindings_list(bindings))
        if op:
            cfg.update(_hp.parse_gin(op, "operative_config.gin"))
    hp = _hp.extract_hparams(cfg)
    raw = meta.get("status")
    status = STATUS_MAP.get(str(raw).lower(), str(raw).lower()) if raw else "unknown"
    run = Run(id=run_id, path=path, experiment=experiment, meta=meta, command=command,
              config=cfg, hparams=hp, status=status, has_operative_config=bool(op))

    ev, cli = _rd.read_tb(os.path.join(local_dir, _rd.TB_DIR))
    em = _rd.read_eval_metrics(local_dir)
    if len(em):
        have = set(zip(ev["tag"], ev["step"]))
        em = em[[(t, s) not in have for t, s in zip(em["tag"], em["step"])]]
        if len(em):
            ev = pd.concat([ev, em], ignore_index=True)
    # ``eval/all/<metric>`` is the same series as the contract's ``eval/<metric>``
    ev["tag"] = ev["tag"].str.replace(r"^eval/all/", "eval/", regex=True)
    ev = ev.drop_duplicates(["tag", "step"], keep="last").reset_index(drop=True)
    ev["run"] = run_id
    ev["experiment"] = experiment
    split = [_split_tag(t) for t in ev["tag"]]
    ev["kind"] = [s[0] for s in split]
    ev["set"] = [s[1] for s in split]
    ev["metric"] = [s[2] for s in split]
    cli.insert(0, "run", run_id)
    return run, ev[SCALAR_COLUMNS], cli


def _final_best(ev: pd.DataFrame) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    if not len(ev):
        return out
    ev = ev.sort_values("step")
    for tag, g in ev.groupby("tag", sort=True):
        kind = tag.split("/")[0]
        if kind not in ("train", "eval", "ARC", "perf", "params"):
            continue
        col = tag_column(tag)
        last = g.iloc[-1]
        out[f"final_{col}"] = float(last["value"])
        if kind in ("eval", "ARC"):
            metric = tag.split("/")[-1]
            if metric in ("count", "steps"):
                continue
            if "loss" in metric:
                out[f"best_{col}"] = float(g["value"].min())
            else:
                out[f"best_{col}"] = float(g["value"].max())
    eval_main = ev[ev["tag"] == "eval/exact_accuracy"]
    if not len(eval_main):
        eval_main = ev[ev["kind"] == "eval"] if "kind" in ev.columns else ev.iloc[0:0]
    if len(eval_main):
        out["final_eval_step"] = int(eval_main["step"].max())
    return out


def _summary_row(run: Run, ev: pd.DataFrame) -> Dict[str, Any]:
    m = run.meta
    row: Dict[str, Any] = {"run": run.id, "experiment": run.experiment,
                           "name": run.id.split("/")[-1], "path": run.path,
                           "status": run.status, "raw_status": m.get("status")}
    ev_last = int(ev["step"].max()) if len(ev) else None
    last = m.get("last_step")
    last = int(last) if isinstance(last, (int, float)) and not isinstance(last, bool) else None
    row["last_step"] = max(v for v in (last, ev_last, 0) if v is not None) if (
        last is not None or ev_last is not None) else None
    total = m.get("total_steps")
    if not isinstance(total, (int, float)) or isinstance(total, bool):
        total = run.hparams.get("train_steps")
    row["total_steps"] = int(total) if total is not None else None
    row["progress"] = (row["last_step"] / row["total_steps"]
                       if row["last_step"] is not None and row["total_steps"] else None)
    start = _parse_time(m.get("start_time"))
    end = _parse_time(m.get("end_time"))
    ev_start = float(ev["wall_time"].min()) if len(ev) else None
    ev_end = float(ev["wall_time"].max()) if len(ev) else None
    row["start_time"] = start if start is not None else ev_start
    row["end_time"] = end
    finish = end if end is not None else ev_end
    row["wall_time_s"] = (finish - row["start_time"]
                          if finish is not None and row["start_time"] is not None else None)
    row["event_wall_time_s"] = (ev_end - ev_start) if ev_start is not None else None
    np_meta = m.get("num_params")
    if isinstance(np_meta, (int, float)) and not isinstance(np_meta, bool):
        row["num_params"] = int(np_meta)
    else:
        p = ev[ev["tag"] == "params/num_params"]
        row["num_params"] = int(p["value"].iloc[-1]) if len(p) else None
    fpe = m.get("flops_per_example")
    row["flops_per_example"] = float(fpe) if isinstance(fpe, (int, float)) else None
    gbs = run.hparams.get("global_batch_size")
    row["examples_seen"] = (row["last_step"] * gbs
                            if row["last_step"] is not None and gbs else None)
    row["flops"] = (row["flops_per_example"] * row["examples_seen"]
                    if row["flops_per_example"] and row["examples_seen"] else None)
    if row["flops"] is not None:
        row["compute"], row["compute_source"] = row["flops"], "flops"
    elif row["num_params"] and row["examples_seen"]:
        row["compute"] = 6.0 * row["num_params"] * row["examples_seen"]
        row["compute_source"] = "6*params*examples (proxy)"
    else:
        row["compute"], row["compute_source"] = None, None
    fb = _final_best(ev)
    row.update(fb)
    count = fb.get("final_eval_count")
    if count is None:
        for k in ("eval_count", "num_eval_examples", "eval_examples"):
            if isinstance(m.get(k), (int, float)):
                count = float(m[k])
                break
    row["eval_count"] = int(count) if count is not None else None
    row["has_operative_config"] = run.has_operative_config
    return row


class Runs:
    """Loaded runs and their tables (see the module docstring)."""

    def __init__(self, root: str, runs: List[Run], scalars: pd.DataFrame,
                 summary: pd.DataFrame, eval_cli: Optional[pd.DataFrame] = None):
        self.root = root
        self._runs = {r.id: r for r in runs}
        self.scalars = scalars
        self.summary = summary
        self.eval_cli = eval_cli if eval_cli is not None else pd.DataFrame(
            {c: pd.Series(dtype=object) for c in EVAL_CLI_COLUMNS})

    # --- containers
    def __len__(self) -> int:
        return len(self._runs)

    def __iter__(self) -> Iterator[Run]:
        return iter(self._runs.values())

    def __getitem__(self, run_id: str) -> Run:
        return self._runs[run_id]

    def __repr__(self) -> str:
        return f"Runs(root={self.root!r}, runs={len(self)}, points={len(self.scalars)})"

    @property
    def ids(self) -> List[str]:
        return list(self._runs)

    @property
    def hparams(self) -> pd.DataFrame:
        cols = _hp.hparam_names() + ["task_family"]
        return pd.DataFrame([{"run": r.id, **{c: r.hparams.get(c) for c in cols}}
                             for r in self]).set_index("run") if len(self) else \
            pd.DataFrame(columns=cols)

    @property
    def experiments(self) -> List[str]:
        return sorted(self.summary["experiment"].unique()) if len(self) else []

    @property
    def tags(self) -> List[str]:
        return sorted(self.scalars["tag"].unique()) if len(self.scalars) else []

    # --- selection
    def select(self, where: Union[None, pd.Series, Callable[[pd.DataFrame], pd.Series],
                                  Sequence[str]] = None, **equals: Any) -> "Runs":
        """A subset: a boolean mask over ``summary`` rows, a callable giving one, a list of run
        ids, and/or ``column=value`` equalities (a list/tuple value means "one of")."""
        s = self.summary
        mask = pd.Series(True, index=s.index)
        if callable(where):
            mask &= where(s).astype(bool)
        elif isinstance(where, pd.Series):
            mask &= where.astype(bool)
        elif where is not None:
            mask &= s["run"].isin(list(where))
        for col, v in equals.items():
            c = self.column(col)
            if isinstance(v, (list, tuple, set)):
                mask &= c.isin(list(v)).to_numpy()
            else:
                mask &= (c == v).to_numpy()
        ids = list(s.loc[mask, "run"])
        return Runs(self.root, [self._runs[i] for i in ids],
                    self.scalars[self.scalars["run"].isin(ids)].reset_index(drop=True),
                    s[mask].reset_index(drop=True),
                    self.eval_cli[self.eval_cli["run"].isin(ids)].reset_index(drop=True))

    def column(self, name: str) -> pd.Series:
        """A per-run column aligned with ``summary``: a summary column, else a raw gin value
        looked up by name (``TRM.puzzle_emb_len``, ``LOG_EVERY``, ``expansion`` ...)."""
        if name in self.summary.columns:
            return self.summary[name]
        vals = []
        for rid in self.summary["run"]:
            v = self._runs[rid].binding(name)
            vals.append(v.short if isinstance(v, _hp.Reference) else v)
        return pd.Series(vals, index=self.summary.index, name=name, dtype=object)

    def with_columns(self, names: Iterable[str]) -> pd.DataFrame:
        """``summary`` plus raw gin values for names that are not summary columns."""
        s = self.summary.copy()
        for n in names:
            if n not in s.columns:
                s[n] = self.column(n).to_numpy()
        return s

    def varying(self, candidates: Optional[Sequence[str]] = None) -> List[str]:
        """Hyperparameter axes with more than one distinct known value among these runs."""
        out = []
        for c in candidates or _hp.AXES:
            if c not in self.summary.columns and candidates is None:
                continue
            col = self.column(c).dropna()
            if col.astype(str).nunique() > 1:
                out.append(c)
        return out

    # --- curves and sets
    def curve(self, tag: str) -> pd.DataFrame:
        """Points of one tag across runs: the matching ``scalars`` rows, sorted."""
        df = self.scalars[self.scalars["tag"] == tag]
        return df.sort_values(["run", "step"]).reset_index(drop=True)

    def eval_sets(self, run_id: Optional[str] = None, metric: str = "exact_accuracy",
                  step: Optional[int] = None) -> pd.DataFrame:
        """Per evaluation set (e.g. difficulty bucket) value of ``metric`` at the last eval
        step (or ``step``) of one run (default: the one with the best final exact accuracy);
        includes ``count`` per set when logged."""
        if run_id is None:
            col = "final_eval_exact_accuracy"
            if col not in self.summary.columns or self.summary[col].isna().all():
                run_id = self.summary["run"].iloc[0]
            else:
                run_id = self.summary.loc[self.summary[col].idxmax(), "run"]
        ev = self.scalars[(self.scalars["run"] == run_id) & (self.scalars["kind"] == "eval")]
        if step is None and len(ev):
            step = int(ev["step"].max())
        ev = ev[ev["step"] == step]
        vals = ev[ev["metric"] == metric].set_index("set")["value"]
        cnt = ev[ev["metric"] == "count"].set_index("set")["value"]
        out = pd.DataFrame({metric: vals})
        out["count"] = cnt.reindex(out.index)
        out.index.name = "set"
        out = out.reset_index()
        out.insert(0, "step", step)
        out.insert(0, "run", run_id)
        return out


def _experiment_of(run_id: str, meta: Mapping[str, Any]) -> str:
    if isinstance(meta.get("experiment"), str) and meta["experiment"]:
        return meta["experiment"]
    parts = run_id.split("/")
    return parts[0] if len(parts) > 1 else ""


def load_run(path: str, **kwargs: Any) -> Runs:
    """Loads a single run directory (same tables as :func:`load_runs`)."""
    return load_runs(path, **kwargs)


def load_runs(root: str, *, include: Optional[str] = None, exclude: Optional[str] = None,
              storage_options: Optional[Mapping[str, Any]] = None) -> Runs:
    """Loads every run under ``root`` (a local path or an fsspec URL such as ``gs://b/p``).

    Args:
      root: the runs root (or one run directory).
      include / exclude: optional ``fnmatch`` patterns on run ids (``"e2_2_tn/*"``).
      storage_options: passed to fsspec for URLs (e.g. ``{"token": "anon"}``).

    Returns:
      :class:`Runs` with ``scalars``, ``hparams``, ``summary`` (see the module docstring).
    """
    root = str(root)
    tmp = None
    try:
        if is_remote(root):
            tmp = tempfile.mkdtemp(prefix="trm_runs_")
            rel_dirs = _rd.stage(root, tmp, storage_options)
            local_root = tmp
        else:
            local_root = root[len("file://"):] if root.startswith("file://") else root
            if not os.path.isdir(local_root):
                raise FileNotFoundError(f"runs root not found: {root}")
            rel_dirs = find_run_dirs(local_root)
        runs: List[Run] = []
        frames: List[pd.DataFrame] = []
        cli_frames: List[pd.DataFrame] = []
        rows: List[Dict[str, Any]] = []
        base = root.rstrip("/").split("/")[-1] or root
        with progress.phase(f"loading runs from {root}", len(rel_dirs), unit="runs") as bar:
            for i, rel in enumerate(rel_dirs):
                bar.update(i)
                run_id = base if rel == "." else rel
                if include and not fnmatch.fnmatch(run_id, include):
                    continue
                if exclude and fnmatch.fnmatch(run_id, exclude):
                    continue
                local_dir = (local_root if rel == "."
                             else os.path.join(local_root, *rel.split("/")))
                url = root if rel == "." else root.rstrip("/") + "/" + rel
                meta = _rd.read_json(os.path.join(local_dir, "run.json"))
                run, ev, cli = _load_one(local_dir, run_id, url,
                                         _experiment_of(run_id if rel != "." else "", meta))
                runs.append(run)
                frames.append(ev)
                cli_frames.append(cli)
                rows.append({**_summary_row(run, ev), **run.hparams})
            bar.update(len(rel_dirs))
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    hp_cols = _hp.hparam_names() + ["task_family"]
    if frames:
        scalars = pd.concat(frames, ignore_index=True)
    else:
        scalars = pd.DataFrame({c: pd.Series(dtype=object) for c in SCALAR_COLUMNS})
    hp = pd.DataFrame([{"run": r.id, **{c: r.hparams.get(c) for c in hp_cols}} for r in runs],
                      columns=["run"] + hp_cols)
    scalars = scalars.merge(hp, on="run", how="left")
    scalars["step"] = scalars["step"].astype(np.int64) if len(scalars) else scalars["step"]
    summary = pd.DataFrame(rows)
    if not len(summary):
        summary = pd.DataFrame(columns=["run", "experiment", "status", "last_step"] + hp_cols)
    eval_cli = (pd.concat(cli_frames, ignore_index=True)[EVAL_CLI_COLUMNS]
                if cli_frames else None)
    return Runs(root, runs, scalars, summary, eval_cli)
