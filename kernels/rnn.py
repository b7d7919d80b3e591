"""GRU, LSTM and the Elman RNN (tanh / relu), one layer and one direction: the recurrent Triton
kernels (one forward, one backward, every cell: ``CELL`` is a constexpr) and their host launchers. README.md in this folder describes the step loop.

Buffers (acc = float64 for float64 inputs, float32 otherwise; "weight dtype" = the input dtype):
- ``gx`` (T, B, NG*H) acc: x W_ihᵀ + b_ih for all steps (one torch GEMM, never in the kernel).
- ``w_fwd`` (n_blk, HP, S*BH) / ``w_bwd`` (n_blk, S*HP, BH) weight dtype, S = the cell's gate slots
  (plan.gate_slots: 4 for GRU/LSTM, 1 for the RNN): W_hh re-arranged once per call (pack_weights)
  so that each program's slice is contiguous and zero-padded: rows and gate columns load as
  16-byte vectors without masks.
- ``hseq`` / ``cseq`` (n_slots, B, H) acc, indexed by *processing order* q (the q-th step walked:
  t = q forward, t = T-1-q reversed): slot 0 = h0 (c0), slot q+1 = state after step q (carried
  on invalid steps). n_slots = T+1 saves the sequence for the backward; inference keeps 2.
- ``xchg`` (2, BP, HP) weight dtype, zero-padded (BP = batch tiles x BB rows): h_q as the operand
  of the next step's product, slot q % 2; written by the unit block's owner, read by every program
  of the batch tile after the barrier. Rounding h to the weight dtype here is the rounding of the
  MMA operand, so the numerics are those of an fp32 state with a low-precision product.
- ``act`` (T, B, NA*H) acc by time: r, z, n, ghn (GRU) / i, f, g, o (LSTM) / h' (RNN; NA = 1,
  plan.SAVED_ACTS), everything the backward needs besides the states; no GEMM is recomputed in the
  backward.
- backward: ``dgx`` (T, B, NG*H) acc, d(pre-activations) as the input GEMM sees them; GRU also
  ``dgh`` (the recurrent GEMM's view: dgh_n = dgx_n * r; for LSTM dgh is dgx); the exchange
  (2, BP, S*HP) weight dtype holds dgh_{q} for the next (earlier) step; ``dh`` / ``dc`` (B, H)
  acc carry the state gradients across steps.
"""

from __future__ import annotations

import dataclasses

import torch
import triton
import triton.language as tl

from . import plan as plans
from .cells import gates_backward, gates_forward, lstm_h_path, zone, zone_grad, zoneout_params
from .common import tanh
from .common import (
    barrier_arrive, barrier_wait, device_of, dot_precision, interpreter_on, launch_steps, lowp_torch_gemms, mma,
)

# ------------------------------------------------------------------------------------------------
# Device code
# ------------------------------------------------------------------------------------------------


@triton.jit
def load_w_slice(w_ptr, blk, K: tl.constexpr, N: tl.constexpr, KS: tl.constexpr):
    """Program's W_hh slice (K, N) (contiguous in the packed weights), shaped for the product:
    (KS, K/KS, N) when the warps split the reduction."""
    base = w_ptr + blk * (K * N)  # 32-bit: the packed W_hh has < 2**31 elements (triton_ops.MAX_H)
    if KS > 1:
        KC: tl.constexpr = K // KS
        s = tl.arange(0, KS)[:, None, None]
        c = tl.arange(0, KC)[None, :, None]
        n = tl.arange(0, N)[None, None, :]
        w_slice = tl.load(base + (s * KC + c) * N + n)
    else:
        c = tl.arange(0, K)[:, None]
        n = tl.arange(0, N)[None, :]
        w_slice = tl.load(base + c * N + n)
    return w_slice


