"""Backends for the functional ops, and the dispatch that picks one.

Each backend declares what it serves and explains, in sentences, what it cannot
(``reasons(problem)``); ``select`` takes the first that can serve under ``auto`` and logs once,
at debug level, why the others were skipped. A forced backend that cannot serve raises
ValueError with its reasons. ``python -m fusedrnn.info`` prints the same reasons.

Order under ``auto``: cuda (persistent CUDA kernels), triton (fused Triton kernels), torch (torch's
own RNN op: the fast path on CPU), reference (pure-PyTorch time loop, serves everything).
"""

from __future__ import annotations

import functools
import importlib
import logging
import os
import dataclasses
from dataclasses import dataclass

import torch
from torch import Tensor

from . import reference

logger = logging.getLogger("fusedrnn")

BACKENDS = ("cuda", "triton", "torch", "reference")
CHOICES = ("auto",) + BACKENDS
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


@dataclass(frozen=True)
class Problem:
    """What a backend needs to know to decide whether it can serve one layer-direction call."""

    cell: str  # "gru" | "lstm"
    device: torch.device
    dtype: torch.dtype
    T: int
    B: int
    I: int  # noqa: E741  (input size, as in torch's docs)
    H: int
    P: int  # recurrent state width: proj_size or H
    residual: bool
    lengths: bool
    reverse: bool
    proj: bool
    tracing: bool = False  # under torch.compile: traceable paths only, and T, B, I are 0 (unknown)


def _interpreter_on() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _dtype_reason(dtype: torch.dtype, supported) -> list[str]:
    if dtype in supported:
        return []
    names = ", ".join(str(d) for d in supported)
    return [f"dtype={dtype} (supported: {names})"]


@functools.lru_cache(maxsize=None)
def _optional_module(name: str):
    """(module, None) or (None, reason): imported once per process, so dispatch stays cheap."""
    try:
        return importlib.import_module(f"fusedrnn.{name}"), None
    except Exception as e:  # ImportError, or triton/CUDA failing to initialise
        return None, f"fusedrnn.{name} cannot be imported ({type(e).__name__}: {e})"


class Backend:
    name: str = ""
    description: str = ""

    def unavailable(self) -> list[str]:
        """Reasons this backend cannot serve anything in this process (not built, not importable)."""
        return []

    def reasons(self, p: Problem, forced: bool) -> list[str]:
        """Every reason this backend cannot serve ``p``; empty when it can."""
        return self.unavailable()

    def gru(self, x, h0, w_ih, w_hh, b_ih, b_hh, residual, lengths, reverse):
        raise NotImplementedError

    def lstm(self, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, residual, lengths, reverse):
        raise NotImplementedError


class ReferenceBackend(Backend):
    name = "reference"
    description = "pure-PyTorch time loop (the oracle); any device and float dtype"

    def reasons(self, p, forced):
        return _dtype_reason(p.dtype, FLOAT_DTYPES)

    def gru(self, x, h0, w_ih, w_hh, b_ih, b_hh, residual, lengths, reverse):
        return reference.gru_reference(
            x, h0, w_ih, w_hh, b_ih, b_hh, residual=residual, lengths=lengths, reverse=reverse
        )

    def lstm(self, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, residual, lengths, reverse):
        return reference.lstm_reference(
            x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr,
            residual=residual, lengths=lengths, reverse=reverse,
        )


