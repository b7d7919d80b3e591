"""The cuda backend: persistent cooperative GRU/LSTM/Elman RNN kernels from csrc/ (built into fusedrnn._C).

Per call (one layer, one direction, whole sequence):
  gx = x·W_ihᵀ + b_ih                   one torch GEMM for all steps (cuBLAS)
  y, h_n[, c_n] = recurrence(gx, ...)    one cooperative kernel launch; between steps per-CTA ready
                                         flags (the default, chosen by the latency model until a GPU
                                         measures both) or one grid barrier (FUSEDRNN_CUDA_READY_FLAGS=0)
and for the backward:
  dgh[, dgx_n], dh0[, dc0] = recurrence_backward(...)   one cooperative launch, reverse time
  dW_hh = dghᵀ·h_prev, db_hh = Σ dgh, dresidual = dy masked to valid steps   torch GEMMs/reductions
  dx, dW_ih, db_ih                       autograd of the input-projection GEMM.

The recurrences are torch.library custom ops (``fusedrnn::cuda_gru_recurrence`` ...; the Elman RNN's
``fusedrnn::cuda_rnn_recurrence`` takes the cell, "rnn_tanh" or "rnn_relu") with fake implementations
and registered autograd, so torch.compile traces them. The cells whose state is h alone (GRU, Elman RNN)
share the fakes, the autograd and the entry point. Zoneout (fusedrnn/zoneout.py) runs in the kernels
(their ZO instantiations): every op takes ``zo_p`` and ``zo_seeds`` as backends/triton.py's do, the
seeds stay on the device and the backward regenerates the masks from them. Kernel design, numerics and
limits: csrc/README.md.
"""

from __future__ import annotations

import functools
import os
from typing import Optional

import torch

from .._precision import cuda_matmul_allows_tf32
import torch.nn.functional as F
from torch import Tensor

from .. import _ext as _extension
from .._ext import ExtensionError, load
from . import CELLS, RNN_CELLS, Backend

__all__ = ["BACKEND", "unavailable", "limits", "max_hidden_size", "gru", "lstm", "rnn"]

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MIN_CAPABILITY = (8, 0)
_N_SAVED = {"gru": 4, "lstm": 5, "rnn_tanh": 1, "rnn_relu": 1}  # fp32 values per (t, b, unit) kept for the backward
LAYERNORM_REASON = "layernorm: the CUDA kernels have no LayerNorm yet; the reference runs it"
_DTYPE_NAME = {torch.float16: "float16", torch.bfloat16: "bfloat16", torch.float32: "float32"}
_REQUIRED = ("gru_forward", "lstm_forward", "gru_backward", "lstm_backward", "elman_forward", "elman_backward", "plan",
             "launch_shape", "barrier_floor")
# Batch size the hidden-size limit is stated for: near the limit it puts 16 or more rows in every CTA,
# the largest staging buffers a plan uses, so the limit holds for every batch size the kernels take
# (at most 64 rows per CTA; limits() states that bound separately).
_LIMIT_BATCH = 64


def _ext():
    return load()


# The step boundary when FUSEDRNN_CUDA_READY_FLAGS is unset: the one the latency model prices lower
# (bench/model_cuda.py: READY_FLAGS_US against Machine.barrier_us, both assumed; tests/test_cuda_glue.py
# checks this agrees with the model). A GPU session measures both (barrier_floor) and replaces this.
READY_FLAGS_DEFAULT = True


def _ready_flags() -> bool:
    """Per-CTA ready flags between steps (csrc/ptx.cuh) rather than grid barriers, read at each call:
    FUSEDRNN_CUDA_READY_FLAGS=1 flags, =0 grid barriers, unset READY_FLAGS_DEFAULT."""
    value = os.environ.get("FUSEDRNN_CUDA_READY_FLAGS")
    if value is None or value == "":
        return READY_FLAGS_DEFAULT
    return value == "1"


def unavailable() -> list[str]:
    """Reasons the backend cannot serve anything in this process."""
    reasons = []
    try:
        ext = _ext()
        missing = [name for name in _REQUIRED if not hasattr(ext, name)]
        if missing:
            reasons.append(
                f"fusedrnn._C lacks {', '.join(missing)} (built from an older checkout); "
                "rebuild: pip install --no-build-isolation -e ."
            )
    except ExtensionError as e:
        reasons.append(str(e))
    if not torch.cuda.is_available():
        reasons.append("no CUDA device (torch.cuda.is_available() is False)")
    return reasons


