"""Loads the compiled extension fusedrnn._C and checks it matches the running torch."""

from __future__ import annotations

import functools
import warnings

import torch


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


@functools.lru_cache(maxsize=None)
def load():
    """Return the fusedrnn._C module, or raise ExtensionError saying why it is unusable. Called on
    first use of the cuda backend, never at ``import fusedrnn``; a built extension that does not
    match the running torch gets one clear warning then."""
    try:
        from . import _C
    except ImportError as e:
        raise ExtensionError(
            f"the CUDA extension fusedrnn._C is not built or failed to import ({e}); "
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


_mismatch_warned: list[str] = []  # the mismatch is warned about once per process


def build_info() -> dict | str:
    """Build metadata of the extension, or the reason it cannot be used."""
    try:
        return dict(load().build_info())
    except ExtensionError as e:
        return str(e)
