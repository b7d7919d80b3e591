"""What differs between the cells: the gate math of one step and its backward, on (rows, units)
tiles of one unit block, in the accumulation dtype. Everything else (the recurrent product, the
step loop, the barrier, the buffers) is shared: kernels/rnn.py calls these with the cell as a
constexpr, so each compiled kernel contains only its own cell's math.

Semantics are fusedrnn.reference's (torch's gate order):
    GRU:  r = σ(gx_r + W_hr h + b_hr), z = σ(gx_z + W_hz h + b_hz),
          n = tanh(gx_n + r * (W_hn h + b_hn)), h' = (1 - z) n + z h
    LSTM: i, f, o = σ(gx + W h + b), g = tanh(gx_g + W_hg h + b_hg), c' = f c + i g, h' = o tanh(c')
    RNN:  h' = act(gx + W h + b), act = tanh (rnn_tanh) or relu (rnn_relu); one gate
Saved activations (kernels/plan.py SAVED_ACTS; four per unit, (T, B, 4H), or one for the RNN):
GRU r, z, n, ghn = W_hn h + b_hn; LSTM i, f, g, o; RNN h' (the derivative of tanh / relu is a
function of h': 1 - h'^2, h' > 0 as torch's relu backward).
"""

from __future__ import annotations

import triton
import triton.language as tl

from .common import sigmoid, tanh


@triton.jit
def gates_forward(CELL: tl.constexpr, x0, x1, x2, x3, a0, a1, a2, a3, h_prev, c_prev):
    """One step of the cell for a tile. x*: input projections gx (bias b_ih included) per gate;
    a*: recurrent terms W_hh h + b_hh per gate (a3 unused for GRU, a1..a3 for the RNN). Returns
    (h', c', act0, act1, act2, act3); c' is c_prev for GRU and the RNN, act1..3 unused for the RNN."""
    if CELL == "gru":
        r = sigmoid(x0 + a0)
        z = sigmoid(x1 + a1)
        n = tanh(x2 + r * a2)
        h = (1.0 - z) * n + z * h_prev
        return h, c_prev, r, z, n, a2
    elif CELL == "lstm":
        i = sigmoid(x0 + a0)
        f = sigmoid(x1 + a1)
        g = tanh(x2 + a2)
        o = sigmoid(x3 + a3)
        c = f * c_prev + i * g
        h = o * tanh(c)
        return h, c, i, f, g, o
    else:  # rnn_tanh, rnn_relu
        if CELL == "rnn_tanh":
            h = tanh(x0 + a0)
        else:
            h = tl.maximum(x0 + a0, 0.0)
        return h, c_prev, h, a1, a2, a3


@triton.jit
def zoneout_params(ZO: tl.constexpr, zo_ptr, seed_ptr, which: tl.constexpr):
    """(p, 1 - p, seed) of state ``which`` (0: h, 1: c), loaded once per launch: p and 1 - p from the
    (4,) tensor [p_h, p_c, 1 - p_h, 1 - p_c] in the accumulation dtype, the seed from the (2,) int64
    seeds (training only, ZO == 1); constants when the state is not zoned (ZO == 0)."""
    if ZO == 0:
        return 0.0, 1.0, 0
    elif ZO == 1:
        return tl.load(zo_ptr + which), tl.load(zo_ptr + 2 + which), tl.load(seed_ptr + which)
    else:
        return tl.load(zo_ptr + which), tl.load(zo_ptr + 2 + which), 0


@triton.jit
def zoneout_mask(seed, p, offs):
    """Training zoneout mask for the tile whose counters are ``offs`` ((t * B + b) * W + j, int64):
    True where the element keeps its old value. Philox uniform below p in float32, bit for bit
    fusedrnn.zoneout.keep_mask."""
    return tl.rand(seed, offs) < p.to(tl.float32)


@triton.jit
def zone(ZO: tl.constexpr, seed, p, q, offs, new, old):
    """The zoned state (fusedrnn.zoneout.apply): ZO 0: new; 1 (training): old where the mask
    zones out, else new; 2 (evaluation): p * old + q * new with q = 1 - p."""
    if ZO == 1:
        return tl.where(zoneout_mask(seed, p, offs), old, new)
    elif ZO == 2:
        return p * old + q * new
    else:
        return new


@triton.jit
def zone_grad(ZO: tl.constexpr, seed, p, q, offs, d):
    """Backward of zone() for the gradient ``d`` of the zoned state: (to new, to old)."""
    if ZO == 1:
        m = zoneout_mask(seed, p, offs)
        return tl.where(m, 0.0, d), tl.where(m, d, 0.0)
    elif ZO == 2:
        return q * d, p * d
    else:
        return d, 0.0 * d


@triton.jit
def lstm_h_path(dh, o, y):
    """LSTM's h~ = o tanh(y) (y = c~, or LN_c(c~)): (tanh(y), dL/dy) for dL/dh~ = ``dh``."""
    tc = tanh(y)
    return tc, dh * o * (1.0 - tc * tc)


@triton.jit
def gates_backward(CELL: tl.constexpr, dh, dc, act0, act1, act2, act3, h_prev, c_prev, tc, dc_h):
    """Gradients of one step for a tile. dh: dL/dh' (carried + dy); dc: dL/dc' carried (LSTM);
    tc, dc_h (LSTM): tanh of h~'s argument and the gradient reaching c~ through h~ (lstm_h_path,
    through LN_c's backward for the LayerNorm LSTM).
    Returns (dgx0..3, dgh2, dh_direct, dc_prev): dgx* are the gradients of the pre-activations as
    the input projection sees them; the recurrent product sees the same except for GRU's n gate
    (dgh2 = dn * r, the gradient of W_hn h + b_hn); dh_direct is what reaches h_{t-1} other than
    through W_hh (GRU: dh * z; LSTM, RNN: 0); dc_prev reaches c_{t-1} (LSTM). The RNN has one
    gate: dgx0 (= its dgh), the others are zeros."""
    if CELL == "gru":
        r, z, n, ghn = act0, act1, act2, act3
        dn = dh * (1.0 - z) * (1.0 - n * n)
        dz = dh * (h_prev - n) * z * (1.0 - z)
        dr = dn * ghn * r * (1.0 - r)
        return dr, dz, dn, 0.0 * dn, dn * r, dh * z, dc
    elif CELL == "lstm":
        i, f, g, o = act0, act1, act2, act3
        dc_t = dc + dc_h
        di = dc_t * g * i * (1.0 - i)
        df = dc_t * c_prev * f * (1.0 - f)
        dg = dc_t * i * (1.0 - g * g)
        do = dh * tc * o * (1.0 - o)
        return di, df, dg, do, dg, 0.0 * dh, dc_t * f
    else:  # rnn_tanh, rnn_relu: act0 = h'
        if CELL == "rnn_tanh":
            d = dh * (1.0 - act0 * act0)
        else:
            d = tl.where(act0 > 0.0, dh, 0.0)
        zero = 0.0 * d
        return d, zero, zero, zero, zero, zero, dc
