"""The CUDA extension: the prebuilt fusedrnn._C, or one JIT-compiled on first use of the cuda backend.

An install whose build had torch (``pip install --no-build-isolation .``) holds fusedrnn._C, built
ahead of time. One whose build had no torch (``pip install .`` with pip's build isolation: from an
index or an sdist) holds the CUDA sources as fusedrnn/csrc/ instead; the first forced use of the
cuda backend (``backend="cuda"``) on a GPU compiles them with torch's JIT extension loader
(``torch.utils.cpp_extension.load``, ninja) for that GPU, printing one line while it builds, into
torch's extension cache (``TORCH_EXTENSIONS_DIR``, default ~/.cache/torch_extensions), keyed by
torch, CUDA, Python, GPU architecture and source hash. Later processes load the cached build at
once, ``auto`` included; ``auto`` never starts a build itself (it would stall a forward for minutes
for a backend that the dispatch records may not pick). A failed build warns once, naming the build
log, and the cuda backend then reports itself unavailable, so ``auto`` goes on to the next backend.
``python -m fusedrnn.info`` says which it is: prebuilt, JIT-built, not built yet, or unavailable.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
import shlex
import sys
import warnings
from pathlib import Path

import torch

from . import _build


class ExtensionError(RuntimeError):
    pass


def check_build_info(info: dict) -> None:
    """Raise ExtensionError if the extension was built for another torch/CUDA than this process has."""
    built = (str(info["torch_version"]).split("+")[0], str(info["cuda_version"]))
    have = (torch.__version__.split("+")[0], str(torch.version.cuda))
    if built != have:
        raise ExtensionError(
            f"fusedrnn._C was built for torch {built[0]} / CUDA {built[1]} but this process has torch "
            f"{have[0]} / CUDA {have[1]}; rebuild it: pip install --no-build-isolation --force-reinstall -e ."
        )


# --- the JIT build ---------------------------------------------------------------------------------


def csrc_dir() -> Path | None:
    """The CUDA sources: fusedrnn/csrc/ in an installed package, csrc/ beside it in a source checkout."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "csrc", here.parent / "csrc"):
        if (candidate / "bindings.cpp").is_file():
            return candidate
    return None


def _device_arch() -> str:
    major, minor = torch.cuda.get_device_capability(torch.cuda.current_device())
    return f"{major}.{minor}"


def jit_unavailable() -> list[str]:
    """Why no JIT build can run in this process (empty: it can)."""
    reasons = []
    if torch.version.cuda is None:
        reasons.append("torch is a CPU build")
    if csrc_dir() is None:
        reasons.append("the CUDA sources (fusedrnn/csrc) are not installed")
    if not torch.cuda.is_available():
        reasons.append("no CUDA device to compile for")
    if reasons:  # (torch.utils.cpp_extension is imported only where a build could run)
        return reasons
    _build.find_cuda_home()
    from torch.utils import cpp_extension

    home = cpp_extension.CUDA_HOME
    if home is None or not os.path.isfile(os.path.join(home, "bin", "nvcc")):
        reasons.append(f"no CUDA toolkit (nvcc) found (CUDA_HOME={home})")
    if not cpp_extension.is_ninja_available():
        reasons.append("ninja is not installed (pip install ninja)")
    return reasons


def jit_target() -> tuple[str, Path, str, str]:
    """(module name, build directory, arch list, source hash) of this process's JIT build. The name
    holds a hash of torch, CUDA, Python, arch and sources; the directory is torch's extension cache
    layout (TORCH_EXTENSIONS_DIR or torch's default root, then py<ver>_cu<ver>/<name>)."""
    _build.find_cuda_home()
    from torch.utils import cpp_extension

    csrc = csrc_dir()
    src_hash = _build.source_hash(_build.fingerprint_files(csrc))
    arch = os.environ.get("FUSEDRNN_JIT_ARCH") or _device_arch()
    py = f"py{sys.version_info.major}{sys.version_info.minor}{getattr(sys, 'abiflags', '')}"
    key = "|".join([torch.__version__, str(torch.version.cuda), py, arch, src_hash])
    name = "fusedrnn_C_" + hashlib.sha256(key.encode()).hexdigest()[:12]
    root = os.environ.get("TORCH_EXTENSIONS_DIR") or cpp_extension.get_default_build_root()
    cu = f"cu{str(torch.version.cuda).replace('.', '')}"
    return name, Path(root) / f"{py}_{cu}" / name, arch, src_hash


def _jit_built(build_dir: Path, name: str) -> bool:
    return (build_dir / f"{name}.so").is_file()


