"""The gin tree's layering: include order, one home per value, and the paper's numbers.

* Model files only bind ``model.trm.*`` to macros; the macros' values live in
  ``models/trm_defaults.gin``, which every run profile includes first. So an experiment may set
  a model size before or after including its model file and gets the same config.
* The ``Published:`` line of every experiment header quotes the paper's numbers of
  :mod:`analysis.published` (the single source) and nothing else.
"""

import contextlib
import io
import re
from pathlib import Path

import gin
import pytest
from gin import config as gin_config

from analysis import hparams
from analysis import published as pub
from trm import gin_edge
from trm.train import dry_run

ROOT = gin_edge.gin_root()
EXPERIMENTS = [p for p in gin_edge.shipped_gin_files() if "experiments" in p.parts]
_MACRO_LINE = re.compile(r"^([A-Z][A-Z0-9_]*)\s*=", re.M)


@pytest.fixture(autouse=True)
def _clear_gin():
    gin.clear_config()
    yield
    gin.clear_config()


def _resolve(value):
    """A bound value with every macro replaced by its value (recursively)."""
    if isinstance(value, gin_config.ConfigurableReference):
        if value.configurable.selector == "gin.macro":
            scope = value.scoped_selector.rsplit("/", 1)[0]
            return _resolve(gin_config._CONFIG[(scope, "gin.macro")]["value"])
        return "@" + value.scoped_selector + ("()" if value.evaluate else "")
    if isinstance(value, (list, tuple)):
        return type(value)(_resolve(v) for v in value)
    if isinstance(value, dict):
        return {k: _resolve(v) for k, v in value.items()}
    return value


def resolved_config(gin_files, bindings=()):
    """``{"selector.param": value}`` of every binding after parsing, macros substituted."""
    gin.clear_config()
    gin_edge.parse([str(f) for f in gin_files], bindings, finalize=False)
    out = {}
    for (scope, selector), params in gin_config._CONFIG.items():
        if selector == "gin.macro":
            continue
        for name, value in params.items():
            out[f"{scope + '/' if scope else ''}{selector}.{name}"] = repr(_resolve(value))
    return out


def canonical_hparams(gin_files, bindings=()):
    """The analysis columns (T, n, mixer, ema, ...) of a parsed config."""
    gin.clear_config()
    gin_edge.parse([str(f) for f in gin_files], bindings, finalize=False)
    return hparams.extract_hparams(hparams.parse_gin(gin.config_str()))


# -- include order ------------------------------------------------------------------------------

def _model_macros():
    return _MACRO_LINE.findall((ROOT / "models" / "trm_defaults.gin").read_text())


def test_model_files_bind_but_set_no_macro():
    macros = _model_macros()
    assert {"HIDDEN_SIZE", "NUM_HEADS", "H_CYCLES", "L_CYCLES", "HALT_MAX_STEPS"} <= set(macros)
    for path in (ROOT / "models").glob("*.gin"):
        if path.name != "trm_defaults.gin":
            assert not _MACRO_LINE.findall(path.read_text()), f"{path.name} sets a macro"
    base = (ROOT / "runs" / "base.gin").read_text()
    first_statement = next(line for line in base.splitlines()
                           if line.strip() and not line.startswith("#"))
    assert first_statement == "include 'models/trm_defaults.gin'"


@pytest.mark.parametrize("model", ["models/trm_mlp.gin", "models/trm_attention.gin"])
def test_sizes_set_before_or_after_the_model_file_give_the_same_config(model, tmp_path):
    sizes = "HIDDEN_SIZE = 96\nNUM_HEADS = 3\nH_CYCLES = 4\nL_CYCLES = 5\nHALT_MAX_STEPS = 7\n"
    head = "include 'runs/cpu.gin'\ninclude 'tasks/sudoku_gen.gin'\n"
    before = tmp_path / "before.gin"
    before.write_text(head + sizes + f"include '{model}'\n")
    after = tmp_path / "after.gin"
    after.write_text(head + f"include '{model}'\n" + sizes)
    a, b = resolved_config([before]), resolved_config([after])
    assert a == b
    assert (a["model.trm.hidden_size"], a["model.trm.num_heads"], a["model.trm.H_cycles"],
            a["model.trm.L_cycles"], a["model.trm.halt_max_steps"]) == ("96", "3", "4", "5", "7")


