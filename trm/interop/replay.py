"""Replay a golden file of the reference implementation and compare trm against it.

    python -m trm.interop.replay GOLDEN.pt [GOLDEN2.pt ...] [--verbose]

The model is built from the golden file's ``meta['config']`` alone (any reference config),
its weights imported from ``state_dict``, then every recorded train and eval step is
replayed (see shared/golden/README.md for the procedure). For each quantity the maximum
absolute difference is printed. Floats must satisfy ``|a - b| <= 1e-5 + 1e-4·|b|``
elementwise (b = golden), integers and booleans must be equal. Exit status 0 only if
everything agrees.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Any, Dict, List, Mapping, Optional

import torch

from trm.errors import TrmError
from trm.interop.reference import (ReferenceImportError, build_model_from_reference,
                                   model_kwargs_from_reference_config, trm_key_to_reference)
from trm.losses import ACTLoss
from trm.models import TRM
from trm.optim import AdamATan2, SignSGD

ATOL = 1e-5
RTOL = 1e-4


@dataclasses.dataclass
class Check:
    name: str
    max_abs_diff: float
    ok: bool
    exact: bool
    detail: str = ""


def compare(name: str, ours: Any, golden: Any) -> Check:
    """Compares one quantity (tensor, number or bool) with the golden value."""
    g = golden if isinstance(golden, torch.Tensor) else torch.tensor(golden)
    o = ours if isinstance(ours, torch.Tensor) else torch.tensor(ours)
    o = o.detach().cpu()
    if o.shape != g.shape:
        return Check(name, float("inf"), False, True,
                     f"shape {tuple(o.shape)} != golden {tuple(g.shape)}")
    if g.dtype.is_floating_point:
        o64, g64 = o.to(torch.float64), g.to(torch.float64)
        if not torch.isfinite(o64).all() or not torch.isfinite(g64).all():
            same = torch.equal(torch.isnan(o64), torch.isnan(g64))
            fin = torch.isfinite(g64)
            ok = same and bool(torch.equal(o64[~fin], g64[~fin]) or not (~fin).any())
            o64, g64 = o64[fin], g64[fin]
        else:
            ok = True
        diff = (o64 - g64).abs()
        ok = ok and bool((diff <= ATOL + RTOL * g64.abs()).all())
        return Check(name, float(diff.max()) if diff.numel() else 0.0, ok, False)
    equal = torch.equal(o.to(g.dtype), g)
    mism = int((o.to(g.dtype) != g).sum()) if o.numel() else 0
    return Check(name, 0.0 if equal else float(mism), equal, True,
                 "" if equal else f"{mism} element(s) differ")


def _step_checks(prefix: str, carry, outputs, loss, metrics, preds,
                 record: Mapping[str, Any]) -> List[Check]:
    checks = [compare(f"{prefix}.loss", loss, record["loss"])]
    for key, value in record["metrics"].items():
        if key not in metrics:
            checks.append(Check(f"{prefix}.metrics.{key}", float("inf"), False, True, "missing"))
            continue
        checks.append(compare(f"{prefix}.metrics.{key}", metrics[key], value))
    for key in ("logits", "q_halt_logits", "q_continue_logits"):
        checks.append(compare(f"{prefix}.{key}", outputs[key], record[key]))
    checks.append(compare(f"{prefix}.preds", preds, record["outputs"]["preds"]))
    checks.append(compare(f"{prefix}.halted", carry.halted, record["halted"]))
    checks.append(compare(f"{prefix}.steps", carry.steps, record["steps"]))
    for key, value in record["current_data"].items():
        checks.append(compare(f"{prefix}.current_data.{key}", carry.current_data[key], value))
    for key in ("z_H", "z_L"):  # compact golden files keep the latents of some steps only
        if key in record:
            checks.append(compare(f"{prefix}.{key}", getattr(carry, key), record[key]))
    if "all_halted" in record:
        checks.append(compare(f"{prefix}.all_halted", bool(carry.halted.all()),
                              record["all_halted"]))
    return checks


def _param_by_reference_name(model: TRM) -> Dict[str, torch.nn.Parameter]:
    return {trm_key_to_reference(n): p for n, p in model.named_parameters()}


def replay(golden: Mapping[str, Any], model: Optional[TRM] = None) -> List[Check]:
    """Replays every step of ``golden`` with a trm model; returns one Check per quantity."""
    config = golden["meta"]["config"]
    if model is None:
        model = build_model_from_reference(config, golden["state_dict"])
    loss_head = ACTLoss()
    checks: List[Check] = []
    if "num_params" in golden:
        checks.append(compare("num_params", model.num_params(), golden["num_params"]))

    # Train mode: batch t at ACT step t; step 0's raw loss is back-propagated.
    model.train()
    batches = golden["train_batches"]
    carry = model.initial_carry(batches[0])
    for t, (batch, record) in enumerate(zip(batches, golden["train_steps"])):
        model.zero_grad(set_to_none=True)
        carry, outputs = model(carry, batch)
        loss, metrics, preds = loss_head(carry, outputs)
        checks += _step_checks(f"train[{t}]", carry, outputs, loss, metrics, preds, record)
        if t == 0 and "grads" in golden:
            loss.backward()
            checks += _grad_checks(model, golden["grads"])

    # Eval mode: the same batch until every row halted.
    model.eval()
    with torch.no_grad():
        batch = golden["eval_batch"]
        carry = model.initial_carry(batch)
        for t, record in enumerate(golden["eval_steps"]):
            carry, outputs = model(carry, batch)
            loss, metrics, preds = loss_head(carry, outputs)
            checks += _step_checks(f"eval[{t}]", carry, outputs, loss, metrics, preds, record)
        checks.append(Check("eval.steps_until_all_halted", 0.0,
                            bool(carry.halted.all()) and len(golden["eval_steps"]) ==
                            model.eval_halt_max_steps, True))

    if "optim_check" in golden:
        checks += _optim_checks(golden)
    return checks


def _grad_checks(model: TRM, grads: Mapping[str, torch.Tensor]) -> List[Check]:
    checks = []
    params = _param_by_reference_name(model)
    for name, value in grads.items():
        short = name.replace("_orig_mod.", "")
        if short.endswith("puzzle_emb.local_weights"):
            local = model.puzzle_emb.local_weights
            ours = None if local is None else local.grad
        elif short.endswith("puzzle_emb.local_ids"):
            ours = model.puzzle_emb.local_ids
        else:
            p = params.get(short)
            ours = None if p is None else p.grad
        if ours is None:
            checks.append(Check(f"grad.{short}", float("inf"), False, False, "no gradient"))
        else:
            checks.append(compare(f"grad.{short}", ours, value))
    return checks


def _optim_checks(golden: Mapping[str, Any]) -> List[Check]:
    """Runs trm's optimizers on the golden step-0 gradients from the golden weights."""
    oc = golden["optim_check"]
    model = build_model_from_reference(golden["meta"]["config"], golden["state_dict"])
    params = _param_by_reference_name(model)
    grads = golden["grads"]
    for name, p in params.items():  # compact golden files hold some parameters' gradients
        p.grad = grads[name].clone().to(p.dtype) if name in grads else None
    adam = AdamATan2([p for p in params.values() if p.grad is not None], lr=oc["adam"]["lr"],
                     betas=oc["adam"]["betas"],
                     weight_decay=oc["adam"]["weight_decay"])
    checks = []
    for k, key in ((1, "params_after_1"), (2, "params_after_2")):
        adam.step()
        for name, value in oc[key].items():
            checks.append(compare(f"optim.adam_atan2.step{k}.{name}", params[name], value))

    emb = model.puzzle_emb
    emb.train()
    emb.local_weights = emb.weights[grads["model.inner.puzzle_emb.local_ids"].long()].clone()
    emb.local_weights.requires_grad_(True)
    emb.local_weights.grad = grads["model.inner.puzzle_emb.local_weights"].clone()
    emb.local_ids = grads["model.inner.puzzle_emb.local_ids"]
    sgd = SignSGD(emb, lr=oc["signsgd"]["lr"], weight_decay=oc["signsgd"]["weight_decay"])
    sgd.step()
    checks.append(compare("optim.sign_sgd.puzzle_emb.weights", emb.weights,
                          oc["puzzle_emb_weights_after"]))
    return checks