def allow_tf32() -> bool:
    """fp32 inputs use TF32 tensor cores when torch allows them for matmuls, else exact fp32 FMA."""
    return cuda_matmul_allows_tf32()


@functools.lru_cache(maxsize=None)
def _plan(cell: str, backward: bool, dtype_name: str, tf32: bool, H: int, B: int, device_index: int) -> dict:
    return dict(_ext().plan(cell, backward, dtype_name, tf32, H, B, device_index))


def _fits(cell: str, dtype_name: str, tf32: bool, H: int, B: int, device_index: int) -> bool:
    return all(_plan(cell, bwd, dtype_name, tf32, H, B, device_index)["fits"] for bwd in (False, True))


@functools.lru_cache(maxsize=None)
def max_hidden_size(cell: str, dtype: torch.dtype, tf32: bool, device_index: int) -> int:
    """The largest H whose forward and backward launches fit on the device for any batch size (0 if none)."""
    name = _DTYPE_NAME[dtype]
    sms = _plan(cell, False, name, tf32, 16, _LIMIT_BATCH, device_index)["num_sms"]
    lo, hi = 0, 16 * sms  # fits(H) is monotone: grid and shared memory grow with H
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if _fits(cell, name, tf32, mid, _LIMIT_BATCH, device_index):
            lo = mid
        else:
            hi = mid - 1
    return lo


