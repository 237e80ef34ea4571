"""Device and process runtime: PyTorch/XLA (TPU or XLA:CPU), CUDA, or plain CPU."""

from trm.runtime.device import (Runtime, default_forward_dtype, is_xla_available, matmul_flops,
                                tune_cpu_allocator,
                                peak_memory_bytes, select_device, synchronize)

__all__ = ["Runtime", "default_forward_dtype", "is_xla_available", "matmul_flops", "tune_cpu_allocator",
           "peak_memory_bytes", "select_device", "synchronize"]
