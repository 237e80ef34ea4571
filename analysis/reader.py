"""The one reader of the workdir format on the analysis side.

:mod:`trm.run` owns the format (:mod:`trm.run.record` names the run files and writes them,
:mod:`trm.run.tensorboard` writes ``tb/``); this module reads it, and every remote access goes
through :class:`trm.run.storage.Storage` (the one fsspec layer of trm).

* :func:`find_run_dirs`: the run directories under a root, at any depth: a folder holding
  ``run.json`` or ``tb/`` is a run, and a run holds no further runs.
* :func:`stage`: copies the small files of every run under a remote root (``gs://``,
  ``memory://`` ...) to a local folder -- the run files, ``tb/**`` and
  ``eval/step_*/metrics.json``, never checkpoints -- because TensorBoard's readers need local
  files. Object names are the store's own (GCS accepts ``run/tb/../../x``): a name that would
  land outside the destination folder is skipped with one warning line naming it.
* :func:`read_events`: the training curves of a ``tb/`` folder, read with TensorBoard's own
  :class:`EventMultiplexer`: one TensorBoard run per folder, the files of a folder in order,
  and TensorBoard's purge of orphaned points (a resumed process's ``SessionLog.START`` at its
  first new step, or a step going back) -- the curves a dashboard shows.
* :func:`read_eval_cli`: the results of ``python -m trm.eval`` (``tb/eval_cli/<setting>/``),
  one row per (setting, tag, step), kept beside the training curves, never in them.
* :func:`read_json`, :func:`read_text`, :func:`read_eval_metrics`: the run files.
"""

from __future__ import annotations

import concurrent.futures
import glob
import json
import logging
import os
import re
import sys
import types
import warnings
from typing import Any, Dict, List, Mapping, Optional, Tuple

import numpy as np
import pandas as pd

from trm.run.record import (COMMAND_JSON, CONFIG_GIN, HPARAMS_JSON, OPERATIVE_GIN,
                            RUN_JSON)
from trm.run.storage import Storage, is_remote

__all__ = ["RUN_FILES", "TB_DIR", "EVAL_CLI_DIR", "find_run_dirs", "stage", "inside",
           "read_tb", "read_events", "read_eval_cli", "read_eval_metrics", "read_json", "read_text"]

RUN_FILES = (RUN_JSON, COMMAND_JSON, CONFIG_GIN, OPERATIVE_GIN, HPARAMS_JSON)
TB_DIR = "tb"
#: Where ``python -m trm.eval`` writes its TensorBoard events: one folder per setting.
EVAL_CLI_DIR = "tb/eval_cli"
_SKIP_DIRS = {"tb", "eval", "checkpoints", ".git", "__pycache__", ".ipynb_checkpoints"}
EVENT_COLUMNS = ["step", "tag", "value", "wall_time"]


# -- finding and staging runs -----------------------------------------------------------------
def _local(root: str) -> str:
    return root[len("file://"):] if root.startswith("file://") else root


def _run_dirs(rel_files: List[str]) -> List[str]:
    """The outermost folders (relative, ``"."`` for the root) holding run.json or tb/."""
    cands = set()
    for rel in rel_files:
        parts = rel.split("/")
        if parts[-1] == RUN_JSON:
            cands.add("/".join(parts[:-1]) or ".")
        if TB_DIR in parts[:-1]:
            cands.add("/".join(parts[:parts.index(TB_DIR)]) or ".")
    out: List[str] = []
    for c in sorted(cands, key=lambda p: (p.count("/"), p)):
        if c == ".":
            return ["."]
        if not any(c.startswith(o + "/") for o in out):
            out.append(c)
    return sorted(out)


def _find_local(root: str) -> List[str]:
    out: List[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        if RUN_JSON in filenames or TB_DIR in dirnames:
            out.append(os.path.relpath(dirpath, root).replace(os.sep, "/"))
            dirnames[:] = []
            continue
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS and not d.startswith("."))
    return sorted(out)


def _safe_names(store: Storage) -> List[str]:
    """The object names under ``store`` that name a file inside it; each other name (GCS
    accepts ``run/tb/../../x``) is skipped with one warning line naming it."""
    names = []
    for rel in store.find():
        if _unsafe(rel):
            warnings.warn(f"{store.path}/{rel}: skipped, the object name leaves its folder "
                          "('..', '.', an empty or absolute part)")
        else:
            names.append(rel)
    return names


