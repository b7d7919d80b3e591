"""The Triton backend: torch.library ops around the kernels in fusedrnn.kernels (kernels/).

Each cell has a forward op and a backward op (``fusedrnn::triton_gru_fwd`` / ``_bwd``, same for
``lstm``), both with fake (meta) implementations, linked by ``register_autograd``; so
torch.compile(fullgraph=True) traces them as opaque nodes and autograd runs the Triton backward.
The forward op also returns what its backward needs (the h (and c) sequence and the gate
activations; see kernels/gru.py and kernels/lstm.py), empty when no input requires grad.

``gru``, ``lstm`` and ``limits`` are what fusedrnn.backends.TritonBackend calls; arguments arrive
validated by fusedrnn.functional.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from fusedrnn.kernels import gru as _gru
from fusedrnn.kernels import lstm as _lstm
from fusedrnn.kernels.common import interpreter_on

from . import FLOAT_DTYPES, Backend, dtype_reasons

__all__ = ["BACKEND", "gru", "lstm", "limits"]


def limits(p) -> list[str]:
    """Readable reasons the Triton kernels cannot serve Problem ``p`` (empty: they can)."""
    reasons = []
    if p.has_proj:
        reasons.append(limits_reason_proj())
    return reasons


def _empty_like_none(t: Optional[Tensor], like: Tensor) -> Tensor:
    # Custom ops return tensors only; an empty tensor stands for "no gradient".
    return t if t is not None else like.new_empty(0)


def _strategy(strategy: str):
    return strategy or None


def _needs_save(*tensors) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


# ------------------------------------------------------------------------------------------------
# GRU
# ------------------------------------------------------------------------------------------------


@torch.library.custom_op("fusedrnn::triton_gru_fwd", mutates_args=())
def _gru_fwd(
    x: Tensor, h0: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Optional[Tensor], b_hh: Optional[Tensor],
    residual: Optional[Tensor], lengths: Optional[Tensor], reverse: bool, save: bool, strategy: str,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    y, h_n, hseq, act = _gru.gru_forward(
        x, h0, w_ih, w_hh, b_ih, b_hh, residual, lengths, reverse, save, strategy=_strategy(strategy))
    return y, h_n, hseq, act


@_gru_fwd.register_fake
def _(x, h0, w_ih, w_hh, b_ih, b_hh, residual, lengths, reverse, save, strategy):
    T, B, _ = x.shape
    H = w_hh.shape[1]
    acc = _gru.acc_dtype_for(x.dtype)
    if save:
        hseq, act = x.new_empty(T + 1, B, H, dtype=acc), x.new_empty(T, B, 4 * H, dtype=acc)
    else:
        hseq, act = x.new_empty(0, dtype=acc), x.new_empty(0, dtype=acc)
    return x.new_empty(T, B, H), x.new_empty(B, H), hseq, act


@torch.library.custom_op("fusedrnn::triton_gru_bwd", mutates_args=())
def _gru_bwd(
    dy: Optional[Tensor], dh_n: Optional[Tensor], x: Tensor, w_ih: Tensor, w_hh: Tensor,
    lengths: Optional[Tensor], hseq: Tensor, act: Tensor, reverse: bool, needs: list[bool], strategy: str,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    grads = _gru.gru_backward(
        dy, dh_n, x, w_ih, w_hh, lengths, hseq, act, reverse, needs, strategy=_strategy(strategy))
    dtype = x.dtype
    return tuple(_empty_like_none(None if g is None else g.to(dtype), x) for g in grads)


@_gru_bwd.register_fake
def _(dy, dh_n, x, w_ih, w_hh, lengths, hseq, act, reverse, needs, strategy):
    T, B, _ = x.shape
    H = w_hh.shape[1]
    shapes = [(T, B, x.shape[2]), (B, H), tuple(w_ih.shape), tuple(w_hh.shape), (3 * H,), (3 * H,), (T, B, H)]
    return tuple(x.new_empty(s if need else (0,)) for s, need in zip(shapes, needs))


def _gru_setup(ctx, inputs, output):
    x, h0, w_ih, w_hh, b_ih, b_hh, residual, lengths, reverse, save, strategy = inputs
    _, _, hseq, act = output
    ctx.save_for_backward(x, w_ih, w_hh, lengths, hseq, act)
    ctx.has_bias = b_ih is not None
    ctx.has_res = residual is not None
    ctx.reverse = reverse
    ctx.strategy = strategy
    ctx.mark_non_differentiable(hseq, act)


def _gru_backward(ctx, dy, dh_n, _dhseq, _dact):
    x, w_ih, w_hh, lengths, hseq, act = ctx.saved_tensors
    n = ctx.needs_input_grad
    needs = [n[0], n[1], n[2], n[3], ctx.has_bias and n[4], ctx.has_bias and n[5], ctx.has_res and n[6]]
    grads = _gru_bwd(dy, dh_n, x, w_ih, w_hh, lengths, hseq, act, ctx.reverse, needs, ctx.strategy)
    grads = [g if need else None for g, need in zip(grads, needs)]
    return (*grads, None, None, None, None)


torch.library.register_autograd("fusedrnn::triton_gru_fwd", _gru_backward, setup_context=_gru_setup)


def gru(x, h0, w_ih, w_hh, b_ih, b_hh, residual, lengths, reverse, *, strategy: Optional[str] = None):
    """One GRU layer-direction (see fusedrnn.functional.gru). ``strategy`` forces "persistent" or
    "batch_tile" (tests, benchmarks); None picks by shape (kernels/common.py: choose_strategy)."""
    if lengths is not None:
        # torch keeps lengths on the CPU; non_blocking avoids a stream sync for the copy
        lengths = lengths.to(device=x.device, non_blocking=True)
    save = _needs_save(x, h0, w_ih, w_hh, b_ih, b_hh, residual)
    y, h_n, _, _ = _gru_fwd(x, h0, w_ih, w_hh, b_ih, b_hh, residual, lengths, reverse, save, strategy or "")
    return y, h_n


# ------------------------------------------------------------------------------------------------
# LSTM
# ------------------------------------------------------------------------------------------------


@torch.library.custom_op("fusedrnn::triton_lstm_fwd", mutates_args=())
def _lstm_fwd(
    x: Tensor, h0: Tensor, c0: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Optional[Tensor],
    b_hh: Optional[Tensor], residual: Optional[Tensor], lengths: Optional[Tensor], reverse: bool, save: bool,
    strategy: str,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    return _lstm.lstm_forward(
        x, h0, c0, w_ih, w_hh, b_ih, b_hh, residual, lengths, reverse, save, strategy=_strategy(strategy))


@_lstm_fwd.register_fake
def _(x, h0, c0, w_ih, w_hh, b_ih, b_hh, residual, lengths, reverse, save, strategy):
    T, B, _ = x.shape
    H = w_hh.shape[1]
    acc = _gru.acc_dtype_for(x.dtype)
    if save:
        seq = [x.new_empty(T + 1, B, H, dtype=acc), x.new_empty(T + 1, B, H, dtype=acc),
               x.new_empty(T, B, 4 * H, dtype=acc)]
    else:
        seq = [x.new_empty(0, dtype=acc) for _ in range(3)]
    return (x.new_empty(T, B, H), x.new_empty(B, H), x.new_empty(B, H), *seq)


@torch.library.custom_op("fusedrnn::triton_lstm_bwd", mutates_args=())
def _lstm_bwd(
    dy: Optional[Tensor], dh_n: Optional[Tensor], dc_n: Optional[Tensor], x: Tensor, w_ih: Tensor,
    w_hh: Tensor, lengths: Optional[Tensor], hseq: Tensor, cseq: Tensor, act: Tensor, reverse: bool,
    needs: list[bool], strategy: str,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    grads = _lstm.lstm_backward(
        dy, dh_n, dc_n, x, w_ih, w_hh, lengths, hseq, cseq, act, reverse, needs, strategy=_strategy(strategy))
    dtype = x.dtype
    return tuple(_empty_like_none(None if g is None else g.to(dtype), x) for g in grads)


@_lstm_bwd.register_fake
def _(dy, dh_n, dc_n, x, w_ih, w_hh, lengths, hseq, cseq, act, reverse, needs, strategy):
    T, B, _ = x.shape
    H = w_hh.shape[1]
    shapes = [(T, B, x.shape[2]), (B, H), (B, H), tuple(w_ih.shape), tuple(w_hh.shape), (4 * H,), (4 * H,),
              (T, B, H)]
    return tuple(x.new_empty(s if need else (0,)) for s, need in zip(shapes, needs))


def _lstm_setup(ctx, inputs, output):
    x, h0, c0, w_ih, w_hh, b_ih, b_hh, residual, lengths, reverse, save, strategy = inputs
    _, _, _, hseq, cseq, act = output
    ctx.save_for_backward(x, w_ih, w_hh, lengths, hseq, cseq, act)
    ctx.has_bias = b_ih is not None
    ctx.has_res = residual is not None
    ctx.reverse = reverse
    ctx.strategy = strategy
    ctx.mark_non_differentiable(hseq, cseq, act)


def _lstm_backward(ctx, dy, dh_n, dc_n, _dhseq, _dcseq, _dact):
    x, w_ih, w_hh, lengths, hseq, cseq, act = ctx.saved_tensors
    n = ctx.needs_input_grad
    needs = [n[0], n[1], n[2], n[3], n[4], ctx.has_bias and n[5], ctx.has_bias and n[6], ctx.has_res and n[7]]
    grads = _lstm_bwd(dy, dh_n, dc_n, x, w_ih, w_hh, lengths, hseq, cseq, act, ctx.reverse, needs,
                      ctx.strategy)
    grads = [g if need else None for g, need in zip(grads, needs)]
    return (*grads, None, None, None, None)


torch.library.register_autograd("fusedrnn::triton_lstm_fwd", _lstm_backward, setup_context=_lstm_setup)


def lstm(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, residual, lengths, reverse, *,
         strategy: Optional[str] = None):
    """One LSTM layer-direction (see fusedrnn.functional.lstm); no projection (see limits)."""
    if w_hr is not None:
        raise ValueError("fusedrnn triton backend: " + limits_reason_proj())
    if lengths is not None:
        # torch keeps lengths on the CPU; non_blocking avoids a stream sync for the copy
        lengths = lengths.to(device=x.device, non_blocking=True)
    save = _needs_save(x, h0, c0, w_ih, w_hh, b_ih, b_hh, residual)
    y, h_n, c_n, _, _, _ = _lstm_fwd(
        x, h0, c0, w_ih, w_hh, b_ih, b_hh, residual, lengths, reverse, save, strategy or "")
    return y, h_n, c_n


def limits_reason_proj() -> str:
    return "proj_size>0 (w_hr) is not supported by the Triton kernels"


# ------------------------------------------------------------------------------------------------
# The backend (fusedrnn/backends/__init__.py's interface)
# ------------------------------------------------------------------------------------------------


class TritonBackend(Backend):
    name = "triton"
    description = "fused Triton kernels: whole sequence per launch (CUDA; CPU only under TRITON_INTERPRET=1)"

    def reasons(self, spec, forced):
        reasons = []
        interpreted = interpreter_on()
        if spec.device.type == "cuda":
            if not interpreted:
                major, minor = torch.cuda.get_device_capability(spec.device)
                if major < 8:
                    reasons.append(f"compute capability {major}.{minor} (needs >= 8.0)")
        elif spec.device.type == "cpu":
            if not interpreted:
                reasons.append("device=cpu: Triton kernels run on CUDA, or on CPU only under TRITON_INTERPRET=1")
            elif not forced:
                reasons.append("device=cpu: the Triton interpreter is for tests; force backend='triton' to use it")
        else:
            reasons.append(f"device={spec.device.type} (supported: cuda)")
        reasons += dtype_reasons(spec.dtype, FLOAT_DTYPES)
        reasons += limits(spec)
        return reasons

    def gru(self, x, h0, w_ih, w_hh, b_ih, b_hh, residual, lengths, reverse):
        return gru(x, h0, w_ih, w_hh, b_ih, b_hh, residual, lengths, reverse)

    def lstm(self, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, residual, lengths, reverse):
        return lstm(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, residual, lengths, reverse)


BACKEND = TritonBackend()
