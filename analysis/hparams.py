"""Hyperparameters of a run: from its ``hparams.json``, or parsed from its saved gin config.

Runs written by ``trm.train`` carry ``hparams.json`` (the effective value of every macro and
binding, resolved by gin itself): :func:`from_hparams_json` reads it. Older runs, and gin text
in general, go through the parser below.

Two parts:

* :func:`parse_gin` reads gin-config text (``config.gin`` / ``operative_config.gin`` as written by
  ``gin.config_str()`` / ``gin.operative_config_str()``, or hand-written gin files) into a
  :class:`GinConfig`: macros (``H_CYCLES = 3``) and bindings
  (``[scope/]Configurable.param = value``), with Python-literal values, ``@references``,
  ``%MACRO`` references, multi-line values (open brackets or a trailing backslash) and comments.
  It needs none of the configurables to be importable: analysis never imports the trainer.
  Later bindings override earlier ones (gin's semantics); ``import`` and ``include`` lines are
  recorded, not followed.
* :data:`HPARAMS`, the mapping table from binding names to canonical columns (``T``, ``n``,
  ``hidden_size``, ``mixer`` ...), and :func:`extract_hparams` which applies it. Every column is
  optional: a run whose config lacks a key gets ``None``.

Matching rules for a candidate name in :data:`HPARAMS` (tried in order, first hit wins):

* ``ALL_CAPS`` (``H_CYCLES``): the macro of that name.
* ``Configurable.param`` (``TRM.hidden_size``, ``ema.ema.rate``): a binding whose
  ``configurable.param`` equals it or ends with ``.`` + it, any scope.
* ``param`` (``hidden_size``): a binding of that parameter on any configurable. If several
  configurables bind it to different values, unscoped bindings win over scoped ones, then
  configurables named in :data:`PREFERRED_CONFIGURABLES`, then the last binding in the file.

A value that is a ``%MACRO`` reference is resolved through the macros; an ``@kind.name``
reference becomes its last name component (``@mixer.mlp`` -> ``"mlp"``) for string columns.
"""

from __future__ import annotations

import ast
import dataclasses
import io
import re
import tokenize
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

__all__ = [
    "Reference", "MacroRef", "Binding", "GinConfig", "parse_gin", "HParam", "HPARAMS",
    "AXES", "PREFERRED_CONFIGURABLES", "extract_hparams", "hparam_names", "task_family",
    "binding_names", "from_hparams_json",
]


# --------------------------------------------------------------------------------------------
# Values


@dataclasses.dataclass(frozen=True)
class Reference:
    """A gin configurable reference: ``@scope/kind.name`` or, if ``evaluate``, ``@kind.name()``."""

    name: str
    evaluate: bool = False

    @property
    def short(self) -> str:
        """Last component of the name: ``@mixer.mlp`` -> ``mlp``."""
        return re.split(r"[./]", self.name)[-1]

    def __str__(self) -> str:
        return "@" + self.name + ("()" if self.evaluate else "")


@dataclasses.dataclass(frozen=True)
class MacroRef:
    """A gin macro reference ``%NAME`` (resolved by :meth:`GinConfig.resolve`)."""

    name: str

    def __str__(self) -> str:
        return "%" + self.name


class _Unparsed(str):
    """A value text that is not a literal gin understands (kept verbatim)."""


@dataclasses.dataclass(frozen=True)
class Binding:
    """One ``[scope/]configurable.param = value`` statement."""

    scope: str
    configurable: str
    param: str
    value: Any
    line: int

    @property
    def key(self) -> str:
        prefix = f"{self.scope}/" if self.scope else ""
        return f"{prefix}{self.configurable}.{self.param}"