class TorchBackend(Backend):
    """torch's own single-layer RNN op (_VF.gru / _VF.lstm): cuDNN on CUDA, oneDNN/ATen on CPU.

    Variable lengths go through torch's packed path (sorted internally); the reverse direction is
    a per-row flip of each row's valid prefix; the residual is one add after the op.
    """

    name = "torch"
    description = "torch's own RNN op (ATen on CPU, cuDNN on CUDA); the fast path on CPU"
    CPU_DTYPES = (torch.float32, torch.float64)

    def reasons(self, p, forced):
        if p.lengths and p.tracing:
            return ["lengths under torch.compile (torch's packing functions are not traceable)"]
        if p.tracing and p.cell == "lstm" and p.device.type == "cpu":
            return ["LSTM on CPU under torch.compile (torch's mkldnn LSTM op does not trace through AOT autograd)"]
        if p.proj and p.P == p.H:
            return ["w_hr of shape (H, H): torch's op treats P == H as no projection"]
        if p.device.type == "cpu":
            return _dtype_reason(p.dtype, self.CPU_DTYPES)
        if p.device.type == "cuda":
            return _dtype_reason(p.dtype, FLOAT_DTYPES)
        return [f"device={p.device.type} (supported: cpu, cuda)"]

    def gru(self, x, h0, w_ih, w_hh, b_ih, b_hh, residual, lengths, reverse):
        params = [w for w in (w_ih, w_hh, b_ih, b_hh) if w is not None]
        y, (h_n,) = _run_native(
            lambda inp, hx, batch_sizes: _vf_call(torch._VF.gru, inp, hx, params, b_ih is not None, batch_sizes),
            x, (h0,), residual, lengths, reverse,
        )
        return y, h_n

    def lstm(self, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, residual, lengths, reverse):
        params = [w for w in (w_ih, w_hh, b_ih, b_hh, w_hr) if w is not None]
        y, (h_n, c_n) = _run_native(
            lambda inp, hx, batch_sizes: _vf_call(torch._VF.lstm, inp, hx, params, b_ih is not None, batch_sizes),
            x, (h0, c0), residual, lengths, reverse,
        )
        return y, h_n, c_n


def _vf_call(op, inp, states, params, has_bias, batch_sizes):
    hx = states[0].unsqueeze(0) if len(states) == 1 else tuple(s.unsqueeze(0) for s in states)
    if batch_sizes is None:
        out = op(inp, hx, params, has_bias, 1, 0.0, False, False, False)
    else:
        out = op(inp, batch_sizes, hx, params, has_bias, 1, 0.0, False, False)
    return out[0], tuple(s.squeeze(0) for s in out[1:])


def flip_valid(x: Tensor, lengths: Tensor | None) -> Tensor:
    """Reverse each row's valid prefix along time (dim 0); steps past a row's length stay put."""
    if lengths is None:
        return x.flip(0)
    T, B = x.shape[0], x.shape[1]
    t = torch.arange(T, device=x.device).view(T, 1)
    L = lengths.to(x.device).view(1, B)
    idx = torch.where(t < L, L - 1 - t, t)
    return x.gather(0, idx.view(T, B, *([1] * (x.dim() - 2))).expand_as(x))


def _run_native(call, x, states, residual, lengths, reverse):
    if reverse:
        x = flip_valid(x, lengths)
    if lengths is None:
        y, final = call(x, states, None)
    else:
        lens = lengths.to("cpu", torch.int64)
        order = torch.argsort(lens, descending=True, stable=True)
        inverse = torch.argsort(order)
        packed = torch.nn.utils.rnn.pack_padded_sequence(
            x.index_select(1, order.to(x.device)), lens[order], enforce_sorted=True
        )
        sorted_states = tuple(s.index_select(0, order.to(s.device)) for s in states)
        data, final = call(packed.data, sorted_states, packed.batch_sizes)
        y, _ = torch.nn.utils.rnn.pad_packed_sequence(
            torch.nn.utils.rnn.PackedSequence(data, packed.batch_sizes), total_length=x.shape[0]
        )
        y = y.index_select(1, inverse.to(y.device))
        final = tuple(s.index_select(0, inverse.to(s.device)) for s in final)
    if reverse:
        y = flip_valid(y, lengths)
    if residual is not None:
        if lengths is None:
            y = y + residual
        else:
            T, B = y.shape[0], y.shape[1]
            valid = torch.arange(T, device=y.device).view(T, 1) < lengths.to(y.device).view(1, B)
            y = y + residual * valid.unsqueeze(-1).to(residual.dtype)
    return y, final