def test_every_model_macro_survives_a_later_model_include(tmp_path):
    """Each macro of trm_defaults.gin, set to a sentinel, is kept by a later model include."""
    sentinels = {m: f"'sentinel_{m.lower()}'" for m in _model_macros()}
    exp = tmp_path / "exp.gin"
    exp.write_text("include 'runs/cpu.gin'\ninclude 'tasks/sudoku_gen.gin'\n"
                   + "".join(f"{m} = {v}\n" for m, v in sentinels.items())
                   + "include 'models/trm_attention.gin'\ninclude 'models/trm_mlp.gin'\n")
    gin_edge.parse([str(exp)], finalize=False)
    for macro, value in sentinels.items():
        assert repr(gin_edge.query_macro(macro)) == value


def test_cpu_twins_and_quickstart_take_the_cpu_scale_from_one_file():
    block = _MACRO_LINE.findall((ROOT / "runs" / "cpu_twin.gin").read_text())
    assert {"HIDDEN_SIZE", "H_CYCLES", "L_CYCLES", "LR", "TRAIN_STEPS"} <= set(block)
    for name in ("quickstart.gin", "cpu_e1_1_baseline.gin", "cpu_maze.gin"):
        text = Path(gin_edge.resolve_gin_file(name)).read_text()
        assert "include 'runs/cpu_twin.gin'" in text
        assert not {"HIDDEN_SIZE", "NUM_HEADS", "H_CYCLES", "L_CYCLES"} & set(
            _MACRO_LINE.findall(text)), name
    hp = canonical_hparams(["cpu_e2_3_attention.gin"])
    assert (hp["hidden_size"], hp["T"], hp["n"], hp["mixer"]) == (64, 2, 3, "attention")


def test_file_names_state_the_hidden_size():
    for path in EXPERIMENTS:
        m = re.search(r"_h(\d+)\.gin$", path.name)
        if m:
            assert gin_edge.parse([path.name], finalize=False)
            assert gin_edge.query_macro("HIDDEN_SIZE") == int(m.group(1)), path.name
            gin.clear_config()


# -- the paper's numbers ------------------------------------------------------------------------

_PERCENT = re.compile(r"(?<![\d.])(\d+(?:\.\d+)?)%")
_PARAMS = re.compile(r"(\d{1,3}(?:,\d{3})+) parameters")
#: CPU twins whose TPU-scale experiment is not simply the name without ``cpu_``.
_TWIN = {"cpu_maze.gin": "maze_hard_attention.gin", "cpu_arc.gin": "arc1_attention.gin"}


def published_block(path: Path) -> str:
    """The header's ``# Published:`` line and its indented continuation lines."""
    lines = path.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("# Published:"))
    block = [lines[start]]
    for line in lines[start + 1:]:
        if not line.startswith("#   "):
            break
        block.append(line)
    return " ".join(line.lstrip("# ") for line in block)


def expected_entry(path: Path):
    """The published entry for a TPU-scale experiment file (None: the paper has no number)."""
    hp = canonical_hparams([path.name])
    task = hp["task_family"]
    metric = "pass@2" if task.startswith("arc") else "exact_accuracy"
    return pub.match(hp, varying=list(pub.BASELINES[task]), metric=metric), task


def test_published_block_parser_sees_every_number(tmp_path):
    fake = tmp_path / "fake.gin"
    fake.write_text("# x\n# Published: 1.5% (a; 2% b)\n#   3.25% c\n# Target: 90%\n")
    assert _PERCENT.findall(published_block(fake)) == ["1.5", "2", "3.25"]


@pytest.mark.parametrize("path", EXPERIMENTS, ids=[p.name for p in EXPERIMENTS])
def test_published_header_quotes_the_single_source(path):
    text = published_block(path)
    numbers = [float(x) for x in _PERCENT.findall(text)]
    twin = path
    if path.name.startswith("cpu_"):
        twin_name = _TWIN.get(path.name, path.name[len("cpu_"):])
        twin = next((p for p in EXPERIMENTS if p.name == twin_name), None)
        if twin is None:
            assert not numbers, f"{path.name} quotes {numbers} but has no TPU-scale twin"
            return
    if path.name == "quickstart.gin":
        assert not numbers
        return
    entry, task = expected_entry(twin)
    if not numbers:
        return  # "not reported", "no published number"
    assert entry is not None, f"{path.name} quotes {numbers}; the paper has none for {twin.name}"
    assert numbers[0] == entry.value, (path.name, numbers[0], entry)
    task_values = {p.value for p in pub.PUBLISHED if p.task == task}
    for extra in numbers[1:]:
        assert extra in task_values, (path.name, extra)


def test_parameter_counts_in_published_lines_are_the_models():
    checked = 0
    for path in EXPERIMENTS:
        for count in _PARAMS.findall(published_block(path)):
            with contextlib.redirect_stdout(io.StringIO()):
                summary = dry_run([path.name], [])
            assert summary["num_params"] == int(count.replace(",", "")), path.name
            checked += 1
    assert checked >= 1
