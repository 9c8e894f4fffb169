"""What the hardware does natively, so ``auto`` settings pick the fast path.

bfloat16 pays off only where the hardware computes in it: CUDA devices that support it,
and CPUs with AVX512-BF16 or AMX. Elsewhere torch emulates it, and on the 2-core CPUs of
the project's machines a LoRA step ran about 3x slower in bf16 than in float32
(benchmarks/README.md).
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


@cache
def cpu_has_native_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    try:
        flags = next((line for line in Path(cpuinfo).read_text().splitlines()
                      if line.startswith("flags")), "")
    except OSError:
        return False
    return any(flag in flags.split() for flag in CPU_BF16_FLAGS)


def native_bf16() -> bool:
    """True on a CUDA device with bf16, or a CPU with AVX512-BF16/AMX."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    return cpu_has_native_bf16()
