"""Loads the compiled extension fusedrnn._C and checks it matches the running torch."""

from __future__ import annotations

import functools

import torch


class ExtensionError(RuntimeError):
    pass


@functools.lru_cache(maxsize=None)
def load():
    """Return the fusedrnn._C module, or raise ExtensionError saying why it is unusable."""
    try:
        from . import _C
    except ImportError as e:
        raise ExtensionError(
            f"the CUDA extension fusedrnn._C is not built or failed to import ({e}); "
            "reinstall with a CUDA toolkit present: pip install --no-build-isolation . "
            "(see python -m fusedrnn.info)"
        ) from e
    info = _C.build_info()
    built = (info["torch_version"].split("+")[0], info["cuda_version"])
    have = (torch.__version__.split("+")[0], str(torch.version.cuda))
    if built != have:
        raise ExtensionError(
            f"fusedrnn._C was built for torch {built[0]} / CUDA {built[1]} but this process has torch "
            f"{have[0]} / CUDA {have[1]}; rebuild: pip install --no-build-isolation --force-reinstall ."
        )
    return _C


def build_info() -> dict | str:
    """Build metadata of the extension, or the reason it cannot be used."""
    try:
        return dict(load().build_info())
    except ExtensionError as e:
        return str(e)
