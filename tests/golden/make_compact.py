"""Derives the compact golden files shipped in tests/golden/ from the full ones in
../shared/golden/ (see README.md next to this file).

    python tests/golden/make_compact.py [--src ../shared/golden] [--out tests/golden]

A compact file has the format of a full one (``trm.interop.replay`` replays either) and keeps,
unchanged and in float64 where the full file has float64:

* ``meta``, ``state_dict`` (every weight: the model cannot be built from less), the key lists,
  ``num_params``, every train batch and the eval batch;
* for every train and eval step: loss, metrics, logits, q logits, preds, halted, steps and the
  carry's current data; the latents ``z_H`` / ``z_L`` only at the last train step and the last
  eval step (they depend on every earlier step's latents);
* ``grads`` and the AdamATan2 parameters after 1 and 2 steps for the parameters with at most
  ``MAX_NUMEL`` elements (embeddings, LM and Q heads, the token-mixing MLP or the attention
  output projection of each layer; their gradients flow back through the whole network), the
  puzzle embedding's local gradient and ids, and the SignSGD puzzle table.

``meta['compact']`` names the source file and its SHA-256 and what was left out.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
from typing import Any, Dict

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
SHARED = os.path.join(os.path.dirname(REPO), "shared", "golden")
FILES = ("trm_tiny_mlp.pt", "trm_tiny_attention_rope.pt")
MAX_NUMEL = 16384
LATENTS = ("z_H", "z_L")


def _own(x: Any) -> Any:
    """A deep copy in which every tensor owns its storage (torch.save writes whole storages)
    and every string is a plain ``str`` (``TorchVersion`` is one, but needs an allow-list)."""
    if isinstance(x, torch.Tensor):
        return x.detach().clone()
    if isinstance(x, dict):
        return {k: _own(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_own(v) for v in x]
    if isinstance(x, tuple):
        return tuple(_own(v) for v in x)
    if isinstance(x, str):
        return str(x)
    return x


def _kept_param(name: str, value: torch.Tensor) -> bool:
    return "puzzle_emb.local_" in name or value.numel() <= MAX_NUMEL


def compact(golden: Dict[str, Any], source: str = "", sha256: str = "") -> Dict[str, Any]:
    """The compact form of a full golden file (a new dict; ``golden`` is not changed)."""
    out = {k: v for k, v in golden.items()
           if k not in ("train_steps", "eval_steps", "grads", "optim_check")}
    for key in ("train_steps", "eval_steps"):
        steps = []
        for t, record in enumerate(golden[key]):
            last = t == len(golden[key]) - 1
            steps.append({k: v for k, v in record.items() if last or k not in LATENTS})
        out[key] = steps
    grads = golden["grads"]
    out["grads"] = {k: v for k, v in grads.items() if _kept_param(k, v)}
    oc = dict(golden["optim_check"])
    for key in ("params_after_1", "params_after_2"):
        oc[key] = {k: v for k, v in oc[key].items() if k in out["grads"]}
    out["optim_check"] = oc
    dropped = sorted(k for k in grads if k not in out["grads"])
    out["meta"] = dict(golden["meta"], compact={
        "source": source, "source_sha256": sha256, "script": "tests/golden/make_compact.py",
        "latents": "z_H and z_L only at the last train step and the last eval step",
        "max_numel": MAX_NUMEL,
        "grads_and_optim_left_out": dropped,
    })
    return _own(out)


def sha256_of(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def make(src_path: str, out_path: str) -> Dict[str, Any]:
    from trm.interop.replay import load_golden
    small = compact(load_golden(src_path), os.path.basename(src_path), sha256_of(src_path))
    torch.save(small, out_path)
    return small


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python tests/golden/make_compact.py",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--src", default=SHARED, help="folder of the full golden files")
    parser.add_argument("--out", default=HERE, help="folder for the compact files")
    args = parser.parse_args(argv)
    for name in FILES:
        src, dst = os.path.join(args.src, name), os.path.join(args.out, name)
        if not os.path.exists(src):
            print(f"{src}: not found", file=sys.stderr)
            return 1
        make(src, dst)
        print(f"{dst}: {os.path.getsize(dst) / 1e6:.2f} MB (from {os.path.getsize(src) / 1e6:.2f}"
              " MB)")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, REPO)
    sys.exit(main())
