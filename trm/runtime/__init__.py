"""Device and process runtime: PyTorch/XLA (TPU or XLA:CPU), CUDA, or plain CPU."""

from trm.runtime.device import (DeviceError, cpu_has_native_bf16, default_forward_dtype, is_xla_available, matmul_flops,
                                peak_memory_bytes, select_device, synchronize,
                                tune_cpu_allocator)
from trm.runtime.distributed import Runtime, init_runtime, local_runtime

__all__ = ["DeviceError", "Runtime", "cpu_has_native_bf16", "default_forward_dtype", "init_runtime", "is_xla_available",
           "local_runtime", "matmul_flops", "peak_memory_bytes", "select_device", "synchronize",
           "tune_cpu_allocator"]
