"""Builds and loads the CPU emulator of the CUDA kernels (csrc/emu/, see its README).

The emulator module has the same ``gru_forward`` ... ``launch_shape`` / ``plan`` functions as
fusedrnn._C, built from the same csrc/ sources with -DFUSEDRNN_EMULATE by the host compiler, and takes
CPU tensors. ``use_emulator(monkeypatch)`` points fusedrnn.backends.cuda at it, so the cuda backend's
custom ops and autograd run unchanged on the CPU.
"""

from __future__ import annotations

import functools
import hashlib
import os
import pathlib
import re
import shutil
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
CSRC = ROOT / "csrc"
SOURCES = [CSRC / "rnn_ops.cpp"]
SOURCES += [CSRC / "emu" / f for f in ("bindings.cpp", "runtime.cpp", "selftest.cpp")]
SOURCES += [CSRC / "emu" / f"kernels_{k}.cpp"
            for k in ("gru_fwd", "gru_bwd", "lstm_fwd", "lstm_bwd", "rnn_fwd", "rnn_bwd")]


def cuda_include_dir() -> pathlib.Path | None:
    """A directory with cuda_fp16.h / cuda_runtime.h (host-usable headers), or None."""
    candidates = []
    from torch.utils import cpp_extension

    if cpp_extension.CUDA_HOME:
        candidates.append(pathlib.Path(cpp_extension.CUDA_HOME) / "include")
    candidates.append(pathlib.Path("/usr/local/cuda/include"))
    for c in candidates:
        if (c / "cuda_fp16.h").is_file() and (c / "cuda_runtime.h").is_file():
            return c
    return None


def unavailable_reason() -> str | None:
    if cuda_include_dir() is None:
        return "no CUDA headers (cuda_fp16.h) for the emulator build: install the CUDA toolkit"
    if shutil.which(os.environ.get("CXX", "c++")) is None:
        return "no C++ compiler for the emulator build"
    return None


def _digest() -> str:
    h = hashlib.sha256()
    for p in sorted(CSRC.rglob("*")):
        if p.suffix in (".cpp", ".cu", ".cuh", ".h"):
            h.update(p.relative_to(CSRC).as_posix().encode())
            h.update(p.read_bytes())
    return h.hexdigest()[:12]


@functools.cache
def load():
    """Build (once per source version; cached by torch's extension builder) and import the emulator."""
    import torch
    from torch.utils import cpp_extension

    inc = cuda_include_dir()
    return cpp_extension.load(
        # Any change under csrc/ is a new module (no stale builds), and each Python and torch builds its
        # own: with TORCH_EXTENSIONS_DIR set, two stacks share one folder, and a torch that finds
        # another torch's build lock there waits on it for ever.
        name=re.sub(r"\W", "_", f"fusedrnn_emu_{_digest()}_{sys.implementation.cache_tag}_torch{torch.__version__}"),
        sources=[str(s) for s in SOURCES],
        extra_cflags=["-O1", "-DFUSEDRNN_EMULATE", f"-I{inc}", f"-I{CSRC}"],
        verbose=False,
    )


def use_emulator(monkeypatch):
    """Make fusedrnn.backends.cuda call the emulator instead of fusedrnn._C; returns the emulator module."""
    from fusedrnn.backends import cuda as cuda_ops

    emu = load()
    monkeypatch.setattr(cuda_ops, "_ext", lambda: emu)
    return emu