class GoldenError(TrmError, ValueError):
    """The file is not a readable golden file of the reference."""


GOLDEN_KEYS = ("meta", "state_dict", "train_batches", "train_steps")


def load_golden(path: str) -> Dict[str, Any]:
    """Reads a golden file without running code from it (``weights_only`` loading; the only
    non-container class allowed is ``TorchVersion``, a ``str``). Raises :class:`GoldenError`
    (one line naming the file) for anything else."""
    from trm.run import storage
    from trm.run.checkpoints import (CheckpointError, UnsafeCheckpointError,
                                     safe_load)
    try:
        data = storage.read_bytes(path)
    except OSError as e:
        raise GoldenError(f"{path}: cannot read it ({e.strerror or e}).") from e
    try:
        golden = safe_load(data, path, extra_globals=[torch.torch_version.TorchVersion])
    except UnsafeCheckpointError as e:
        raise GoldenError(str(e).replace(" If you wrote this file yourself and trust it, load "
                                         "it with --trust_checkpoint.", "")) from e
    except CheckpointError as e:
        raise GoldenError(f"{path} is not a golden file ({e.__cause__ or e}).") from e
    except Exception as e:
        raise GoldenError(f"{path} is not a golden file (not a torch file: "
                          f"{type(e).__name__}).") from e
    missing = [k for k in GOLDEN_KEYS if not isinstance(golden, dict) or k not in golden]
    if missing:
        raise GoldenError(f"{path} is not a golden file of the reference: it lacks "
                          f"{', '.join(missing)} (see shared/golden/README.md).")
    problem = _structure_problem(golden)
    if problem:
        raise GoldenError(f"{path} is not a golden file of the reference: {problem} (see "
                          "shared/golden/README.md).")
    return golden