@dataclasses.dataclass
class GinConfig:
    """Macros and bindings of one or more gin texts (later texts override earlier ones)."""

    macros: Dict[str, Any] = dataclasses.field(default_factory=dict)
    bindings: Dict[str, Binding] = dataclasses.field(default_factory=dict)
    imports: List[str] = dataclasses.field(default_factory=list)
    includes: List[str] = dataclasses.field(default_factory=list)
    errors: List[str] = dataclasses.field(default_factory=list)

    def update(self, other: "GinConfig") -> "GinConfig":
        self.macros.update(other.macros)
        for key, b in other.bindings.items():
            self.bindings.pop(key, None)  # re-insert: keep "last binding wins" order
            self.bindings[key] = b
        self.imports += [i for i in other.imports if i not in self.imports]
        self.includes += [i for i in other.includes if i not in self.includes]
        self.errors += other.errors
        return self

    def resolve(self, value: Any, _depth: int = 0) -> Any:
        """Replaces macro references (recursively, inside containers too) by their values."""
        if _depth > 20:
            return value
        if isinstance(value, MacroRef):
            if value.name in self.macros:
                return self.resolve(self.macros[value.name], _depth + 1)
            return value
        if isinstance(value, list):
            return [self.resolve(v, _depth + 1) for v in value]
        if isinstance(value, tuple):
            return tuple(self.resolve(v, _depth + 1) for v in value)
        if isinstance(value, dict):
            return {k: self.resolve(v, _depth + 1) for k, v in value.items()}
        return value

    def flat(self) -> Dict[str, Any]:
        """Every macro and binding as ``{name: resolved value}`` (bindings by full key)."""
        out: Dict[str, Any] = {k: self.resolve(v) for k, v in self.macros.items()}
        for key, b in self.bindings.items():
            out[key] = self.resolve(b.value)
        return out

    def get(self, name: str, default: Any = None) -> Any:
        """Looks a name up with the :data:`HPARAMS` matching rules; resolved value or default."""
        found = _lookup(self, name)
        return default if found is _MISSING else found


# --------------------------------------------------------------------------------------------
# Parsing


def _split_statements(text: str) -> List[Tuple[int, str]]:
    """Splits gin text into logical statements (line number, text without comments).

    A statement ends at a newline outside brackets and strings, unless the line ends with a
    backslash. Comments (``#`` outside strings) are dropped.
    """
    out: List[Tuple[int, str]] = []
    buf: List[str] = []
    depth = 0
    quote: Optional[str] = None
    line = 1
    start_line = 1
    i = 0
    n = len(text)
    while i < n:
        ch = text[i]
        if quote is not None:
            if ch == "\\" and i + 1 < n:
                buf.append(text[i:i + 2])
                if text[i + 1] == "\n":
                    line += 1
                i += 2
                continue
            if text.startswith(quote, i):
                buf.append(quote)
                i += len(quote)
                quote = None
                continue
            if ch == "\n":
                line += 1
                if len(quote) == 1:  # unterminated short string: give up on it
                    quote = None
            buf.append(ch)
            i += 1
            continue
        if ch == "#":
            while i < n and text[i] != "\n":
                i += 1
            continue
        if ch in "'\"":
            q = text[i:i + 3] if text[i:i + 3] in ("'''", '"""') else ch
            quote = q
            buf.append(q)
            i += len(q)
            continue
        if ch == "\\" and text[i + 1:i + 2] == "\n":
            buf.append(" ")
            i += 2
            line += 1
            continue
        if ch == "\\" and text[i + 1:i + 3] == "\r\n":
            buf.append(" ")
            i += 3
            line += 1
            continue
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth = max(0, depth - 1)
        if ch == "\n":
            line += 1
            if depth == 0:
                stmt = "".join(buf).strip()
                if stmt:
                    out.append((start_line, stmt))
                buf = []
                start_line = line
                i += 1
                continue
            buf.append(" ")
            i += 1
            continue
        if not buf and not ch.strip():
            start_line = line
        buf.append(ch)
        i += 1
    stmt = "".join(buf).strip()
    if stmt:
        out.append((start_line, stmt))
    return out


def _split_assignment(stmt: str) -> Optional[Tuple[str, str]]:
    """Splits ``lhs = rhs`` at the first ``=`` outside brackets/strings (not ``==``)."""
    depth = 0
    quote: Optional[str] = None
    i = 0
    while i < len(stmt):
        ch = stmt[i]
        if quote:
            if ch == "\\":
                i += 2
                continue
            if stmt.startswith(quote, i):
                i += len(quote)
                quote = None
                continue
        elif ch in "'\"":
            quote = stmt[i:i + 3] if stmt[i:i + 3] in ("'''", '"""') else ch
            i += len(quote)
            continue
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "=" and depth == 0 and stmt[i + 1:i + 2] != "=" and stmt[i - 1:i] not in "<>!=":
            return stmt[:i].strip(), stmt[i + 1:].strip()
        i += 1
    return None


_NAME_RE = re.compile(r"^[A-Za-z_][\w.]*(/[A-Za-z_][\w.]*)*$")


