"""Device and process runtime: PyTorch/XLA (TPU or XLA:CPU), CUDA, or plain CPU."""

from trm.runtime.device import (DeviceError, choose_cpu_threads, cpu_has_native_bf16,
                                default_forward_dtype, forward_dtype_rule, is_xla_available,
                                matmul_flops, peak_memory_bytes, select_device, synchronize,
                                tune_cpu_allocator)
from trm.runtime.distributed import Runtime, init_runtime, local_runtime

__all__ = ["DeviceError", "Runtime", "choose_cpu_threads", "cpu_has_native_bf16",
           "default_forward_dtype", "forward_dtype_rule", "init_runtime", "is_xla_available",
           "local_runtime", "matmul_flops", "peak_memory_bytes", "select_device", "synchronize",
           "tune_cpu_allocator"]