def _structure_problem(golden: Dict[str, Any]) -> Optional[str]:
    """What in a golden file's structure replay cannot use (None if nothing)."""
    meta, batches, steps = golden["meta"], golden["train_batches"], golden["train_steps"]
    if not isinstance(meta, dict) or not isinstance(meta.get("config"), dict):
        return "its meta holds no config (the reference's config fields)"
    if not isinstance(golden["state_dict"], dict):
        return "its state_dict is not a mapping"
    if not isinstance(batches, list) or not isinstance(steps, list) or not batches or \
            len(batches) != len(steps):
        return "train_batches and train_steps must be lists of the same, non-zero length"
    if not all(isinstance(b, dict) for b in batches) or \
            not all(isinstance(r, dict) for r in steps):
        return "each train batch and step record must be a mapping"
    if not isinstance(golden.get("eval_batch"), dict) or \
            not isinstance(golden.get("eval_steps"), list):
        return "it lacks eval_batch (a mapping) or eval_steps (a list)"
    return None


def format_report(path: str, checks: List[Check], verbose: bool = False) -> str:
    groups: Dict[str, List[Check]] = {}
    for c in checks:
        # Group per quantity across steps: train[3].z_H -> train.z_H
        key = c.name.split("[")[0] + c.name[c.name.index("]") + 1:] if "[" in c.name else c.name
        groups.setdefault(key, []).append(c)
    lines = [f"== {path}"]
    width = max(len(k) for k in groups)
    for key, cs in groups.items():
        ok = all(c.ok for c in cs)
        worst = max(c.max_abs_diff for c in cs)
        kind = "exact" if cs[0].exact else "max|diff|"
        details = "; ".join(f"{c.name}: {c.detail}" for c in cs if c.detail and not c.ok)
        if verbose or not ok or True:
            lines.append(f"  {'ok  ' if ok else 'FAIL'} {key:<{width}}  {kind} "
                         f"{worst:.3e}" + (f"  ({details})" if details else ""))
    failed = sum(not c.ok for c in checks)
    lines.append(f"  {len(checks) - failed} of {len(checks)} checks passed"
                 + ("" if not failed else f", {failed} FAILED"))
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trm.interop.replay", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("golden", nargs="+", help="golden .pt file(s) of the reference")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    all_ok = True
    for path in args.golden:
        try:
            golden = load_golden(path)
            kwargs = model_kwargs_from_reference_config(golden["meta"]["config"])
            print(f"model: {TRM.__name__}({', '.join(f'{k}={v!r}' for k, v in kwargs.items())})")
            checks = replay(golden)
        except (GoldenError, ReferenceImportError) as e:
            print(f"python -m trm.interop.replay: {e}", file=sys.stderr)
            return 2
        except (KeyError, TypeError, IndexError, ValueError, RuntimeError) as e:
            print(f"python -m trm.interop.replay: {path} does not fit the golden format: "
                  f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''} "
                  "(see shared/golden/README.md).", file=sys.stderr)
            return 2
        print(format_report(path, checks))
        all_ok &= all(c.ok for c in checks)
    print("PARITY OK" if all_ok else "PARITY FAILED")
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main())
