"""Build and install fusedrnn.

    pip install --no-build-isolation .

torch must already be importable (the CUDA extension is built against the installed torch).
The extension ``fusedrnn._C`` is built from csrc/ with torch's cpp_extension and ninja whenever a
CUDA toolkit and a CUDA build of torch are present, also with no GPU visible.

Environment switches:
  FUSEDRNN_SKIP_CUDA_BUILD=1   install without the CUDA extension
  TORCH_CUDA_ARCH_LIST         target archs (default "8.0;9.0": A100 and H100/H200)
  MAX_JOBS                     parallel compile jobs (default: from cores and memory)
"""

import glob
import hashlib
import os
import sys

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))
DEFAULT_ARCH_LIST = "8.0;9.0"


def _say(msg: str) -> None:
    print(f"fusedrnn setup: {msg}", file=sys.stderr)


def _default_max_jobs() -> str:
    # nvcc on these kernels peaks near 2 GB per job; keep one job per 2.5 GB and per core.
    cores = os.cpu_count() or 1
    try:
        mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError):
        mem_gb = 4.0
    return str(max(1, min(cores, int(mem_gb // 2.5))))


def _find_cuda_home() -> None:
    # torch guesses CUDA_HOME from the nvcc on PATH; a wrapper such as /usr/local/bin/nvcc makes it
    # guess /usr/local, which has no CUDA libraries. Prefer the toolkit's own directory.
    if os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH"):
        return
    for candidate in ("/usr/local/cuda",):
        if os.path.exists(os.path.join(candidate, "bin", "nvcc")):
            os.environ["CUDA_HOME"] = candidate
            return


def source_hash(paths) -> str:
    """The kernel fingerprint of csrc/ (fusedrnn.evidence: GPU validation vouches for one fingerprint)."""
    h = hashlib.sha256()
    for p in sorted(paths, key=os.path.basename):
        h.update(os.path.basename(p).encode())
        with open(p, "rb") as f:
            h.update(f.read())
    return h.hexdigest()[:16]


def _nvcc_version(cuda_home: str) -> str | None:
    """The toolkit release nvcc reports ("12.4"), or None if it cannot be run."""
    import re
    import subprocess

    try:
        out = subprocess.run([os.path.join(cuda_home, "bin", "nvcc"), "--version"], capture_output=True, text=True,
                             timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(r"release (\d+\.\d+)", out)
    return m.group(1) if m else None


def cuda_extensions():
    if os.environ.get("FUSEDRNN_SKIP_CUDA_BUILD", "0") == "1":
        _say("FUSEDRNN_SKIP_CUDA_BUILD=1: installing without the CUDA extension")
        return [], {}
    _find_cuda_home()
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CUDAExtension
    except ImportError:
        _say("torch is not importable; install torch first and use `pip install --no-build-isolation .`")
        raise
    has_nvcc = CUDA_HOME is not None and os.path.exists(os.path.join(CUDA_HOME, "bin", "nvcc"))
    if torch.version.cuda is None or not has_nvcc:
        why = "torch is a CPU build" if torch.version.cuda is None else "no CUDA toolkit found (CUDA_HOME/nvcc)"
        _say(f"{why}: installing without the CUDA extension (the cuda backend will be unavailable)")
        return [], {}

    nvcc_version = _nvcc_version(CUDA_HOME)
    if nvcc_version is not None and nvcc_version.split(".")[0] != torch.version.cuda.split(".")[0]:
        _say(
            f"torch was built with CUDA {torch.version.cuda} but nvcc is CUDA {nvcc_version} ({CUDA_HOME}): the CUDA "
            f"major version differs, so the build will fail or the extension will not load; point CUDA_HOME at a "
            f"CUDA {torch.version.cuda.split('.')[0]}.x toolkit, or set FUSEDRNN_SKIP_CUDA_BUILD=1"
        )
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", DEFAULT_ARCH_LIST)
    os.environ.setdefault("MAX_JOBS", _default_max_jobs())
    sources = sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/*.cu"))
    build_defines = [
        f'-DFUSEDRNN_TORCH_VERSION="{torch.__version__}"',
        f'-DFUSEDRNN_CUDA_VERSION="{torch.version.cuda}"',
        f'-DFUSEDRNN_ARCH_LIST="{os.environ["TORCH_CUDA_ARCH_LIST"]}"',
        f'-DFUSEDRNN_SOURCE_HASH="{source_hash(sources + glob.glob("csrc/*.h") + glob.glob("csrc/*.cuh"))}"',
    ]
    nvcc_flags = [
        "-O3",
        "-lineinfo",
        "--expt-relaxed-constexpr",
        "-Xptxas=-v",  # register / shared-memory / spill report, read by CI
        "-U__CUDA_NO_HALF_OPERATORS__",
        "-U__CUDA_NO_HALF_CONVERSIONS__",
        "-U__CUDA_NO_BFLOAT16_CONVERSIONS__",
    ]
    _say(
        f"building fusedrnn._C for arch {os.environ['TORCH_CUDA_ARCH_LIST']} with CUDA {torch.version.cuda} "
        f"(MAX_JOBS={os.environ['MAX_JOBS']})"
    )
    # No -std flag: cpp_extension picks the standard the installed torch needs (C++17 or C++20).
    ext = CUDAExtension(
        name="fusedrnn._C",
        sources=sources,
        include_dirs=[os.path.join(ROOT, "csrc")],
        extra_compile_args={"cxx": ["-O3"] + build_defines, "nvcc": nvcc_flags + build_defines},
    )
    return [ext], {"build_ext": BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = cuda_extensions()

setup(
    packages=["fusedrnn", "fusedrnn.backends", "fusedrnn.kernels", "fusedrnn.bench"],
    package_dir={"fusedrnn": "fusedrnn", "fusedrnn.kernels": "kernels", "fusedrnn.bench": "bench"},
    package_data={"fusedrnn": ["gpu_records/*.json"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
