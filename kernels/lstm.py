"""LSTM (no projection), one layer and one direction: recurrent Triton kernels and host launchers.

Semantics are fusedrnn.reference.lstm_reference's (gate rows i|f|g|o, torch's layout):
    gates = gx + h W_hhᵀ + b_hh,  i, f, o = σ(.),  g = tanh(.),  c' = f c + i g,  h' = o tanh(c'),
with gx = x W_ihᵀ + b_ih from one torch GEMM. Cell state and accumulation in acc (float32, or
float64 for float64 inputs).

Buffers (see kernels/gru.py for the layout conventions):
- ``hseq`` / ``cseq`` (n_slots, B, H) acc in processing order (slot 0 = h0 / c0); h is exchanged
  between programs through hseq, c is only ever read by the program that owns its units.
- ``act`` (T, B, 4H) acc by time: i, f, g, o after their nonlinearities. With cseq this is all the
  backward needs (tanh(c_t) is recomputed: one tanh is cheaper than a (T, B, H) buffer).
- backward: ``dg`` (T, B, 4H) acc by time, d(pre-activation); for an LSTM the input GEMM and the
  recurrent GEMM see the same gradient. ``dh`` / ``dc`` (B, H) acc carry the state gradients.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .common import dot_precision, launch_steps, mma, sigmoid, step_barrier, tanh
from .gru import acc_dtype_for, input_projection, plan_for, recurrent_grads, valid_mask


@triton.jit(do_not_specialize=["T", "t_begin", "n_steps"])
def lstm_fwd_kernel(
    gx_ptr,  # (T, B, 4H) acc: x W_ihᵀ + b_ih
    w_hh_ptr,  # (4H, H) weight dtype
    b_hh_ptr,  # (4H,) (read only if HAS_BIAS)
    res_ptr,  # (T, B, H) (read only if HAS_RES)
    len_ptr,  # (B,) int64 (read only if HAS_LEN)
    y_ptr,  # (T, B, H) out
    hseq_ptr,  # (n_slots, B, H) acc
    cseq_ptr,  # (n_slots, B, H) acc
    act_ptr,  # (T, B, 4H) acc (written only if SAVE_ACT)
    T, B, H, n_slots,
    counter_ptr, t_begin, n_steps,
    USE_GRID_BARRIER: tl.constexpr,
    HAS_BIAS: tl.constexpr, HAS_RES: tl.constexpr, HAS_LEN: tl.constexpr, REVERSE: tl.constexpr,
    SAVE_ACT: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr,
    W_RESIDENT: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    pid_h = tl.program_id(0)
    pid_b = tl.program_id(1)
    nprog_h = tl.num_programs(0)
    n_hblocks = tl.cdiv(H, BLOCK_H)
    G = 4 * H
    w_dtype = w_hh_ptr.dtype.element_ty
    acc_dtype = gx_ptr.dtype.element_ty

    rows = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)
    row_ok = rows < B
    rows64 = rows.to(tl.int64)
    kk = tl.arange(0, BLOCK_K)
    if HAS_LEN:
        lens = tl.load(len_ptr + rows, mask=row_ok, other=0)

    if W_RESIDENT:
        # One unit block per program, BLOCK_K covers H: this program's W_hh rows stay on chip.
        units_r = pid_h * BLOCK_H + tl.arange(0, BLOCK_H)
        wmask_r = (kk < H)[:, None] & (units_r < H)[None, :]
        w_i_res = tl.load(w_hh_ptr + units_r[None, :] * H + kk[:, None], mask=wmask_r, other=0.0)
        w_f_res = tl.load(w_hh_ptr + (H + units_r)[None, :] * H + kk[:, None], mask=wmask_r, other=0.0)
        w_g_res = tl.load(w_hh_ptr + (2 * H + units_r)[None, :] * H + kk[:, None], mask=wmask_r, other=0.0)
        w_o_res = tl.load(w_hh_ptr + (3 * H + units_r)[None, :] * H + kk[:, None], mask=wmask_r, other=0.0)

    for s in range(n_steps):
        k = t_begin + s
        if REVERSE:
            t = T - 1 - k
        else:
            t = k
        t64 = t.to(tl.int64)
        valid = row_ok
        if HAS_LEN:
            valid = valid & (t < lens)
        prev_slot = (k % n_slots).to(tl.int64) * B * H
        next_slot = ((k + 1) % n_slots).to(tl.int64) * B * H

        for j in range(pid_h, n_hblocks, nprog_h):
            units = j * BLOCK_H + tl.arange(0, BLOCK_H)
            unit_ok = units < H
            m2 = row_ok[:, None] & unit_ok[None, :]

            acc_i = tl.zeros((BLOCK_B, BLOCK_H), dtype=acc_dtype)
            acc_f = tl.zeros((BLOCK_B, BLOCK_H), dtype=acc_dtype)
            acc_g = tl.zeros((BLOCK_B, BLOCK_H), dtype=acc_dtype)
            acc_o = tl.zeros((BLOCK_B, BLOCK_H), dtype=acc_dtype)
            if W_RESIDENT:
                h = tl.load(hseq_ptr + prev_slot + rows64[:, None] * H + kk[None, :],
                            mask=row_ok[:, None] & (kk < H)[None, :], other=0.0, cache_modifier=".cg")
                h = h.to(w_dtype)
                acc_i = mma(h, w_i_res, acc_i, DOT_PRECISION)
                acc_f = mma(h, w_f_res, acc_f, DOT_PRECISION)
                acc_g = mma(h, w_g_res, acc_g, DOT_PRECISION)
                acc_o = mma(h, w_o_res, acc_o, DOT_PRECISION)
            else:
                for k0 in range(0, H, BLOCK_K):
                    kc = k0 + kk
                    # h_{t-1} comes from other programs: through L2 (.cg).
                    h = tl.load(hseq_ptr + prev_slot + rows64[:, None] * H + kc[None, :],
                                mask=row_ok[:, None] & (kc < H)[None, :], other=0.0, cache_modifier=".cg")
                    h = h.to(w_dtype)
                    wmask = (kc < H)[:, None] & unit_ok[None, :]
                    w_offs = w_hh_ptr + units[None, :] * H + kc[:, None]
                    acc_i = mma(h, tl.load(w_offs, mask=wmask, other=0.0), acc_i, DOT_PRECISION)
                    acc_f = mma(h, tl.load(w_offs + H * H, mask=wmask, other=0.0), acc_f, DOT_PRECISION)
                    acc_g = mma(h, tl.load(w_offs + 2 * H * H, mask=wmask, other=0.0), acc_g, DOT_PRECISION)
                    acc_o = mma(h, tl.load(w_offs + 3 * H * H, mask=wmask, other=0.0), acc_o, DOT_PRECISION)
            if HAS_BIAS:
                acc_i = acc_i + tl.load(b_hh_ptr + units, mask=unit_ok, other=0.0).to(acc_dtype)[None, :]
                acc_f = acc_f + tl.load(b_hh_ptr + H + units, mask=unit_ok, other=0.0).to(acc_dtype)[None, :]
                acc_g = acc_g + tl.load(b_hh_ptr + 2 * H + units, mask=unit_ok, other=0.0).to(acc_dtype)[None, :]
                acc_o = acc_o + tl.load(b_hh_ptr + 3 * H + units, mask=unit_ok, other=0.0).to(acc_dtype)[None, :]

            gx_offs = t64 * B * G + rows64[:, None] * G + units[None, :]
            i = sigmoid(tl.load(gx_ptr + gx_offs, mask=m2, other=0.0) + acc_i)
            f = sigmoid(tl.load(gx_ptr + gx_offs + H, mask=m2, other=0.0) + acc_f)
            g = tanh(tl.load(gx_ptr + gx_offs + 2 * H, mask=m2, other=0.0) + acc_g)
            o = sigmoid(tl.load(gx_ptr + gx_offs + 3 * H, mask=m2, other=0.0) + acc_o)

            st_offs = rows64[:, None] * H + units[None, :]
            h_own = tl.load(hseq_ptr + prev_slot + st_offs, mask=m2, other=0.0, cache_modifier=".cg")
            c_own = tl.load(cseq_ptr + prev_slot + st_offs, mask=m2, other=0.0)
            c_new = f * c_own + i * g
            h_new = o * tanh(c_new)
            ok = valid[:, None]
            tl.store(hseq_ptr + next_slot + st_offs, tl.where(ok, h_new, h_own), mask=m2)
            tl.store(cseq_ptr + next_slot + st_offs, tl.where(ok, c_new, c_own), mask=m2)

            y_offs = t64 * B * H + st_offs
            y = h_new
            if HAS_RES:
                y = h_new + tl.load(res_ptr + y_offs, mask=m2, other=0.0).to(acc_dtype)
            tl.store(y_ptr + y_offs, tl.where(ok, y, 0.0).to(y_ptr.dtype.element_ty), mask=m2)

            if SAVE_ACT:
                a_offs = t64 * B * G + rows64[:, None] * G + units[None, :]
                tl.store(act_ptr + a_offs, i, mask=m2)
                tl.store(act_ptr + a_offs + H, f, mask=m2)
                tl.store(act_ptr + a_offs + 2 * H, g, mask=m2)
                tl.store(act_ptr + a_offs + 3 * H, o, mask=m2)

        step_barrier(counter_ptr + pid_b, (s + 1) * nprog_h, USE_GRID_BARRIER)


@triton.jit(do_not_specialize=["T", "t_begin", "n_steps"])
def lstm_bwd_kernel(
    w_hh_ptr,  # (4H, H) weight dtype
    len_ptr,  # (B,) int64 (read only if HAS_LEN)
    dy_ptr,  # (T, B, H) (read only if HAS_DY)
    cseq_ptr,  # (T+1, B, H) acc, processing order
    act_ptr,  # (T, B, 4H) acc: i, f, g, o
    dg_ptr,  # (T, B, 4H) acc out; read back (other programs' blocks) for dh_{t-1}
    dh_ptr,  # (B, H) acc in/out (grad of h_n on entry)
    dc_ptr,  # (B, H) acc in/out (grad of c_n on entry)
    T, B, H,
    counter_ptr, t_begin, n_steps,
    USE_GRID_BARRIER: tl.constexpr,
    HAS_LEN: tl.constexpr, HAS_DY: tl.constexpr, REVERSE: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr,
    W_RESIDENT: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    # Same schedule as gru_bwd_kernel: step k first adds dg_{k+1} W_hh[:, units] to its dh, then
    # computes its own dgates; grad h0 = dh + dg_0 W_hh is a torch GEMM in the launcher.
    pid_h = tl.program_id(0)
    pid_b = tl.program_id(1)
    nprog_h = tl.num_programs(0)
    n_hblocks = tl.cdiv(H, BLOCK_H)
    G = 4 * H
    w_dtype = w_hh_ptr.dtype.element_ty
    acc_dtype = dh_ptr.dtype.element_ty

    rows = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)
    row_ok = rows < B
    rows64 = rows.to(tl.int64)
    kk = tl.arange(0, BLOCK_K)
    if HAS_LEN:
        lens = tl.load(len_ptr + rows, mask=row_ok, other=0)

    if W_RESIDENT:
        units_r = pid_h * BLOCK_H + tl.arange(0, BLOCK_H)
        wmask_r = (kk < H)[:, None] & (units_r < H)[None, :]
        w_i_res = tl.load(w_hh_ptr + kk[:, None] * H + units_r[None, :], mask=wmask_r, other=0.0)
        w_f_res = tl.load(w_hh_ptr + (H + kk)[:, None] * H + units_r[None, :], mask=wmask_r, other=0.0)
        w_g_res = tl.load(w_hh_ptr + (2 * H + kk)[:, None] * H + units_r[None, :], mask=wmask_r, other=0.0)
        w_o_res = tl.load(w_hh_ptr + (3 * H + kk)[:, None] * H + units_r[None, :], mask=wmask_r, other=0.0)

    for s in range(n_steps):
        k = T - 1 - (t_begin + s)
        if REVERSE:
            t = T - 1 - k
            t_next = t - 1
        else:
            t = k
            t_next = t + 1
        t64 = t.to(tl.int64)
        valid = row_ok
        if HAS_LEN:
            valid = valid & (t < lens)
        ok = valid[:, None]
        dg_next_base = dg_ptr + t_next.to(tl.int64) * B * G

        for j in range(pid_h, n_hblocks, nprog_h):
            units = j * BLOCK_H + tl.arange(0, BLOCK_H)
            unit_ok = units < H
            m2 = row_ok[:, None] & unit_ok[None, :]
            st_offs = rows64[:, None] * H + units[None, :]

            dh = tl.load(dh_ptr + st_offs, mask=m2, other=0.0)
            if k < T - 1:
                if W_RESIDENT:
                    amask = row_ok[:, None] & (kk < H)[None, :]
                    a_offs = dg_next_base + rows64[:, None] * G + kk[None, :]
                    a = tl.load(a_offs, mask=amask, other=0.0, cache_modifier=".cg").to(w_dtype)
                    dh = mma(a, w_i_res, dh, DOT_PRECISION)
                    a = tl.load(a_offs + H, mask=amask, other=0.0, cache_modifier=".cg").to(w_dtype)
                    dh = mma(a, w_f_res, dh, DOT_PRECISION)
                    a = tl.load(a_offs + 2 * H, mask=amask, other=0.0, cache_modifier=".cg").to(w_dtype)
                    dh = mma(a, w_g_res, dh, DOT_PRECISION)
                    a = tl.load(a_offs + 3 * H, mask=amask, other=0.0, cache_modifier=".cg").to(w_dtype)
                    dh = mma(a, w_o_res, dh, DOT_PRECISION)
                else:
                    for k0 in range(0, H, BLOCK_K):
                        kc = k0 + kk
                        amask = row_ok[:, None] & (kc < H)[None, :]
                        wmask = (kc < H)[:, None] & unit_ok[None, :]
                        a_offs = dg_next_base + rows64[:, None] * G + kc[None, :]
                        w_offs = w_hh_ptr + kc[:, None] * H + units[None, :]
                        for gate in tl.static_range(4):
                            a = tl.load(a_offs + gate * H, mask=amask, other=0.0, cache_modifier=".cg")
                            w = tl.load(w_offs + gate * H * H, mask=wmask, other=0.0)
                            dh = mma(a.to(w_dtype), w, dh, DOT_PRECISION)

            dh_t = dh
            if HAS_DY:
                dy = tl.load(dy_ptr + t64 * B * H + st_offs, mask=m2, other=0.0).to(acc_dtype)
                dh_t = dh + tl.where(ok, dy, 0.0)
            dc = tl.load(dc_ptr + st_offs, mask=m2, other=0.0)

            a_offs = t64 * B * G + rows64[:, None] * G + units[None, :]
            i = tl.load(act_ptr + a_offs, mask=m2, other=0.0)
            f = tl.load(act_ptr + a_offs + H, mask=m2, other=0.0)
            g = tl.load(act_ptr + a_offs + 2 * H, mask=m2, other=0.0)
            o = tl.load(act_ptr + a_offs + 3 * H, mask=m2, other=0.0)
            c_prev = tl.load(cseq_ptr + k.to(tl.int64) * B * H + st_offs, mask=m2, other=0.0)
            c_new = tl.load(cseq_ptr + (k + 1).to(tl.int64) * B * H + st_offs, mask=m2, other=0.0)
            tc = tanh(c_new)

            dc_t = dc + dh_t * o * (1.0 - tc * tc)
            d_i = tl.where(ok, dc_t * g * i * (1.0 - i), 0.0)
            d_f = tl.where(ok, dc_t * c_prev * f * (1.0 - f), 0.0)
            d_g = tl.where(ok, dc_t * i * (1.0 - g * g), 0.0)
            d_o = tl.where(ok, dh_t * tc * o * (1.0 - o), 0.0)
            tl.store(dg_ptr + a_offs, d_i, mask=m2)
            tl.store(dg_ptr + a_offs + H, d_f, mask=m2)
            tl.store(dg_ptr + a_offs + 2 * H, d_g, mask=m2)
            tl.store(dg_ptr + a_offs + 3 * H, d_o, mask=m2)
            # Valid step: all of dh_t went into the gates (it reaches h_{t-1} through dg W_hh
            # next step). Invalid step: state carried, so are dh and dc.
            tl.store(dh_ptr + st_offs, tl.where(ok, 0.0, dh), mask=m2)
            tl.store(dc_ptr + st_offs, tl.where(ok, dc_t * f, dc), mask=m2)

        step_barrier(counter_ptr + pid_b, (s + 1) * nprog_h, USE_GRID_BARRIER)


# ------------------------------------------------------------------------------------------------
# Host launchers
# ------------------------------------------------------------------------------------------------


def lstm_forward(x, h0, c0, w_ih, w_hh, b_ih, b_hh, residual, lengths, reverse, save,
                 strategy=None, force_grid_barrier=None):
    """Returns y (T,B,H), h_n, c_n (B,H) and the saved (hseq, cseq, act) for lstm_backward (empty
    when not ``save``)."""
    T, B, _ = x.shape
    H = w_hh.shape[1]
    acc = acc_dtype_for(x.dtype)
    gx = input_projection(x, w_ih, b_ih, acc)
    n_slots = T + 1 if save else 2
    hseq = torch.empty(n_slots, B, H, dtype=acc, device=x.device)
    cseq = torch.empty(n_slots, B, H, dtype=acc, device=x.device)
    hseq[0] = h0
    cseq[0] = c0
    y = torch.empty(T, B, H, dtype=x.dtype, device=x.device)
    act = torch.empty(T, B, 4 * H, dtype=acc, device=x.device) if save else gx
    w_hh = w_hh.contiguous()
    plan = plan_for(4, x, w_hh, strategy)
    args = (
        gx, w_hh, b_hh.contiguous() if b_hh is not None else w_hh,
        residual.contiguous() if residual is not None else y,
        lengths.contiguous() if lengths is not None else gx,
        y, hseq, cseq, act, T, B, H, n_slots,
    )
    constexprs = dict(
        HAS_BIAS=b_hh is not None, HAS_RES=residual is not None, HAS_LEN=lengths is not None,
        REVERSE=bool(reverse), SAVE_ACT=bool(save), BLOCK_B=plan.BLOCK_B, BLOCK_H=plan.BLOCK_H,
        BLOCK_K=plan.BLOCK_K, W_RESIDENT=plan.w_resident, DOT_PRECISION=dot_precision(x.dtype, x.device),
    )
    launch_steps(lstm_fwd_kernel, plan, T, args, constexprs, force_grid_barrier)
    h_n = hseq[T % n_slots].to(x.dtype, copy=True)
    c_n = cseq[T % n_slots].to(x.dtype, copy=True)
    if not save:
        hseq, cseq, act = hseq.new_empty(0), hseq.new_empty(0), hseq.new_empty(0)
    return y, h_n, c_n, hseq, cseq, act


def lstm_backward(dy, dh_n, dc_n, x, w_ih, w_hh, lengths, hseq, cseq, act, reverse, needs,
                  strategy=None, force_grid_barrier=None):
    """Gradients of lstm_forward; dy / dh_n / dc_n may be None. ``needs`` = flags for
    (x, h0, c0, w_ih, w_hh, b_ih, b_hh, residual). Returns the 8 grads (None where not needed)."""
    T, B, _ = x.shape
    H = w_hh.shape[1]
    acc = hseq.dtype
    need_x, need_h0, need_c0, need_w_ih, need_w_hh, need_b_ih, need_b_hh, need_res = needs
    dg = torch.empty(T, B, 4 * H, dtype=acc, device=x.device)
    dh = hseq.new_empty(B, H).copy_(dh_n) if dh_n is not None else hseq.new_zeros(B, H)  # one copy
    dc = hseq.new_empty(B, H).copy_(dc_n) if dc_n is not None else hseq.new_zeros(B, H)
    w_hh = w_hh.contiguous()
    plan = plan_for(4, x, w_hh, strategy)
    args = (
        w_hh, lengths.contiguous() if lengths is not None else dh,
        dy.contiguous() if dy is not None else dh,
        cseq, act, dg, dh, dc, T, B, H,
    )
    constexprs = dict(
        HAS_LEN=lengths is not None, HAS_DY=dy is not None, REVERSE=bool(reverse),
        BLOCK_B=plan.BLOCK_B, BLOCK_H=plan.BLOCK_H, BLOCK_K=plan.BLOCK_K, W_RESIDENT=plan.w_resident,
        DOT_PRECISION=dot_precision(x.dtype, x.device),
    )
    launch_steps(lstm_bwd_kernel, plan, T, args, constexprs, force_grid_barrier)

    t_first = T - 1 if reverse else 0
    dh0 = dh + dg[t_first] @ w_hh.to(acc) if need_h0 else None
    dc0 = dc if need_c0 else None
    dx, dw_ih, dw_hh, db_ih, db_hh = recurrent_grads(
        dg, dg, x, w_ih, hseq, reverse, (need_x, need_w_ih, need_w_hh, need_b_ih, need_b_hh))
    dres = None
    if need_res:
        # a copy: a custom op may not return (an alias of) its input dy
        dres = dy.to(acc, copy=True) if dy is not None else x.new_zeros(T, B, H, dtype=acc)
        mask = valid_mask(lengths, T, B, x.device)
        if mask is not None:
            dres = dres * mask
    return dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh, dres