def limits(p, forced: bool) -> list[str]:
    """What the kernels cannot do for Problem ``p`` on its (CUDA) device: dtype, projection, compute
    capability, size. Empty when they can. (Whether ``auto`` should use them is dispatch's policy.)"""
    reasons = []
    if p.dtype not in SUPPORTED_DTYPES:
        names = ", ".join(str(d) for d in SUPPORTED_DTYPES)
        reasons.append(f"dtype={p.dtype} (supported: {names}; float64 has no tensor-core path here)")
    if p.has_proj:
        reasons.append("proj_size (LSTM with w_hr) is not supported by the CUDA kernels")
    index = p.device.index if p.device.index is not None else torch.cuda.current_device()
    major, minor = torch.cuda.get_device_capability(index)
    if (major, minor) < MIN_CAPABILITY:
        reasons.append(f"compute capability {major}.{minor} (needs >= 8.0)")
    if not reasons:
        name = _DTYPE_NAME[p.dtype]
        tf32 = p.dtype == torch.float32 and allow_tf32()
        B = p.B if p.B > 0 else _LIMIT_BATCH  # B unknown (0) while torch.compile traces
        for backward in (False, True):
            d = _plan(p.cell, backward, name, tf32, p.H, B, index)
            if d["fits"]:
                continue
            kind = "backward" if backward else "forward"
            hmax = max_hidden_size(p.cell, p.dtype, tf32, index)
            tail = f"the largest H for a {p.cell.upper()} in {p.dtype} on this GPU is {hmax}"
            if not d["cooperative"]:
                reasons.append("this GPU does not support cooperative launches")
            elif d["rows"] > d["max_rows"]:
                most = d["max_rows"] * max(1, d["num_sms"] // d["unit_groups"])
                reasons.append(
                    f"batch size B={p.B}: at H={p.H} the {kind} kernel holds at most {d['max_rows']} rows per CTA "
                    f"in {d['num_sms'] // d['unit_groups'] or 1} batch groups ({most} rows; cuDNN suits larger batches)"
                )
            elif d["smem"] > d["max_smem_optin"]:
                reasons.append(
                    f"hidden size H={p.H}: the {kind} kernel keeps a {d['smem'] // 1024} KiB W_hh slice and "
                    f"buffers per CTA in shared memory, this GPU allows {d['max_smem_optin'] // 1024} KiB ({tail})"
                )
            else:
                reasons.append(
                    f"hidden size H={p.H}: the {kind} kernel needs {d['grid']} co-resident CTAs, this GPU holds "
                    f"{d['blocks_per_sm'] * d['num_sms']} at that shared-memory size ({tail})"
                )
            break
    return reasons


# ---------------------------------------------------------------------------------------------
# Custom ops: the recurrences (the extension's functions), their fakes and autograd.
# ---------------------------------------------------------------------------------------------


def _saved_shape(cell: str, T: int, B: int, H: int, save: bool) -> tuple:
    return (T, B, _N_SAVED[cell] * H) if save else (0,)


# Zoneout arguments of every op (as backends/triton.py's): ``zo_p`` [] without zoneout, else [p_h, p_c];
# ``zo_seeds`` the (2,) int64 seeds (h, c) on the kernel's device in training, None in evaluation
# (m = p). The kernels regenerate the masks in the backward from the same seeds (fusedrnn/zoneout.py).


@torch.library.custom_op("fusedrnn::cuda_gru_recurrence", mutates_args=())
def _gru_recurrence(
    gx: Tensor, h0: Tensor, w_hh: Tensor, b_hh: Optional[Tensor], residual: Optional[Tensor],
    lengths: Optional[Tensor], reverse: bool, save: bool, allow_tf32: bool, zo_p: list[float],
    zo_seeds: Optional[Tensor],
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return tuple(_ext().gru_forward(gx, h0, w_hh, b_hh, residual, lengths, reverse, save, allow_tf32, _ready_flags(),
                                    zo_p, zo_seeds))


def _hcell_fake(cell: str, gx: Tensor, save: bool):
    """(y, h_n, hist, saved) of a cell whose state is h alone (GRU, Elman RNN)."""
    T, B, G = gx.shape
    H = G // CELLS[cell]
    saved = gx.new_empty(_saved_shape(cell, T, B, H, save), dtype=torch.float32)
    return gx.new_empty(T, B, H), gx.new_empty(B, H), gx.new_empty(T, B, H), saved


@_gru_recurrence.register_fake
def _(gx, h0, w_hh, b_hh, residual, lengths, reverse, save, allow_tf32, zo_p, zo_seeds):
    return _hcell_fake("gru", gx, save)


@torch.library.custom_op("fusedrnn::cuda_gru_recurrence_backward", mutates_args=())
def _gru_recurrence_backward(
    dy: Tensor, dh_n: Tensor, w_hh: Tensor, hist: Tensor, saved: Tensor, lengths: Optional[Tensor],
    reverse: bool, allow_tf32: bool, zo_p: list[float], zo_seeds: Optional[Tensor],
) -> tuple[Tensor, Tensor, Tensor]:
    return tuple(_ext().gru_backward(dy, dh_n, w_hh, hist, saved, lengths, reverse, allow_tf32, _ready_flags(),
                                     zo_p, zo_seeds))


@_gru_recurrence_backward.register_fake
def _(dy, dh_n, w_hh, hist, saved, lengths, reverse, allow_tf32, zo_p, zo_seeds):
    T, B, H = dy.shape
    return dy.new_empty(T, B, 3 * H), dy.new_empty(T, B, H), dy.new_empty(B, H)


@torch.library.custom_op("fusedrnn::cuda_rnn_recurrence", mutates_args=())
def _rnn_recurrence(
    cell: str, gx: Tensor, h0: Tensor, w_hh: Tensor, b_hh: Optional[Tensor], residual: Optional[Tensor],
    lengths: Optional[Tensor], reverse: bool, save: bool, allow_tf32: bool, zo_p: list[float],
    zo_seeds: Optional[Tensor],
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return tuple(
        _ext().elman_forward(cell, gx, h0, w_hh, b_hh, residual, lengths, reverse, save, allow_tf32, _ready_flags(),
                             zo_p, zo_seeds)
    )


@_rnn_recurrence.register_fake
def _(cell, gx, h0, w_hh, b_hh, residual, lengths, reverse, save, allow_tf32, zo_p, zo_seeds):
    return _hcell_fake(cell, gx, save)


@torch.library.custom_op("fusedrnn::cuda_rnn_recurrence_backward", mutates_args=())
def _rnn_recurrence_backward(
    cell: str, dy: Tensor, dh_n: Tensor, w_hh: Tensor, hist: Tensor, saved: Tensor, lengths: Optional[Tensor],
    reverse: bool, allow_tf32: bool, zo_p: list[float], zo_seeds: Optional[Tensor],
) -> tuple[Tensor, Tensor]:
    return tuple(_ext().elman_backward(cell, dy, dh_n, w_hh, hist, saved, lengths, reverse, allow_tf32, _ready_flags(),
                                       zo_p, zo_seeds))


@_rnn_recurrence_backward.register_fake
def _(cell, dy, dh_n, w_hh, hist, saved, lengths, reverse, allow_tf32, zo_p, zo_seeds):
    T, B, H = dy.shape
    return dy.new_empty(T, B, H), dy.new_empty(B, H)


@torch.library.custom_op("fusedrnn::cuda_lstm_recurrence", mutates_args=())
def _lstm_recurrence(
    gx: Tensor, h0: Tensor, c0: Tensor, w_hh: Tensor, b_hh: Optional[Tensor], residual: Optional[Tensor],
    lengths: Optional[Tensor], reverse: bool, save: bool, allow_tf32: bool, zo_p: list[float],
    zo_seeds: Optional[Tensor],
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    return tuple(
        _ext().lstm_forward(gx, h0, c0, w_hh, b_hh, residual, lengths, reverse, save, allow_tf32, _ready_flags(),
                            zo_p, zo_seeds)
    )


@_lstm_recurrence.register_fake
def _(gx, h0, c0, w_hh, b_hh, residual, lengths, reverse, save, allow_tf32, zo_p, zo_seeds):
    T, B, G = gx.shape
    H = G // 4
    saved = gx.new_empty(_saved_shape("lstm", T, B, H, save), dtype=torch.float32)
    return gx.new_empty(T, B, H), gx.new_empty(B, H), gx.new_empty(B, H), gx.new_empty(T, B, H), saved


@torch.library.custom_op("fusedrnn::cuda_lstm_recurrence_backward", mutates_args=())
def _lstm_recurrence_backward(
    dy: Tensor, dh_n: Tensor, dc_n: Tensor, w_hh: Tensor, hist: Tensor, saved: Tensor,
    lengths: Optional[Tensor], reverse: bool, allow_tf32: bool, zo_p: list[float], zo_seeds: Optional[Tensor],
) -> tuple[Tensor, Tensor, Tensor]:
    return tuple(
        _ext().lstm_backward(dy, dh_n, dc_n, w_hh, hist, saved, lengths, reverse, allow_tf32, _ready_flags(),
                             zo_p, zo_seeds)
    )


@_lstm_recurrence_backward.register_fake
def _(dy, dh_n, dc_n, w_hh, hist, saved, lengths, reverse, allow_tf32, zo_p, zo_seeds):
    T, B, H = dy.shape
    return dy.new_empty(T, B, 4 * H), dy.new_empty(B, H), dy.new_empty(B, H)


def _grad_or_zeros(grad: Tensor | None, like: Tensor) -> Tensor:
    return torch.zeros_like(like) if grad is None else grad.contiguous()


def _valid_steps(lengths: Tensor | None, T: int, device) -> Tensor | None:
    """(T, B, 1) bool: step t of row b is valid; None when every step is."""
    if lengths is None:
        return None
    t = torch.arange(T, device=device).view(T, 1)
    return (t < lengths.to(device).view(1, -1)).unsqueeze(-1)


def _recurrent_weight_grads(ctx, w_idx: int, b_idx: int, dgh: Tensor, hist: Tensor):
    """dW_hh = Σ_t dgh_tᵀ h_{t-1} (h_{t-1} = hist[t]) and db_hh = Σ dgh: one GEMM and one reduction."""
    G, H = dgh.shape[-1], hist.shape[-1]
    dw_hh = dgh.reshape(-1, G).t().mm(hist.reshape(-1, H)) if ctx.needs_input_grad[w_idx] else None
    db_hh = None
    if ctx.needs_input_grad[b_idx]:
        db_hh = dgh.sum(dim=(0, 1), dtype=torch.float32).to(dgh.dtype)
    return dw_hh, db_hh


def _residual_grad(ctx, r_idx: int, dy: Tensor, lengths: Tensor | None):
    if not ctx.needs_input_grad[r_idx]:
        return None
    valid = _valid_steps(lengths, dy.shape[0], dy.device)
    return dy.clone() if valid is None else dy * valid.to(dy.dtype)


# The cells whose state is h alone share the autograd: the GRU op's inputs are (gx, h0, w_hh, b_hh,
# residual, lengths, reverse, save, allow_tf32, zo_p, zo_seeds), the Elman RNN op's the same after its
# cell. The zoneout seeds are saved: the backward kernel regenerates the masks from them.
def _hcell_save(ctx, cell, inputs, output):
    gx, h0, w_hh, b_hh, residual, lengths, reverse, save, tf32, zo_p, zo_seeds = inputs
    y, h_n, hist, saved = output
    ctx.mark_non_differentiable(hist, saved)
    ctx.save_for_backward(w_hh, hist, saved, lengths, zo_seeds)
    ctx.cell, ctx.reverse, ctx.tf32, ctx.zo_p = cell, reverse, tf32, list(zo_p)


def _gru_setup_context(ctx, inputs, output):
    _hcell_save(ctx, "gru", inputs, output)


def _rnn_setup_context(ctx, inputs, output):
    _hcell_save(ctx, inputs[0], inputs[1:], output)


def _hcell_backward(ctx, dy, dh_n, _dhist, _dsaved):
    w_hh, hist, saved, lengths, zo_seeds = ctx.saved_tensors
    dy = _grad_or_zeros(dy, hist)
    dh_n = _grad_or_zeros(dh_n, hist[0])
    o = 0 if ctx.cell == "gru" else 1  # the Elman RNN op's inputs start with its cell
    if ctx.cell == "gru":
        dgh, dgx_n, dh0 = _gru_recurrence_backward(dy, dh_n, w_hh, hist, saved, lengths, ctx.reverse, ctx.tf32,
                                                   ctx.zo_p, zo_seeds)
        H = hist.shape[-1]
        dgx = torch.cat([dgh[..., : 2 * H], dgx_n], dim=-1) if ctx.needs_input_grad[0] else None
    else:  # one gate: d(gx) = d(gh) = d(pre-activation)
        dgh, dh0 = _rnn_recurrence_backward(ctx.cell, dy, dh_n, w_hh, hist, saved, lengths, ctx.reverse, ctx.tf32,
                                            ctx.zo_p, zo_seeds)
        dgx = dgh if ctx.needs_input_grad[o] else None
    dw_hh, db_hh = _recurrent_weight_grads(ctx, o + 2, o + 3, dgh, hist)
    dres = _residual_grad(ctx, o + 4, dy, lengths)
    return (None,) * o + (dgx, dh0, dw_hh, db_hh, dres, None, None, None, None, None, None)


def _lstm_setup_context(ctx, inputs, output):
    gx, h0, c0, w_hh, b_hh, residual, lengths, reverse, save, tf32, zo_p, zo_seeds = inputs
    y, h_n, c_n, hist, saved = output
    ctx.mark_non_differentiable(hist, saved)
    ctx.save_for_backward(w_hh, hist, saved, lengths, zo_seeds)
    ctx.reverse, ctx.tf32, ctx.zo_p = reverse, tf32, list(zo_p)


def _lstm_backward(ctx, dy, dh_n, dc_n, _dhist, _dsaved):
    w_hh, hist, saved, lengths, zo_seeds = ctx.saved_tensors
    dy = _grad_or_zeros(dy, hist)
    dh_n = _grad_or_zeros(dh_n, hist[0])
    dc_n = _grad_or_zeros(dc_n, hist[0])
    dgh, dh0, dc0 = _lstm_recurrence_backward(dy, dh_n, dc_n, w_hh, hist, saved, lengths, ctx.reverse, ctx.tf32,
                                              ctx.zo_p, zo_seeds)
    dw_hh, db_hh = _recurrent_weight_grads(ctx, 3, 4, dgh, hist)
    dres = _residual_grad(ctx, 5, dy, lengths)
    return dgh, dh0, dc0, dw_hh, db_hh, dres, None, None, None, None, None, None


torch.library.register_autograd(
    "fusedrnn::cuda_gru_recurrence", _hcell_backward, setup_context=_gru_setup_context
)
torch.library.register_autograd(
    "fusedrnn::cuda_rnn_recurrence", _hcell_backward, setup_context=_rnn_setup_context
)
torch.library.register_autograd(
    "fusedrnn::cuda_lstm_recurrence", _lstm_backward, setup_context=_lstm_setup_context
)


# ---------------------------------------------------------------------------------------------
# Backend entry points (called by backends.CudaBackend with arguments validated by functional.py)
# ---------------------------------------------------------------------------------------------


def _needs_save(*tensors) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _input_projection(x: Tensor, w_ih: Tensor, b_ih: Tensor | None) -> Tensor:
    # Autocast would change gx's dtype away from the weights' and states': keep the caller's dtype.
    with torch.autocast(device_type="cuda", enabled=False):
        return F.linear(x, w_ih, b_ih)


def _zo_args(zoneout) -> tuple[list[float], Optional[Tensor]]:
    """A fusedrnn.zoneout.Zoneout (or None) -> the ops' (zo_p, zo_seeds)."""
    if zoneout is None:
        return [], None
    return [float(zoneout.p_h), float(zoneout.p_c)], zoneout.seeds


def _hcell(cell, x, h0, w_ih, w_hh, b_ih, b_hh, residual, lengths, reverse, zoneout=None):
    """One layer-direction of a cell whose state is h alone: the GRU, or the Elman RNN ``cell``."""
    gx = _input_projection(x, w_ih, b_ih)
    save = _needs_save(x, h0, w_ih, w_hh, b_ih, b_hh, residual)
    tf32 = x.dtype == torch.float32 and allow_tf32()
    args = (gx, h0, w_hh, b_hh, residual, lengths, reverse, save, tf32, *_zo_args(zoneout))
    y, h_n, _, _ = _gru_recurrence(*args) if cell == "gru" else _rnn_recurrence(cell, *args)
    return y, h_n


def gru(x, h0, w_ih, w_hh, b_ih, b_hh, residual, lengths, reverse, zoneout=None):
    """One GRU layer-direction; ``zoneout`` a fusedrnn.zoneout.Zoneout or None (masks made in the kernels)."""
    return _hcell("gru", x, h0, w_ih, w_hh, b_ih, b_hh, residual, lengths, reverse, zoneout)


def rnn(cell, x, h0, w_ih, w_hh, b_ih, b_hh, residual, lengths, reverse, zoneout=None):
    """One Elman RNN layer-direction, ``cell`` "rnn_tanh" or "rnn_relu" (see fusedrnn.functional.rnn_tanh)."""
    if cell not in RNN_CELLS:
        raise ValueError(f"cell must be 'rnn_tanh' or 'rnn_relu', got {cell!r}")
    return _hcell(cell, x, h0, w_ih, w_hh, b_ih, b_hh, residual, lengths, reverse, zoneout)


def lstm(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, residual, lengths, reverse, zoneout=None):
    if w_hr is not None:
        raise ValueError("fusedrnn cuda backend: proj_size (w_hr) is not supported")
    gx = _input_projection(x, w_ih, b_ih)
    save = _needs_save(x, h0, c0, w_ih, w_hh, b_ih, b_hh, residual)
    tf32 = x.dtype == torch.float32 and allow_tf32()
    y, h_n, c_n, _, _ = _lstm_recurrence(gx, h0, c0, w_hh, b_hh, residual, lengths, reverse, save, tf32,
                                         *_zo_args(zoneout))
    return y, h_n, c_n


def barrier_floor(T: int, grid: int = 0, ready_flags: bool = False) -> float:
    """Milliseconds for a persistent kernel doing T grid barriers and nothing else (grid <= 0: one CTA
    per SM); ready_flags: T rounds of the kernels' ready flags instead (publish, wait for every CTA)."""
    return float(_ext().barrier_floor(T, grid, ready_flags))


# ---------------------------------------------------------------------------------------------
# The backend (fusedrnn/backends/__init__.py's interface)
# ---------------------------------------------------------------------------------------------


class CudaBackend(Backend):
    name = "cuda"
    description = "persistent CUDA kernels from csrc/ (fusedrnn._C): one cooperative launch per sequence"

    def unavailable(self):
        return unavailable()

    def reasons(self, spec, forced):
        if spec.layernorm:  # decided without loading the extension
            return ([] if spec.device.type == "cuda" else [f"device={spec.device.type} (supported: cuda)"]) + \
                [LAYERNORM_REASON]
        if spec.device.type != "cuda":  # decided without loading the extension
            return [f"device={spec.device.type} (supported: cuda)"]
        if not forced and _extension.needs_jit_build():
            # Installed without a prebuilt extension: a forced use compiles it; `auto` never starts
            # a build of minutes inside a forward (a cached build is loaded and considered).
            return ["the CUDA extension is not built yet: it is JIT-compiled on first use of backend='cuda' "
                    "(or python -m fusedrnn.info --build)"]
        reasons = self.unavailable()
        if reasons:
            return reasons
        return limits(spec, forced)

    def gru(self, x, h0, w_ih, w_hh, b_ih, b_hh, residual, lengths, reverse, zoneout=None, layernorm=None):
        self.refuse_layernorm(layernorm, LAYERNORM_REASON)
        return gru(x, h0, w_ih, w_hh, b_ih, b_hh, residual, lengths, reverse, zoneout)

    def rnn(self, cell, x, h0, w_ih, w_hh, b_ih, b_hh, residual, lengths, reverse, zoneout=None, layernorm=None):
        self.refuse_layernorm(layernorm, LAYERNORM_REASON)
        return rnn(cell, x, h0, w_ih, w_hh, b_ih, b_hh, residual, lengths, reverse, zoneout)

    def lstm(self, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, residual, lengths, reverse, zoneout=None,
             layernorm=None):
        self.refuse_layernorm(layernorm, LAYERNORM_REASON)
        return lstm(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, residual, lengths, reverse, zoneout)


BACKEND = CudaBackend()
