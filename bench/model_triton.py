"""Latency model (MODEL, not measured) of the Triton kernels as they are at this commit
(kernels/gru.py, kernels/lstm.py: split-H persistent plans with BLOCK_K=32, one stage, W_hh
re-read from L2 every step unless its slice is <= 16 KB).

The plan is the launcher's (kernels/common.py make_plan, restated here: this is the record of
the kernels before the K-loop rewrite). The step structure is read from the sm_90 SASS of
lstm_fwd_kernel / lstm_bwd_kernel (bf16, B16 H16 K32, grid barrier): per K chunk the loop
serialises the h tile's load (LDG.STRONG.GPU), its layout conversion (BAR, STSM, BAR, LDS) and
then each gate's W tile (LDG.U16 scalar loads) behind a BAR: 1 + gates dependent L2 round trips
per chunk in the forward, 2 x gates in the backward (each gate's dgates tile and W tile); after
the loop, the gx (or act) tiles load one gate at a time between layout conversions (one HBM trip
each), then the own h/c tiles (L2), the gate math, the stores and one grid barrier.
"""

from __future__ import annotations

import math

from .cases import Case
from .perf_model import H100, Estimate, Machine, Phase, Step, elem_bytes, projection_gemms_us, register, \
    whole_call_ms

RESIDENT_W_BYTES = 16 * 1024
STREAM_BLOCK_K = 32


def _next_pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


def plan_v0(gates: int, B: int, H: int, e: int, n_sm: int) -> dict:
    """kernels/common.py make_plan at this commit (strategy chosen by its choose_strategy)."""
    HP = max(16, _next_pow2(H))
    if HP <= 64 or math.ceil(B / 16) >= n_sm:
        BB, BH, nprog_h, strategy = 16, min(64, HP), 1, "batch_tile"
        n_btiles = math.ceil(B / BB)
    else:
        strategy = "persistent"
        BB = min(32, max(16, _next_pow2(B)))
        n_btiles = math.ceil(B / BB)
        cap = max(1, n_sm // n_btiles)
        BH = min(1024 // BB, max(16, _next_pow2(math.ceil(H / cap))))
        nprog_h = min(math.ceil(H / BH), cap)
    n_blk = math.ceil(H / BH)
    resident = nprog_h == n_blk and gates * BH * HP * e <= RESIDENT_W_BYTES
    BK = HP if resident else min(HP, STREAM_BLOCK_K)
    return dict(strategy=strategy, BB=BB, BH=BH, BK=BK, n_btiles=n_btiles, nprog_h=nprog_h, n_blk=n_blk,
                resident=resident)


def _steps(case: Case, dtype_name: str, m: Machine) -> tuple[dict, Step, Step]:
    g, H = case.gates, case.H
    p = plan_v0(g, case.B, H, elem_bytes(dtype_name), m.n_sm)
    blocks = math.ceil(p["n_blk"] / p["nprog_h"])  # unit blocks each program walks per step
    chunks = 1 if p["resident"] else math.ceil(H / p["BK"])
    barrier = m.barrier_us if p["nprog_h"] > 1 else 0.1
    fwd = Step((
        Phase("K loop", blocks * chunks * (1 + (0 if p["resident"] else g)) * m.l2_us,
              f"{chunks} chunk(s) x (h tile + {g} W tiles), each an L2 trip behind a bar.sync"),
        Phase("bias", blocks * m.l2_us, "b_hh tiles, one L2 trip"),
        Phase("gx loads", blocks * g * m.hbm_us, f"{g} gx tiles, one HBM trip each (layout conversions between)"),
        Phase("own h/c", blocks * (1 if g == 3 else 2) * m.l2_us, "h_{t-1} (and c) of the block's units"),
        Phase("gate math + stores", blocks * 0.1, "sigmoid/tanh, state update, y/h/act stores"),
        Phase("barrier", barrier, "grid barrier" if p["nprog_h"] > 1 else "CTA barrier"),
    ))
    bwd = Step((
        Phase("K loop", blocks * chunks * 2 * g * m.l2_us,
              f"{chunks} chunk(s) x {g} gates x (dgates tile + W tile), serialised L2 trips"),
        Phase("act/dy/state loads", blocks * (g + 1) * m.hbm_us + blocks * 2 * m.l2_us, "per-gate act tiles, dy; c/h"),
        Phase("gate math + stores", blocks * 0.1, ""),
        Phase("barrier", barrier, ""),
    ))
    return p, fwd, bwd


@register("fusedrnn-triton")
def model(case: Case, dtype_name: str, m: Machine = H100) -> Estimate | str:
    p, fwd, bwd = _steps(case, dtype_name, m)
    fwd_extra = bwd_extra = 0.0
    for layer_input in case.layer_inputs():
        f, b = projection_gemms_us(case, dtype_name, layer_input, m)
        fwd_extra += (f + m.launch_us) / case.layers
        bwd_extra += (b + m.launch_us) / case.layers
    fwd_ms, fb_ms = whole_call_ms(case, dtype_name, fwd, bwd, fwd_extra, bwd_extra, m)
    plan = (f"{p['strategy']}: grid {p['nprog_h']}x{p['n_btiles']}, {p['BB']} rows x {p['BH']} units, "
            f"BLOCK_K {p['BK']}, W {'resident' if p['resident'] else 're-read from L2 every step'}")
    return Estimate("fusedrnn-triton", case.id, dtype_name, plan, fwd, bwd, fwd_ms, fb_ms,
                    notes="kernels before the K-loop rewrite")