def _transform_value(text: str) -> str:
    """Rewrites gin-only syntax into Python calls that :func:`_literal` understands.

    ``@a/b.c()`` -> ``__ref__('a/b.c', True)``; ``%NAME`` -> ``__macro__('NAME')``.
    """
    toks = list(tokenize.generate_tokens(io.StringIO("(" + text + "\n)").readline))
    out: List[Tuple[int, str]] = []
    i = 0
    while i < len(toks):
        tok = toks[i]
        if tok.type == tokenize.OP and tok.string in ("@", "%") and i + 1 < len(toks) \
                and toks[i + 1].type == tokenize.NAME:
            j = i + 1
            parts = [toks[j].string]
            while j + 2 < len(toks) and toks[j + 1].type == tokenize.OP \
                    and toks[j + 1].string in (".", "/") and toks[j + 2].type == tokenize.NAME \
                    and toks[j + 1].end == toks[j + 2].start:
                parts += [toks[j + 1].string, toks[j + 2].string]
                j += 2
            name = "".join(parts)
            if tok.string == "@":
                evaluate = (j + 2 < len(toks) and toks[j + 1].string == "("
                            and toks[j + 2].string == ")")
                if evaluate:
                    j += 2
                out.append((tokenize.NAME, f"__ref__({name!r}, {evaluate})"))
            else:
                out.append((tokenize.NAME, f"__macro__({name!r})"))
            i = j + 1
            continue
        out.append((tok.type, tok.string))
        i += 1
    return tokenize.untokenize(out)


def _literal(node: ast.AST) -> Any:
    if isinstance(node, ast.Expression):
        return _literal(node.body)
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.List):
        return [_literal(e) for e in node.elts]
    if isinstance(node, ast.Tuple):
        return tuple(_literal(e) for e in node.elts)
    if isinstance(node, ast.Set):
        return {_literal(e) for e in node.elts}
    if isinstance(node, ast.Dict):
        return {_literal(k): _literal(v) for k, v in zip(node.keys, node.values)}
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        v = _literal(node.operand)
        if isinstance(v, (int, float, complex)) and not isinstance(v, bool):
            return -v if isinstance(node.op, ast.USub) else v
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Sub)):
        left, right = _literal(node.left), _literal(node.right)
        if isinstance(left, (int, float)) and isinstance(right, complex):
            return left + right if isinstance(node.op, ast.Add) else left - right
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
        args = [_literal(a) for a in node.args]
        if node.func.id == "__ref__":
            return Reference(args[0], bool(args[1]))
        if node.func.id == "__macro__":
            return MacroRef(args[0])
    if isinstance(node, ast.Name) and node.id in ("inf", "nan"):
        return float(node.id)
    raise ValueError(f"not a gin literal: {ast.dump(node)[:80]}")


def parse_value(text: str) -> Any:
    """Parses one gin value; text that is not a gin literal is returned verbatim (a str)."""
    try:
        return _literal(ast.parse(_transform_value(text).strip(), mode="eval"))
    except (SyntaxError, ValueError, tokenize.TokenError, IndentationError, TypeError,
            IndexError):
        return _Unparsed(text.strip())


def parse_gin(text: str, source: str = "<gin>") -> GinConfig:
    """Parses gin-config text into macros and bindings (see module docstring)."""
    cfg = GinConfig()
    for line, stmt in _split_statements(text):
        if re.match(r"^import\s+[\w.]+(\s+as\s+\w+)?$", stmt) or re.match(r"^from\s+\S+\s+import\s", stmt):
            cfg.imports.append(stmt.split()[1])
            continue
        if stmt.startswith("include "):
            inc = parse_value(stmt[len("include "):])
            cfg.includes.append(str(inc))
            continue
        parts = _split_assignment(stmt)
        if parts is None:
            cfg.errors.append(f"{source}:{line}: not a binding: {stmt[:80]}")
            continue
        lhs, rhs = parts
        lhs = lhs.replace(" ", "")
        if not _NAME_RE.match(lhs):
            cfg.errors.append(f"{source}:{line}: bad binding name: {lhs[:80]}")
            continue
        value = parse_value(rhs)
        scope, _, selector = lhs.rpartition("/")
        if "." not in selector:
            # ``NAME = value`` is a gin macro (scoped macros are unusual; keep the full name).
            cfg.macros[lhs] = value
            continue
        configurable, _, param = selector.rpartition(".")
        b = Binding(scope=scope, configurable=configurable, param=param, value=value, line=line)
        cfg.bindings.pop(b.key, None)
        cfg.bindings[b.key] = b
    return cfg


# --------------------------------------------------------------------------------------------
# Canonical hyperparameters

