"""The Triton backend: torch.library ops around the kernels in fusedrnn.kernels (kernels/rnn.py).

The cells whose state is h alone (GRU, and the Elman RNN: rnn_tanh, rnn_relu) share a forward op
and a backward op that take the cell's name (``fusedrnn::triton_hcell_fwd`` / ``_bwd``); the LSTM
has its own pair (``fusedrnn::triton_lstm_fwd`` / ``_bwd``). All have fake (meta) implementations,
linked by ``register_autograd``; so
torch.compile(fullgraph=True) traces them as opaque nodes and autograd runs the Triton backward.
The forward op also returns what its backward needs (the h (and c) sequence and the gate
activations), empty when no input requires grad.

This module decides the fp32 product's precision for the kernels: TF32 when torch's matmul
switch allows it (read at each call, so a change of the switch takes effect at the next call).

``gru``, ``rnn``, ``lstm`` and ``limits`` are what fusedrnn.backends.TritonBackend calls; arguments arrive
validated by fusedrnn.functional.

Importing this module registers the ops and nothing more: Triton and the kernels (fusedrnn.kernels)
are imported on first use (``_kernels``), so ``import fusedrnn`` never pays for Triton, and
dispatch can hold every backend from its own import on (nothing is imported inside a call that
torch.compile traces).
"""

from __future__ import annotations

import os
from typing import Optional

import torch
from torch import Tensor

from fusedrnn._precision import cuda_matmul_allows_tf32

from . import FLOAT_DTYPES, Backend, dtype_reasons

__all__ = ["BACKEND", "gru", "rnn", "lstm", "limits"]

RNN_LAYERNORM_REASON = "layernorm: the Elman RNN cell has no LayerNorm form"
PROJ_REASON = "proj_size>0 (w_hr) is not supported by the Triton kernels"


MAX_H = 16384  # the packed W_hh (up to 4 x HP x HP elements) is indexed with 32-bit offsets
_SAVED_ACTS = {"gru": 4, "lstm": 4, "rnn_tanh": 1, "rnn_relu": 1}  # kernels/plan.py SAVED_ACTS (tested equal)
_kernels_module = None
_import_error: str | None = None


def _kernels():
    """fusedrnn.kernels.rnn (imports Triton), imported on first use."""
    global _kernels_module
    if _kernels_module is None:
        from fusedrnn.kernels import rnn

        _kernels_module = rnn
    return _kernels_module


def unavailable() -> list[str]:
    """Why the Triton kernels cannot run in this process at all (Triton missing or failing to import)."""
    global _import_error
    if _kernels_module is None and _import_error is None:
        try:
            _kernels()
        except Exception as e:  # noqa: BLE001 - ImportError, or Triton failing to initialise
            _import_error = f"fusedrnn.kernels cannot be imported ({type(e).__name__}: {e})"
    return [] if _import_error is None else [_import_error]


def interpreter_on() -> bool:
    """Whether the kernels run in Triton's interpreter (fusedrnn.kernels.common.interpreter_on)."""
    from fusedrnn.kernels.common import interpreter_on as kernels_interpreter_on

    return kernels_interpreter_on()


def limits(p) -> list[str]:
    """Readable reasons the Triton kernels cannot serve call ``p`` (empty: they can). Any B
    and T, and H up to MAX_H: a W_hh slice that does not fit on chip is streamed (kernels/plan.py)."""
    reasons = [PROJ_REASON] if p.has_proj else []
    if p.H > MAX_H:
        reasons.append(f"H={p.H} (the Triton kernels support H <= {MAX_H})")
    return reasons


def _empty_like_none(t: Optional[Tensor], like: Tensor) -> Tensor:
    # Custom ops return tensors only; an empty tensor stands for "no gradient".
    return t if t is not None else like.new_empty(0)


