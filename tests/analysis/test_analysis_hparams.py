"""Gin parsing and the binding -> canonical column table."""

import gin

from analysis import hparams as hp


def test_parses_gin_own_output():
    """Whatever gin.config_str / operative_config_str writes parses back to the same values."""
    gin.clear_config(clear_constants=True)
    try:
        @gin.configurable("TRMx", module="t_analysis")
        def trm(H_cycles=1, L_cycles=1, hidden_size=8, mixer=None, sets=None, betas=(0.9, 0.95)):
            return H_cycles

        @gin.configurable("mlpx", module="mixer")
        def mlp():
            return None

        gin.parse_config("""
            H_CYCLES = 3
            TRMx.H_cycles = %H_CYCLES
            TRMx.L_cycles = 6
            TRMx.mixer = @mixer.mlpx
            TRMx.sets = {'a': [1, 2, 3], 'bbbbbbbbbbbbbbbbbbbbbbbbbbbbbb': ['xxxxxxxxxxxxxxxxxxxxxxxxxxxx',
                         'yyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyy', 'zzzzzzzzzzzzzzzzzzzzzzzzzzzz']}
        """)
        trm()
        text = gin.operative_config_str()
    finally:
        gin.clear_config(clear_constants=True)
    assert "\\\n" in text  # gin wrapped the long value over several lines
    cfg = hp.parse_gin(text)
    assert cfg.errors == []
    assert cfg.macros == {"H_CYCLES": 3}
    assert cfg.get("H_cycles") == 3  # macro reference resolved
    assert cfg.get("TRMx.L_cycles") == 6
    assert cfg.get("hidden_size") == 8  # a default only the operative config shows
    assert cfg.get("betas") == (0.9, 0.95)
    assert cfg.get("sets")["bbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"][2] == "zzzzzzzzzzzzzzzzzzzzzzzzzzzz"
    ref = cfg.get("mixer")
    assert isinstance(ref, hp.Reference) and ref.short == "mlpx"


def test_statements_comments_strings_and_refs():
    cfg = hp.parse_gin("""
import trm.models
include 'gin/runs/cpu.gin'   # comment
# a comment line with = sign
LR = 1e-4  # peak lr
NAME = "a # not a comment"
train/Trainer.ema = @ema.ema()
ema.ema.rate = 0.999
Model.dims = [1,
              2,   # inline comment
              3]
Opt.betas = (0.9, -0.95)
x.y = @scope/kind.name
Q.v = %UNDEFINED
weird.v = foo(bar)
Model.dims = [4]
""")
    assert cfg.imports == ["trm.models"]
    assert cfg.includes == ["gin/runs/cpu.gin"]
    assert cfg.macros["LR"] == 1e-4
    assert cfg.macros["NAME"] == "a # not a comment"
    b = cfg.bindings["train/Trainer.ema"]
    assert b.scope == "train" and b.configurable == "Trainer" and b.param == "ema"
    assert b.value == hp.Reference("ema.ema", evaluate=True)
    assert cfg.get("Model.dims") == [4]  # later binding wins
    assert cfg.get("Opt.betas") == (0.9, -0.95)
    assert cfg.get("x.y") == hp.Reference("scope/kind.name")
    assert cfg.get("Q.v") == hp.MacroRef("UNDEFINED")
    assert cfg.get("weird.v") == "foo(bar)"  # kept verbatim
    assert cfg.get("ema.rate") == 0.999


def test_extract_canonical_columns():
    """trm's own gin layout: macros (gin/runs/base.gin, gin/models/*.gin) bound to model.trm."""
    cfg = hp.parse_gin("""
DATA_DIR = 'gs://b/data/sudoku-extreme-1k-aug-1000'
GLOBAL_BATCH_SIZE = 256
LR = 1e-4
SEED = 7
TRAIN_STEPS = 5000
H_CYCLES = 3
L_CYCLES = 6
HIDDEN_SIZE = 512
NUM_LAYERS = 2
GRADIENT = 'one_step'
EMA = False
model.trm.H_cycles = %H_CYCLES
model.trm.L_cycles = %L_CYCLES
model.trm.hidden_size = %HIDDEN_SIZE
model.trm.num_layers = %NUM_LAYERS
model.trm.gradient = %GRADIENT
model.trm.mixer = @mixer.attention
model.trm.core = @core.trm_separate
model.trm.halting = @halting.halt_continue()
trm.TrainConfig.use_ema = %EMA
trm.TrainConfig.ema = @ema.ema
PuzzleEmbedding.hidden_size = 16
""")
    h = hp.extract_hparams(cfg)
    assert (h["T"], h["n"], h["hidden_size"], h["num_layers"]) == (3, 6, 512, 2)
    assert h["mixer"] == "attention" and h["halting"] == "halt_continue"
    assert h["core"] == "trm_separate" and h["gradient"] == "one_step"
    assert h["ema"] is False  # the EMA macro, not the always-bound @ema.ema
    assert (h["global_batch_size"], h["lr"], h["seed"], h["train_steps"]) == (256, 1e-4, 7, 5000)
    assert (h["num_train_puzzles"], h["num_aug"]) == (1000, 1000)  # parsed from DATA_DIR
    assert h["task_family"] == "sudoku"
    assert h["num_heads"] is None  # missing keys are None


def test_bare_parameter_names_and_preferences():
    h = hp.extract_hparams(hp.parse_gin(
        "TRM.hidden_size = 64\nPuzzleEmbedding.hidden_size = 16\n"
        "train/Trainer.lr = 3e-4\nTrainer.lr = 1e-3\ntrain.use_ema = True\n"
        "train.ema = None\nX.one_step_grad = True\n"))
    assert h["hidden_size"] == 64  # TRM preferred over PuzzleEmbedding
    assert h["lr"] == 1e-3  # unscoped preferred
    assert h["ema"] is True  # use_ema before a bare 'ema'
    assert h["gradient"] == "one_step"


def test_extract_reference_style_names():
    """The reference implementation's names (mlp_t, L_layers, ema=True) map too."""
    h = hp.extract_hparams(hp.parse_gin(
        "arch.H_cycles = 2\narch.L_cycles = 2\narch.L_layers = 4\narch.mlp_t = True\n"
        "cfg.ema = True\ncfg.global_batch_size = 768\n"))
    assert (h["T"], h["n"], h["num_layers"], h["mixer"], h["ema"]) == (2, 2, 4, "mlp", True)
    assert h["global_batch_size"] == 768


def test_binding_names_table_is_documented():
    names = hp.binding_names()
    assert names["T"][0] == "H_CYCLES" and "H_cycles" in names["T"]
    assert set(hp.AXES) <= set(names)
    assert "seed" not in hp.AXES


def test_task_family():
    assert hp.task_family(None, "gs://x/maze-30x30-hard-1k") == "maze"
    assert hp.task_family("arc-agi-2") == "arc2"
    assert hp.task_family(None, "/data/arc1concept-aug-1000") == "arc1"
    assert hp.task_family(None, None) is None
