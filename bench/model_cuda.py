"""Latency model of the cuda backend's persistent kernels (csrc/): MODEL, not measured.

The launch plan (grid, units per CTA, shared-memory layout) is the arithmetic of csrc/rnn_launch.h,
written again here so that the model runs without a GPU or the extension; tests compare the two.
The step structure (which global loads wait on which, how many shared-memory bytes each phase
reads, where the barriers are) is read off the sm_90 SASS of the step loop.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .cases import Case
from .perf_model import (
    H100, Estimate, Machine, Phase, Step, elem_bytes, mma_chain_us, projection_gemms_us, register, smem_us,
    whole_call_ms,
)

# --- the launch plan (csrc/rnn_launch.h) ---------------------------------------------------------

UNITS = 16  # hidden units per CTA (kUnits)
BATCH_TILE = 16  # batch rows per MMA tile (kBatchTile)
THREADS = 256  # kThreads
WARPS = THREADS // 32
CHUNK = 512  # K elements staged at once (kChunk)
STAGE_UNROLL = 4  # nvcc unrolls the staging loop 4x; the rest runs in a one-load-per-trip remainder loop


def _round_up(x: int, m: int) -> int:
    return (x + m - 1) // m * m


@dataclass(frozen=True)
class Layout:
    """One CTA's shared memory (make_layout in csrc/rnn_launch.h)."""

    mrows: int
    K: int
    Kpad: int
    kc: int
    ks: int  # K splits of the warps
    bytes: int


def make_layout(mrows: int, K: int, elem: int, mode: str) -> Layout:
    Kpad = _round_up(K, 16)
    pad = 16 // elem
    lda = Kpad + pad
    kc = min(Kpad, CHUNK)
    ldb = kc + pad
    ks = 1 if mode == "fma" else WARPS // (mrows // 16)
    stage_off = _round_up(mrows * lda * elem, 128)
    partial_off = _round_up(stage_off + BATCH_TILE * ldb * elem, 128)
    return Layout(mrows, K, Kpad, kc, ks, partial_off + ks * mrows * BATCH_TILE * 4)