def _needs_save(*tensors) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _saved_shapes(x: Tensor, w_hh: Tensor, save: bool, cell: str, ln: list[Tensor]) -> list[Tensor]:
    """Fake (hseq, [cseq,] act, lnx, lns) as the forward op returns them."""
    T, B, _ = x.shape
    G, H = w_hh.shape
    lstm = cell == "lstm"
    acc = torch.float64 if w_hh.dtype == torch.float64 else torch.float32  # the kernels' accumulator
    if not save:
        return [x.new_empty(0, dtype=acc) for _ in range(5 if lstm else 4)]
    seq = [x.new_empty(T + 1, B, H, dtype=acc) for _ in range(2 if lstm else 1)]
    lns = [x.new_empty(T, B, G, dtype=acc), x.new_empty(T, B, 4, dtype=acc)] if ln else \
        [x.new_empty(0, dtype=acc), x.new_empty(0, dtype=acc)]
    return seq + [x.new_empty(T, B, _SAVED_ACTS[cell] * H, dtype=acc)] + lns


def _grad_shapes(x: Tensor, w_ih: Optional[Tensor], w_hh: Tensor, needs, lstm: bool,
                 ln: list[Tensor]) -> tuple[Tensor, ...]:
    T, B, _ = x.shape
    G, H = w_hh.shape
    shapes = [tuple(x.shape), (B, H)] + ([(B, H)] if lstm else []) + [
        tuple(w_ih.shape) if w_ih is not None else (0,), tuple(w_hh.shape), (G,), (G,), (T, B, H)]
    grads = [x.new_empty(s if need else (0,), dtype=x.dtype if i == 0 else w_hh.dtype)
             for i, (s, need) in enumerate(zip(shapes, needs))]
    return tuple(grads) + tuple(t.new_empty(t.shape) for t in ln) + tuple(w_hh.new_empty(0)
                                                                          for _ in range(_LN_SLOTS - len(ln)))


_LN_SLOTS = 4  # the backward ops' LayerNorm gradient outputs: gamma_hh, beta_hh, gamma_c, beta_c (empty if absent)


def _grads_out(grads, x: Tensor, w_hh: Tensor, lstm: bool, ln: list[Tensor]) -> tuple[Tensor, ...]:
    """rnn.backward's 8 grads and its LayerNorm grads -> the op's outputs (no c0 slot for GRU): dx
    in x's dtype (x is the input projection for the LayerNorm cells), the others in the weights'."""
    *grads, dln = grads
    if not lstm:
        grads = grads[:2] + grads[3:]
    out = [_empty_like_none(None if g is None else g.to(x.dtype if i == 0 else w_hh.dtype), w_hh)
           for i, g in enumerate(grads)]
    dln = [g.to(t.dtype) for g, t in zip(dln, ln)] if dln is not None else []
    return tuple(out) + tuple(dln) + tuple(w_hh.new_empty(0) for _ in range(_LN_SLOTS - len(dln)))


def _no_grad(arg: list):
    """The backward's "no gradient" for a list argument of an op with a tensor-list argument: torch
    checks the structure, and an empty list is a (tensor) list there while a list of numbers is one leaf."""
    return [] if not arg else None


def _ln(ln: list[Tensor]):
    """The ops' ``ln`` ([] or [gamma_hh, beta_hh (, gamma_c, beta_c)]) -> the launchers' layernorm."""
    return tuple(ln) if ln else None


# ------------------------------------------------------------------------------------------------
# The cells whose state is h alone: GRU, RNN (tanh / relu)
# ------------------------------------------------------------------------------------------------