def find_run_dirs(root: str, storage_options: Optional[Mapping[str, Any]] = None) -> List[str]:
    """Run directories under ``root``, relative to it (``"."`` when the root is a run)."""
    if is_remote(root):
        return _run_dirs(_safe_names(Storage(root, dict(storage_options or {}))))
    return _find_local(_local(str(root)))


def _wanted(rel_in_run: str) -> bool:
    parts = rel_in_run.split("/")
    if len(parts) == 1:
        return parts[0] in RUN_FILES
    return parts[0] == TB_DIR or (parts[0] == "eval" and parts[-1] == "metrics.json")


def _unsafe(rel: str) -> bool:
    parts = rel.split("/")
    return not rel or rel.startswith("/") or any(p in ("", ".", "..") for p in parts)


def inside(dest: str, rel: str) -> Optional[str]:
    """The local path of object name ``rel`` under folder ``dest``, or None when the name
    would leave it (``..``, an absolute name, a link out) or names no file (empty parts)."""
    if _unsafe(rel):
        return None
    path = os.path.join(dest, *rel.split("/"))
    base = os.path.realpath(dest)
    return path if os.path.realpath(path).startswith(base + os.sep) else None


def stage(root: str, dest: str, storage_options: Optional[Mapping[str, Any]] = None
          ) -> List[str]:
    """Copies the run files of the remote ``root`` into the local folder ``dest`` (see the
    module docstring); returns the run directories, relative to the root."""
    store = Storage(root, dict(storage_options or {}))
    rel_files = _safe_names(store)
    run_dirs = _run_dirs(rel_files)
    copies = []
    for rel in rel_files:
        run = next((rd for rd in run_dirs if rd == "." or rel.startswith(rd + "/")), None)
        local = inside(dest, rel)
        if run is not None and local is not None and _wanted(rel if run == "." else
                                                             rel[len(run) + 1:]):
            copies.append((rel, local))

    def copy(item: Tuple[str, str]) -> None:
        rel, local = item
        os.makedirs(os.path.dirname(local), exist_ok=True)
        with open(local, "wb") as f:
            f.write(store.read_bytes(rel))

    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(copy, copies))  # small files: the round trips overlap
    return run_dirs


# -- run files --------------------------------------------------------------------------------
def read_json(path: str) -> Dict[str, Any]:
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


def read_text(path: str) -> Optional[str]:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return None


def read_eval_metrics(run_dir: str) -> pd.DataFrame:
    """``eval/step_*/metrics.json`` as ``step, tag, value, wall_time`` rows (flat files as
    :meth:`trm.run.record.RunRecord.evaluation` writes them, or nested ``{set: {...}}``)."""
    rows = []
    for f in sorted(glob.glob(os.path.join(run_dir, "eval", "step_*", "metrics.json"))):
        m = re.search(r"step_(\d+)", f)
        if not m:
            continue
        data, step, wall = read_json(f), int(m.group(1)), os.path.getmtime(f)

        def add(prefix: str, d: Mapping[str, Any]) -> None:
            for k, v in d.items():
                if isinstance(v, bool) or not isinstance(v, (int, float)) or k == "step":
                    continue
                rows.append((step, k if "/" in k else prefix + k, float(v), wall))

        add("eval/", {k: v for k, v in data.items() if not isinstance(v, dict)})
        for sname, d in data.items():
            if isinstance(d, dict):
                add("eval/" if sname == "all" else f"eval/{sname}/", d)
    return pd.DataFrame(rows, columns=EVENT_COLUMNS)


# -- events -----------------------------------------------------------------------------------
def prefer_tensorboard_stub() -> None:
    """Makes tensorboard use its TensorFlow stub instead of importing TensorFlow (~3 s).

    Reading local event files needs nothing from TensorFlow. Only done when TensorFlow is not
    imported already and ``TRM_ANALYSIS_TB_USE_TF`` is unset; it affects tensorboard's own
    internals in this process only (its ``tf.io.gfile`` then handles local paths only).
    """
    if os.environ.get("TRM_ANALYSIS_TB_USE_TF") or "tensorflow" in sys.modules:
        return
    sys.modules.setdefault("tensorboard.compat.notf", types.ModuleType("tensorboard.compat.notf"))


def _empty() -> pd.DataFrame:
    return pd.DataFrame({"step": pd.Series(dtype=np.int64), "tag": pd.Series(dtype=object),
                         "value": pd.Series(dtype=float), "wall_time": pd.Series(dtype=float)})