_MISSING = object()

#: When a bare parameter name is bound on several configurables with different values, the
#: binding on the first configurable (by case-insensitive substring) in this list wins.
PREFERRED_CONFIGURABLES: Tuple[str, ...] = (
    "trm", "model", "act", "core", "recursion", "train", "trainer", "experiment", "run",
)


def _lookup(cfg: GinConfig, name: str) -> Any:
    if re.fullmatch(r"[A-Z][A-Z0-9_]*", name):
        if name in cfg.macros:
            return cfg.resolve(cfg.macros[name])
        return _MISSING
    hits: List[Binding] = []
    if "." in name:
        for b in cfg.bindings.values():
            sel = f"{b.configurable}.{b.param}"
            if sel == name or sel.endswith("." + name):
                hits.append(b)
    else:
        hits = [b for b in cfg.bindings.values() if b.param == name]
    if not hits:
        return _MISSING
    if len({repr(cfg.resolve(b.value)) for b in hits}) > 1:
        def rank(item: Tuple[int, Binding]) -> Tuple[int, int, int]:
            idx, b = item
            pref = len(PREFERRED_CONFIGURABLES)
            for p, word in enumerate(PREFERRED_CONFIGURABLES):
                if word in b.configurable.lower():
                    pref = p
                    break
            return (1 if b.scope else 0, pref, -idx)
        hits = [min(enumerate(hits), key=rank)[1]]
    return cfg.resolve(hits[-1].value)


def _to_int(v: Any) -> Optional[int]:
    if isinstance(v, bool) or v is None:
        return None
    if isinstance(v, (int, float)) and float(v).is_integer():
        return int(v)
    if isinstance(v, str):
        try:
            return int(float(v.replace("_", "")))
        except ValueError:
            return None
    return None


def _to_float(v: Any) -> Optional[float]:
    if isinstance(v, bool) or v is None:
        return None
    if isinstance(v, (int, float)):
        return float(v)
    if isinstance(v, str):
        try:
            return float(v)
        except ValueError:
            return None
    return None


def _to_name(v: Any) -> Optional[str]:
    """``@mixer.mlp`` -> ``"mlp"``; strings as they are; None stays None."""
    if v is None:
        return None
    if isinstance(v, Reference):
        return v.short
    if isinstance(v, (str, int, float)):
        return str(v)
    return None


def _to_bool(v: Any) -> Optional[bool]:
    """Booleans; a reference (``@ema.ema``) is True, None/"none"/"off" False."""
    if isinstance(v, bool):
        return v
    if v is None:
        return False
    if isinstance(v, Reference):
        return v.short.lower() not in ("none", "off", "no_ema", "disabled", "identity")
    if isinstance(v, (int, float)):
        return bool(v)
    if isinstance(v, str):
        s = v.strip().lower()
        if s in ("true", "on", "yes", "1"):
            return True
        if s in ("false", "off", "no", "0", "none", ""):
            return False
    return None


def _to_str(v: Any) -> Optional[str]:
    if v is None or isinstance(v, (MacroRef,)):
        return None
    return str(v)


def _mixer_from_mlp_t(v: Any) -> Optional[str]:
    b = _to_bool(v)
    return None if b is None else ("mlp" if b else "attention")


def _gradient_from_bool(v: Any) -> Optional[str]:
    """``ONE_STEP_GRAD = True`` style flags -> the gradient-mode name."""
    b = _to_bool(v)
    return None if b is None else ("one_step" if b else "last_cycle")


@dataclasses.dataclass(frozen=True)
class HParam:
    """One canonical column: candidate binding names (tried in order) and a converter."""

    column: str
    candidates: Tuple[Any, ...]  # str, or (str, converter) to override the converter
    convert: Callable[[Any], Any]
    doc: str
    axis: bool = True  # an experimental axis (default grouping / "what varies")


