"""Which device and precision to compute in, decided once for training and generation alike."""

from __future__ import annotations

import torch


def pick_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def bf16_native() -> bool:
    """bf16 on CUDA, or on a CPU whose oneDNN kernels do bf16 natively (AVX512-BF16, AMX)."""
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def resolve_dtype(precision: str) -> torch.dtype:
    """`auto` is bf16 where the hardware does it natively (about 1.4-1.8x faster on such CPUs), else fp32."""
    if precision == "auto":
        return torch.bfloat16 if bf16_native() else torch.float32
    return {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp32": torch.float32, "float32": torch.float32}[precision]