@triton.jit
def recurrent_product(a_ptr, rows64, row_ok, k_valid, n_seg, w_ptr, blk, w_res, acc_dtype: tl.constexpr,
                      BB: tl.constexpr, K: tl.constexpr, N: tl.constexpr, SEG: tl.constexpr, KS: tl.constexpr,
                      BLOCK_K: tl.constexpr, NUM_STAGES: tl.constexpr, RESIDENT: tl.constexpr,
                      DOT_PRECISION: tl.constexpr):
    """(BB, K) @ (K, N) for one unit block: the operand rows ``rows64`` of ``a_ptr`` (row stride K,
    written by other programs: loaded through L2, .cg) times the block's W_hh slice, fp32 (fp64)
    accumulation. The reduction is ``n_seg`` segments of SEG columns each valid up to ``k_valid``
    (a multiple of 16): the padding is not fetched (whole 16-byte vectors are masked off).

    RESIDENT: ``w_res`` (loaded once per launch) and the whole operand in one group of loads.
    Streamed: K chunks of BLOCK_K, operand and W chunk through a NUM_STAGES-deep pipeline of
    asynchronous copies, so the next chunks are in flight during the current chunk's MMA.
    KS > 1: warp s reduces columns [s*KC, (s+1)*KC) of every chunk into its own partial (short MMA
    chains), the partials are summed once at the end."""
    w_base = w_ptr + blk * (K * N)  # 32-bit: the packed W_hh has < 2**31 elements (triton_ops.MAX_H)
    if KS > 1:
        KC: tl.constexpr = BLOCK_K // KS
        s3 = tl.arange(0, KS)[:, None, None]
        r3 = rows64[None, :, None]
        ok3 = row_ok[None, :, None]
        c3 = tl.arange(0, KC)[None, None, :]
        acc = tl.full((KS, BB, N), 0.0, dtype=acc_dtype)
        if RESIDENT:
            kk = s3 * KC + c3
            a_all = tl.load(a_ptr + r3 * K + kk, mask=ok3 & ((kk % SEG) < k_valid) & (kk < n_seg * SEG), other=0.0,
                            cache_modifier=".cg")
            acc = mma(a_all, w_res, acc, DOT_PRECISION)
        else:
            cw = tl.arange(0, KC)[None, :, None]
            n3 = tl.arange(0, N)[None, None, :]
            for kb in tl.range(0, K // BLOCK_K, num_stages=NUM_STAGES):
                kk = kb * BLOCK_K + s3 * KC + c3
                a_chunk = tl.load(a_ptr + r3 * K + kk, mask=ok3 & ((kk % SEG) < k_valid) & (kk < n_seg * SEG),
                                  other=0.0, cache_modifier=".cg")
                w_chunk = tl.load(w_base + (kb * BLOCK_K + s3 * KC + cw) * N + n3)
                acc = mma(a_chunk, w_chunk, acc, DOT_PRECISION)
        out = tl.sum(acc, axis=0)
    else:
        r2 = rows64[:, None]
        ok2 = row_ok[:, None]
        c2 = tl.arange(0, BLOCK_K)[None, :]
        out = tl.full((BB, N), 0.0, dtype=acc_dtype)
        if RESIDENT:
            a_all = tl.load(a_ptr + r2 * K + c2, mask=ok2 & ((c2 % SEG) < k_valid) & (c2 < n_seg * SEG), other=0.0,
                            cache_modifier=".cg")
            out = mma(a_all, w_res, out, DOT_PRECISION)
        else:
            cw = tl.arange(0, BLOCK_K)[:, None]
            n2 = tl.arange(0, N)[None, :]
            for kb in tl.range(0, K // BLOCK_K, num_stages=NUM_STAGES):
                kk = kb * BLOCK_K + c2
                a_chunk = tl.load(a_ptr + r2 * K + kk, mask=ok2 & ((kk % SEG) < k_valid) & (kk < n_seg * SEG),
                                  other=0.0, cache_modifier=".cg")
                w_chunk = tl.load(w_base + (kb * BLOCK_K + cw) * N + n2)
                out = mma(a_chunk, w_chunk, out, DOT_PRECISION)
    return out


@triton.jit
def split_gates(acc, BB: tl.constexpr, BH: tl.constexpr, SLOTS: tl.constexpr):
    """(BB, SLOTS*BH) product columns g*BH + u -> four (BB, BH) tiles, one per gate slot (zeros
    past SLOTS). With the MMA layout every thread already holds all four gates of its (row, unit)
    positions, so the reshape/permute/split move no data."""
    if SLOTS == 1:
        zero = tl.full((BB, BH), 0.0, dtype=acc.dtype)
        return acc, zero, zero, zero
    else:
        x = tl.permute(tl.reshape(acc, (BB, 2, 2, BH)), (0, 3, 1, 2))  # (rows, units, g // 2, g % 2)
        even, odd = tl.split(x)
        a0, a2 = tl.split(even)
        a1, a3 = tl.split(odd)
        return a0, a1, a2, a3


@triton.jit
def load_gate_tiles(ptr, offs, mask, H, NG: tl.constexpr):
    """The NG per-gate tiles at ``offs + g*H``, and zeros for the slots past NG (GRU's fourth, the
    RNN's second to fourth)."""
    x0 = tl.load(ptr + offs, mask=mask, other=0.0)
    zero = tl.full(x0.shape, 0.0, dtype=x0.dtype)
    if NG >= 2:
        x1 = tl.load(ptr + offs + H, mask=mask, other=0.0)
    else:
        x1 = zero
    if NG >= 3:
        x2 = tl.load(ptr + offs + 2 * H, mask=mask, other=0.0)
    else:
        x2 = zero
    if NG == 4:
        x3 = tl.load(ptr + offs + 3 * H, mask=mask, other=0.0)
    else:
        x3 = zero
    return x0, x1, x2, x3


@triton.jit
def store_gate_tiles(ptr, offs, mask, H, x0, x1, x2, x3, NG: tl.constexpr):
    """The first NG of the four tiles to ``offs + g*H``."""
    tl.store(ptr + offs, x0, mask=mask)
    if NG >= 2:
        tl.store(ptr + offs + H, x1, mask=mask)
    if NG >= 3:
        tl.store(ptr + offs + 2 * H, x2, mask=mask)
    if NG == 4:
        tl.store(ptr + offs + 3 * H, x3, mask=mask)


@triton.jit
def batch_rows(len_ptr, B, BB: tl.constexpr, HAS_LEN: tl.constexpr):
    """This program's batch rows: (rows as int64, in-range mask, per-row lengths or 0)."""
    rows = tl.program_id(1) * BB + tl.arange(0, BB)
    row_ok = rows < B
    if HAS_LEN:
        lens = tl.load(len_ptr + rows, mask=row_ok, other=0)
    else:
        lens = 0
    return rows.to(tl.int64), row_ok, lens


@triton.jit
def step_time(q, T, row_ok, lens, REVERSE: tl.constexpr, HAS_LEN: tl.constexpr):
    """Time index of processing step q (backwards when REVERSE) as int64, and the (rows, 1) mask
    of rows for which step q is valid (t < length)."""
    if REVERSE:
        t = T - 1 - q
    else:
        t = q
    valid = row_ok
    if HAS_LEN:
        valid = valid & (t < lens)
    return t.to(tl.int64), valid[:, None]


@triton.jit
def load_bwd_inputs(dh_ptr, dy_ptr, act_ptr, hseq_ptr, cseq_ptr, dc_ptr, rows64, units, m2, t64, q, B, H,
                    CELL: tl.constexpr, HAS_DY: tl.constexpr):
    """The backward step's own tiles for one unit block: the carried dh (dc), dy, the saved
    activations and the states the cell's backward needs (LSTM: c_{t-1}, c_t; GRU: h_{t-1}; RNN:
    none, its one activation is h_t)."""
    acc_dtype: tl.constexpr = dh_ptr.dtype.element_ty
    NA: tl.constexpr = 4 if CELL == "gru" else (4 if CELL == "lstm" else 1)  # plan.SAVED_ACTS
    st_offs = rows64[:, None] * H + units[None, :]
    dh = tl.load(dh_ptr + st_offs, mask=m2, other=0.0)
    if HAS_DY:
        dy = tl.load(dy_ptr + t64 * B * H + st_offs, mask=m2, other=0.0).to(acc_dtype)
    else:
        dy = dh
    act0, act1, act2, act3 = load_gate_tiles(act_ptr, t64 * B * NA * H + rows64[:, None] * (NA * H) + units[None, :],
                                             m2, H, NA)
    if CELL == "lstm":
        dc = tl.load(dc_ptr + st_offs, mask=m2, other=0.0)
        c_prev = tl.load(cseq_ptr + q.to(tl.int64) * B * H + st_offs, mask=m2, other=0.0)
        c_new = tl.load(cseq_ptr + (q + 1).to(tl.int64) * B * H + st_offs, mask=m2, other=0.0)
        h_prev = c_prev
    elif CELL == "gru":
        h_prev = tl.load(hseq_ptr + q.to(tl.int64) * B * H + st_offs, mask=m2, other=0.0)
        dc = h_prev
        c_prev = h_prev
        c_new = h_prev
    else:  # rnn_tanh, rnn_relu: placeholders, unused
        h_prev = dh
        dc = dh
        c_prev = dh
        c_new = dh
    return dh, dy, act0, act1, act2, act3, dc, h_prev, c_prev, c_new


@triton.jit
def unit_blocks(H, BH: tl.constexpr):
    """This program's first unit block, the stride between its blocks (the programs along H) and
    the number of blocks."""
    return tl.program_id(0), tl.num_programs(0), (H + BH - 1) // BH


@triton.jit
def unit_block(j, BH: tl.constexpr, H, rows64, row_ok):
    """Unit block j: its units, the (rows, units) mask, and the offsets of its tile of a (B, H) state."""
    units = j * BH + tl.arange(0, BH)
    m2 = row_ok[:, None] & (units < H)[None, :]
    return units, m2, rows64[:, None] * H + units[None, :]


@triton.jit
def add_row_sums(s1, s2, m2, x0, x1, x2, x3, NG: tl.constexpr):
    """s1 + the per-row sums, s2 + the per-row sums of squares, of the first NG tiles (masked)."""
    v = tl.where(m2, x0, 0.0)
    s1 += tl.sum(v, axis=1)
    s2 += tl.sum(v * v, axis=1)
    if NG >= 2:
        v = tl.where(m2, x1, 0.0)
        s1 += tl.sum(v, axis=1)
        s2 += tl.sum(v * v, axis=1)
    if NG >= 3:
        v = tl.where(m2, x2, 0.0)
        s1 += tl.sum(v, axis=1)
        s2 += tl.sum(v * v, axis=1)
    if NG == 4:
        v = tl.where(m2, x3, 0.0)
        s1 += tl.sum(v, axis=1)
        s2 += tl.sum(v * v, axis=1)
    return s1, s2


@triton.jit
def ln_stats(s1, s2, n, eps):
    """Mean and 1/sqrt(biased variance + eps) of rows of width n from their sum and sum of squares."""
    mean = s1 / n
    var = tl.maximum(s2 / n - mean * mean, 0.0)
    return mean, 1.0 / tl.sqrt(var + eps)


@triton.jit
def ln_hh_tiles(lnx_ptr, offs, m2, H, mean, rstd, ln_ptr, units, NG: tl.constexpr):
    """LN_hh of one unit block: the raw product tiles at ``lnx_ptr + offs`` (+ g*H) normalised with
    their rows' statistics, x-hat stored back in place (the backward's), then gamma * x-hat + beta
    (ln_ptr: gamma_hh, beta_hh, each NG*H). Returns the four gate tiles (zeros past NG)."""
    r0, r1, r2, r3 = load_gate_tiles(lnx_ptr, offs, m2, H, NG)
    m = mean[:, None]
    r = rstd[:, None]
    x0 = (r0 - m) * r
    x1 = (r1 - m) * r
    x2 = (r2 - m) * r
    x3 = (r3 - m) * r
    store_gate_tiles(lnx_ptr, offs, m2, H, x0, x1, x2, x3, NG)
    g0, g1, g2, g3 = load_gate_tiles(ln_ptr, units, units < H, H, NG)  # (BH,) rows, broadcast
    b0, b1, b2, b3 = load_gate_tiles(ln_ptr + NG * H, units, units < H, H, NG)
    return (x0 * g0[None, :] + b0[None, :], x1 * g1[None, :] + b1[None, :], x2 * g2[None, :] + b2[None, :],
            x3 * g3[None, :] + b3[None, :])


@triton.jit
def finish_step(h_new, c_new, h_prev, c_prev, res, ok, m2, st_offs, rows64, units, t64, B, H,
                hseq_ptr, cseq_ptr, y_ptr, next_state, out_xchg, seed_h, ph, qh, seed_c, pc, qc,
                HP: tl.constexpr, CELL: tl.constexpr, HAS_RES: tl.constexpr, ZO_H: tl.constexpr,
                ZO_C: tl.constexpr):
    """The end of a forward step for one unit block, from the cell's new states h~ (c~): zoneout,
    the carry on invalid steps, the state sequence, the exchange (next step's operand) and y."""
    if ZO_H + ZO_C > 0:  # zoneout: the masks' counters are (t * B + b) * H + unit (fusedrnn/zoneout.py)
        zo_offs = t64 * B * H + st_offs
        h_new = zone(ZO_H, seed_h, ph, qh, zo_offs, h_new, h_prev)
        if CELL == "lstm":
            c_new = zone(ZO_C, seed_c, pc, qc, zo_offs, c_new, c_prev)
    h_keep = tl.where(ok, h_new, h_prev)  # invalid step: the state is carried
    tl.store(hseq_ptr + next_state + st_offs, h_keep, mask=m2)
    if CELL == "lstm":
        tl.store(cseq_ptr + next_state + st_offs, tl.where(ok, c_new, c_prev), mask=m2)
    tl.store(out_xchg + rows64[:, None] * HP + units[None, :], h_keep.to(out_xchg.dtype.element_ty), mask=m2)
    y = h_new
    if HAS_RES:
        y = h_new + res
    tl.store(y_ptr + t64 * B * H + st_offs, tl.where(ok, y, 0.0).to(y_ptr.dtype.element_ty), mask=m2)


@triton.jit
def step_wait(counter_ptr, s, nprog_h, USE_GRID_BARRIER: tl.constexpr):
    """Before step s reads the exchange: wait until every program of this batch tile finished step s-1."""
    if USE_GRID_BARRIER:
        if s > 0:
            barrier_wait(counter_ptr + tl.program_id(1), s * nprog_h)


@triton.jit
def step_end(counter_ptr, s, n_steps, USE_GRID_BARRIER: tl.constexpr):
    """After step s: arrive at the grid barrier; a lone program (no grid barrier) still needs a CTA
    barrier, so that its own exchange stores are visible to its other threads in step s+1."""
    if s < n_steps - 1:
        if USE_GRID_BARRIER:
            barrier_arrive(counter_ptr + tl.program_id(1))
        else:
            tl.debug_barrier()


@triton.jit(do_not_specialize=["T", "B", "H", "n_slots", "t_begin", "n_steps"])
def rnn_fwd_kernel(
    gx_ptr,  # (T, B, NG*H) acc
    w_ptr,  # (n_blk, HP, SLOTS*BH) weight dtype, pack_weights(..., "fwd")
    b_hh_ptr,  # (NG*H,) weight dtype (read only if HAS_BIAS)
    res_ptr,  # (T, B, H) (read only if HAS_RES)
    len_ptr,  # (B,) int64 (read only if HAS_LEN)
    y_ptr,  # (T, B, H) out
    xchg_ptr,  # (2, BP, HP) weight dtype: h operand exchange, zero-padded
    hseq_ptr,  # (n_slots, B, H) acc
    cseq_ptr,  # (n_slots, B, H) acc (LSTM)
    act_ptr,  # (T, B, NA*H) acc (written only if SAVE_ACT)
    zo_ptr,  # (4,) acc: p_h, p_c, 1 - p_h, 1 - p_c (read only if ZO_H or ZO_C)
    zo_seed_ptr,  # (2,) int64: the h and c mask seeds (read only in training: ZO_* == 1)
    ln_ptr,  # (2*NG*H [+ 2*H],) acc: gamma_hh, beta_hh [, gamma_c, beta_c] (read only if LN)
    lnx_ptr,  # (T or 1, B, NG*H) acc: the raw products, then x-hat of LN_hh (LN; by time when SAVE_ACT)
    lns_ptr,  # (T or 1, B, 4) acc: mean_hh, rstd_hh, mean_c, rstd_c per row (LN; by time when SAVE_ACT)
    ln_eps,
    T, B, H, n_slots,
    k_valid,  # H rounded up to 16 (always a multiple of 16: specialized as such)
    counter_ptr,  # (n_btiles,) int32 zeros: per-batch-tile barrier counters
    t_begin, n_steps,
    USE_GRID_BARRIER: tl.constexpr,
    CELL: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_RES: tl.constexpr, HAS_LEN: tl.constexpr,
    REVERSE: tl.constexpr, SAVE_ACT: tl.constexpr, ZO_H: tl.constexpr, ZO_C: tl.constexpr, LN: tl.constexpr,
    BB: tl.constexpr, BH: tl.constexpr, HP: tl.constexpr, KS: tl.constexpr, BLOCK_K: tl.constexpr,
    NUM_STAGES: tl.constexpr, RESIDENT: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    # LN (LayerNorm GRU / LSTM, one program per batch tile: the launcher plans batch_tile): the
    # statistics of a row need every unit block's product, so the step runs in passes over the
    # blocks with a CTA barrier between them. Pass 1: the products, stored raw to lnx, and their
    # row sums; pass 2: LN_hh (x-hat stored over the raw values), the gates, and for GRU the rest of
    # the step; LSTM: c~ and o parked in the next state slots and the row sums of c~, then pass 3:
    # LN_c, h~ and the rest of the step.
    pid_h, nprog_h, n_blk = unit_blocks(H, BH)
    NG: tl.constexpr = 3 if CELL == "gru" else (4 if CELL == "lstm" else 1)  # gates (plan.CELLS)
    SLOTS: tl.constexpr = 1 if NG == 1 else 4  # plan.gate_slots
    NA: tl.constexpr = 1 if NG == 1 else 4  # saved activations (plan.SAVED_ACTS)
    N: tl.constexpr = SLOTS * BH
    G = NG * H
    acc_dtype: tl.constexpr = hseq_ptr.dtype.element_ty
    slot = tl.num_programs(1) * BB * HP  # elements per exchange slot
    rows64, row_ok, lens = batch_rows(len_ptr, B, BB, HAS_LEN)
    if RESIDENT:
        # One unit block per program: its W_hh slice and biases stay on chip for every step.
        w_res = load_w_slice(w_ptr, pid_h, HP, N, KS)
        blk_end = pid_h + 1
        units_r = pid_h * BH + tl.arange(0, BH)
        b_offs = tl.full((BB, BH), 0, dtype=tl.int32) + units_r[None, :]
        if HAS_BIAS:
            b0, b1, b2, b3 = load_gate_tiles(b_hh_ptr, b_offs, b_offs < H, H, NG)
        else:
            b0 = tl.full((BB, BH), 0.0, dtype=acc_dtype)
            b1, b2, b3 = b0, b0, b0
    else:
        w_res = 0
        blk_end = n_blk
    ph, qh, seed_h = zoneout_params(ZO_H, zo_ptr, zo_seed_ptr, 0)
    pc, qc, seed_c = zoneout_params(ZO_C, zo_ptr, zo_seed_ptr, 1)

    for s in range(n_steps):
        q = t_begin + s  # processing step
        t64, ok = step_time(q, T, row_ok, lens, REVERSE, HAS_LEN)
        prev_state = (q % n_slots).to(tl.int64) * B * H
        next_state = ((q + 1) % n_slots).to(tl.int64) * B * H
        a_ptr = xchg_ptr + (q % 2).to(tl.int64) * slot
        out_xchg = xchg_ptr + ((q + 1) % 2).to(tl.int64) * slot
        if not RESIDENT:
            step_wait(counter_ptr, s, nprog_h, USE_GRID_BARRIER)
        if LN:  # pass 1: every block's product, raw, and the rows' sums
            if SAVE_ACT:
                ln_t = t64
            else:
                ln_t = 0 * t64
            s1 = tl.zeros((BB,), dtype=acc_dtype)
            s2 = tl.zeros((BB,), dtype=acc_dtype)
            for j in range(pid_h, blk_end, nprog_h):
                units, m2, st_offs = unit_block(j, BH, H, rows64, row_ok)
                acc = recurrent_product(a_ptr, rows64, row_ok, k_valid, 1, w_ptr, j, w_res, acc_dtype, BB, HP, N, HP,
                                        KS, BLOCK_K, NUM_STAGES, RESIDENT, DOT_PRECISION)
                r0, r1, r2, r3 = split_gates(acc, BB, BH, SLOTS)
                store_gate_tiles(lnx_ptr, ln_t * B * G + rows64[:, None] * G + units[None, :], m2, H, r0, r1, r2, r3,
                                 NG)
                s1, s2 = add_row_sums(s1, s2, m2, r0, r1, r2, r3, NG)
            mean_hh, rstd_hh = ln_stats(s1, s2, G, ln_eps)
            tl.store(lns_ptr + (ln_t * B + rows64) * 4, mean_hh, mask=row_ok)
            tl.store(lns_ptr + (ln_t * B + rows64) * 4 + 1, rstd_hh, mask=row_ok)
            tl.debug_barrier()  # the raw products (other threads' stores) before they are read
            c1 = tl.zeros((BB,), dtype=acc_dtype)
            c2 = tl.zeros((BB,), dtype=acc_dtype)
        for j in range(pid_h, blk_end, nprog_h):
            units, m2, st_offs = unit_block(j, BH, H, rows64, row_ok)
            # Everything that does not depend on the other programs' h_{t-1}. With W resident (one
            # block per program) the barrier wait comes after these loads, which are then in
            # flight while the program spins.
            x0, x1, x2, x3 = load_gate_tiles(gx_ptr, t64 * B * G + rows64[:, None] * G + units[None, :], m2, H, NG)
            h_prev = tl.load(hseq_ptr + prev_state + st_offs, mask=m2, other=0.0)
            if CELL == "lstm":
                c_prev = tl.load(cseq_ptr + prev_state + st_offs, mask=m2, other=0.0)
            else:
                c_prev = h_prev
            if HAS_RES:
                res = tl.load(res_ptr + t64 * B * H + st_offs, mask=m2, other=0.0).to(acc_dtype)
            else:
                res = h_prev
            if not RESIDENT:
                if HAS_BIAS:
                    b0, b1, b2, b3 = load_gate_tiles(b_hh_ptr, 0 * st_offs + units[None, :], m2, H, NG)
                else:
                    b0 = tl.full((BB, BH), 0.0, dtype=acc_dtype)
                    b1, b2, b3 = b0, b0, b0
            if RESIDENT:
                step_wait(counter_ptr, s, nprog_h, USE_GRID_BARRIER)

            if LN:
                a0, a1, a2, a3 = ln_hh_tiles(lnx_ptr, ln_t * B * G + rows64[:, None] * G + units[None, :], m2, H,
                                             mean_hh, rstd_hh, ln_ptr, units, NG)
            else:
                acc = recurrent_product(a_ptr, rows64, row_ok, k_valid, 1, w_ptr, j, w_res, acc_dtype, BB, HP, N, HP,
                                        KS, BLOCK_K, NUM_STAGES, RESIDENT, DOT_PRECISION)
                a0, a1, a2, a3 = split_gates(acc, BB, BH, SLOTS)
            h_new, c_new, act0, act1, act2, act3 = gates_forward(
                CELL, x0, x1, x2, x3, a0 + b0.to(acc_dtype), a1 + b1.to(acc_dtype), a2 + b2.to(acc_dtype),
                a3 + b3.to(acc_dtype), h_prev, c_prev)
            if LN and CELL == "lstm":
                # h~ needs LN_c over every block's c~: c~ and o wait in the next state slots (pass 3)
                tl.store(cseq_ptr + next_state + st_offs, c_new, mask=m2)
                tl.store(hseq_ptr + next_state + st_offs, act3, mask=m2)
                c1, c2 = add_row_sums(c1, c2, m2, c_new, c_new, c_new, c_new, 1)
            else:
                finish_step(h_new, c_new, h_prev, c_prev, res, ok, m2, st_offs, rows64, units, t64, B, H,
                            hseq_ptr, cseq_ptr, y_ptr, next_state, out_xchg, seed_h, ph, qh, seed_c, pc, qc,
                            HP, CELL, HAS_RES, ZO_H, ZO_C)
            if SAVE_ACT:
                store_gate_tiles(act_ptr, t64 * B * NA * H + rows64[:, None] * (NA * H) + units[None, :], m2, H,
                                 act0, act1, act2, act3, NA)
        if LN and CELL == "lstm":  # pass 3: h~ = o tanh(LN_c(c~)), then the rest of the step
            mean_c, rstd_c = ln_stats(c1, c2, H, ln_eps)
            tl.store(lns_ptr + (ln_t * B + rows64) * 4 + 2, mean_c, mask=row_ok)
            tl.store(lns_ptr + (ln_t * B + rows64) * 4 + 3, rstd_c, mask=row_ok)
            tl.debug_barrier()  # c~ and o (other threads' stores) before they are read
            for j in range(pid_h, blk_end, nprog_h):
                units, m2, st_offs = unit_block(j, BH, H, rows64, row_ok)
                c_new = tl.load(cseq_ptr + next_state + st_offs, mask=m2, other=0.0)
                o = tl.load(hseq_ptr + next_state + st_offs, mask=m2, other=0.0)
                h_prev = tl.load(hseq_ptr + prev_state + st_offs, mask=m2, other=0.0)
                c_prev = tl.load(cseq_ptr + prev_state + st_offs, mask=m2, other=0.0)
                if HAS_RES:
                    res = tl.load(res_ptr + t64 * B * H + st_offs, mask=m2, other=0.0).to(acc_dtype)
                else:
                    res = h_prev
                gc = tl.load(ln_ptr + 2 * G + units, mask=units < H, other=0.0)[None, :]
                bc = tl.load(ln_ptr + 2 * G + H + units, mask=units < H, other=0.0)[None, :]
                h_new = o * tanh((c_new - mean_c[:, None]) * rstd_c[:, None] * gc + bc)
                finish_step(h_new, c_new, h_prev, c_prev, res, ok, m2, st_offs, rows64, units, t64, B, H,
                            hseq_ptr, cseq_ptr, y_ptr, next_state, out_xchg, seed_h, ph, qh, seed_c, pc, qc,
                            HP, CELL, HAS_RES, ZO_H, ZO_C)
        step_end(counter_ptr, s, n_steps, USE_GRID_BARRIER)


@triton.jit
def h_grad_split(dh, dy, ok, t64, B, H, st_offs, seed_h, ph, qh, HAS_DY: tl.constexpr, ZO_H: tl.constexpr):
    """The gradient of the step's (zoned) h: the carried ``dh`` plus dy at valid steps (y_t = h_t
    (+ residual) only there), split between h~ and h_{t-1} by zoneout (zone_grad): (to h~, to h_{t-1})."""
    dh_t = dh
    if HAS_DY:
        dh_t = dh + tl.where(ok, dy, 0.0)
    if ZO_H > 0:
        d_new, d_old = zone_grad(ZO_H, seed_h, ph, qh, t64 * B * H + st_offs, dh_t)
    else:
        d_new = dh_t
        d_old = 0.0 * dh_t
    return d_new, d_old


@triton.jit
def ln_c_backward_terms(dh_cell, act0, act1, act2, act3, c_prev, mean_c, rstd_c, ln_ptr, units, G, H):
    """The LayerNorm LSTM's h~ = o tanh(LN_c(c~)) for one unit block, backwards: c~ = f c_{t-1} + i g
    from the saved gates, c-hat, and for dL/dh~ = ``dh_cell``: u = gamma_c dL/dLN_c (what LN_c's
    backward reduces), c-hat, v = dL/dLN_c, and tanh(LN_c(c~))."""
    gc = tl.load(ln_ptr + 2 * G + units, mask=units < H, other=0.0)[None, :]
    bc = tl.load(ln_ptr + 2 * G + H + units, mask=units < H, other=0.0)[None, :]
    c_cell = act1 * c_prev + act0 * act2
    chat = (c_cell - mean_c[:, None]) * rstd_c[:, None]
    tc, v = lstm_h_path(dh_cell, act3, chat * gc + bc)
    return v * gc, chat, v, tc


@triton.jit
def ln_hh_backward_sums(sg, sgx, lnx_ptr, offs, m2, H, ln_ptr, units, a0, a1, a2, a3, NG: tl.constexpr):
    """sg + the rows' sums of g = gamma_hh d(a), sgx + those of g x-hat (LN_hh's backward), for the
    gradients ``a*`` of the LN_hh output of one unit block; x-hat at ``lnx_ptr + offs``."""
    x0, x1, x2, x3 = load_gate_tiles(lnx_ptr, offs, m2, H, NG)
    g0, g1, g2, g3 = load_gate_tiles(ln_ptr, units, units < H, H, NG)
    sg, sgx = add_row_sums_xy(sg, sgx, m2, a0 * g0[None, :], a1 * g1[None, :], a2 * g2[None, :], a3 * g3[None, :],
                              x0, x1, x2, x3, NG)
    return sg, sgx


@triton.jit
def add_row_sums_xy(s1, s2, m2, g0, g1, g2, g3, x0, x1, x2, x3, NG: tl.constexpr):
    """s1 + the rows' sums of the first NG tiles g*, s2 + those of g* x* (masked)."""
    s1 += tl.sum(tl.where(m2, g0, 0.0), axis=1)
    s2 += tl.sum(tl.where(m2, g0 * x0, 0.0), axis=1)
    if NG >= 2:
        s1 += tl.sum(tl.where(m2, g1, 0.0), axis=1)
        s2 += tl.sum(tl.where(m2, g1 * x1, 0.0), axis=1)
    if NG >= 3:
        s1 += tl.sum(tl.where(m2, g2, 0.0), axis=1)
        s2 += tl.sum(tl.where(m2, g2 * x2, 0.0), axis=1)
    if NG == 4:
        s1 += tl.sum(tl.where(m2, g3, 0.0), axis=1)
        s2 += tl.sum(tl.where(m2, g3 * x3, 0.0), axis=1)
    return s1, s2


@triton.jit
def ln_hh_backward(lnx_ptr, offs, m2, H, ln_ptr, units, a0, a1, a2, a3, rstd, mean_g, mean_gx, NG: tl.constexpr):
    """LN_hh's backward for one unit block: dp = rstd (g - mean(g) - x-hat mean(g x-hat)), g = gamma_hh
    d(a), from the rows' means (ln_hh_backward_sums / G). Returns the four tiles (zeros past NG)."""
    x0, x1, x2, x3 = load_gate_tiles(lnx_ptr, offs, m2, H, NG)
    g0, g1, g2, g3 = load_gate_tiles(ln_ptr, units, units < H, H, NG)
    g0, g1, g2, g3 = g0[None, :], g1[None, :], g2[None, :], g3[None, :]
    r = rstd[:, None]
    mg = mean_g[:, None]
    mgx = mean_gx[:, None]
    return (r * (a0 * g0 - mg - x0 * mgx), r * (a1 * g1 - mg - x1 * mgx), r * (a2 * g2 - mg - x2 * mgx),
            r * (a3 * g3 - mg - x3 * mgx))


@triton.jit(do_not_specialize=["T", "B", "H", "t_begin", "n_steps"])
def rnn_bwd_kernel(
    w_ptr,  # (n_blk, SLOTS*HP, BH) weight dtype, pack_weights(..., "bwd")
    len_ptr,  # (B,) int64 (read only if HAS_LEN)
    dy_ptr,  # (T, B, H) (read only if HAS_DY)
    hseq_ptr,  # (T+1, B, H) acc, processing order
    cseq_ptr,  # (T+1, B, H) acc (LSTM)
    act_ptr,  # (T, B, NA*H) acc
    dgx_ptr,  # (T, B, NG*H) acc out
    dgh_ptr,  # (T, B, NG*H) acc out (GRU only)
    xchg_ptr,  # (2, BP, SLOTS*HP) weight dtype, zeros: dgh of the previous backward step, the product's operand
    dh_ptr,  # (B, H) acc in/out: dL/dh carried between steps (grad of h_n on entry)
    dc_ptr,  # (B, H) acc in/out (LSTM; grad of c_n on entry)
    zo_ptr,  # (4,) acc: p_h, p_c, 1 - p_h, 1 - p_c (read only if ZO_H or ZO_C)
    zo_seed_ptr,  # (2,) int64: the forward's mask seeds, the masks regenerated (training: ZO_* == 1)
    ln_ptr,  # (2*NG*H [+ 2*H],) acc: gamma_hh, beta_hh [, gamma_c, beta_c] (read only if LN)
    lnx_ptr,  # (T, B, NG*H) acc: the forward's x-hat of LN_hh (LN)
    lns_ptr,  # (T, B, 4) acc: the forward's mean_hh, rstd_hh, mean_c, rstd_c (LN)
    dp_ptr,  # (T, B, NG*H) acc out (LN): the gradient of the raw product h W_hhᵀ
    dlnc_ptr,  # (T, B, 2*H) acc out (LN, LSTM): dL/dLN_c(c~) and that times c-hat, zero at invalid steps
    T, B, H,
    k_valid,  # H rounded up to 16
    counter_ptr, t_begin, n_steps,
    USE_GRID_BARRIER: tl.constexpr,
    CELL: tl.constexpr, HAS_LEN: tl.constexpr, HAS_DY: tl.constexpr, REVERSE: tl.constexpr,
    ZO_H: tl.constexpr, ZO_C: tl.constexpr, LN: tl.constexpr,
    BB: tl.constexpr, BH: tl.constexpr, HP: tl.constexpr, KS: tl.constexpr, BLOCK_K: tl.constexpr,
    NUM_STAGES: tl.constexpr, RESIDENT: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    # Backward step s walks processing step q = T-1-s. It first finishes dh for its own units with
    # the recurrent term of step q+1, dh += dgh_{q+1} W_hh[:, units] (dgh_{q+1} of every unit was
    # stored in the exchange by every program before the last barrier; zeros before the first
    # step), then computes its own dgates. One barrier per step; the recurrent term of step 0
    # (grad h0) is one torch GEMM in the launcher.
    # LN (one program per batch tile): the exchange carries dp, the gradient of the raw product;
    # pass A: dh += dp_{q+1} W_hh for every block (stored), and for LSTM the row sums LN_c's
    # backward needs; pass B: the gates' backward, d(a) stored, the row sums of LN_hh's backward;
    # pass C: dp = rstd (g - mean(g) - x-hat mean(g x-hat)) with g = gamma_hh d(a), to the exchange.
    pid_h, nprog_h, n_blk = unit_blocks(H, BH)
    NG: tl.constexpr = 3 if CELL == "gru" else (4 if CELL == "lstm" else 1)  # gates (plan.CELLS)
    SLOTS: tl.constexpr = 1 if NG == 1 else 4  # plan.gate_slots
    K: tl.constexpr = SLOTS * HP
    G = NG * H
    acc_dtype: tl.constexpr = dh_ptr.dtype.element_ty
    x_dtype: tl.constexpr = xchg_ptr.dtype.element_ty
    # The step's own tiles (dh, dy, 4 activations, states) are loaded before the barrier wait
    # when that hides their latency (W resident, grid barrier); otherwise after the product, so
    # they do not hold registers across it.
    PREFETCH: tl.constexpr = RESIDENT and USE_GRID_BARRIER and not LN
    slot = tl.num_programs(1) * BB * K
    rows64, row_ok, lens = batch_rows(len_ptr, B, BB, HAS_LEN)
    if RESIDENT:
        w_res = load_w_slice(w_ptr, pid_h, K, BH, KS)
        blk_end = pid_h + 1  # one unit block per program
    else:
        w_res = 0
        blk_end = n_blk
    ph, qh, seed_h = zoneout_params(ZO_H, zo_ptr, zo_seed_ptr, 0)
    pc, qc, seed_c = zoneout_params(ZO_C, zo_ptr, zo_seed_ptr, 1)

    for s in range(n_steps):
        q_bwd = t_begin + s
        q = T - 1 - q_bwd  # processing step
        t64, ok = step_time(q, T, row_ok, lens, REVERSE, HAS_LEN)
        a_ptr = xchg_ptr + ((q_bwd + 1) % 2).to(tl.int64) * slot
        out_xchg = xchg_ptr + (q_bwd % 2).to(tl.int64) * slot
        if not PREFETCH:
            step_wait(counter_ptr, s, nprog_h, USE_GRID_BARRIER)
        if LN:  # pass A
            rstd_hh = tl.load(lns_ptr + (t64 * B + rows64) * 4 + 1, mask=row_ok, other=0.0)
            mean_c = tl.load(lns_ptr + (t64 * B + rows64) * 4 + 2, mask=row_ok, other=0.0)
            rstd_c = tl.load(lns_ptr + (t64 * B + rows64) * 4 + 3, mask=row_ok, other=0.0)
            su = tl.zeros((BB,), dtype=acc_dtype)
            suc = tl.zeros((BB,), dtype=acc_dtype)
            for j in range(pid_h, blk_end, nprog_h):
                units, m2, st_offs = unit_block(j, BH, H, rows64, row_ok)
                prod = recurrent_product(a_ptr, rows64, row_ok, k_valid, NG, w_ptr, j, w_res, acc_dtype, BB, K, BH, HP,
                                         KS, BLOCK_K, NUM_STAGES, RESIDENT, DOT_PRECISION)
                dh, dy, act0, act1, act2, act3, dc, h_prev, c_prev, c_new = load_bwd_inputs(
                    dh_ptr, dy_ptr, act_ptr, hseq_ptr, cseq_ptr, dc_ptr, rows64, units, m2, t64, q, B, H, CELL, HAS_DY)
                dh = dh + prod
                tl.store(dh_ptr + st_offs, dh, mask=m2)
                if CELL == "lstm":
                    dh_cell, _ = h_grad_split(dh, dy, ok, t64, B, H, st_offs, seed_h, ph, qh, HAS_DY, ZO_H)
                    u, chat, v, tc = ln_c_backward_terms(dh_cell, act0, act1, act2, act3, c_prev, mean_c, rstd_c,
                                                         ln_ptr, units, G, H)
                    su += tl.sum(tl.where(m2, u, 0.0), axis=1)
                    suc += tl.sum(tl.where(m2, u * chat, 0.0), axis=1)
            tl.debug_barrier()  # the stored dh (other threads') before it is read
            sg = tl.zeros((BB,), dtype=acc_dtype)
            sgx = tl.zeros((BB,), dtype=acc_dtype)
        for j in range(pid_h, blk_end, nprog_h):
            units, m2, st_offs = unit_block(j, BH, H, rows64, row_ok)
            if PREFETCH:  # issued before the barrier wait, in flight while the program spins
                dh, dy, act0, act1, act2, act3, dc, h_prev, c_prev, c_new = load_bwd_inputs(
                    dh_ptr, dy_ptr, act_ptr, hseq_ptr, cseq_ptr, dc_ptr, rows64, units, m2, t64, q, B, H, CELL, HAS_DY)
                step_wait(counter_ptr, s, nprog_h, USE_GRID_BARRIER)
            if LN:  # dh already holds the recurrent term (pass A)
                prod = 0.0
            else:
                prod = recurrent_product(a_ptr, rows64, row_ok, k_valid, NG, w_ptr, j, w_res, acc_dtype, BB, K, BH,
                                         HP, KS, BLOCK_K, NUM_STAGES, RESIDENT, DOT_PRECISION)
            if not PREFETCH:  # not held across the product: registers for the K loop's pipeline
                dh, dy, act0, act1, act2, act3, dc, h_prev, c_prev, c_new = load_bwd_inputs(
                    dh_ptr, dy_ptr, act_ptr, hseq_ptr, cseq_ptr, dc_ptr, rows64, units, m2, t64, q, B, H, CELL, HAS_DY)
            dh = dh + prod
            # zoneout: the gradient of the zoned state splits between h~ (c~) and h_{t-1} (c_{t-1})
            dh_cell, dh_zone = h_grad_split(dh, dy, ok, t64, B, H, st_offs, seed_h, ph, qh, HAS_DY, ZO_H)
            dc_cell = dc
            if CELL == "lstm":
                if ZO_C > 0:
                    dc_cell, dc_zone = zone_grad(ZO_C, seed_c, pc, qc, t64 * B * H + st_offs, dc)
            tc = dh_cell
            dc_h = dh_cell
            if CELL == "lstm":
                if LN:  # h~ = o tanh(LN_c(c~)): dc_h through LN_c's backward, with pass A's row sums
                    u, chat, v, tc = ln_c_backward_terms(dh_cell, act0, act1, act2, act3, c_prev, mean_c, rstd_c,
                                                         ln_ptr, units, G, H)
                    dc_h = rstd_c[:, None] * (u - (su / H)[:, None] - chat * (suc / H)[:, None])
                    d_ln = tl.where(ok, v, 0.0)
                    tl.store(dlnc_ptr + t64 * B * 2 * H + rows64[:, None] * (2 * H) + units[None, :], d_ln, mask=m2)
                    tl.store(dlnc_ptr + t64 * B * 2 * H + rows64[:, None] * (2 * H) + H + units[None, :], d_ln * chat,
                             mask=m2)
                else:
                    if ZO_C > 0:  # cseq holds the zoned c_t; the cell's backward needs its own c~_t
                        c_new = act1 * c_prev + act0 * act2
                    tc, dc_h = lstm_h_path(dh_cell, act3, c_new)
            d0, d1, d2, d3, dgh2, dh_direct, dc_prev = gates_backward(
                CELL, dh_cell, dc_cell, act0, act1, act2, act3, h_prev, c_prev, tc, dc_h)
            if ZO_H > 0:
                dh_direct = dh_direct + dh_zone
            if CELL == "lstm":
                if ZO_C > 0:
                    dc_prev = dc_prev + dc_zone
            d0 = tl.where(ok, d0, 0.0)
            d1 = tl.where(ok, d1, 0.0)
            d2 = tl.where(ok, d2, 0.0)
            d3 = tl.where(ok, d3, 0.0)
            dgh2 = tl.where(ok, dgh2, 0.0)
            g_offs = t64 * B * G + rows64[:, None] * G + units[None, :]
            store_gate_tiles(dgx_ptr, g_offs, m2, H, d0, d1, d2, d3, NG)
            if CELL == "gru":
                store_gate_tiles(dgh_ptr, g_offs, m2, H, d0, d1, dgh2, d3, NG)
            if LN:  # the row sums of LN_hh's backward; dp goes to the exchange in pass C
                sg, sgx = ln_hh_backward_sums(sg, sgx, lnx_ptr, g_offs, m2, H, ln_ptr, units, d0, d1, dgh2, d3, NG)
            else:
                x_offs = rows64[:, None] * K + units[None, :]
                store_gate_tiles(out_xchg, x_offs, m2, HP, d0.to(x_dtype), d1.to(x_dtype), dgh2.to(x_dtype),
                                 d3.to(x_dtype), NG)
            # Invalid step: the state was carried, so are its gradients.
            tl.store(dh_ptr + st_offs, tl.where(ok, dh_direct, dh), mask=m2)
            if CELL == "lstm":
                tl.store(dc_ptr + st_offs, tl.where(ok, dc_prev, dc), mask=m2)
        if LN:  # pass C: dp of every block, the operand of the next (earlier) step's product
            tl.debug_barrier()  # d(a) (other threads' stores) before it is read
            for j in range(pid_h, blk_end, nprog_h):
                units, m2, st_offs = unit_block(j, BH, H, rows64, row_ok)
                g_offs = t64 * B * G + rows64[:, None] * G + units[None, :]
                if CELL == "gru":
                    a0, a1, a2, a3 = load_gate_tiles(dgh_ptr, g_offs, m2, H, NG)
                else:
                    a0, a1, a2, a3 = load_gate_tiles(dgx_ptr, g_offs, m2, H, NG)
                p0, p1, p2, p3 = ln_hh_backward(lnx_ptr, g_offs, m2, H, ln_ptr, units, a0, a1, a2, a3, rstd_hh,
                                                sg / G, sgx / G, NG)
                store_gate_tiles(dp_ptr, g_offs, m2, H, p0, p1, p2, p3, NG)
                store_gate_tiles(out_xchg, rows64[:, None] * K + units[None, :], m2, HP, p0.to(x_dtype),
                                 p1.to(x_dtype), p2.to(x_dtype), p3.to(x_dtype), NG)
        step_end(counter_ptr, s, n_steps, USE_GRID_BARRIER)


# ------------------------------------------------------------------------------------------------
# Host launchers
# ------------------------------------------------------------------------------------------------


def acc_dtype_for(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def n_gates(cell: str) -> int:
    return plans.CELLS[cell]


def input_projection(x, w_ih, b_ih, acc):
    """gx = x W_ihᵀ (+ b_ih) for all steps, (T, B, G) in the accumulation dtype: one torch GEMM.
    ``w_ih`` None: ``x`` is already the projection (the LayerNorm cells' LN_ih(x W_ihᵀ)), gx = x (+ b_ih).

    fp16/bf16 on a GPU (lowp_torch_gemms): the GEMM runs in the input dtype on tensor cores with
    fp32 accumulation and its result is rounded once to that dtype, as in cuDNN; the upcast and the
    bias (added in fp32) are one elementwise kernel. Elsewhere (CPU, the interpreter, fp32/fp64):
    the GEMM in the accumulation dtype."""
    if w_ih is None:
        return x.to(acc) + b_ih.to(acc) if b_ih is not None else x.to(acc, copy=True)
    T, B, I = x.shape  # noqa: E741
    x2 = x.reshape(T * B, I)
    if lowp_torch_gemms(x):
        g = x2 @ w_ih.t()
        gx = torch.add(g, b_ih.to(acc)) if b_ih is not None else g.to(acc)  # promotes to acc
        return gx.view(T, B, -1)
    gx = x2.to(acc) @ w_ih.to(acc).t()
    if b_ih is not None:
        gx += b_ih.to(acc)
    return gx.view(T, B, -1)


def pack_weights(w_hh: torch.Tensor, plan: plans.Plan) -> torch.Tensor:
    """W_hh (NG*H, H) re-arranged once per call into per-block contiguous, zero-padded slices
    (S = plan.slots gate slots; the slots past NG are zeros):
    forward (n_blk, HP, S*BH): [j, k, g*BH + u] = W_hh[g*H + j*BH + u, k];
    backward (n_blk, S*HP, BH): [j, g*HP + k, u] = W_hh[g*H + k, j*BH + u]."""
    NG = n_gates(plan.cell)
    S = plan.slots
    H = w_hh.shape[1]
    HP, BH, n_blk = plan.HP, plan.BH, plan.n_blk
    units = n_blk * BH
    if plan.direction == "fwd":
        w = w_hh.new_zeros(S, units, HP)
        w[:NG, :H, :H] = w_hh.view(NG, H, H)
        return w.view(S, n_blk, BH, HP).permute(1, 3, 0, 2).reshape(n_blk, HP, -1).contiguous()
    w = w_hh.new_zeros(S, HP, units)
    w[:NG, :H, :H] = w_hh.view(NG, H, H)
    return w.view(S, HP, n_blk, BH).permute(2, 0, 1, 3).reshape(n_blk, -1, BH).contiguous()


def make_plan(cell, direction, x, w_hh, strategy=None, plan_override=None, allow_tf32=False,
              layernorm=False) -> plans.Plan:
    """The launch plan for this call; ``plan_override`` (tests, benchmarks) replaces plan fields,
    e.g. dict(resident=False, BLOCK_K=32, num_stages=2) to run the streamed K loop at a small H.
    Exact fp32 and fp64 products run on FMA units on a GPU (fma plans); the interpreter plans
    every dtype as tensor-core one, so the CPU tests run the plans bf16 gets on a GPU."""
    B, H = x.shape[1], w_hh.shape[1]
    fma = dot_precision(w_hh.dtype, x.device, allow_tf32) == "ieee" \
        and w_hh.dtype in (torch.float32, torch.float64) and not interpreter_on()
    plan = plans.make_plan(cell, direction, B, H, w_hh.element_size(), device_of(x.device), strategy, fma, layernorm)
    if plan_override:
        plan = dataclasses.replace(plan, **plan_override)
        # a chunk of the override's size, within what this direction's reduction allows
        plan = dataclasses.replace(plan, BLOCK_K=min(max(plan.BLOCK_K, 16 * plan.KS), plan.K))
        plan.check()
    return plan


def _exchange(plan, width, dtype, device):
    return torch.zeros(2, plan.n_btiles * plan.BB, width, dtype=dtype, device=device)


def _k_valid(H: int) -> int:
    return -(-H // 16) * 16


def zoneout_args(cell, zoneout, acc, device, placeholder):
    """(zo, seeds, ZO_H, ZO_C) for a launch. ``zoneout``: None, or (p_h, p_c, seeds) with seeds an
    int64 (2,) tensor in training and None in evaluation (fusedrnn.zoneout.Zoneout). zo is
    [p_h, p_c, 1 - p_h, 1 - p_c] in the accumulation dtype, filled on the device (no host copy:
    capturable in a CUDA graph). A state with p = 0 is not zoned (mode 0)."""
    if zoneout is None:
        return placeholder, placeholder, 0, 0
    p_h, p_c, seeds = zoneout
    if cell != "lstm":
        p_c = 0.0
    train = 1 if seeds is not None else 2
    modes = (train if p_h > 0 else 0, train if p_c > 0 else 0)
    if modes == (0, 0):
        return placeholder, placeholder, 0, 0
    zo = torch.empty(4, dtype=acc, device=device)
    for i, v in enumerate((p_h, p_c, 1.0 - p_h, 1.0 - p_c)):
        zo[i].fill_(v)
    return zo, (seeds.to(device=device, dtype=torch.int64) if seeds is not None else placeholder), *modes


def forward(cell, x, h0, c0, w_ih, w_hh, b_ih, b_hh, residual, lengths, reverse, save, *,
            allow_tf32=False, strategy=None, force_grid_barrier=None, plan_override=None, zoneout=None,
            layernorm=None):
    """One layer-direction. Returns y (T,B,H), h_n, c_n (B,H) (c_n None for GRU) and the saved
    (hseq, cseq, act, lnx, lns) for backward() (empty tensors when not ``save``; cseq empty for
    GRU, lnx and lns empty without ``layernorm``).
    ``zoneout``: None or (p_h, p_c, seeds) (zoneout_args); the backward takes the same.
    ``layernorm``: None or (gamma_hh, beta_hh, gamma_c, beta_c) (LSTM; GRU: the first two, the
    others None): LN_hh and LN_c in the kernel; LN_ih is the caller's, who passes ``w_ih`` None and
    the normalised projection as ``x`` (input_projection). The dtype of the call is ``w_hh``'s.
    ``allow_tf32``: fp32 products may use TF32 on a GPU (the caller reads torch's switch);
    ``strategy`` / ``force_grid_barrier`` / ``plan_override`` override the plan (tests, benchmarks)."""
    T, B, _ = x.shape
    H = w_hh.shape[1]
    dtype = w_hh.dtype
    acc = acc_dtype_for(dtype)
    gx = input_projection(x, w_ih, b_ih, acc)
    n_slots = T + 1 if save else 2
    hseq = torch.empty(n_slots, B, H, dtype=acc, device=x.device)
    hseq[0] = h0
    if cell == "lstm":
        cseq = torch.empty(n_slots, B, H, dtype=acc, device=x.device)
        cseq[0] = c0
    else:
        cseq = hseq
    y = torch.empty(T, B, H, dtype=dtype, device=x.device)
    act = torch.empty(T, B, plans.SAVED_ACTS[cell] * H, dtype=acc, device=x.device) if save else gx
    plan = make_plan(cell, "fwd", x, w_hh, strategy, plan_override, allow_tf32, layernorm is not None)
    xchg = _exchange(plan, plan.HP, w_hh.dtype, x.device)
    xchg[0, :B, :H] = h0
    zo, zo_seeds, zo_h, zo_c = zoneout_args(cell, zoneout, acc, x.device, gx)
    ln, lnx, lns = layernorm_buffers(cell, layernorm, T if save else 1, B, H, acc, x.device, gx)
    args = (
        gx, pack_weights(w_hh, plan), b_hh.contiguous() if b_hh is not None else w_hh,
        residual.contiguous() if residual is not None else y,
        lengths.contiguous() if lengths is not None else gx,
        y, xchg, hseq, cseq, act, zo, zo_seeds, ln, lnx, lns, LN_EPS, T, B, H, n_slots, _k_valid(H),
    )
    constexprs = dict(
        plan.constexprs(), HAS_BIAS=b_hh is not None, HAS_RES=residual is not None, HAS_LEN=lengths is not None,
        REVERSE=bool(reverse), SAVE_ACT=bool(save), ZO_H=zo_h, ZO_C=zo_c, LN=layernorm is not None,
        DOT_PRECISION=dot_precision(dtype, x.device, allow_tf32),
    )
    launch_steps(rnn_fwd_kernel, plan, T, args, constexprs, force_grid_barrier)
    h_n = hseq[T % n_slots].to(dtype, copy=True)
    c_n = cseq[T % n_slots].to(dtype, copy=True) if cell == "lstm" else None
    if not save:  # distinct empty tensors: a custom op's outputs may not alias each other
        return (y, h_n, c_n, *(hseq.new_empty(0) for _ in range(5)))
    if layernorm is None:
        lnx, lns = hseq.new_empty(0), hseq.new_empty(0)
    return y, h_n, c_n, hseq, (cseq if cell == "lstm" else hseq.new_empty(0)), act, lnx, lns


LN_EPS = 1e-5  # fusedrnn.layernorm.EPS (tests/test_triton_kernels.py checks they agree)


def layernorm_buffers(cell, layernorm, n_ln, B, H, acc, device, placeholder):
    """(ln, lnx, lns) for a forward launch: ln = [gamma_hh, beta_hh (, gamma_c, beta_c)] in the
    accumulation dtype, lnx (n_ln, B, NG*H) the raw products then x-hat, lns (n_ln, B, 4) the row
    statistics; placeholders without ``layernorm``."""
    if layernorm is None:
        return placeholder, placeholder, placeholder
    parts = [t for t in layernorm if t is not None]
    if len(parts) != (4 if cell == "lstm" else 2):
        raise ValueError(f"layernorm for {cell} takes {'gamma_hh, beta_hh, gamma_c, beta_c' if cell == 'lstm' else 'gamma_hh, beta_hh'}")
    ln = torch.cat([t.reshape(-1).to(acc) for t in parts])
    G = n_gates(cell) * H
    return ln, torch.empty(n_ln, B, G, dtype=acc, device=device), torch.zeros(n_ln, B, 4, dtype=acc, device=device)


def valid_mask(lengths, T, B, device):
    """(T, B, 1) bool: step t is valid for row b (None when every step is)."""
    if lengths is None:
        return None
    return (torch.arange(T, device=device).view(T, 1) < lengths.to(device).view(1, B)).unsqueeze(-1)


def weight_grads(dgx, dgh, x, w_ih, w_hh, hseq, reverse, needs, dp=None):
    """The GEMMs and reductions after the reverse-time kernel: dx, dW_ih, dW_hh, db_ih, db_hh.
    ``needs`` = (x, w_ih, w_hh, b_ih, b_hh) flags; skipped grads are None. ``dp`` (LayerNorm):
    the gradient of h W_hhᵀ, which dW_hh takes instead of dgh (b_hh's gradient stays dgh's sum);
    ``w_ih`` None: ``x`` was the input projection itself, its gradient is dgx.

    fp16/bf16 on a GPU (lowp_torch_gemms): the three GEMMs take their operands rounded to the
    input dtype (tensor cores, fp32 accumulation; the grads are returned in that dtype anyway), as
    cuDNN does; the bias reductions stay in the accumulation dtype."""
    T, B, G = dgx.shape
    I = x.shape[2]  # noqa: E741
    acc = dgx.dtype
    need_x, need_w_ih, need_w_hh, need_b_ih, need_b_hh = needs
    if w_ih is None:
        dx = dgx.to(x.dtype, copy=True) if need_x else None
        need_x, need_w_ih = False, False
    elif not need_x:
        dx = None
    dgx2 = dgx.view(T * B, G)
    dgh_w = dgh if dp is None else dp
    x2 = x.reshape(T * B, I)
    h_prev = None
    if need_w_hh:
        # hseq is in processing order (h_{t-1} of step q is hseq[q]), dgh by time: bring the
        # (smaller) h sequence into time order.
        h_prev = (hseq[:T].flip(0) if reverse else hseq[:T]).reshape(T * B, -1)
    if lowp_torch_gemms(w_hh):
        lp = w_hh.dtype
        dgx_lp = dgx2.to(lp) if (need_x or need_w_ih or (need_w_hh and dgh_w is dgx)) else None
        if need_x:
            dx = (dgx_lp @ w_ih).view(T, B, I)
        dw_ih = dgx_lp.t() @ x2 if need_w_ih else None
        dw_hh = None
        if need_w_hh:
            dgh_lp = dgx_lp if dgh_w is dgx else dgh_w.reshape(T * B, G).to(lp)
            dw_hh = dgh_lp.t() @ h_prev.to(lp)
    else:
        if need_x:
            dx = (dgx2 @ w_ih.to(acc)).view(T, B, I)
        dw_ih = dgx2.t() @ x2.to(acc) if need_w_ih else None
        dw_hh = dgh_w.reshape(T * B, G).t() @ h_prev if need_w_hh else None
    db_ih = dgx2.sum(0) if need_b_ih else None
    db_hh = dgh.reshape(T * B, G).sum(0) if need_b_hh else None
    return dx, dw_ih, dw_hh, db_ih, db_hh


def backward(cell, dy, dh_n, dc_n, x, w_ih, w_hh, lengths, hseq, cseq, act, reverse, needs, *,
             allow_tf32=False, strategy=None, force_grid_barrier=None, plan_override=None, zoneout=None,
             layernorm=None, lnx=None, lns=None):
    """Gradients of forward(). dy (T,B,H), dh_n, dc_n (B,H) may be None. ``needs`` = flags for
    (x, h0, c0, w_ih, w_hh, b_ih, b_hh, residual) (c0 False for GRU). Returns the 8 grads in that
    order (None where not needed) and the LayerNorm parameters' (a tuple in ``layernorm``'s order
    without its Nones; None without LayerNorm). ``layernorm``, ``lnx``, ``lns``: the forward's."""
    T, B, _ = x.shape
    H = w_hh.shape[1]
    NG = n_gates(cell)
    acc = hseq.dtype
    need_x, need_h0, need_c0, need_w_ih, need_w_hh, need_b_ih, need_b_hh, need_res = needs
    dgx = torch.empty(T, B, NG * H, dtype=acc, device=x.device)
    dgh = torch.empty_like(dgx) if cell == "gru" else dgx
    dh = hseq.new_empty(B, H).copy_(dh_n) if dh_n is not None else hseq.new_zeros(B, H)  # one copy
    if cell == "lstm":
        dc = hseq.new_empty(B, H).copy_(dc_n) if dc_n is not None else hseq.new_zeros(B, H)
    else:
        dc = dh
    plan = make_plan(cell, "bwd", x, w_hh, strategy, plan_override, allow_tf32, layernorm is not None)
    xchg = _exchange(plan, plan.slots * plan.HP, w_hh.dtype, x.device)
    zo, zo_seeds, zo_h, zo_c = zoneout_args(cell, zoneout, acc, x.device, dh)
    if layernorm is not None:
        ln, _, _ = layernorm_buffers(cell, layernorm, 0, B, H, acc, x.device, dh)
        dp = torch.empty_like(dgx)
        dlnc = torch.empty(T, B, 2 * H, dtype=acc, device=x.device) if cell == "lstm" else dh
    else:
        ln, lnx, lns, dp, dlnc = dh, dh, dh, dh, dh
    args = (
        pack_weights(w_hh, plan), lengths.contiguous() if lengths is not None else dh,
        dy.contiguous() if dy is not None else dh,
        hseq, cseq if cell == "lstm" else hseq, act, dgx, dgh, xchg, dh, dc, zo, zo_seeds, ln, lnx, lns, dp, dlnc,
        T, B, H, _k_valid(H),
    )
    constexprs = dict(
        plan.constexprs(), HAS_LEN=lengths is not None, HAS_DY=dy is not None, REVERSE=bool(reverse),
        ZO_H=zo_h, ZO_C=zo_c, LN=layernorm is not None, DOT_PRECISION=dot_precision(w_hh.dtype, x.device, allow_tf32),
    )
    launch_steps(rnn_bwd_kernel, plan, T, args, constexprs, force_grid_barrier)

    dgh_w = dgh if layernorm is None else dp  # what multiplies W_hh
    t_first = T - 1 if reverse else 0  # time of processing step 0: its dgh feeds grad h0
    dh0 = dh + dgh_w[t_first] @ w_hh.to(acc) if need_h0 else None
    dc0 = dc if (cell == "lstm" and need_c0) else None
    dx, dw_ih, dw_hh, db_ih, db_hh = weight_grads(
        dgx, dgh, x, w_ih, w_hh, hseq, reverse, (need_x, need_w_ih, need_w_hh, need_b_ih, need_b_hh),
        None if layernorm is None else dp)
    dres = None
    if need_res:
        # a copy: a custom op may not return (an alias of) its input dy
        dres = dy.to(acc, copy=True) if dy is not None else x.new_zeros(T, B, H, dtype=acc)
        mask = valid_mask(lengths, T, B, x.device)
        if mask is not None:
            dres = dres * mask
    dln = None
    if layernorm is not None:
        # LN_hh's output is a = gamma x-hat + beta, d(a) = dgh (dgx for LSTM: the same thing)
        dln = ((dgh * lnx).sum((0, 1)), dgh.sum((0, 1)))
        if cell == "lstm":
            dln += (dlnc[..., H:].sum((0, 1)), dlnc[..., :H].sum((0, 1)))
    return dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh, dres, dln