class TritonBackend(Backend):
    name = "triton"
    description = "fused Triton kernels: whole sequence per launch (CUDA; CPU only under TRITON_INTERPRET=1)"

    def unavailable(self):
        _, reason = _optional_module("triton_ops")
        return [reason] if reason else []

    def reasons(self, p, forced):
        reasons = self.unavailable()
        if reasons:
            return reasons
        from . import triton_ops

        if p.device.type == "cuda":
            if not _interpreter_on():
                major, minor = torch.cuda.get_device_capability(p.device)
                if major < 8:
                    reasons.append(f"compute capability {major}.{minor} (needs >= 8.0)")
        elif p.device.type == "cpu":
            if not _interpreter_on():
                reasons.append("device=cpu: Triton kernels run on CUDA, or on CPU only under TRITON_INTERPRET=1")
            elif not forced:
                reasons.append("device=cpu: the Triton interpreter is for tests; force backend='triton' to use it")
        else:
            reasons.append(f"device={p.device.type} (supported: cuda)")
        reasons += _dtype_reason(p.dtype, FLOAT_DTYPES)
        reasons += triton_ops.limits(p)
        return reasons

    def gru(self, x, h0, w_ih, w_hh, b_ih, b_hh, residual, lengths, reverse):
        from . import triton_ops

        return triton_ops.gru(x, h0, w_ih, w_hh, b_ih, b_hh, residual, lengths, reverse)

    def lstm(self, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, residual, lengths, reverse):
        from . import triton_ops

        return triton_ops.lstm(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, residual, lengths, reverse)


class CudaBackend(Backend):
    name = "cuda"
    description = "persistent CUDA kernels from csrc/ (fusedrnn._C): one cooperative launch per sequence"

    def unavailable(self):
        cuda_ops, reason = _optional_module("cuda_ops")
        return [reason] if reason else cuda_ops.unavailable()

    def reasons(self, p, forced):
        reasons = self.unavailable()
        if reasons:
            return reasons
        from . import cuda_ops

        if p.device.type != "cuda":
            return [f"device={p.device.type} (supported: cuda)"]
        return cuda_ops.limits(p, forced)

    def gru(self, x, h0, w_ih, w_hh, b_ih, b_hh, residual, lengths, reverse):
        from . import cuda_ops

        return cuda_ops.gru(x, h0, w_ih, w_hh, b_ih, b_hh, residual, lengths, reverse)

    def lstm(self, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, residual, lengths, reverse):
        from . import cuda_ops

        return cuda_ops.lstm(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, residual, lengths, reverse)


REGISTRY: dict[str, Backend] = {
    b.name: b for b in (CudaBackend(), TritonBackend(), TorchBackend(), ReferenceBackend())
}
_logged: set = set()


def default_backend() -> str:
    name = os.environ.get("FUSEDRNN_BACKEND", "auto") or "auto"
    if name not in CHOICES:
        raise ValueError(f"FUSEDRNN_BACKEND={name!r} is not one of {', '.join(CHOICES)}")
    return name


def check_backend_name(backend: str, argname: str = "backend") -> str:
    if not isinstance(backend, str) or backend not in CHOICES:
        raise ValueError(f"{argname} must be one of {', '.join(repr(c) for c in CHOICES)}, got {backend!r}")
    return backend


def select(backend: str, p: Problem) -> Backend:
    """The backend that serves ``p``: the forced one (or ValueError), or the first that can under auto."""
    check_backend_name(backend)
    if backend == "auto":
        backend = default_backend()
    if torch.compiler.is_compiling():
        # Traced once per graph. T, B and I vary between calls (automatic dynamic shapes makes them
        # symbolic) and no backend decides on them: blanked. H and P come from the weights, which
        # are static (parameters) unless compiled with dynamic=True over plain weight tensors.
        p = dataclasses.replace(p, tracing=True, T=0, B=0, I=0)
    choice = _choose(backend, *(getattr(p, f) for f in Problem.__dataclass_fields__))
    if choice not in REGISTRY:  # an explanation, raised here so torch.compile shows it as it is
        raise ValueError(choice)
    return REGISTRY[choice]


@torch.compiler.assume_constant_result
def _choose(backend: str, *fields) -> str:
    # Plain-value arguments and a str result (a backend name, or why the forced one cannot serve) so
    # that torch.compile runs this once at trace time and bakes in the answer (it imports optional
    # modules and reads the environment: not traceable).
    p = Problem(*fields)
    if backend != "auto":
        reasons = REGISTRY[backend].reasons(p, forced=True)
        if reasons:
            return f"fusedrnn backend {backend!r} cannot run this {p.cell.upper()} call: " + "; ".join(reasons)
        return backend
    for name in BACKENDS:
        reasons = REGISTRY[name].reasons(p, forced=False)
        if not reasons:
            return name
        key = (name, p.cell, p.device.type, p.dtype, tuple(reasons))
        if key not in _logged:
            _logged.add(key)
            logger.debug("fusedrnn: skipping backend %r: %s", name, "; ".join(reasons))
    raise AssertionError("the reference backend serves every float dtype")  # unreachable after checks
