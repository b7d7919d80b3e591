"""torch's switches that decide the precision of fp32 matmuls, read the same way by every backend."""

import torch


def cuda_matmul_allows_tf32() -> bool:
    """torch's TF32 switch for fp32 matmuls on CUDA. Reading the legacy ``allow_tf32`` raises
    (torch >= 2.9) once the new ``fp32_precision`` API has been used, so fall back to that."""
    m = torch.backends.cuda.matmul
    try:
        return bool(m.allow_tf32)
    except RuntimeError:
        p = getattr(m, "fp32_precision", "none")
        if p == "none":
            p = getattr(torch.backends, "fp32_precision", "ieee")
        return p == "tf32"
