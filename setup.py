"""Build and install fusedrnn.

    pip install --no-build-isolation .   # torch importable: fusedrnn._C is built ahead of time
    pip wheel --no-build-isolation .     # a wheel holding the prebuilt extension
    pip install .                        # pip's build isolation (an index, an sdist): no torch here,
                                         # so no prebuilt extension; the cuda backend JIT-compiles
                                         # it on first use (fusedrnn/_ext.py)

With torch importable, the extension ``fusedrnn._C`` is built from csrc/ with torch's cpp_extension
and ninja whenever a CUDA toolkit and a CUDA build of torch are present, also with no GPU visible.
Either way the CUDA sources are installed as fusedrnn/csrc/ for the JIT build.

Environment switches:
  FUSEDRNN_SKIP_CUDA_BUILD=1   install without the CUDA extension
  TORCH_CUDA_ARCH_LIST         target archs (default "8.0;9.0+PTX": A100, H100/H200, PTX for newer GPUs)
  MAX_JOBS                     parallel compile jobs (default: from cores and memory)
"""

import importlib.util
import os
import sys

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _load_build_module():
    # fusedrnn/_build.py by its path: importing the fusedrnn package would import torch.
    spec = importlib.util.spec_from_file_location("_fusedrnn_build", os.path.join(ROOT, "fusedrnn", "_build.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_build = _load_build_module()
DEFAULT_ARCH_LIST = _build.DEFAULT_ARCH_LIST
source_hash = _build.source_hash


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
    _build.find_cuda_home()
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CUDAExtension
    except ImportError:
        _say("torch is not importable here (pip's build isolation): installing without a prebuilt CUDA extension; "
             "the cuda backend compiles it on first use (for one ahead of time: pip install --no-build-isolation .)")
        return [], {}
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
    csrc = os.path.join(ROOT, "csrc")
    sources = [os.path.relpath(p, ROOT) for p in _build.sources(csrc)]
    build_defines = _build.defines(torch.__version__, torch.version.cuda, os.environ["TORCH_CUDA_ARCH_LIST"],
                                   source_hash(_build.fingerprint_files(csrc)))
    nvcc_flags = list(_build.NVCC_FLAGS)
    _say(
        f"building fusedrnn._C for arch {os.environ['TORCH_CUDA_ARCH_LIST']} with CUDA {torch.version.cuda} "
        f"(MAX_JOBS={os.environ['MAX_JOBS']})"
    )
    # No -std flag: cpp_extension picks the standard the installed torch needs (C++17 or C++20).
    ext = CUDAExtension(
        name="fusedrnn._C",
        sources=sources,
        include_dirs=[os.path.join(ROOT, "csrc")],
        extra_compile_args={"cxx": _build.CXX_FLAGS + build_defines, "nvcc": nvcc_flags + build_defines},
    )
    return [ext], {"build_ext": BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = cuda_extensions()

setup(
    packages=["fusedrnn", "fusedrnn.backends", "fusedrnn.kernels", "fusedrnn.bench", "fusedrnn.csrc"],
    package_dir={"fusedrnn": "fusedrnn", "fusedrnn.kernels": "kernels", "fusedrnn.bench": "bench",
                 "fusedrnn.csrc": "csrc"},
    # csrc/ ships as data (fusedrnn/csrc/) for the JIT build of installs whose build had no torch.
    package_data={"fusedrnn": ["gpu_records/*.json"], "fusedrnn.csrc": ["*.cpp", "*.cu", "*.h", "*.cuh"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
