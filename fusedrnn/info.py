"""`python -m fusedrnn.info`: versions, devices, the built extension, and per backend whether it can
serve a typical call here, or why not."""

from __future__ import annotations

import platform

import torch

from . import _ext, backends
from .version import __version__


def _triton_version() -> str:
    try:
        import triton

        return triton.__version__
    except Exception as e:  # noqa: BLE001 - report any import failure as text
        return f"not importable ({type(e).__name__}: {e})"


def report() -> str:
    lines = [
        f"fusedrnn {__version__}",
        f"python {platform.python_version()}, torch {torch.__version__} (CUDA {torch.version.cuda}), "
        f"triton {_triton_version()}",
    ]
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            cap = torch.cuda.get_device_capability(i)
            props = torch.cuda.get_device_properties(i)
            lines.append(f"cuda:{i} {props.name}, compute capability {cap[0]}.{cap[1]}, {props.multi_processor_count} SMs")
        device = torch.device("cuda", torch.cuda.current_device())
    else:
        lines.append("no CUDA device visible")
        device = torch.device("cpu")
    info = _ext.build_info()
    lines.append(f"extension fusedrnn._C: {info}")
    lines.append(f"default backend: {backends.default_backend()} (FUSEDRNN_BACKEND)")
    lines.append(f"backends, for a float32 GRU/LSTM (T=128, B=16, H=256) on {device}:")
    for name in backends.BACKENDS:
        b = backends.REGISTRY[name]
        verdicts = []
        for cell in ("gru", "lstm"):
            p = backends.Problem(cell, device, torch.float32, 128, 16, 256, 256, 256, False, False, False, False)
            reasons = b.reasons(p, forced=False)
            verdicts.append(f"{cell}: " + ("available" if not reasons else "; ".join(reasons)))
        lines.append(f"  {name:<9} {b.description}")
        for v in verdicts:
            lines.append(f"            {v}")
    return "\n".join(lines)


def main() -> None:
    print(report())


if __name__ == "__main__":
    main()
