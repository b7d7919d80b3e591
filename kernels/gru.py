"""GRU, one layer and one direction: the recurrent Triton kernels and their host launchers.

Semantics are fusedrnn.reference.gru_reference's (gate rows r|z|n, torch's layout):
    r = σ(gx_r + W_hr h + b_hr),  z = σ(gx_z + W_hz h + b_hz),
    n = tanh(gx_n + r * (W_hn h + b_hn)),  h' = (1 - z) n + z h,
with gx = x W_ihᵀ + b_ih computed for all steps by one torch GEMM (never in the kernel).

Buffers (acc = float64 for float64 inputs, float32 otherwise):
- ``hseq`` (n_slots, B, H) acc, indexed by *processing order* k (k-th step walked, t = k forward,
  t = T-1-k reversed): hseq[0] = h0, hseq[k+1] = state after step k (carried on invalid steps).
  It is both the exchange buffer between programs and, with n_slots = T+1, the saved h sequence
  for the backward; inference uses n_slots = 2 (ping-pong: safe with one barrier per step).
- ``act`` (T, B, 4H) acc, by time: r, z, n and ghn = W_hn h + b_hn (n's recurrent term before the
  reset gate), everything the backward needs besides h_{t-1}; no recomputed GEMM in the backward.
- backward: ``dgx`` / ``dgh`` (T, B, 3H) acc, by time: d(pre-activations) seen by the input and
  the recurrent GEMM (they differ only in the n block: dgh_n = dgx_n * r), reduced by torch GEMMs
  afterwards; ``dh`` (B, H) acc carries dh across steps (and across launches).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .common import (
    Plan, dot_precision, launch_steps, lowp_torch_gemms, make_plan, mma, sigmoid, sm_count, step_barrier, tanh,
)


@triton.jit(do_not_specialize=["T", "t_begin", "n_steps"])
def gru_fwd_kernel(
    gx_ptr,  # (T, B, 3H) acc: x W_ihᵀ + b_ih
    w_hh_ptr,  # (3H, H) weight dtype
    b_hh_ptr,  # (3H,) weight dtype (read only if HAS_BIAS)
    res_ptr,  # (T, B, H) (read only if HAS_RES)
    len_ptr,  # (B,) int64 (read only if HAS_LEN)
    y_ptr,  # (T, B, H) out
    hseq_ptr,  # (n_slots, B, H) acc, see module docstring
    act_ptr,  # (T, B, 4H) acc (written only if SAVE_ACT)
    T, B, H, n_slots,
    counter_ptr,  # (n_btiles,) int32 zeros: per-batch-tile barrier counters
    t_begin, n_steps,
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
    G = 3 * H
    w_dtype = w_hh_ptr.dtype.element_ty
    acc_dtype = gx_ptr.dtype.element_ty

    rows = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)
    row_ok = rows < B
    rows64 = rows.to(tl.int64)
    kk = tl.arange(0, BLOCK_K)
    if HAS_LEN:
        lens = tl.load(len_ptr + rows, mask=row_ok, other=0)

    if W_RESIDENT:
        # One unit block per program (j == pid_h) and BLOCK_K covers H: load this program's W_hh
        # rows once, as Wᵀ tiles (K, units), and keep them on chip for every step.
        units_r = pid_h * BLOCK_H + tl.arange(0, BLOCK_H)
        wmask_r = (kk < H)[:, None] & (units_r < H)[None, :]
        w_r_res = tl.load(w_hh_ptr + units_r[None, :] * H + kk[:, None], mask=wmask_r, other=0.0)
        w_z_res = tl.load(w_hh_ptr + (H + units_r)[None, :] * H + kk[:, None], mask=wmask_r, other=0.0)
        w_n_res = tl.load(w_hh_ptr + (2 * H + units_r)[None, :] * H + kk[:, None], mask=wmask_r, other=0.0)

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
        h_prev_base = hseq_ptr + (k % n_slots).to(tl.int64) * B * H
        h_next_base = hseq_ptr + ((k + 1) % n_slots).to(tl.int64) * B * H

        for j in range(pid_h, n_hblocks, nprog_h):
            units = j * BLOCK_H + tl.arange(0, BLOCK_H)
            unit_ok = units < H
            m2 = row_ok[:, None] & unit_ok[None, :]

            # gh = h_{t-1} W_hhᵀ for this block's units of every gate. h_{t-1} was written by
            # other programs: load through L2 (.cg), L1 is not coherent across SMs.
            acc_r = tl.zeros((BLOCK_B, BLOCK_H), dtype=acc_dtype)
            acc_z = tl.zeros((BLOCK_B, BLOCK_H), dtype=acc_dtype)
            acc_n = tl.zeros((BLOCK_B, BLOCK_H), dtype=acc_dtype)
            if W_RESIDENT:
                h = tl.load(h_prev_base + rows64[:, None] * H + kk[None, :],
                            mask=row_ok[:, None] & (kk < H)[None, :], other=0.0, cache_modifier=".cg")
                h = h.to(w_dtype)
                acc_r = mma(h, w_r_res, acc_r, DOT_PRECISION)
                acc_z = mma(h, w_z_res, acc_z, DOT_PRECISION)
                acc_n = mma(h, w_n_res, acc_n, DOT_PRECISION)
            else:
                for k0 in range(0, H, BLOCK_K):
                    kc = k0 + kk
                    h = tl.load(h_prev_base + rows64[:, None] * H + kc[None, :],
                                mask=row_ok[:, None] & (kc < H)[None, :], other=0.0, cache_modifier=".cg")
                    h = h.to(w_dtype)
                    wmask = (kc < H)[:, None] & unit_ok[None, :]
                    w_r = tl.load(w_hh_ptr + units[None, :] * H + kc[:, None], mask=wmask, other=0.0)
                    w_z = tl.load(w_hh_ptr + (H + units)[None, :] * H + kc[:, None], mask=wmask, other=0.0)
                    w_n = tl.load(w_hh_ptr + (2 * H + units)[None, :] * H + kc[:, None], mask=wmask, other=0.0)
                    acc_r = mma(h, w_r, acc_r, DOT_PRECISION)
                    acc_z = mma(h, w_z, acc_z, DOT_PRECISION)
                    acc_n = mma(h, w_n, acc_n, DOT_PRECISION)
            if HAS_BIAS:
                acc_r = acc_r + tl.load(b_hh_ptr + units, mask=unit_ok, other=0.0).to(acc_dtype)[None, :]
                acc_z = acc_z + tl.load(b_hh_ptr + H + units, mask=unit_ok, other=0.0).to(acc_dtype)[None, :]
                acc_n = acc_n + tl.load(b_hh_ptr + 2 * H + units, mask=unit_ok, other=0.0).to(acc_dtype)[None, :]

            gx_offs = t64 * B * G + rows64[:, None] * G + units[None, :]
            gx_r = tl.load(gx_ptr + gx_offs, mask=m2, other=0.0)
            gx_z = tl.load(gx_ptr + gx_offs + H, mask=m2, other=0.0)
            gx_n = tl.load(gx_ptr + gx_offs + 2 * H, mask=m2, other=0.0)
            r = sigmoid(gx_r + acc_r)
            z = sigmoid(gx_z + acc_z)
            n = tanh(gx_n + r * acc_n)

            st_offs = rows64[:, None] * H + units[None, :]
            h_own = tl.load(h_prev_base + st_offs, mask=m2, other=0.0, cache_modifier=".cg")
            h_new = (1.0 - z) * n + z * h_own
            ok = valid[:, None]
            tl.store(h_next_base + st_offs, tl.where(ok, h_new, h_own), mask=m2)

            y_offs = t64 * B * H + st_offs
            y = h_new
            if HAS_RES:
                y = h_new + tl.load(res_ptr + y_offs, mask=m2, other=0.0).to(acc_dtype)
            tl.store(y_ptr + y_offs, tl.where(ok, y, 0.0).to(y_ptr.dtype.element_ty), mask=m2)

            if SAVE_ACT:
                a_offs = t64 * B * 4 * H + rows64[:, None] * (4 * H) + units[None, :]
                tl.store(act_ptr + a_offs, r, mask=m2)
                tl.store(act_ptr + a_offs + H, z, mask=m2)
                tl.store(act_ptr + a_offs + 2 * H, n, mask=m2)
                tl.store(act_ptr + a_offs + 3 * H, acc_n, mask=m2)

        step_barrier(counter_ptr + pid_b, (s + 1) * nprog_h, USE_GRID_BARRIER)


@triton.jit(do_not_specialize=["T", "t_begin", "n_steps"])
def gru_bwd_kernel(
    w_hh_ptr,  # (3H, H) weight dtype
    len_ptr,  # (B,) int64 (read only if HAS_LEN)
    dy_ptr,  # (T, B, H) (read only if HAS_DY)
    hseq_ptr,  # (T+1, B, H) acc, processing order
    act_ptr,  # (T, B, 4H) acc: r, z, n, ghn
    dgx_ptr,  # (T, B, 3H) acc out
    dgh_ptr,  # (T, B, 3H) acc out; also read back (other programs' blocks) for dh_{t-1}
    dh_ptr,  # (B, H) acc in/out: dL/dh carried between steps (grad of h_n on entry)
    T, B, H,
    counter_ptr, t_begin, n_steps,
    USE_GRID_BARRIER: tl.constexpr,
    HAS_LEN: tl.constexpr, HAS_DY: tl.constexpr, REVERSE: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr,
    W_RESIDENT: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    # Walks the processing order backwards, k = T-1 .. 0. Step k first finishes dh for its own
    # units with the recurrent term of step k+1, dh += dgh_{k+1} W_hh[:, units] (dgh_{k+1} of all
    # units was stored by every program before the last barrier), then computes its own dgates.
    # So one barrier per step; the recurrent term of the last step (k = 0), which is grad h0,
    # is one torch GEMM in the launcher.
    pid_h = tl.program_id(0)
    pid_b = tl.program_id(1)
    nprog_h = tl.num_programs(0)
    n_hblocks = tl.cdiv(H, BLOCK_H)
    G = 3 * H
    w_dtype = w_hh_ptr.dtype.element_ty
    acc_dtype = dh_ptr.dtype.element_ty

    rows = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)
    row_ok = rows < B
    rows64 = rows.to(tl.int64)
    kk = tl.arange(0, BLOCK_K)
    if HAS_LEN:
        lens = tl.load(len_ptr + rows, mask=row_ok, other=0)

    if W_RESIDENT:
        # The backward needs W_hh's columns for this program's units (rows of W_hhᵀ), all gates.
        units_r = pid_h * BLOCK_H + tl.arange(0, BLOCK_H)
        wmask_r = (kk < H)[:, None] & (units_r < H)[None, :]
        w_r_res = tl.load(w_hh_ptr + kk[:, None] * H + units_r[None, :], mask=wmask_r, other=0.0)
        w_z_res = tl.load(w_hh_ptr + (H + kk)[:, None] * H + units_r[None, :], mask=wmask_r, other=0.0)
        w_n_res = tl.load(w_hh_ptr + (2 * H + kk)[:, None] * H + units_r[None, :], mask=wmask_r, other=0.0)

    for s in range(n_steps):
        k = T - 1 - (t_begin + s)
        if REVERSE:
            t = T - 1 - k
            t_next = t - 1  # time of processing step k+1
        else:
            t = k
            t_next = t + 1
        t64 = t.to(tl.int64)
        valid = row_ok
        if HAS_LEN:
            valid = valid & (t < lens)
        ok = valid[:, None]
        dgh_next_base = dgh_ptr + t_next.to(tl.int64) * B * G

        for j in range(pid_h, n_hblocks, nprog_h):
            units = j * BLOCK_H + tl.arange(0, BLOCK_H)
            unit_ok = units < H
            m2 = row_ok[:, None] & unit_ok[None, :]
            st_offs = rows64[:, None] * H + units[None, :]

            dh = tl.load(dh_ptr + st_offs, mask=m2, other=0.0)
            if k < T - 1:
                if W_RESIDENT:
                    amask = row_ok[:, None] & (kk < H)[None, :]
                    a_offs = dgh_next_base + rows64[:, None] * G + kk[None, :]
                    a = tl.load(a_offs, mask=amask, other=0.0, cache_modifier=".cg").to(w_dtype)
                    dh = mma(a, w_r_res, dh, DOT_PRECISION)
                    a = tl.load(a_offs + H, mask=amask, other=0.0, cache_modifier=".cg").to(w_dtype)
                    dh = mma(a, w_z_res, dh, DOT_PRECISION)
                    a = tl.load(a_offs + 2 * H, mask=amask, other=0.0, cache_modifier=".cg").to(w_dtype)
                    dh = mma(a, w_n_res, dh, DOT_PRECISION)
                else:
                    for k0 in range(0, H, BLOCK_K):
                        kc = k0 + kk
                        amask = row_ok[:, None] & (kc < H)[None, :]
                        wmask = (kc < H)[:, None] & unit_ok[None, :]
                        a_offs = dgh_next_base + rows64[:, None] * G + kc[None, :]
                        w_offs = w_hh_ptr + kc[:, None] * H + units[None, :]
                        a = tl.load(a_offs, mask=amask, other=0.0, cache_modifier=".cg").to(w_dtype)
                        w = tl.load(w_offs, mask=wmask, other=0.0)
                        dh = mma(a, w, dh, DOT_PRECISION)
                        a = tl.load(a_offs + H, mask=amask, other=0.0, cache_modifier=".cg").to(w_dtype)
                        w = tl.load(w_offs + H * H, mask=wmask, other=0.0)
                        dh = mma(a, w, dh, DOT_PRECISION)
                        a = tl.load(a_offs + 2 * H, mask=amask, other=0.0, cache_modifier=".cg").to(w_dtype)
                        w = tl.load(w_offs + 2 * H * H, mask=wmask, other=0.0)
                        dh = mma(a, w, dh, DOT_PRECISION)

            # y_t = h_t (+ residual) only at valid steps: dy reaches h_t only there.
            dh_t = dh
            if HAS_DY:
                dy = tl.load(dy_ptr + t64 * B * H + st_offs, mask=m2, other=0.0).to(acc_dtype)
                dh_t = dh + tl.where(ok, dy, 0.0)

            a_offs = t64 * B * 4 * H + rows64[:, None] * (4 * H) + units[None, :]
            r = tl.load(act_ptr + a_offs, mask=m2, other=0.0)
            z = tl.load(act_ptr + a_offs + H, mask=m2, other=0.0)
            n = tl.load(act_ptr + a_offs + 2 * H, mask=m2, other=0.0)
            ghn = tl.load(act_ptr + a_offs + 3 * H, mask=m2, other=0.0)
            h_prev = tl.load(hseq_ptr + k.to(tl.int64) * B * H + st_offs, mask=m2, other=0.0)

            dn = tl.where(ok, dh_t * (1.0 - z) * (1.0 - n * n), 0.0)
            dz = tl.where(ok, dh_t * (h_prev - n) * z * (1.0 - z), 0.0)
            dr = dn * ghn * r * (1.0 - r)
            g_offs = t64 * B * G + rows64[:, None] * G + units[None, :]
            tl.store(dgx_ptr + g_offs, dr, mask=m2)
            tl.store(dgx_ptr + g_offs + H, dz, mask=m2)
            tl.store(dgx_ptr + g_offs + 2 * H, dn, mask=m2)
            tl.store(dgh_ptr + g_offs, dr, mask=m2)
            tl.store(dgh_ptr + g_offs + H, dz, mask=m2)
            tl.store(dgh_ptr + g_offs + 2 * H, dn * r, mask=m2)
            # Invalid step: the state was carried, so is its gradient.
            tl.store(dh_ptr + st_offs, tl.where(ok, dh_t * z, dh), mask=m2)

        step_barrier(counter_ptr + pid_b, (s + 1) * nprog_h, USE_GRID_BARRIER)


# ------------------------------------------------------------------------------------------------
# Host launchers
# ------------------------------------------------------------------------------------------------


def acc_dtype_for(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def input_projection(x, w_ih, b_ih, acc):
    """gx = x W_ihᵀ (+ b_ih) for all steps, (T, B, G) in the accumulation dtype: one torch GEMM.

    fp16/bf16 on a GPU (lowp_torch_gemms): the GEMM runs in the input dtype on tensor cores with
    fp32 accumulation and its result is rounded once to that dtype, as in cuDNN; the upcast and the
    bias (added in fp32) are one elementwise kernel. Elsewhere (CPU, the interpreter, fp32/fp64):
    the GEMM in the accumulation dtype."""
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


def plan_for(n_gates, x, w_hh, strategy=None) -> Plan:
    B, H = x.shape[1], w_hh.shape[0] // n_gates
    return make_plan(n_gates, B, H, w_hh.element_size(), sm_count(x.device), strategy)


def gru_forward(x, h0, w_ih, w_hh, b_ih, b_hh, residual, lengths, reverse, save,
                strategy=None, force_grid_barrier=None):
    """Returns y (T,B,H), h_n (B,H) and the saved (hseq, act) for gru_backward (placeholders when
    not ``save``). ``strategy``/``force_grid_barrier`` override the plan (tests, benchmarks)."""
    T, B, _ = x.shape
    H = w_hh.shape[1]
    acc = acc_dtype_for(x.dtype)
    gx = input_projection(x, w_ih, b_ih, acc)
    n_slots = T + 1 if save else 2
    hseq = torch.empty(n_slots, B, H, dtype=acc, device=x.device)
    hseq[0] = h0
    y = torch.empty(T, B, H, dtype=x.dtype, device=x.device)
    act = torch.empty(T, B, 4 * H, dtype=acc, device=x.device) if save else gx
    w_hh = w_hh.contiguous()
    plan = plan_for(3, x, w_hh, strategy)
    args = (
        gx, w_hh, b_hh.contiguous() if b_hh is not None else w_hh,
        residual.contiguous() if residual is not None else y,
        lengths.contiguous() if lengths is not None else gx,
        y, hseq, act, T, B, H, n_slots,
    )
    constexprs = dict(
        HAS_BIAS=b_hh is not None, HAS_RES=residual is not None, HAS_LEN=lengths is not None,
        REVERSE=bool(reverse), SAVE_ACT=bool(save), BLOCK_B=plan.BLOCK_B, BLOCK_H=plan.BLOCK_H,
        BLOCK_K=plan.BLOCK_K, W_RESIDENT=plan.w_resident, DOT_PRECISION=dot_precision(x.dtype, x.device),
    )
    launch_steps(gru_fwd_kernel, plan, T, args, constexprs, force_grid_barrier)
    h_n = hseq[T % n_slots].to(x.dtype, copy=True)
    if not save:
        hseq, act = hseq.new_empty(0), hseq.new_empty(0)
    return y, h_n, hseq, act


def valid_mask(lengths, T, B, device):
    """(T, B, 1) bool: step t is valid for row b (None when every step is)."""
    if lengths is None:
        return None
    return (torch.arange(T, device=device).view(T, 1) < lengths.to(device).view(1, B)).unsqueeze(-1)


def recurrent_grads(dgx, dgh, x, w_ih, hseq, reverse, needs):
    """The GEMMs and reductions after the reverse-time kernel: dx, dW_ih, dW_hh, db_ih, db_hh.
    ``needs`` = (x, w_ih, w_hh, b_ih, b_hh) flags; skipped grads are None.

    fp16/bf16 on a GPU (lowp_torch_gemms): the three GEMMs take their operands rounded to the
    input dtype (tensor cores, fp32 accumulation; the grads are returned in that dtype anyway), as
    cuDNN does; the bias reductions stay in the accumulation dtype."""
    T, B, G = dgx.shape
    I = x.shape[2]  # noqa: E741
    acc = dgx.dtype
    need_x, need_w_ih, need_w_hh, need_b_ih, need_b_hh = needs
    dgx2 = dgx.view(T * B, G)
    x2 = x.reshape(T * B, I)
    h_prev = None
    if need_w_hh:
        # hseq is in processing order (h_{t-1} of step k is hseq[k]), dgh by time: bring the
        # (smaller) h sequence into time order.
        h_prev = (hseq[:T].flip(0) if reverse else hseq[:T]).reshape(T * B, -1)
    if lowp_torch_gemms(x):
        lp = x.dtype
        dgx_lp = dgx2.to(lp) if (need_x or need_w_ih or (need_w_hh and dgh is dgx)) else None
        dx = (dgx_lp @ w_ih).view(T, B, I) if need_x else None
        dw_ih = dgx_lp.t() @ x2 if need_w_ih else None
        dw_hh = None
        if need_w_hh:
            dgh_lp = dgx_lp if dgh is dgx else dgh.reshape(T * B, G).to(lp)
            dw_hh = dgh_lp.t() @ h_prev.to(lp)
    else:
        dx = (dgx2 @ w_ih.to(acc)).view(T, B, I) if need_x else None
        dw_ih = dgx2.t() @ x2.to(acc) if need_w_ih else None
        dw_hh = dgh.reshape(T * B, G).t() @ h_prev if need_w_hh else None
    db_ih = dgx2.sum(0) if need_b_ih else None
    db_hh = dgh.reshape(T * B, G).sum(0) if need_b_hh else None
    return dx, dw_ih, dw_hh, db_ih, db_hh


def gru_backward(dy, dh_n, x, w_ih, w_hh, lengths, hseq, act, reverse, needs,
                 strategy=None, force_grid_barrier=None):
    """Gradients of gru_forward. dy (T,B,H) / dh_n (B,H) may be None. ``needs`` = flags for
    (x, h0, w_ih, w_hh, b_ih, b_hh, residual). Returns the 7 grads (None where not needed)."""
    T, B, _ = x.shape
    H = w_hh.shape[1]
    G = 3 * H
    acc = hseq.dtype
    need_x, need_h0, need_w_ih, need_w_hh, need_b_ih, need_b_hh, need_res = needs
    dgx = torch.empty(T, B, G, dtype=acc, device=x.device)
    dgh = torch.empty(T, B, G, dtype=acc, device=x.device)
    dh = hseq.new_empty(B, H).copy_(dh_n) if dh_n is not None else hseq.new_zeros(B, H)  # one copy
    w_hh = w_hh.contiguous()
    plan = plan_for(3, x, w_hh, strategy)
    args = (
        w_hh, lengths.contiguous() if lengths is not None else dh,
        dy.contiguous() if dy is not None else dh,
        hseq, act, dgx, dgh, dh, T, B, H,
    )
    constexprs = dict(
        HAS_LEN=lengths is not None, HAS_DY=dy is not None, REVERSE=bool(reverse),
        BLOCK_B=plan.BLOCK_B, BLOCK_H=plan.BLOCK_H, BLOCK_K=plan.BLOCK_K, W_RESIDENT=plan.w_resident,
        DOT_PRECISION=dot_precision(x.dtype, x.device),
    )
    launch_steps(gru_bwd_kernel, plan, T, args, constexprs, force_grid_barrier)

    t_first = T - 1 if reverse else 0  # time of processing step 0: its dgh feeds grad h0
    dh0 = dh + dgh[t_first] @ w_hh.to(acc) if need_h0 else None
    dx, dw_ih, dw_hh, db_ih, db_hh = recurrent_grads(
        dgx, dgh, x, w_ih, hseq, reverse, (need_x, need_w_ih, need_w_hh, need_b_ih, need_b_hh))
    dres = None
    if need_res:
        # a copy: a custom op may not return (an alias of) its input dy
        dres = dy.to(acc, copy=True) if dy is not None else x.new_zeros(T, B, H, dtype=acc)
        mask = valid_mask(lengths, T, B, x.device)
        if mask is not None:
            dres = dres * mask
    return dx, dh0, dw_ih, dw_hh, db_ih, db_hh, dres
