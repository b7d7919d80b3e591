"""The backends behind the functional ops: one module each, one small interface.

| name        | module                     | what runs                                                   |
|-------------|----------------------------|-------------------------------------------------------------|
| `cuda`      | `backends/cuda.py`         | persistent CUDA kernels from csrc/ (fusedrnn._C)            |
| `triton`    | `backends/triton.py`       | fused Triton kernels from kernels/ (fusedrnn.kernels)       |
| `torch`     | `backends/native.py`       | torch's own RNN op (ATen on CPU, cuDNN on CUDA)             |
| `reference` | `backends/reference.py`    | the pure-PyTorch oracle, fusedrnn/reference.py              |

A backend answers two questions about a call (a ``CallSpec``): ``reasons(spec, forced)`` — every
reason, in words, it cannot serve the call (empty when it can) — and runs it (``gru`` / ``lstm`` /
``rnn_tanh`` / ``rnn_relu``, arguments already validated by fusedrnn.functional; the two Elman RNN
cells share one method, ``rnn``, with the cell name first). Which backend runs a call is decided in
fusedrnn/dispatch.py, not here. Backend modules are imported on first use; one that cannot be
imported (Triton missing, extension not built) becomes a backend whose only reason is that.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

import torch

__all__ = ["CallSpec", "Backend", "NAMES", "FUSED", "FLOAT_DTYPES", "CELLS", "RNN_CELLS", "get", "dtype_reasons"]

NAMES = ("cuda", "triton", "torch", "reference")  # the order `auto` considers them in
FUSED = ("cuda", "triton")  # fusedrnn's own kernels: `auto` uses them on a GPU only where validated
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
# The cells and their gate counts (w_ih / w_hh have gates * H rows, torch's layout). The Elman RNN
# cells (torch.nn.RNN, nonlinearity "tanh" / "relu") are named as torch's ops: _VF.rnn_tanh / rnn_relu.
CELLS = {"gru": 3, "lstm": 4, "rnn_tanh": 1, "rnn_relu": 1}
RNN_CELLS = ("rnn_tanh", "rnn_relu")

_MODULES = {
    "cuda": ("fusedrnn.backends.cuda", "persistent CUDA kernels from csrc/ (fusedrnn._C): one cooperative launch per sequence"),
    "triton": ("fusedrnn.backends.triton", "fused Triton kernels: whole sequence per launch (CUDA; CPU only under TRITON_INTERPRET=1)"),
    "torch": ("fusedrnn.backends.native", "torch's own RNN op (ATen on CPU, cuDNN on CUDA); the fast path on CPU"),
    "reference": ("fusedrnn.backends.reference", "pure-PyTorch time loop (the oracle); any device and float dtype"),
}


@dataclass(frozen=True)
class CallSpec:
    """What dispatch knows about one layer-direction call: enough for a backend to say whether it
    can serve it, and for dispatch to choose among those that can."""

    cell: str  # "gru" | "lstm" | "rnn_tanh" | "rnn_relu"
    device: torch.device
    dtype: torch.dtype
    T: int  # steps; 0 while tracing (unknown)
    B: int  # batch rows; 0 while tracing
    I: int  # noqa: E741  input width (as in torch's docs); 0 while tracing
    H: int  # hidden width
    P: int  # recurrent state width: proj_size, or H
    has_residual: bool
    has_lengths: bool
    reverse: bool
    has_proj: bool  # LSTM with a projection w_hr
    needs_grad: bool = False  # autograd will run a backward through this call
    tracing: bool = False  # under torch.compile: T, B and I are blanked, only traceable paths qualify
    device_lengths: bool = False  # lengths live off the CPU: a backend reading them on the host would sync
    zoneout: bool = False  # the states are zoned (fusedrnn/zoneout.py), in training or evaluation
    layernorm: bool = False  # the cell is layer-normalised (fusedrnn/layernorm.py): LayerNormLSTM / LayerNormGRU


def dtype_reasons(dtype: torch.dtype, supported) -> list[str]:
    if dtype in supported:
        return []
    return [f"dtype={dtype} (supported: {', '.join(str(d) for d in supported)})"]


class Backend:
    """The interface every backend module implements (its module-level ``BACKEND``)."""

    name: str = ""
    description: str = ""

    def unavailable(self) -> list[str]:
        """Reasons this backend cannot serve anything in this process (not built, not importable)."""
        return []

    def reasons(self, spec: CallSpec, forced: bool) -> list[str]:
        """Every reason this backend cannot serve ``spec``; empty when it can. ``forced``: the user
        asked for this backend by name (some paths are offered only then, e.g. the interpreter)."""
        return self.unavailable()

    # ``zoneout``: a fusedrnn.zoneout.Zoneout or None; ``layernorm``: a fusedrnn.layernorm.LayerNorm
    # or None. Only backends whose reasons() accept a spec with zoneout=True (layernorm=True) are
    # ever handed one; the others refuse one handed to them directly (``refuse_layernorm``).
    def gru(self, x, h0, w_ih, w_hh, b_ih, b_hh, residual, lengths, reverse, zoneout=None, layernorm=None):
        raise NotImplementedError

    def lstm(self, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, residual, lengths, reverse, zoneout=None,
             layernorm=None):
        raise NotImplementedError

    def rnn(self, cell, x, h0, w_ih, w_hh, b_ih, b_hh, residual, lengths, reverse, zoneout=None, layernorm=None):
        """The Elman RNN cell ``cell`` ("rnn_tanh" | "rnn_relu"); the arguments are gru's."""
        raise NotImplementedError

    def rnn_tanh(self, x, h0, w_ih, w_hh, b_ih, b_hh, residual, lengths, reverse, zoneout=None, layernorm=None):
        return self.rnn("rnn_tanh", x, h0, w_ih, w_hh, b_ih, b_hh, residual, lengths, reverse, zoneout, layernorm)

    def rnn_relu(self, x, h0, w_ih, w_hh, b_ih, b_hh, residual, lengths, reverse, zoneout=None, layernorm=None):
        return self.rnn("rnn_relu", x, h0, w_ih, w_hh, b_ih, b_hh, residual, lengths, reverse, zoneout, layernorm)

    def refuse_layernorm(self, layernorm, reason: str) -> None:
        """For a backend without LayerNorm: a LayerNorm handed to it directly is an error, never ignored."""
        if layernorm is not None:
            raise ValueError(f"fusedrnn backend {self.name!r}: {reason}")


class _Unimportable(Backend):
    def __init__(self, name: str, description: str, why: str):
        self.name, self.description, self._why = name, description, why

    def unavailable(self):
        return [self._why]


_LOADED: dict[str, Backend] = {}


def get(name: str) -> Backend:
    """The backend called ``name``; imported once per process, so dispatch stays cheap (a plain
    dict, not lru_cache: torch.compile traces this lookup)."""
    backend = _LOADED.get(name)
    if backend is None:
        module, description = _MODULES[name]
        try:
            backend = importlib.import_module(module).BACKEND
        except Exception as e:  # ImportError, or triton/CUDA failing to initialise
            backend = _Unimportable(name, description, f"{module} cannot be imported ({type(e).__name__}: {e})")
        _LOADED[name] = backend
    return backend