#: The mapping table: canonical column <- gin names (see the module docstring for the rules).
HPARAMS: Tuple[HParam, ...] = (
    HParam("T", ("H_CYCLES", "H_cycles", "h_cycles"), _to_int, "outer recursions (H_cycles)"),
    HParam("n", ("L_CYCLES", "L_cycles", "l_cycles"), _to_int, "inner recursions (L_cycles)"),
    HParam("hidden_size", ("HIDDEN_SIZE", "hidden_size", "d_model", "hidden_dim"), _to_int,
           "model width"),
    HParam("num_layers", ("NUM_LAYERS", "num_layers", "L_layers", "n_layers"), _to_int,
           "blocks in the recursed network"),
    HParam("num_heads", ("NUM_HEADS", "num_heads"), _to_int, "attention heads"),
    HParam("expansion", ("EXPANSION", "expansion"), _to_float, "MLP expansion factor"),
    HParam("swiglu_multiple", ("SWIGLU_MULTIPLE", "swiglu_multiple"), _to_int,
           "SwiGLU widths rounded up to a multiple of this (256 = the reference)", False),
    HParam("mixer", ("MIXER", "mixer", "sequence_mixer", "mixer_cls", ("mlp_t", _mixer_from_mlp_t)),
           _to_name, "sequence mixer (@mixer.mlp -> 'mlp', 'attention')"),
    HParam("halting", ("HALTING", "halting", "halting_policy"), _to_name,
           "halting policy (@halting.halt_only -> 'halt_only')"),
    HParam("halt_max_steps", ("HALT_MAX_STEPS", "halt_max_steps", "max_supervision_steps"),
           _to_int, "maximum ACT / deep-supervision steps"),
    HParam("halt_exploration_prob", ("HALT_EXPLORATION_PROB", "halt_exploration_prob",
                                     "exploration_prob"), _to_float, "halting exploration"),
    HParam("gradient", ("GRADIENT", "gradient", "grad_mode",
                        ("ONE_STEP_GRAD", _gradient_from_bool),
                        ("one_step_grad", _gradient_from_bool)), _to_name,
           "gradient path: 'last_cycle' (TRM), 'one_step' (HRM 1-step approximation), 'full'"),
    HParam("core", ("CORE", "core", "recursion_core", ("SEPARATE_NETS", lambda v: (
        "trm_separate" if _to_bool(v) else None)), ("SINGLE_LATENT", lambda v: (
            "trm_single_latent" if _to_bool(v) else None))), _to_name,
           "recursion core (@core.trm -> 'trm', 'trm_separate', 'trm_single_latent')"),
    HParam("positions", ("POSITIONS", "positions"), _to_name,
           "position encoding ('rope', 'learned', 'none')", False),
    HParam("puzzle_emb_len", ("PUZZLE_EMB_LEN", "puzzle_emb_len"), _to_int,
           "puzzle-embedding positions"),
    HParam("eval_halt_max_steps", ("EVAL_HALT_MAX_STEPS", "eval_halt_max_steps"), _to_int,
           "ACT steps at evaluation (None = halt_max_steps)", False),
    HParam("forward_dtype", ("FORWARD_DTYPE", "forward_dtype"), _to_name, "forward dtype", False),
    HParam("ema", ("EMA", "USE_EMA", "use_ema", "ema"), _to_bool,
           "EMA of the weights on (True, @ema.ema) / off (False, None); USE_EMA/use_ema "
           "before a bare 'ema' binding, which may hold the EMA class even when off"),
    HParam("ema_rate", ("EMA_RATE", "ema_rate", "ema.rate", "EMA.rate", "EMAHelper.mu"), _to_float,
           "EMA rate", False),
    HParam("global_batch_size", ("GLOBAL_BATCH_SIZE", "global_batch_size"), _to_int,
           "global batch size"),
    HParam("lr", ("LR", "lr", "learning_rate"), _to_float, "peak learning rate"),
    HParam("weight_decay", ("WEIGHT_DECAY", "weight_decay"), _to_float, "weight decay"),
    HParam("warmup_steps", ("LR_WARMUP_STEPS", "WARMUP_STEPS", "lr_warmup_steps",
                            "warmup_steps"), _to_int,
           "LR warm-up steps", False),
    HParam("num_train_puzzles", ("NUM_TRAIN_PUZZLES", "num_train_puzzles", "train_puzzles",
                                 "subsample_size", "train_size", "num_puzzles"), _to_int,
           "training puzzles (data size); else parsed from DATA_DIR like '...-1k-aug-1000'"),
    HParam("num_aug", ("NUM_AUG", "num_aug", "num_augmentations", "augmentations"), _to_int,
           "augmentations per puzzle"),
    HParam("task", ("TASK", "task", "task_name", "dataset_name"), _to_name,
           "task (sudoku / maze / arc ...)", False),
    HParam("data_dir", ("DATA_DIR", "data_dir", "data_path"), _to_str, "dataset directory", False),
    HParam("seed", ("SEED", "seed"), _to_int, "random seed", False),
    HParam("train_steps", ("TRAIN_STEPS", "train_steps", "total_steps"), _to_int,
           "training steps (overrides EPOCHS)", False),
    HParam("epochs", ("EPOCHS", "epochs"), _to_int, "epochs", False),
    HParam("eval_every", ("EVAL_EVERY", "eval_every", "eval_interval"), _to_int,
           "evaluation interval (steps)", False),
    HParam("eval_batch_size", ("EVAL_BATCH_SIZE", "eval_batch_size"), _to_int,
           "evaluation batch", False),
)

