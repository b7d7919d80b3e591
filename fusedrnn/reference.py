"""Pure-PyTorch reference for the functional ops: the oracle every kernel is tested against.

One layer, one direction, a whole time-major sequence, written as the plainest possible time
loop. Accumulation happens in float32 for float16/bfloat16/float32 inputs and in float64 for
float64 inputs; results are cast back to the input dtype. Autograd comes from torch itself.

Semantics shared by every backend (see fusedrnn.functional):
- row b is valid for its first ``lengths[b]`` steps (all T steps when ``lengths`` is None);
- at a valid step the state advances and ``y[t] = h[t] (+ residual[t])``;
- at an invalid step the state is carried unchanged and ``y[t] = 0``;
- ``reverse=True`` walks t = T-1 .. 0; since steps past a row's length are skipped, each row
  effectively starts at its own last valid step;
- the final state is the state after the last processed valid step;
- ``zoneout`` (a fusedrnn.zoneout.Zoneout, or None): each new state is zoned,
  h_t = m * h_{t-1} + (1 - m) * h~_t (and c_t likewise for LSTM), before the output and the
  length masking; the masks are fusedrnn.zoneout's counter-based ones;
- ``layernorm`` (a fusedrnn.layernorm.LayerNorm, or None): LN_ih normalises x W_ihᵀ (all steps at
  once, before b_ih is added), LN_hh normalises h W_hhᵀ (before b_hh), and for LSTM
  h_t = o * tanh(LN_c(c_t)) while c_t itself is carried (fusedrnn/layernorm.py defines it); any
  zoneout then applies to the states the cell computed.
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import zoneout as _zoneout
from .layernorm import LayerNorm
from .layernorm import norm as _norm


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the math runs in: float64 stays float64, everything else accumulates in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _input_projection(x: Tensor, w_ih: Tensor, b_ih: Tensor | None, ln: LayerNorm | None) -> Tensor:
    # One GEMM for all steps: (T, B, I) @ (I, G) -> (T, B, G); LN_ih over all steps at once.
    gx = x @ w_ih.t()
    if ln is not None:
        gx = _norm(gx, ln.ih_weight, ln.ih_bias)
    return gx if b_ih is None else gx + b_ih


def _recurrent_projection(h: Tensor, w_hh: Tensor, b_hh: Tensor | None, ln: LayerNorm | None) -> Tensor:
    gh = h @ w_hh.t()
    if ln is not None:
        gh = _norm(gh, ln.hh_weight, ln.hh_bias)
    return gh if b_hh is None else gh + b_hh


def _valid_mask(lengths: Tensor | None, t: int, batch: int, device) -> Tensor | None:
    if lengths is None:
        return None
    return (lengths.to(device) > t).view(batch, 1)


def _steps(T: int, reverse: bool):
    return range(T - 1, -1, -1) if reverse else range(T)


def _one_state_sequence(step, x, h0, w_ih, w_hh, b_ih, b_hh, residual, lengths, reverse, zoneout=None,
                        layernorm=None):
    """The time loop of a one-state cell (GRU, Elman RNN): ``step(gx_t, gh, h) -> h_new`` with
    gh = h W_hhᵀ + b_hh (LN_hh(h W_hhᵀ) + b_hh with ``layernorm``), everything in the compute dtype;
    masking, residual and stacking here."""
    out_dtype = x.dtype
    ct = compute_dtype(out_dtype)
    x, h, w_ih, w_hh = (t.to(ct) for t in (x, h0, w_ih, w_hh))
    b_ih = None if b_ih is None else b_ih.to(ct)
    b_hh = None if b_hh is None else b_hh.to(ct)
    layernorm = None if layernorm is None else layernorm.to(ct)
    T, B = x.shape[0], x.shape[1]
    H = w_hh.shape[1]

    gx = _input_projection(x, w_ih, b_ih, layernorm)
    ys: list[Tensor | None] = [None] * T
    for t in _steps(T, reverse):
        gh = _recurrent_projection(h, w_hh, b_hh, layernorm)
        h_new = _zoneout.apply(zoneout, 0, t, step(gx[t], gh, h), h)
        y_t = h_new if residual is None else h_new + residual[t].to(ct)
        valid = _valid_mask(lengths, t, B, x.device)
        if valid is not None:
            h_new = torch.where(valid, h_new, h)
            y_t = torch.where(valid, y_t, torch.zeros_like(y_t))
        h = h_new
        ys[t] = y_t
    y = torch.stack(ys, 0) if T > 0 else x.new_zeros(0, B, H)
    return y.to(out_dtype), h.to(out_dtype)


def gru_reference(
    x: Tensor,
    h0: Tensor,
    w_ih: Tensor,
    w_hh: Tensor,
    b_ih: Tensor | None,
    b_hh: Tensor | None,
    *,
    residual: Tensor | None = None,
    lengths: Tensor | None = None,
    reverse: bool = False,
    zoneout: _zoneout.Zoneout | None = None,
    layernorm: LayerNorm | None = None,
) -> tuple[Tensor, Tensor]:
    """GRU over a whole sequence. x (T, B, I), h0 (B, H) -> y (T, B, H), h_n (B, H). With
    ``layernorm``: gi = LN_ih(x W_ihᵀ) + b_ih, gh = LN_hh(h W_hhᵀ) + b_hh, then the same step."""

    def step(gx_t, gh, h):
        gx_r, gx_z, gx_n = gx_t.chunk(3, dim=1)
        gh_r, gh_z, gh_n = gh.chunk(3, dim=1)
        r = torch.sigmoid(gx_r + gh_r)
        z = torch.sigmoid(gx_z + gh_z)
        n = torch.tanh(gx_n + r * gh_n)
        return (1 - z) * n + z * h

    return _one_state_sequence(step, x, h0, w_ih, w_hh, b_ih, b_hh, residual, lengths, reverse, zoneout, layernorm)


def rnn_reference(
    x: Tensor,
    h0: Tensor,
    w_ih: Tensor,
    w_hh: Tensor,
    b_ih: Tensor | None,
    b_hh: Tensor | None,
    *,
    nonlinearity: str = "tanh",
    residual: Tensor | None = None,
    lengths: Tensor | None = None,
    reverse: bool = False,
    zoneout: _zoneout.Zoneout | None = None,
    layernorm: LayerNorm | None = None,
) -> tuple[Tensor, Tensor]:
    """Elman RNN (torch.nn.RNN's cell) over a whole sequence: h' = act(x W_ihᵀ + b_ih + h W_hhᵀ + b_hh),
    act = tanh or relu. x (T, B, I), h0 (B, H) -> y (T, B, H), h_n (B, H). ``layernorm`` (the
    shared loop's): LN_ih(x W_ihᵀ) and LN_hh(h W_hhᵀ) over H; no module or functional op offers it."""
    if nonlinearity not in ("tanh", "relu"):
        raise ValueError(f"Unknown nonlinearity '{nonlinearity}'. Select from 'tanh' or 'relu'.")
    act = torch.tanh if nonlinearity == "tanh" else torch.relu
    return _one_state_sequence(lambda gx_t, gh, h: act(gx_t + gh), x, h0, w_ih, w_hh, b_ih, b_hh, residual,
                               lengths, reverse, zoneout, layernorm)


def lstm_reference(
    x: Tensor,
    h0: Tensor,
    c0: Tensor,
    w_ih: Tensor,
    w_hh: Tensor,
    b_ih: Tensor | None,
    b_hh: Tensor | None,
    w_hr: Tensor | None = None,
    *,
    residual: Tensor | None = None,
    lengths: Tensor | None = None,
    reverse: bool = False,
    zoneout: _zoneout.Zoneout | None = None,
    layernorm: LayerNorm | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """LSTM over a whole sequence. x (T, B, I), h0 (B, P), c0 (B, H) -> y (T, B, P), h_n, c_n. With
    ``layernorm``: gates = LN_ih(x W_ihᵀ) + LN_hh(h W_hhᵀ) + b_ih + b_hh and h = o * tanh(LN_c(c))."""
    out_dtype = x.dtype
    ct = compute_dtype(out_dtype)
    x, h, c, w_ih, w_hh = (t.to(ct) for t in (x, h0, c0, w_ih, w_hh))
    b_ih = None if b_ih is None else b_ih.to(ct)
    b_hh = None if b_hh is None else b_hh.to(ct)
    w_hr = None if w_hr is None else w_hr.to(ct)
    layernorm = None if layernorm is None else layernorm.to(ct)
    T, B = x.shape[0], x.shape[1]
    H = c0.shape[1]
    P = h0.shape[1]

    gx = _input_projection(x, w_ih, b_ih, layernorm)
    ys: list[Tensor | None] = [None] * T
    for t in _steps(T, reverse):
        gates = gx[t] + _recurrent_projection(h, w_hh, b_hh, layernorm)
        g_i, g_f, g_g, g_o = gates.split(H, dim=1)
        i = torch.sigmoid(g_i)
        f = torch.sigmoid(g_f)
        g = torch.tanh(g_g)
        o = torch.sigmoid(g_o)
        c_new = f * c + i * g
        h_new = o * torch.tanh(c_new if layernorm is None else _norm(c_new, layernorm.c_weight, layernorm.c_bias))
        if w_hr is not None:
            h_new = h_new @ w_hr.t()
        c_new = _zoneout.apply(zoneout, 1, t, c_new, c)
        h_new = _zoneout.apply(zoneout, 0, t, h_new, h)
        y_t = h_new if residual is None else h_new + residual[t].to(ct)
        valid = _valid_mask(lengths, t, B, x.device)
        if valid is not None:
            h_new = torch.where(valid, h_new, h)
            c_new = torch.where(valid, c_new, c)
            y_t = torch.where(valid, y_t, torch.zeros_like(y_t))
        h, c = h_new, c_new
        ys[t] = y_t
    y = torch.stack(ys, 0) if T > 0 else x.new_zeros(0, B, P)
    return y.to(out_dtype), h.to(out_dtype), c.to(out_dtype)