def _jit_load(name: str, build_dir: Path, arch: str, src_hash: str, announce: bool):
    """torch.utils.cpp_extension.load: compiles what changed (nothing, for a cached build) and imports."""
    _build.find_cuda_home()
    from torch.utils import cpp_extension

    csrc = csrc_dir()
    # The JIT loader's ninja file reaches a shell, which would strip the defines' string quotes.
    flags = [shlex.quote(f) for f in _build.defines(torch.__version__, str(torch.version.cuda), arch, src_hash)]
    build_dir.mkdir(parents=True, exist_ok=True)
    log = build_dir / "fusedrnn-build.log"
    if announce:
        print(f"fusedrnn: compiling the CUDA extension for sm_{arch.replace('.', '')} (first use of the cuda "
              f"backend; a few minutes, once; cached in {build_dir})", file=sys.stderr, flush=True)
    saved = os.environ.get("TORCH_CUDA_ARCH_LIST")
    os.environ["TORCH_CUDA_ARCH_LIST"] = arch
    try:
        module = cpp_extension.load(
            name=name, sources=[str(p) for p in _build.sources(csrc)], extra_include_paths=[str(csrc)],
            extra_cflags=_build.CXX_FLAGS + flags, extra_cuda_cflags=_build.NVCC_FLAGS + flags,
            build_directory=str(build_dir), verbose=False, with_cuda=True,
        )
    except Exception as e:  # noqa: BLE001 - every failure is reported the same way, with the log
        log.write_text(f"{type(e).__name__}: {e}\n")
        raise ExtensionError(f"the JIT build of the CUDA extension failed; build log: {log}") from e
    finally:
        if saved is None:
            os.environ.pop("TORCH_CUDA_ARCH_LIST", None)
        else:
            os.environ["TORCH_CUDA_ARCH_LIST"] = saved
    log.write_text(f"built {name} for sm_{arch.replace('.', '')} from {csrc} (sources {src_hash})\n")
    return module


@functools.lru_cache(maxsize=None)
def prebuilt_present() -> bool:
    return importlib.util.find_spec(f"{__package__}._C") is not None


def needs_jit_build() -> bool:
    """True when the cuda backend's first use would compile: no prebuilt extension, no cached JIT
    build, and a JIT build is possible here. Decided without building or importing anything heavy."""
    if prebuilt_present() or _loaded or "jit" in _failures or jit_unavailable():
        return False  # (a failed build: the cuda backend reports that failure instead)
    name, build_dir, _, _ = jit_target()
    return not _jit_built(build_dir, name)


_loaded: list = []         # the extension module (prebuilt or JIT-built), once loaded in this process
_failures: dict = {}       # the ExtensionError of a failed JIT build (not retried in this process)
_mismatch_warned: list[str] = []  # the mismatch is warned about once per process


def load(build: bool = True):
    """Return the extension module, or raise ExtensionError saying why it is unusable. Called on
    first use of the cuda backend, never at ``import fusedrnn``. The prebuilt fusedrnn._C if
    present (a build for another torch gets one clear warning); else a JIT build, loaded from
    torch's extension cache or, with ``build``, compiled now. Once loaded, one list lookup (every
    kernel call goes through here)."""
    if _loaded:
        return _loaded[0]
    if prebuilt_present():
        _loaded.append(_load_prebuilt())
        return _loaded[0]
    if "jit" in _failures:
        raise _failures["jit"]
    reasons = jit_unavailable()
    if reasons:
        raise ExtensionError(
            "the CUDA extension is not prebuilt (fusedrnn._C) and cannot be JIT-built here: " + "; ".join(reasons)
            + " (a prebuilt one: pip install --no-build-isolation . with a CUDA toolkit; see python -m fusedrnn.info)"
        )
    name, build_dir, arch, src_hash = jit_target()
    cached = _jit_built(build_dir, name)
    if not cached and not build:
        raise ExtensionError(
            f"the CUDA extension is not built yet: it is JIT-compiled on first use of backend='cuda' "
            f"(cache {build_dir})"
        )
    try:
        module = _jit_load(name, build_dir, arch, src_hash, announce=not cached)
    except ExtensionError as e:
        _failures["jit"] = e
        warnings.warn(f"fusedrnn: {e}; the cuda backend is unavailable in this process, backend='auto' uses "
                      "the next backend", RuntimeWarning, stacklevel=2)
        raise
    _loaded.append(module)
    return module


@functools.lru_cache(maxsize=None)
def _load_prebuilt():
    try:
        from . import _C
    except ImportError as e:
        raise ExtensionError(
            f"the CUDA extension fusedrnn._C failed to import ({e}); "
            "reinstall with a CUDA toolkit present: pip install --no-build-isolation -e . "
            "(see python -m fusedrnn.info)"
        ) from e
    try:
        check_build_info(_C.build_info())
    except ExtensionError as e:
        if not _mismatch_warned:
            _mismatch_warned.append(str(e))
            warnings.warn(f"fusedrnn: the cuda backend is disabled: {e}", RuntimeWarning, stacklevel=2)
        raise
    return _C


def build_info() -> dict | str:
    """Build metadata of the extension, or the reason it cannot be used. Never starts a build."""
    try:
        return dict(load(build=False).build_info())
    except ExtensionError as e:
        return str(e)


def status() -> str:
    """One line for python -m fusedrnn.info: prebuilt, JIT-built (cache path), not built yet, or
    unavailable and why. Never starts a build."""
    if prebuilt_present():
        info = build_info()
        where = importlib.util.find_spec(f"{__package__}._C").origin
        return f"prebuilt ({where}): {info}"
    reasons = jit_unavailable()
    if reasons:
        return ("unavailable: not prebuilt (fusedrnn._C) and no JIT build possible here: " + "; ".join(reasons))
    if "jit" in _failures:
        return f"unavailable: {_failures['jit']}"
    name, build_dir, arch, _ = jit_target()
    if _loaded or _jit_built(build_dir, name):
        return f"JIT-built for sm_{arch.replace('.', '')} (cache {build_dir}): {build_info()}"
    return (f"not built yet: JIT-compiled for sm_{arch.replace('.', '')} on first use of backend='cuda' "
            f"(cache {build_dir}; python -m fusedrnn.info --build compiles it now)")