#: Canonical columns that are experimental axes (grouping candidates; seed is not one).
AXES: Tuple[str, ...] = tuple(h.column for h in HPARAMS if h.axis)


def hparam_names() -> List[str]:
    return [h.column for h in HPARAMS]


def binding_names() -> Dict[str, List[str]]:
    """``{column: [candidate gin names]}`` (for documentation and the lead's gin files)."""
    return {h.column: [c if isinstance(c, str) else c[0] for c in h.candidates] for h in HPARAMS}


_DATA_DIR_RE = re.compile(r"(\d+)(k?)[-_]aug[-_](\d+)", re.IGNORECASE)


def task_family(task: Optional[str], data_dir: Optional[str] = None) -> Optional[str]:
    """'sudoku' | 'maze' | 'arc1' | 'arc2' | None from a task name or data directory."""
    for s in (task, data_dir):
        if not s:
            continue
        s = str(s).lower()
        if "maze" in s:
            return "maze"
        if "arc" in s and re.search(r"arc[-_ ]?(agi[-_ ]?)?2", s):
            return "arc2"
        if "arc" in s:
            return "arc1"
        if "sudoku" in s:
            return "sudoku"
    return None


def extract_hparams(cfg: GinConfig) -> Dict[str, Any]:
    """Applies :data:`HPARAMS` to a parsed config; missing keys give None."""
    out: Dict[str, Any] = {}
    for hp in HPARAMS:
        value = None
        for cand in hp.candidates:
            name, conv = (cand, hp.convert) if isinstance(cand, str) else cand
            raw = _lookup(cfg, name)
            if raw is _MISSING or isinstance(raw, MacroRef):
                continue
            try:
                value = conv(raw)
            except Exception:
                value = None
            if value is not None or raw is None:
                break
        out[hp.column] = value
    if out.get("num_train_puzzles") is None or out.get("num_aug") is None:
        m = _DATA_DIR_RE.search(str(out.get("data_dir") or ""))
        if m:
            if out.get("num_train_puzzles") is None:
                out["num_train_puzzles"] = int(m.group(1)) * (1000 if m.group(2) else 1)
            if out.get("num_aug") is None:
                out["num_aug"] = int(m.group(3))
    out["task_family"] = task_family(out.get("task"), out.get("data_dir"))
    return out


def _hparams_value(value: Any) -> Any:
    if isinstance(value, str) and value.startswith("@") and len(value) > 1:
        evaluate = value.endswith("()")
        return Reference(value[1:-2] if evaluate else value[1:], evaluate)
    if isinstance(value, list):
        return [_hparams_value(v) for v in value]
    if isinstance(value, dict):
        return {k: _hparams_value(v) for k, v in value.items()}
    return value


def from_hparams_json(data: Dict[str, Any]) -> GinConfig:
    """The config recorded in a run's ``hparams.json`` (written by ``trm.train``: the effective
    value of every macro and binding, macros already resolved, references as ``@kind.name``
    with ``()`` when called). Newer runs are read from it; :func:`parse_gin` stays the fallback
    for runs that predate it and for hand-written gin text."""
    cfg = GinConfig()
    if not isinstance(data, dict):
        cfg.errors.append("hparams.json: not a JSON object")
        return cfg
    for name, value in (data.get("macros") or {}).items():
        cfg.macros[str(name)] = _hparams_value(value)
    for key, value in (data.get("bindings") or {}).items():
        scope, _, rest = str(key).rpartition("/")
        configurable, _, param = rest.rpartition(".")
        if not configurable or not param:
            cfg.errors.append(f"hparams.json: binding name {key!r} is not configurable.param")
            continue
        b = Binding(scope, configurable, param, _hparams_value(value), 0)
        cfg.bindings[b.key] = b
    return cfg


def parse_bindings_list(bindings: Iterable[str]) -> GinConfig:
    """Parses command-line style bindings (``--gin_bindings`` values) into a config."""
    return parse_gin("\n".join(str(b) for b in bindings), source="<bindings>")
