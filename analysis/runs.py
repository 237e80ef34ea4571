"""Loading runs: a root of run directories (local or ``gs://``) into tidy pandas tables.

A *run directory* follows the workdir contract of docs/DESIGN.md: ``run.json``,
``command.json``, ``config.gin``, ``operative_config.gin``, ``tb/`` (TensorBoard events),
``eval/step_XXXXXXXXX/metrics.json``. :func:`load_runs` finds every directory under the root
that holds a ``run.json`` or a ``tb/`` folder, at any depth (sweeps nest runs, e.g.
``ROOT/e2_2_tn/t3_n6_s0/``; the root may itself be one run), and does not look inside a run for
more runs. Roots on other filesystems (``gs://``, ``memory://`` ...) go through fsspec: only the
small files (the four run files, ``tb/**``, ``eval/*/metrics.json``; never checkpoints) are
copied to a temporary local directory, because TensorBoard's readers need local files.

Tables of the returned :class:`Runs`:

* ``scalars``: one row per (run, tag, step): ``run, experiment, step, tag, kind, set, metric,
  value, wall_time`` and the run's canonical hyperparameters (:mod:`analysis.hparams`).
  Events are read with tensorboard's ``EventAccumulator`` with unlimited size guidance, both
  ``simple_value`` scalars (torch ``SummaryWriter``) and scalar tensors (TF2
  ``tf.summary.scalar``). When a run was resumed, a later event file starting at step ``s``
  supersedes the earlier files' points at steps ``>= s`` (TensorBoard's orphan purge); any
  remaining duplicate (tag, step) keeps the point with the latest wall time. Evaluation values
  found only in ``eval/*/metrics.json`` are added as ``eval/...`` rows; ``eval/all/<metric>``
  is renamed ``eval/<metric>`` (the contract's name for the ``all`` set).
* ``hparams``: one row per run, canonical hyperparameters parsed from ``config.gin``, then
  ``command.json`` bindings, then ``operative_config.gin`` (later wins).
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
import glob
import json
import math
import os
import re
import shutil
import sys
import tempfile
import types
import warnings
from typing import Any, Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, \
    Tuple, Union

import numpy as np
import pandas as pd

from analysis import hparams as _hp

__all__ = ["Run", "Runs", "load_runs", "load_run", "find_run_dirs", "read_events",
           "tag_column", "RUN_FILES", "STATUS_MAP"]

RUN_FILES = ("run.json", "command.json", "config.gin", "operative_config.gin",
             "hparams.json")
_SKIP_DIRS = {"tb", "eval", "checkpoints", ".git", "__pycache__", ".ipynb_checkpoints"}
STATUS_MAP = {"completed": "completed", "running": "running", "preempted": "interrupted",
              "interrupted": "interrupted", "failed": "failed", "killed": "interrupted"}

SCALAR_COLUMNS = ["run", "experiment", "step", "tag", "kind", "set", "metric", "value",
                  "wall_time"]


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
# Filesystems


def _is_url(path: str) -> bool:
    return bool(re.match(r"^[a-zA-Z][\w+.-]*://", str(path)))


def _fs(root: str, storage_options: Optional[Mapping[str, Any]] = None):
    """fsspec filesystem and path of a URL. For ``gs://``: turns off gcsfs's bucket-type probe
    (``GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false``, see PLATFORM_NOTES.md) and uses anonymous
    access when ``STORAGE_EMULATOR_HOST`` points at an emulator and no token is given."""
    import fsspec

    opts = dict(storage_options or {})
    if str(root).startswith("gs://"):
        os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
        if os.environ.get("STORAGE_EMULATOR_HOST") and "token" not in opts:
            opts["token"] = "anon"
    fs, path = fsspec.core.url_to_fs(root, **opts)
    return fs, path


def _find_local(root: str) -> List[str]:
    out: List[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        if "run.json" in filenames or "tb" in dirnames:
            out.append(os.path.relpath(dirpath, root))
            dirnames[:] = []
            continue
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS and not d.startswith("."))
    return sorted(p.replace(os.sep, "/") for p in out)


def _rel_files_remote(fs, root_path: str) -> List[str]:
    root_path = root_path.rstrip("/")
    files = fs.find(root_path, withdirs=False)
    out = []
    for f in files:
        f = f.rstrip("/")
        if f == root_path:
            continue
        rel = f[len(root_path) + 1:] if f.startswith(root_path + "/") else f
        out.append(rel)
    return out


def _run_dirs_from_files(rel_files: Iterable[str]) -> List[str]:
    cands = set()
    for rel in rel_files:
        parts = rel.split("/")
        if parts[-1] == "run.json":
            cands.add("/".join(parts[:-1]) or ".")
        if "tb" in parts[:-1]:
            i = parts.index("tb")
            cands.add("/".join(parts[:i]) or ".")
    # outermost only: a run does not contain runs
    out = []
    for c in sorted(cands, key=lambda p: (p.count("/"), p)):
        if c == ".":
            return ["."]
        if any(c == o or c.startswith(o + "/") for o in out):
            continue
        out.append(c)
    return sorted(out)


def find_run_dirs(root: str, storage_options: Optional[Mapping[str, Any]] = None) -> List[str]:
    """Run directories under ``root``, relative to it (``"."`` when the root is a run)."""
    if _is_url(root) and not str(root).startswith("file://"):
        fs, path = _fs(root, storage_options)
        return _run_dirs_from_files(_rel_files_remote(fs, path))
    root = str(root)[len("file://"):] if str(root).startswith("file://") else str(root)
    return _find_local(root)


def _wanted_file(rel_in_run: str) -> bool:
    parts = rel_in_run.split("/")
    if len(parts) == 1:
        return parts[0] in RUN_FILES or parts[0] == "LOCK"
    if parts[0] == "tb":
        return True
    if parts[0] == "eval" and parts[-1] == "metrics.json":
        return True
    return False


def _stage_remote(root: str, dest: str, storage_options: Optional[Mapping[str, Any]] = None
                  ) -> List[str]:
    """Copies the run files of a remote root to ``dest``; returns the run dirs (relative)."""
    fs, path = _fs(root, storage_options)
    fs.invalidate_cache()
    path = path.rstrip("/")
    rel_files = _rel_files_remote(fs, path)
    run_dirs = _run_dirs_from_files(rel_files)
    remote, local = [], []
    for rel in rel_files:
        for rd in run_dirs:
            prefix = "" if rd == "." else rd + "/"
            if rel.startswith(prefix) and _wanted_file(rel[len(prefix):]):
                remote.append(f"{path}/{rel}")
                lp = os.path.join(dest, *rel.split("/"))
                os.makedirs(os.path.dirname(lp), exist_ok=True)
                local.append(lp)
                break
    if remote:
        fs.get(remote, local)
    return run_dirs


# --------------------------------------------------------------------------------------------
# Events


def _event_files(tb_dir: str) -> List[str]:
    files = [f for f in glob.glob(os.path.join(tb_dir, "**", "*tfevents*"), recursive=True)
             if os.path.isfile(f)]
    return sorted(files)


def _prefer_tensorboard_stub() -> None:
    """Makes tensorboard use its TensorFlow stub instead of importing TensorFlow (~3 s).

    Reading local event files needs nothing from TensorFlow. Only done when TensorFlow is not
    imported already and ``TRM_ANALYSIS_TB_USE_TF`` is unset; it affects tensorboard's own
    internals in this process only (its ``tf.io.gfile`` then handles local paths only).
    """
    if os.environ.get("TRM_ANALYSIS_TB_USE_TF") or "tensorflow" in sys.modules:
        return
    sys.modules.setdefault("tensorboard.compat.notf", types.ModuleType("tensorboard.compat.notf"))


def _read_event_file(path: str) -> pd.DataFrame:
    _prefer_tensorboard_stub()
    from tensorboard.backend.event_processing import event_accumulator as ea

    acc = ea.EventAccumulator(
        path,
        size_guidance={ea.SCALARS: 0, ea.TENSORS: 0, ea.HISTOGRAMS: 1, ea.IMAGES: 1,
                       ea.AUDIO: 1, ea.COMPRESSED_HISTOGRAMS: 1},
        purge_orphaned_data=False)
    acc.Reload()
    tags = acc.Tags()
    steps: List[int] = []
    tagl: List[str] = []
    vals: List[float] = []
    walls: List[float] = []
    for tag in tags.get(ea.SCALARS, []):
        for e in acc.Scalars(tag):
            steps.append(int(e.step))
            tagl.append(tag)
            vals.append(float(e.value))
            walls.append(float(e.wall_time))
    tensor_tags = tags.get(ea.TENSORS, [])
    if tensor_tags:
        from tensorboard.util import tensor_util

        for tag in tensor_tags:
            for e in acc.Tensors(tag):
                try:
                    arr = tensor_util.make_ndarray(e.tensor_proto)
                except Exception:  # noqa: BLE001 - not a numeric tensor
                    continue
                if arr.size != 1 or arr.dtype.kind not in "biuf":
                    continue
                steps.append(int(e.step))
                tagl.append(tag)
                vals.append(float(arr.reshape(())))
                walls.append(float(e.wall_time))
    return pd.DataFrame({"step": np.asarray(steps, dtype=np.int64), "tag": tagl,
                         "value": np.asarray(vals, dtype=float),
                         "wall_time": np.asarray(walls, dtype=float)})


def read_events(tb_dir: str) -> pd.DataFrame:
    """All scalar points of a ``tb/`` folder: ``step, tag, value, wall_time`` (deduplicated).

    Resumed runs: files are ordered by their first wall time; a later file whose first step
    (ignoring ``params/`` tags) is ``s`` drops earlier files' points at steps ``>= s``.
    """
    frames = []
    for i, f in enumerate(_event_files(tb_dir)):
        df = _read_event_file(f)
        if len(df):
            df["_file"] = i
            frames.append(df)
    if not frames:
        return pd.DataFrame({"step": pd.Series(dtype=np.int64), "tag": pd.Series(dtype=object),
                             "value": pd.Series(dtype=float),
                             "wall_time": pd.Series(dtype=float)})
    frames.sort(key=lambda d: float(d["wall_time"].min()))
    kept: List[pd.DataFrame] = []
    for df in frames:
        body = df[~df["tag"].str.startswith("params/")]
        start = int(body["step"].min()) if len(body) else None
        if start is not None:
            kept = [k[k["step"] < start] for k in kept]
        kept.append(df)
    out = pd.concat(kept, ignore_index=True)
    out = out.sort_values(["wall_time"], kind="stable")
    out = out.drop_duplicates(["tag", "step"], keep="last")
    return out.drop(columns="_file").sort_values(["tag", "step"]).reset_index(drop=True)


def _read_eval_metrics(run_dir: str) -> pd.DataFrame:
    rows = []
    for f in sorted(glob.glob(os.path.join(run_dir, "eval", "step_*", "metrics.json"))):
        m = re.search(r"step_(\d+)", f)
        if not m:
            continue
        step = int(m.group(1))
        try:
            with open(f) as fh:
                data = json.load(fh)
        except (OSError, ValueError):
            continue
        wall = os.path.getmtime(f)

        def add(prefix: str, d: Mapping[str, Any]) -> None:
            for k, v in d.items():
                if isinstance(v, bool) or not isinstance(v, (int, float)) or k == "step":
                    continue
                # keys with a "/" are full tags already (the trainer writes {"eval/...": v})
                rows.append((step, k if "/" in k else prefix + k, float(v), wall))

        if isinstance(data, dict):
            add("eval/", {k: v for k, v in data.items() if not isinstance(v, dict)})
            for sname, d in data.items():
                if isinstance(d, dict):
                    add("eval/" if sname == "all" else f"eval/{sname}/", d)
    return pd.DataFrame(rows, columns=["step", "tag", "value", "wall_time"])


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


def _read_json(path: str) -> Dict[str, Any]:
    """A run file's JSON object; {} if it is missing; a warning naming the file (and {}) if it
    is corrupt, so one bad run.json never hides the other runs."""
    try:
        with open(path) as f:
            d = json.load(f)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        warnings.warn(f"{path}: unreadable ({type(e).__name__}: {str(e)[:200]}); the run is "
                      "loaded without it")
        return {}
    if not isinstance(d, dict):
        warnings.warn(f"{path}: not a JSON object; the run is loaded without it")
        return {}
    return d


def _read_text(path: str) -> Optional[str]:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
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
              ) -> Tuple[Run, pd.DataFrame]:
    meta = _read_json(os.path.join(local_dir, "run.json"))
    command = _read_json(os.path.join(local_dir, "command.json"))
    resolved = _read_text(os.path.join(local_dir, "hparams.json"))
    op = _read_text(os.path.join(local_dir, "operative_config.gin"))
    cfg = _hp.GinConfig()
    if resolved:
        # Written by trm.train: gin's own resolution of every binding.
        try:
            cfg.update(_hp.from_hparams_json(json.loads(resolved)))
        except ValueError as e:
            warnings.warn(f"{path}/hparams.json is not valid JSON ({e}); reading config.gin "
                          "instead.")
            resolved = None
    if not resolved:  # runs that predate hparams.json: parse the gin text
        text = _read_text(os.path.join(local_dir, "config.gin"))
        if text:
            cfg.update(_hp.parse_gin(text, "config.gin"))
        bindings = command.get("gin_bindings") or command.get("bindings") or []
        if isinstance(bindings, list) and bindings:
            cfg.update(_hp.parse_bindings_list(bindings))
        if op:
            cfg.update(_hp.parse_gin(op, "operative_config.gin"))
    hp = _hp.extract_hparams(cfg)
    raw = meta.get("status")
    status = STATUS_MAP.get(str(raw).lower(), str(raw).lower()) if raw else "unknown"
    run = Run(id=run_id, path=path, experiment=experiment, meta=meta, command=command,
              config=cfg, hparams=hp, status=status, has_operative_config=bool(op))

    ev = read_events(os.path.join(local_dir, "tb"))
    em = _read_eval_metrics(local_dir)
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
    return run, ev[SCALAR_COLUMNS]


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
                 summary: pd.DataFrame):
        self.root = root
        self._runs = {r.id: r for r in runs}
        self.scalars = scalars
        self.summary = summary

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
                    s[mask].reset_index(drop=True))

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
        if _is_url(root) and not root.startswith("file://"):
            tmp = tempfile.mkdtemp(prefix="trm_runs_")
            rel_dirs = _stage_remote(root, tmp, storage_options)
            local_root = tmp
        else:
            local_root = root[len("file://"):] if root.startswith("file://") else root
            if not os.path.isdir(local_root):
                raise FileNotFoundError(f"runs root not found: {root}")
            rel_dirs = _find_local(local_root)
        runs: List[Run] = []
        frames: List[pd.DataFrame] = []
        rows: List[Dict[str, Any]] = []
        base = root.rstrip("/").split("/")[-1] or root
        for rel in rel_dirs:
            run_id = base if rel == "." else rel
            if include and not fnmatch.fnmatch(run_id, include):
                continue
            if exclude and fnmatch.fnmatch(run_id, exclude):
                continue
            local_dir = local_root if rel == "." else os.path.join(local_root, *rel.split("/"))
            url = root if rel == "." else root.rstrip("/") + "/" + rel
            meta = _read_json(os.path.join(local_dir, "run.json"))
            run, ev = _load_one(local_dir, run_id, url,
                                _experiment_of(run_id if rel != "." else "", meta))
            runs.append(run)
            frames.append(ev)
            rows.append({**_summary_row(run, ev), **run.hparams})
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
    return Runs(root, runs, scalars, summary)