def _multiplexer(tb_dir: str):
    """TensorBoard's multiplexer over ``tb_dir``, loaded: every scalar kept, orphans purged."""
    prefer_tensorboard_stub()
    from tensorboard.backend.event_processing import event_accumulator as ea
    from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer

    mux = EventMultiplexer(size_guidance={ea.SCALARS: 0, ea.TENSORS: 0, ea.HISTOGRAMS: 1,
                                          ea.IMAGES: 1, ea.AUDIO: 1,
                                          ea.COMPRESSED_HISTOGRAMS: 1},
                           purge_orphaned_data=True)
    if os.path.isdir(tb_dir):
        # TensorBoard logs each purge as a warning ("Detected out of order event.step"); a
        # resumed run is expected here, so the purge happens quietly.
        tb_log = logging.getLogger("tensorboard")
        level = tb_log.level
        tb_log.setLevel(logging.ERROR)
        try:
            mux.AddRunsFromDirectory(tb_dir)
            mux.Reload()
        finally:
            tb_log.setLevel(level)
    return mux


def _scalars(acc) -> pd.DataFrame:
    """The scalar points of one loaded accumulator: ``simple_value`` scalars (torch, trm's
    writer) and scalar tensors (TF2 ``tf.summary.scalar``)."""
    from tensorboard.backend.event_processing import event_accumulator as ea
    from tensorboard.util import tensor_util

    rows: List[Tuple[int, str, float, float]] = []
    tags = acc.Tags()
    for tag in tags.get(ea.SCALARS, []):
        rows += [(int(e.step), tag, float(e.value), float(e.wall_time)) for e in acc.Scalars(tag)]
    for tag in tags.get(ea.TENSORS, []):
        for e in acc.Tensors(tag):
            try:
                arr = tensor_util.make_ndarray(e.tensor_proto)
            except Exception:
                continue
            if arr.size == 1 and arr.dtype.kind in "biuf":
                rows.append((int(e.step), tag, float(arr.reshape(())), float(e.wall_time)))
    if not rows:
        return _empty()
    df = pd.DataFrame(rows, columns=EVENT_COLUMNS)
    df["step"] = df["step"].astype(np.int64)
    # a duplicate (tag, step) left after the purge: the later point wins, as in TensorBoard
    df = df.sort_values("wall_time", kind="stable").drop_duplicates(["tag", "step"], keep="last")
    return df.sort_values(["tag", "step"]).reset_index(drop=True)


def read_tb(tb_dir: str) -> Tuple[pd.DataFrame, pd.DataFrame]:
    """``(training curves, trm.eval results)`` of a run's ``tb/`` folder, read in one pass:
    see :func:`read_events` and :func:`read_eval_cli`."""
    mux = _multiplexer(tb_dir)
    prefix = os.path.relpath(EVAL_CLI_DIR, TB_DIR)
    frames = []
    for name in sorted(mux.Runs()):
        if name == prefix or name.startswith(prefix + "/"):
            df = _scalars(mux.GetAccumulator(name))
            df.insert(0, "setting", name[len(prefix) + 1:])
            frames.append(df)
    train = _scalars(mux.GetAccumulator(".")) if "." in mux.Runs() else _empty()
    cli = (pd.concat(frames, ignore_index=True) if frames else
           pd.DataFrame({"setting": pd.Series(dtype=object), **_empty()}))
    return train, cli


def read_events(tb_dir: str) -> pd.DataFrame:
    """The training curves of a run's ``tb/`` folder: ``step, tag, value, wall_time``.

    Only the events directly in ``tb/`` are training curves (sub-folders are other TensorBoard
    runs, such as ``tb/eval_cli/<setting>``: see :func:`read_eval_cli`). Resumed runs: the
    points TensorBoard purges (a later file's restart at step ``s`` hides the earlier files'
    points at steps ``>= s``) are dropped here too.
    """
    return read_tb(tb_dir)[0]


def read_eval_cli(tb_dir: str) -> pd.DataFrame:
    """``python -m trm.eval`` results of a run: ``setting, step, tag, value, wall_time``.

    ``setting`` is the folder under ``tb/eval_cli/`` (``""`` for the events of older versions,
    written straight into ``tb/eval_cli``). Other sub-folders of ``tb/`` are ignored.
    """
    return read_tb(tb_dir)[1]
