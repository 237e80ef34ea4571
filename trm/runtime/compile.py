"""``COMPILE = True``: torch.compile of the recursion's reasoning networks on the CPU or a CUDA GPU.

Each reasoning network of the core (the input injection and its stack of blocks; with
activation checkpointing, each block) is compiled in place (``nn.Module.compile``), so parameter
names, checkpoints and the EMA are the same as without compilation. Graphs are built
at the first step (the gradient-free cycles, the last cycle with gradients and evaluation each
get their own) and cached on disk by torch for later runs of the same shapes.

What it buys on a CPU (docs/BENCHMARKS.md): 5-14% less time per float32 training step (the
CPU twins: 11-14%), the elementwise work (SwiGLU, the RMS norms, residual adds) fused; the
matrix products, most of the step, are unchanged. Compilation costs 10-30 s at the first
steps (less when torch's on-disk cache has the graphs). Under XLA the whole step is already
one compiled graph: ``COMPILE = True`` is an error there, as it is on a CPU without a C++
compiler (torch's inductor builds C++ kernels).
"""

from __future__ import annotations

import torch
from torch import nn

from trm.errors import TrmError


class CompileError(TrmError):
    """``COMPILE = True`` cannot work on this device or machine."""


def check_can_compile(device: torch.device) -> None:
    """Raises :class:`CompileError` where ``COMPILE = True`` cannot run on ``device``."""
    if device.type == "xla":
        raise CompileError("COMPILE=True is for the CPU and CUDA: under XLA the whole training "
                           "step is already compiled into one graph. Set COMPILE = False (gin "
                           "macro; TrainConfig.compile).")
    if device.type == "cpu":
        from torch._inductor import cpp_builder, exc
        try:
            cpp_builder.get_cpp_compiler()
        except exc.InvalidCxxCompiler as e:
            raise CompileError(
                f"COMPILE=True on the CPU needs a C++ compiler (torch.compile builds C++ "
                f"kernels) and none works here ({str(e).strip()}): install one (e.g. apt "
                "install g++), point $CXX at one, or set COMPILE = False.") from None


def compile_core(model: nn.Module, device: torch.device) -> str:
    """torch.compile, in place, every reasoning network of ``model``'s recursion core
    (:class:`~trm.models.cores.ReasoningNet`: the input injection and its blocks, any registered
    block type, as one graph); where a network checkpoints activations, each of its blocks
    instead (the checkpoint stays outside the compiled graphs). Returns what was compiled, for
    the log; raises :class:`CompileError` (see :func:`check_can_compile`)."""
    from trm.models.cores import ReasoningNet
    check_can_compile(device)
    nets = blocks = 0
    for net in model.modules():
        if not isinstance(net, ReasoningNet) or net._compiled_call_impl is not None:
            continue
        if net.activation_checkpointing:
            for block in net.layers:
                if block._compiled_call_impl is None:
                    block.compile()
                    blocks += 1
        else:
            net.compile()
            nets += 1
    return f"{nets} reasoning network(s), {blocks} block(s)"
