"""How the CUDA extension is compiled: one place for setup.py (ahead of time, `pip install
--no-build-isolation`) and fusedrnn/_ext.py (JIT, on first use of the cuda backend, for installs
whose build had no torch). Imports neither torch nor the rest of fusedrnn: setup.py loads this file
by its path."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

# SASS for A100 (sm_80) and H100/H200 (sm_90), and compute_90 PTX that the driver JIT-compiles on newer GPUs.
DEFAULT_ARCH_LIST = "8.0;9.0+PTX"
SOURCE_SUFFIXES = (".cpp", ".cu")          # compiled
HEADER_SUFFIXES = (".h", ".cuh")           # included; part of the fingerprint
NVCC_FLAGS = [
    "-O3",
    "-lineinfo",
    "--expt-relaxed-constexpr",
    "-Xptxas=-v",  # register / shared-memory / spill report, read by CI
    "-U__CUDA_NO_HALF_OPERATORS__",
    "-U__CUDA_NO_HALF_CONVERSIONS__",
    "-U__CUDA_NO_BFLOAT16_CONVERSIONS__",
]
CXX_FLAGS = ["-O3"]


def sources(csrc: Path) -> list[Path]:
    return sorted(p for p in Path(csrc).iterdir() if p.suffix in SOURCE_SUFFIXES)


def fingerprint_files(csrc: Path) -> list[Path]:
    return sorted(p for p in Path(csrc).iterdir() if p.suffix in SOURCE_SUFFIXES + HEADER_SUFFIXES)


def source_hash(paths) -> str:
    """The kernel fingerprint of csrc/ (fusedrnn.evidence: GPU validation vouches for one fingerprint)."""
    h = hashlib.sha256()
    for p in sorted(paths, key=os.path.basename):
        h.update(os.path.basename(p).encode())
        with open(p, "rb") as f:
            h.update(f.read())
    return h.hexdigest()[:16]


def defines(torch_version: str, cuda_version: str, arch_list: str, src_hash: str) -> list[str]:
    """The build metadata compiled into the extension (csrc/bindings.cpp: build_info())."""
    return [
        f'-DFUSEDRNN_TORCH_VERSION="{torch_version}"',
        f'-DFUSEDRNN_CUDA_VERSION="{cuda_version}"',
        f'-DFUSEDRNN_ARCH_LIST="{arch_list}"',
        f'-DFUSEDRNN_SOURCE_HASH="{src_hash}"',
    ]


def find_cuda_home() -> None:
    """torch guesses CUDA_HOME from the nvcc on PATH; a wrapper such as /usr/local/bin/nvcc makes it
    guess /usr/local, which has no CUDA libraries. Prefer the toolkit's own directory (call before
    torch.utils.cpp_extension is imported)."""
    if os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH"):
        return
    for candidate in ("/usr/local/cuda",):
        if os.path.exists(os.path.join(candidate, "bin", "nvcc")):
            os.environ["CUDA_HOME"] = candidate
            return
