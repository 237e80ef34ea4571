"""Import models and checkpoints of the reference implementation.

The reference (SamsungSAILMontreal/TinyRecursiveModels) saves ``ACTLossHead(model).state_dict()``
with keys such as ``model.inner.L_level.layers.0.mlp.gate_up_proj.weight``, prefixed by
``_orig_mod.`` when the run used torch.compile. Its config is a flat dict of fields
(TRM_SPEC.md section 1). This module maps both onto :class:`trm.models.TRM`:

* :func:`model_kwargs_from_reference_config` — reference config fields -> ``TRM(**kwargs)``
* :func:`convert_reference_state_dict` — reference keys (either spelling; fused or split
  q/k/v and gate/up layouts) -> trm keys
* :func:`load_reference_checkpoint` — load into a model, optionally resizing the puzzle table
  with the reference's rule (every row set to the mean of the saved rows when the number of
  identifiers differs)
* :func:`build_model_from_reference` — all of the above in one call.
"""

from __future__ import annotations

import re
from typing import Any, Dict, Mapping, Optional, Tuple, Union

import torch

from trm.errors import TrmError
from trm.halting import HaltContinue, HaltOnly
from trm.models import TRM

COMPILED_PREFIX = "_orig_mod."
_INNER_PREFIXES = ("model.inner.", "inner.")

# Reference key (after prefixes) -> trm key. Applied in order; the first match wins.
_KEY_RULES: Tuple[Tuple[str, str], ...] = (
    (r"^embed_tokens\.embedding_weight$", "embed_tokens.weight"),
    (r"^embed_pos\.embedding_weight$", "positions.embed_pos.weight"),
    (r"^L_level\.layers\.(\d+)\.self_attn\.(.+)$", r"core.net.layers.\1.mixer.self_attn.\2"),
    (r"^L_level\.layers\.(\d+)\.mlp_t\.(.+)$", r"core.net.layers.\1.mixer.mlp_t.\2"),
    (r"^L_level\.layers\.(\d+)\.mlp\.(.+)$", r"core.net.layers.\1.mlp.\2"),
    (r"^(H_init|L_init|lm_head\.weight|q_head\.weight|q_head\.bias|puzzle_emb\.weights)$", r"\1"),
)

# Split layouts some ports use, fused into the reference's layout: target -> parts in order.
_FUSE_RULES = (
    ("qkv_proj.weight", ("q_proj.weight", "k_proj.weight", "v_proj.weight")),
    ("gate_up_proj.weight", ("gate_proj.weight", "up_proj.weight")),
)


class ReferenceImportError(TrmError, ValueError):
    """The checkpoint or config cannot be mapped onto a trm model."""


def strip_reference_prefixes(key: str) -> str:
    if key.startswith(COMPILED_PREFIX):
        key = key[len(COMPILED_PREFIX):]
    for prefix in _INNER_PREFIXES:
        if key.startswith(prefix):
            return key[len(prefix):]
    return key


def reference_key_to_trm(key: str) -> str:
    """Maps one reference state-dict key (either spelling) to trm's key."""
    short = strip_reference_prefixes(key)
    for pattern, repl in _KEY_RULES:
        if re.match(pattern, short):
            return re.sub(pattern, repl, short)
    raise ReferenceImportError(
        f"Unrecognised reference state-dict key {key!r}: expected keys like "
        "'model.inner.L_level.layers.0.mlp.gate_up_proj.weight' (optionally prefixed by "
        f"'{COMPILED_PREFIX}').")