@torch.library.custom_op("fusedrnn::triton_hcell_fwd", mutates_args=())
def _hcell_fwd(
    cell: str, x: Tensor, h0: Tensor, w_ih: Optional[Tensor], w_hh: Tensor, b_ih: Optional[Tensor],
    b_hh: Optional[Tensor], residual: Optional[Tensor], lengths: Optional[Tensor], reverse: bool, save: bool,
    strategy: Optional[str], zo_p: list[float], zo_seeds: Optional[Tensor], ln: list[Tensor],
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    y, h_n, _, hseq, _, act, lnx, lns = _kernels().forward(
        cell, x, h0, None, w_ih, w_hh, b_ih, b_hh, residual, lengths, reverse, save,
        allow_tf32=cuda_matmul_allows_tf32(), strategy=strategy, zoneout=_zo(zo_p, zo_seeds), layernorm=_ln(ln))
    return y, h_n, hseq, act, lnx, lns


@_hcell_fwd.register_fake
def _(cell, x, h0, w_ih, w_hh, b_ih, b_hh, residual, lengths, reverse, save, strategy, zo_p, zo_seeds, ln):
    T, B, _ = x.shape
    H = w_hh.shape[1]
    return (x.new_empty(T, B, H, dtype=w_hh.dtype), x.new_empty(B, H, dtype=w_hh.dtype),
            *_saved_shapes(x, w_hh, save, cell, ln))


@torch.library.custom_op("fusedrnn::triton_hcell_bwd", mutates_args=())
def _hcell_bwd(
    cell: str, dy: Optional[Tensor], dh_n: Optional[Tensor], x: Tensor, w_ih: Optional[Tensor], w_hh: Tensor,
    lengths: Optional[Tensor], hseq: Tensor, act: Tensor, reverse: bool, needs: list[bool], strategy: Optional[str],
    zo_p: list[float], zo_seeds: Optional[Tensor], ln: list[Tensor], lnx: Tensor, lns: Tensor,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    need_x, need_h0, *rest = needs
    grads = _kernels().backward(cell, dy, dh_n, None, x, w_ih, w_hh, lengths, hseq, None, act, reverse,
                                (need_x, need_h0, False, *rest), allow_tf32=cuda_matmul_allows_tf32(),
                                strategy=strategy, zoneout=_zo(zo_p, zo_seeds), layernorm=_ln(ln), lnx=lnx, lns=lns)
    return _grads_out(grads, x, w_hh, False, ln)


@_hcell_bwd.register_fake
def _(cell, dy, dh_n, x, w_ih, w_hh, lengths, hseq, act, reverse, needs, strategy, zo_p, zo_seeds, ln, lnx, lns):
    return _grad_shapes(x, w_ih, w_hh, needs, False, ln)


def _hcell_setup(ctx, inputs, output):
    cell, x, h0, w_ih, w_hh, b_ih, b_hh, residual, lengths, reverse, save, strategy, zo_p, zo_seeds, ln = inputs
    _, _, hseq, act, lnx, lns = output
    ctx.save_for_backward(x, w_ih, w_hh, lengths, hseq, act, zo_seeds, lnx, lns, *ln)
    ctx.zo_p = zo_p
    ctx.cell = cell
    ctx.has_bias = b_ih is not None
    ctx.has_res = residual is not None
    ctx.reverse = reverse
    ctx.strategy = strategy
    ctx.mark_non_differentiable(hseq, act, lnx, lns)


def _hcell_backward(ctx, dy, dh_n, _dhseq, _dact, _dlnx, _dlns):
    x, w_ih, w_hh, lengths, hseq, act, zo_seeds, lnx, lns, *ln = ctx.saved_tensors
    n = ctx.needs_input_grad[1:]  # after the cell's name
    needs = [n[0], n[1], n[2], n[3], ctx.has_bias and n[4], ctx.has_bias and n[5], ctx.has_res and n[6]]
    grads = _hcell_bwd(ctx.cell, dy, dh_n, x, w_ih, w_hh, lengths, hseq, act, ctx.reverse, needs, ctx.strategy,
                       ctx.zo_p, zo_seeds, ln, lnx, lns)
    dln = list(grads[7:7 + len(ln)])
    grads = [g if need else None for g, need in zip(grads[:7], needs)]
    return (None, *grads, None, None, None, None, _no_grad(ctx.zo_p), None, dln)


torch.library.register_autograd("fusedrnn::triton_hcell_fwd", _hcell_backward, setup_context=_hcell_setup)


def _zo(zo_p: list[float], zo_seeds: Optional[Tensor]):
    """The ops' zoneout arguments -> the kernels' (p_h, p_c, seeds) or None: ``zo_p`` is [] without
    zoneout, else [p_h, p_c]; ``zo_seeds`` the (2,) int64 seeds in training, None in evaluation."""
    return (zo_p[0], zo_p[1], zo_seeds) if zo_p else None


def _zo_args(zoneout) -> tuple[list[float], Optional[Tensor]]:
    """A fusedrnn.zoneout.Zoneout (or None) -> the ops' (zo_p, zo_seeds)."""
    if zoneout is None:
        return [], None
    return [zoneout.p_h, zoneout.p_c], zoneout.seeds


def _ln_args(x, w_ih, layernorm) -> tuple[Tensor, Optional[Tensor], list[Tensor]]:
    """The ops' (x, w_ih, ln) for a call: without LayerNorm (x, w_ih, []); with it, LN_ih(x W_ihᵀ)
    over all steps (torch ops, under autograd: fusedrnn.layernorm.norm in the accumulation dtype,
    after the GEMM in the input dtype as the kernels' input projection) as x, w_ih None, and
    LN_hh's and LN_c's gamma and beta, which the kernels apply in the step."""
    if layernorm is None:
        return x, w_ih, []
    from fusedrnn.layernorm import norm

    acc = torch.float64 if w_ih.dtype == torch.float64 else torch.float32
    gx = norm(torch.nn.functional.linear(x, w_ih).to(acc), layernorm.ih_weight.to(acc), layernorm.ih_bias.to(acc))
    rest = (layernorm.hh_weight, layernorm.hh_bias, layernorm.c_weight, layernorm.c_bias)
    return gx, None, [t for t in rest if t is not None]


def _run_hcell(cell, x, h0, w_ih, w_hh, b_ih, b_hh, residual, lengths, reverse, strategy, zoneout=None,
               layernorm=None):
    if lengths is not None:
        # torch keeps lengths on the CPU; non_blocking avoids a stream sync for the copy
        lengths = lengths.to(device=x.device, non_blocking=True)
    x, w_ih, ln = _ln_args(x, w_ih, layernorm)
    save = _needs_save(x, h0, w_ih, w_hh, b_ih, b_hh, residual, *ln)
    y, h_n, *_ = _hcell_fwd(cell, x, h0, w_ih, w_hh, b_ih, b_hh, residual, lengths, reverse, save, strategy,
                            *_zo_args(zoneout), ln)
    return y, h_n


def gru(x, h0, w_ih, w_hh, b_ih, b_hh, residual, lengths, reverse, zoneout=None, layernorm=None, *,
        strategy: Optional[str] = None):
    """One GRU layer-direction (see fusedrnn.functional.gru). ``strategy`` forces "persistent" or
    "batch_tile" (tests, benchmarks); None picks by shape (kernels/plan.py: choose_strategy).
    ``zoneout``: a fusedrnn.zoneout.Zoneout or None (masks generated in the kernels).
    ``layernorm``: a fusedrnn.layernorm.LayerNorm or None (LN_hh in the kernels, batch_tile)."""
    return _run_hcell("gru", x, h0, w_ih, w_hh, b_ih, b_hh, residual, lengths, reverse, strategy, zoneout,
                      layernorm)


def rnn(cell, x, h0, w_ih, w_hh, b_ih, b_hh, residual, lengths, reverse, zoneout=None, *,
        strategy: Optional[str] = None):
    """One Elman RNN layer-direction, ``cell`` "rnn_tanh" or "rnn_relu" (see fusedrnn.functional.rnn_tanh)."""
    if cell not in ("rnn_tanh", "rnn_relu"):
        raise ValueError(f"cell must be 'rnn_tanh' or 'rnn_relu', got {cell!r}")
    return _run_hcell(cell, x, h0, w_ih, w_hh, b_ih, b_hh, residual, lengths, reverse, strategy, zoneout)


# ------------------------------------------------------------------------------------------------
# LSTM
# ------------------------------------------------------------------------------------------------


@torch.library.custom_op("fusedrnn::triton_lstm_fwd", mutates_args=())
def _lstm_fwd(
    x: Tensor, h0: Tensor, c0: Tensor, w_ih: Optional[Tensor], w_hh: Tensor, b_ih: Optional[Tensor],
    b_hh: Optional[Tensor], residual: Optional[Tensor], lengths: Optional[Tensor], reverse: bool, save: bool,
    strategy: Optional[str], zo_p: list[float], zo_seeds: Optional[Tensor], ln: list[Tensor],
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    return _kernels().forward("lstm", x, h0, c0, w_ih, w_hh, b_ih, b_hh, residual, lengths, reverse, save,
                              allow_tf32=cuda_matmul_allows_tf32(), strategy=strategy, zoneout=_zo(zo_p, zo_seeds),
                              layernorm=_ln(ln))


@_lstm_fwd.register_fake
def _(x, h0, c0, w_ih, w_hh, b_ih, b_hh, residual, lengths, reverse, save, strategy, zo_p, zo_seeds, ln):
    T, B, _ = x.shape
    H = w_hh.shape[1]
    return (x.new_empty(T, B, H, dtype=w_hh.dtype), x.new_empty(B, H, dtype=w_hh.dtype),
            x.new_empty(B, H, dtype=w_hh.dtype), *_saved_shapes(x, w_hh, save, "lstm", ln))


@torch.library.custom_op("fusedrnn::triton_lstm_bwd", mutates_args=())
def _lstm_bwd(
    dy: Optional[Tensor], dh_n: Optional[Tensor], dc_n: Optional[Tensor], x: Tensor, w_ih: Optional[Tensor],
    w_hh: Tensor, lengths: Optional[Tensor], hseq: Tensor, cseq: Tensor, act: Tensor, reverse: bool,
    needs: list[bool], strategy: Optional[str], zo_p: list[float], zo_seeds: Optional[Tensor], ln: list[Tensor],
    lnx: Tensor, lns: Tensor,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    grads = _kernels().backward("lstm", dy, dh_n, dc_n, x, w_ih, w_hh, lengths, hseq, cseq, act, reverse, tuple(needs),
                                allow_tf32=cuda_matmul_allows_tf32(), strategy=strategy,
                                zoneout=_zo(zo_p, zo_seeds), layernorm=_ln(ln), lnx=lnx, lns=lns)
    return _grads_out(grads, x, w_hh, True, ln)


@_lstm_bwd.register_fake
def _(dy, dh_n, dc_n, x, w_ih, w_hh, lengths, hseq, cseq, act, reverse, needs, strategy, zo_p, zo_seeds, ln, lnx,
      lns):
    return _grad_shapes(x, w_ih, w_hh, needs, True, ln)


def _lstm_setup(ctx, inputs, output):
    x, h0, c0, w_ih, w_hh, b_ih, b_hh, residual, lengths, reverse, save, strategy, zo_p, zo_seeds, ln = inputs
    _, _, _, hseq, cseq, act, lnx, lns = output
    ctx.save_for_backward(x, w_ih, w_hh, lengths, hseq, cseq, act, zo_seeds, lnx, lns, *ln)
    ctx.zo_p = zo_p
    ctx.has_bias = b_ih is not None
    ctx.has_res = residual is not None
    ctx.reverse = reverse
    ctx.strategy = strategy
    ctx.mark_non_differentiable(hseq, cseq, act, lnx, lns)


def _lstm_backward(ctx, dy, dh_n, dc_n, _dhseq, _dcseq, _dact, _dlnx, _dlns):
    x, w_ih, w_hh, lengths, hseq, cseq, act, zo_seeds, lnx, lns, *ln = ctx.saved_tensors
    n = ctx.needs_input_grad
    needs = [n[0], n[1], n[2], n[3], n[4], ctx.has_bias and n[5], ctx.has_bias and n[6], ctx.has_res and n[7]]
    grads = _lstm_bwd(dy, dh_n, dc_n, x, w_ih, w_hh, lengths, hseq, cseq, act, ctx.reverse, needs,
                      ctx.strategy, ctx.zo_p, zo_seeds, ln, lnx, lns)
    dln = list(grads[8:8 + len(ln)])
    grads = [g if need else None for g, need in zip(grads[:8], needs)]
    return (*grads, None, None, None, None, _no_grad(ctx.zo_p), None, dln)


torch.library.register_autograd("fusedrnn::triton_lstm_fwd", _lstm_backward, setup_context=_lstm_setup)


def lstm(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, residual, lengths, reverse, zoneout=None, layernorm=None, *,
         strategy: Optional[str] = None):
    """One LSTM layer-direction (see fusedrnn.functional.lstm); no projection (see limits).
    ``layernorm``: a fusedrnn.layernorm.LayerNorm or None (LN_hh and LN_c in the kernels, batch_tile)."""
    if w_hr is not None:
        raise ValueError("fusedrnn triton backend: " + PROJ_REASON)
    if lengths is not None:
        # torch keeps lengths on the CPU; non_blocking avoids a stream sync for the copy
        lengths = lengths.to(device=x.device, non_blocking=True)
    x, w_ih, ln = _ln_args(x, w_ih, layernorm)
    save = _needs_save(x, h0, c0, w_ih, w_hh, b_ih, b_hh, residual, *ln)
    y, h_n, c_n, *_ = _lstm_fwd(x, h0, c0, w_ih, w_hh, b_ih, b_hh, residual, lengths, reverse, save, strategy,
                                *_zo_args(zoneout), ln)
    return y, h_n, c_n


# ------------------------------------------------------------------------------------------------
# The backend (fusedrnn/backends/__init__.py's interface)
# ------------------------------------------------------------------------------------------------


class TritonBackend(Backend):
    name = "triton"
    description = "fused Triton kernels: whole sequence per launch (CUDA; CPU only under TRITON_INTERPRET=1)"

    def unavailable(self):
        return unavailable()

    def reasons(self, spec, forced):
        if spec.layernorm and spec.cell not in ("gru", "lstm"):  # decided without importing Triton
            return [RNN_LAYERNORM_REASON]
        if spec.device.type == "cpu" and os.environ.get("TRITON_INTERPRET", "0") in ("", "0") \
                and _kernels_module is None:
            # Decided without importing Triton: on the CPU the kernels run only under its interpreter.
            return ["device=cpu: Triton kernels run on CUDA, or on CPU only under TRITON_INTERPRET=1"]
        reasons = self.unavailable()
        if reasons:
            return reasons
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

    def gru(self, x, h0, w_ih, w_hh, b_ih, b_hh, residual, lengths, reverse, zoneout=None, layernorm=None):
        return gru(x, h0, w_ih, w_hh, b_ih, b_hh, residual, lengths, reverse, zoneout, layernorm)

    def rnn(self, cell, x, h0, w_ih, w_hh, b_ih, b_hh, residual, lengths, reverse, zoneout=None, layernorm=None):
        self.refuse_layernorm(layernorm, RNN_LAYERNORM_REASON)
        return rnn(cell, x, h0, w_ih, w_hh, b_ih, b_hh, residual, lengths, reverse, zoneout)

    def lstm(self, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, residual, lengths, reverse, zoneout=None,
             layernorm=None):
        return lstm(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, residual, lengths, reverse, zoneout, layernorm)


BACKEND = TritonBackend()