def launch_shape(cell: str, backward: bool, dtype_name: str, H: int, tf32: bool = False) -> dict:
    """grid and shared memory per CTA, as the extension's launch_shape() returns them."""
    ng = 3 if cell == "gru" else 4
    elem = elem_bytes(dtype_name)
    mode = "half" if elem == 2 else ("tf32" if tf32 else "fma")
    lay = make_layout(UNITS, ng * H, elem, mode) if backward else make_layout(ng * UNITS, H, elem, mode)
    return {"grid": -(-H // UNITS), "smem": lay.bytes, "threads": THREADS, "units_per_cta": UNITS}


# --- the step, phase by phase ----------------------------------------------------------------------


def _chunks(lay: Layout) -> list[int]:
    return [min(lay.kc, lay.Kpad - k0) for k0 in range(0, lay.Kpad, lay.kc)]


def _staging_trips(kc: int, elem: int, vec: bool) -> int:
    """Serial L2 round trips of one staging pass: loads in the 4x-unrolled body go out together,
    each remainder iteration waits for its own."""
    per_thread = -(-BATCH_TILE * (kc // (16 // elem) if vec else kc) // THREADS)
    return per_thread // STAGE_UNROLL + per_thread % STAGE_UNROLL


def _rec_product(lay: Layout, elem: int, vec: bool, mode: str, m: Machine, bar_us: float) -> list[Phase]:
    """RecProduct::run for one 16-row batch tile: per K chunk, stage (L2) then MMA from shared memory."""
    phases = []
    mt = lay.mrows // 16
    for i, kc in enumerate(_chunks(lay)):
        trips = _staging_trips(kc, elem, vec)
        stage = trips * m.l2_us + smem_us(BATCH_TILE * kc * elem, m) + bar_us
        phases.append(Phase(f"stage h chunk {i}", stage, f"{trips} serial L2 trip(s), {BATCH_TILE * kc * elem} B"))
        if mode == "fma":
            # fp32 exact path: two scalar shared loads (4 B each) per FMA, one thread per output.
            n_fma = lay.mrows * BATCH_TILE * kc
            mma = smem_us(n_fma * 8, m)
            why = f"{n_fma} FMAs, 2 LDS.32 each"
        else:
            k_tile = 16 if mode == "half" else 8
            a_bytes = lay.mrows * kc * elem
            b_bytes = mt * BATCH_TILE * kc * elem  # every M-tile warp re-reads the staged tile
            chain = mma_chain_us(-(-kc // k_tile // lay.ks), m)
            mma = max(smem_us(a_bytes + b_bytes, m), chain)
            why = f"{(a_bytes + b_bytes) // 1024} KiB from shared memory"
        phases.append(Phase(f"MMA chunk {i}", mma + bar_us, why))
    partial = lay.ks * lay.mrows * BATCH_TILE * 4
    phases.append(Phase("partial sums", smem_us(2 * partial, m) + bar_us, f"{lay.ks} K splits"))
    return phases


def _cell_trips(cell: str, residual: bool, m: Machine) -> tuple[float, str]:
    """The forward cell math's dependent global loads (from the SASS): lengths and h_state (L2), then
    one HBM trip per gx load group separated by the sigmoid's IEEE-division slow-path CALL, the LSTM's
    c_state (L2), the residual (HBM)."""
    if cell == "lstm":
        trips = [m.l2_us, m.hbm_us, m.hbm_us, m.hbm_us, m.l2_us]  # gx_i | gx_f | gx_g+gx_o | c_state
    else:
        trips = [m.l2_us, m.hbm_us, m.hbm_us, m.hbm_us]  # gx_r | gx_z | gx_n
    if residual:
        trips.append(m.hbm_us)
    return sum(trips), f"{len(trips)} dependent load groups"


def forward_step(case: Case, dtype_name: str, m: Machine = H100) -> Step:
    elem = elem_bytes(dtype_name)
    mode = "half" if elem == 2 else "fma"
    ng = case.gates
    lay = make_layout(ng * UNITS, case.H, elem, mode)
    vec = case.H % (16 // elem) == 0
    bar_us = SYNCTHREADS_US
    tiles = -(-case.B // BATCH_TILE)
    phases = []
    for tile in range(tiles):
        tag = f" (batch tile {tile})" if tiles > 1 else ""
        for p in _rec_product(lay, elem, vec, mode, m, bar_us):
            phases.append(Phase(p.name + tag, p.us, p.why))
        us, why = _cell_trips(case.cell, case.residual, m)
        phases.append(Phase("cell math" + tag, us + CELL_MATH_US, why))
    phases.append(Phase("grid.sync", m.barrier_us))
    return Step(tuple(_merge_tiles(phases, tiles)))


def backward_step(case: Case, dtype_name: str, m: Machine = H100) -> Step:
    elem = elem_bytes(dtype_name)
    mode = "half" if elem == 2 else "fma"
    G = case.gates * case.H
    lay = make_layout(UNITS, G, elem, mode)
    vec = G % (16 // elem) == 0
    tiles = -(-case.B // BATCH_TILE)
    phases = []
    for tile in range(tiles):
        tag = f" (batch tile {tile})" if tiles > 1 else ""
        # lengths (L2), then saved activations, dh and dy in one group (HBM).
        phases.append(Phase("phase A" + tag, m.l2_us + m.hbm_us + CELL_MATH_US, "2 dependent load groups"))
    phases.append(Phase("grid.sync", m.barrier_us))
    for tile in range(tiles):
        tag = f" (batch tile {tile})" if tiles > 1 else ""
        for p in _rec_product(lay, elem, vec, mode, m, SYNCTHREADS_US):
            phases.append(Phase("phase B " + p.name + tag, p.us, p.why))
        phases.append(Phase("dh update" + tag, m.l2_us, "read-modify-write of the fp32 dh carry"))
    return Step(tuple(_merge_tiles(phases, tiles)))


def _merge_tiles(phases: list[Phase], tiles: int) -> list[Phase]:
    """Phases of identical batch tiles summed under one name (keeps the printed step readable)."""
    if tiles <= 1:
        return phases
    merged: dict[str, Phase] = {}
    for p in phases:
        name = p.name.split(" (batch tile")[0]
        if name in merged:
            merged[name] = Phase(name, merged[name].us + p.us, merged[name].why)
        else:
            merged[name] = Phase(name, p.us, (p.why + f"; x{tiles} batch tiles").strip("; "))
    return list(merged.values())


# Fixed costs of a phase, from the instruction counts of the SASS (a few dozen dependent ALU/MUFU ops).
SYNCTHREADS_US = 0.02
CELL_MATH_US = 0.03


def _fits_h100(case: Case, dtype_name: str, m: Machine) -> str | None:
    for backward in (False, True):
        shape = launch_shape(case.cell, backward, dtype_name, case.H)
        if shape["smem"] > m.smem_optin_bytes or shape["grid"] > m.n_sm:
            return f"H={case.H} does not fit: grid {shape['grid']}, {shape['smem'] // 1024} KiB per CTA"
    return None


@register("fusedrnn-cuda")
def model(case: Case, dtype_name: str, m: Machine = H100) -> Estimate | str:
    why = _fits_h100(case, dtype_name, m)
    if why:
        return why
    fwd, bwd = forward_step(case, dtype_name, m), backward_step(case, dtype_name, m)
    gemm_f, gemm_b = 0.0, 0.0
    for layer_input in case.layer_inputs():
        f, b = projection_gemms_us(case, dtype_name, layer_input, m)
        gemm_f, gemm_b = max(gemm_f, f), max(gemm_b, b)
    fwd_ms, fb_ms = whole_call_ms(case, dtype_name, fwd, bwd, gemm_f + m.launch_us, gemm_b + m.launch_us, m)
    grid = math.ceil(case.H / UNITS)
    plan = f"{grid} CTAs x {THREADS} threads, {UNITS} units per CTA, W_hh slice in shared memory"
    return Estimate("fusedrnn-cuda", case.id, dtype_name, plan, fwd, bwd, fwd_ms, fb_ms,
                    notes="fp32 runs the exact FMA path (TF32 off, torch's default)" if dtype_name == "fp32" else "")
