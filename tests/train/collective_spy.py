"""``python tests/train/collective_spy.py OUT_DIR <trm.train flags>``: runs ``trm.train``
with every torch.distributed collective recording the dtypes it carries (written to
OUT_DIR/rank<RANK>.json at exit). Object collectives are recorded too: they send int64
sizes internally."""

import atexit
import json
import os
import sys

import torch
import torch.distributed as dist

SEEN = []
TENSOR_COLLECTIVES = ("all_reduce", "all_gather", "all_gather_into_tensor", "broadcast",
                      "reduce", "reduce_scatter", "reduce_scatter_tensor", "all_to_all",
                      "all_to_all_single", "gather", "scatter")
OBJECT_COLLECTIVES = ("all_gather_object", "broadcast_object_list", "gather_object",
                      "scatter_object_list")


def _tensors(values):
    for v in values:
        if isinstance(v, torch.Tensor):
            yield v
        elif isinstance(v, (list, tuple)):
            yield from _tensors(v)


def _spy(name, fn):
    def wrapper(*args, **kwargs):
        dtypes = sorted({str(t.dtype) for t in _tensors(list(args) + list(kwargs.values()))})
        SEEN.append({"op": name, "dtypes": dtypes if name in TENSOR_COLLECTIVES else ["object"]})
        return fn(*args, **kwargs)
    return wrapper


for _name in TENSOR_COLLECTIVES + OBJECT_COLLECTIVES:
    setattr(dist, _name, _spy(_name, getattr(dist, _name)))

if __name__ == "__main__":
    out = os.path.join(sys.argv.pop(1), f"rank{os.environ.get('RANK', '0')}.json")
    atexit.register(lambda: json.dump(SEEN, open(out, "w")))
    from trm.train import run
    run(sys.argv)