def _fuse_split_layouts(state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    out = dict(state)
    for fused, parts in _FUSE_RULES:
        for key in list(out):
            if not key.endswith(parts[0]):
                continue
            base = key[: -len(parts[0])]
            names = [base + p for p in parts]
            if all(n in out for n in names):
                out[base + fused] = torch.cat([out.pop(n) for n in names], dim=0)
    return out


def convert_reference_state_dict(state: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Reference state dict -> trm state dict (non-tensor entries are rejected)."""
    fused = _fuse_split_layouts({strip_reference_prefixes(k): v for k, v in state.items()})
    out: Dict[str, torch.Tensor] = {}
    for key, value in fused.items():
        if not isinstance(value, torch.Tensor):
            raise ReferenceImportError(f"State-dict entry {key!r} is not a tensor.")
        new_key = reference_key_to_trm(key)
        if new_key in out:
            raise ReferenceImportError(
                f"Two reference keys map to {new_key!r} (mixed compiled/uncompiled keys?).")
        out[new_key] = value
    return out


def model_kwargs_from_reference_config(config: Mapping[str, Any]) -> Dict[str, Any]:
    """Reference ``TinyRecursiveReasoningModel_ACTV1Config`` fields -> ``TRM`` kwargs."""
    required = ("vocab_size", "seq_len", "hidden_size", "H_cycles", "L_cycles", "L_layers",
                "num_heads", "expansion", "halt_max_steps")
    if not isinstance(config, Mapping):
        raise ReferenceImportError(f"The reference config is a {type(config).__name__}, not a "
                                   "mapping of config fields.")
    missing = [k for k in required if k not in config]
    if missing:
        raise ReferenceImportError(f"Reference config lacks required fields {missing}.")
    try:
        return _model_kwargs(config)
    except (TypeError, ValueError) as e:
        raise ReferenceImportError(f"Reference config has a field of the wrong type: {e}.") \
            from None


def _model_kwargs(config: Mapping[str, Any]) -> Dict[str, Any]:
    """The ``TRM`` kwargs of a reference config that has the required fields."""
    pos = config.get("pos_encodings", "rope")
    explore = float(config.get("halt_exploration_prob", 0.1))
    no_continue = config.get("no_ACT_continue", True)
    return dict(
        vocab_size=int(config["vocab_size"]),
        seq_len=int(config["seq_len"]),
        num_puzzle_identifiers=int(config.get("num_puzzle_identifiers", 1)),
        hidden_size=int(config["hidden_size"]),
        num_layers=int(config["L_layers"]),
        expansion=float(config["expansion"]),
        num_heads=int(config["num_heads"]),
        mixer="mlp" if config.get("mlp_t", False) else "attention",
        positions=pos if pos in ("rope", "learned") else "none",
        core="trm",
        H_cycles=int(config["H_cycles"]),
        L_cycles=int(config["L_cycles"]),
        puzzle_emb_ndim=int(config.get("puzzle_emb_ndim", 0)),
        puzzle_emb_len=int(config.get("puzzle_emb_len", 16)),
        halting=HaltOnly(explore) if no_continue else HaltContinue(explore),
        halt_max_steps=int(config["halt_max_steps"]),
        forward_dtype=str(config.get("forward_dtype", "bfloat16")),
        rms_norm_eps=float(config.get("rms_norm_eps", 1e-5)),
        rope_theta=float(config.get("rope_theta", 10000.0)),
    )


def _read_state(source: Union[str, Mapping[str, torch.Tensor]]) -> Mapping[str, torch.Tensor]:
    """The state dict at ``source``, read as data (a regular file, ``weights_only`` loading:
    no code from the file runs); anything that is not a mapping of names to tensors is a
    one-line :class:`ReferenceImportError` naming the file."""
    from trm.run import storage
    from trm.run.checkpoints import CheckpointError, safe_load
    if isinstance(source, Mapping):
        state: Any = source
    else:
        try:
            state = safe_load(storage.read_bytes(source), source)
        except OSError as e:
            raise ReferenceImportError(f"Cannot read the reference weights {source}: "
                                       f"{e.strerror or e}") from None
        except CheckpointError as e:  # not a torch file, or one that needs unpickling
            raise ReferenceImportError("Reference weights: " + str(e).split(
                " If you wrote this file yourself")[0]) from None
        except Exception as e:
            raise ReferenceImportError(f"{source} is not a weights file (not a torch file: "
                                       f"{type(e).__name__}).") from None
    if isinstance(state, Mapping) and isinstance(state.get("state_dict"), Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping) or not state or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise ReferenceImportError(f"{source if isinstance(source, str) else 'The state'} is "
                                   "not a weights file: expected a mapping of parameter names "
                                   "to tensors (a reference checkpoint).")
    return state


def load_reference_checkpoint(model: TRM, source: Union[str, Mapping[str, torch.Tensor]],
                              *, strict: bool = True, resize_puzzle_table: bool = True
                              ) -> Dict[str, Any]:
    """Loads a reference checkpoint (path, ``gs://`` URL or state dict) into ``model``.

    With ``resize_puzzle_table`` a puzzle table whose number of rows differs from the model's
    is replaced by the mean saved row repeated (the reference's rule), which lets a model
    pretrained on one dataset start on another. Returns ``{"missing": [...],
    "unexpected": [...], "resized_puzzle_table": bool}``.
    """
    state = convert_reference_state_dict(_read_state(source))
    resized = False
    key = "puzzle_emb.weights"
    own = model.state_dict()
    if key in state and key in own and state[key].shape != own[key].shape:
        if not resize_puzzle_table or state[key].shape[1:] != own[key].shape[1:]:
            raise ReferenceImportError(
                f"Puzzle table shape {tuple(state[key].shape)} in the checkpoint does not match "
                f"the model's {tuple(own[key].shape)}" +
                ("" if resize_puzzle_table else " (resize_puzzle_table=False)") + ".")
        state[key] = state[key].mean(0, keepdim=True).expand_as(own[key]).clone()
        resized = True
    for name, value in state.items():
        if name in own and own[name].shape != value.shape:
            raise ReferenceImportError(
                f"Shape mismatch for {name}: checkpoint {tuple(value.shape)} vs model "
                f"{tuple(own[name].shape)}. Build the model from the checkpoint's config.")
        if name in own:
            state[name] = value.to(own[name].dtype)
    result = model.load_state_dict(state, strict=strict)
    return {"missing": list(result.missing_keys), "unexpected": list(result.unexpected_keys),
            "resized_puzzle_table": resized}


def build_model_from_reference(config: Mapping[str, Any],
                               state: Optional[Union[str, Mapping[str, torch.Tensor]]] = None,
                               **overrides: Any) -> TRM:
    """Builds a trm model from reference config fields, optionally loading its weights."""
    kwargs = model_kwargs_from_reference_config(config)
    kwargs.update(overrides)
    model = TRM(**kwargs)
    if state is not None:
        load_reference_checkpoint(model, state)
    return model


def trm_key_to_reference(key: str) -> str:
    """Inverse of :func:`reference_key_to_trm` for keys trm produces."""
    rules = (
        (r"^embed_tokens\.weight$", "embed_tokens.embedding_weight"),
        (r"^positions\.embed_pos\.weight$", "embed_pos.embedding_weight"),
        (r"^core\.net\.layers\.(\d+)\.mixer\.(self_attn|mlp_t)\.(.+)$", r"L_level.layers.\1.\2.\3"),
        (r"^core\.net\.layers\.(\d+)\.mlp\.(.+)$", r"L_level.layers.\1.mlp.\2"),
    )
    for pattern, repl in rules:
        if re.match(pattern, key):
            return "model.inner." + re.sub(pattern, repl, key)
    return "model.inner." + key
