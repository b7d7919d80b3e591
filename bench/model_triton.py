"""Latency model (MODEL, not measured) of the Triton kernels (kernels/rnn.py) on the plans the
launcher uses (kernels/plan.py, imported: pure Python, no triton).

The step structure is read from the sm_90 SASS of rnn_fwd_kernel / rnn_bwd_kernel (Triton 3.8;
tests/test_triton_codegen.py keeps checking the parts the phases rely on):

- before the barrier wait: every load that other programs do not write (gx / act / dy tiles,
  the block's own state, the residual) is issued, so it is in flight during the spin (``prefetch``
  costs only what the barrier does not hide);
- ``barrier``: bar.sync, membar + one red.release per program, then the acquire poll;
- ``operand``: the product's left operand (h_{t-1} forward, dgates_{t+1} backward: every unit of
  the batch tile) as one group of 16-byte .cg loads from L2 (8 x LDG.E.128.STRONG.GPU per thread
  for flashrnn): one L2 round trip plus the transfer, limited by the SM's share of L2 bandwidth
  and by L2's aggregate bandwidth (every program loads the same operand);
- ``stage``: the operand into shared memory (STS.128, bar.sync) for ldmatrix;
- ``MMA``: ldmatrix of the resident W slice and of the operand (read by every warp when the warps
  split the columns), overlapped with the HMMA chains (KS warps each reduce K/KS: K/(16 KS)
  dependent steps): max(shared-memory bytes / bandwidth, chain); fp32 without TF32 and fp64 run
  FMA instead (``FMA_PER_CLK_SM`` below);
- ``partial sums`` (KS > 1): the warps' partials reduced through shared memory, one round per
  16x8 accumulator tile: bar.sync, STS.128, bar.sync, LDS.128, log2(KS) dependent shuffles;
- ``epilogue``: gate math (dependent MUFU ex2/rcp) and the layout conversions Triton puts before
  the coalesced stores (STS, bar.sync, LDS each): ``conversions`` below, counted in the SASS;
- ``zoneout`` (a case with ``zoneout`` > 0 only; ``zoneout_phase`` below): per zoned state (GRU h;
  LSTM h and c) and element of the program's tile, in training the Philox 4x32-10 mask (tl.rand:
  10 rounds of 2 umulhi, 2 mul and 2 three-input xors, as the SASS runs them) plus its counter,
  float map, compare and select, once in the forward and once more in the backward (the masks are
  regenerated, never stored); in evaluation (the "forward" mode, inference) the blend
  p*old + (1-p)*new. Integer ops at ``ALU_OPS_PER_CLK_SM``, the tile's replicas included (a
  K-split plan holds the gate tile in every warp, and Triton 3.6 computes the masks there: 4 per
  thread on zoneout-gru; 3.8 computes them once per element of the stores' layout), against the
  dependent Philox chain of one element. Independent of p's value; absent when p = 0. Where the
  step is walked in SASS (below) the walk is of the zoneout kernel itself and this term is not
  added;
- ``LN_*`` (a case with ``layernorm`` only; ``layernorm_phases`` below): LayerNorm fused into the
  step, priced for two designs, the shipped one (batch_tile) and persistent (see "LayerNorm" below);
- streamed plans replace operand/stage/MMA by the K loop: a pipeline fill (one L2 trip) plus, per
  BLOCK_K chunk, the larger of the chunk's L2 transfer (operand + W), its shared-memory reads and
  its MMA chain, the asynchronous copies keeping the next chunks in flight.

Where Triton and cuobjdump are present, the step's compute phase (all but the barrier) is instead
taken from the compiled sm_90 SASS of the kernel the bench launches (``sass_compute``,
bench/triton_sass.py: one step of the time-step loop walked for one warp with bench/sass.py's
walker; bench/README.md, "The Triton kernels' compute phase, from their SASS"); the analytic
figure stays beside it in the phase's words. The LayerNorm case stays analytic.

Every program runs the same step, so a step's time is one program's. Assumptions beyond
bench/perf_model.py's machine table are the module constants below (to be measured on a GPU).

LayerNorm (fusedrnn/layernorm.py: LN over a row's whole gate vector, and for LSTM over its cell
state). LN_ih(x W_ihᵀ) needs no step: it is one element-wise pass over the projection outside the
recurrence (``layernorm_ih_us``, in the call's extras). LN_hh and LN_c need every unit of a row
inside the step, so a unit-split step must meet once more per LayerNorm. Two designs, priced on the
plans kernels/plan.py gives (MODEL, the same machine constants):

- ``batch_tile``, what the Triton kernels run (SHIPPED_LN_DESIGN; make_plan(layernorm=True): one
  program per 16-row batch tile walks every unit block, no grid barrier, blocks of at most
  LN_MAX_BLOCK_H units): the step runs in passes over the blocks separated by CTA barriers.
  Forward: pass 1 per block: the product, its raw gate tile stored to a scratch buffer (BB x 4*BH
  fp32, L2), per-row sum and sum of squares; CTA barrier; pass 2 per block: reload, normalise
  (x-hat stored when training), gates, c~ stored, per-row sums of c~; CTA barrier; pass 3 (LSTM):
  reload c~ and o, LN_c, h, the usual stores. Backward: pass A per block: product, dh stored, the
  LN_c backward's row sums (u = dh o (1 - tanh²) gamma_c and u c-hat); CTA barrier; pass B: reload,
  dc, the gate backward, d(a) stored, the LN_hh backward's row sums (g = d(a) gamma, g x-hat); CTA
  barrier; pass C: reload d(a) and x-hat, dp = rstd (g - mean g - x-hat mean(g x-hat)) to the exchange
  and to a dp buffer. GRU has no LN_c: 2 passes, 1 CTA barrier each way.
- ``persistent`` (the usual persistent plan: programs split H; a resident slice keeps its raw
  products in registers): per LayerNorm each program reduces its own columns per row, stores the 2
  partial sums per row, and the programs of a batch tile meet at one extra grid barrier; each then
  loads the nprog_h partials of its rows (one L2 trip), finishes the statistics and normalises.
  Extra grid barriers per step: GRU 1, LSTM 2 (LN_hh then LN_c), forward and backward alike. A
  program that walks several blocks (a streamed plan) parks its raw tiles in L2 and reloads them.

Per LayerNorm the phases are ``LN_<hh|c> sums`` (the element ops and the per-row reduction, plus
what is stored before the meeting), ``LN_<hh|c> sync`` (a CTA barrier, or a grid barrier),
``LN_<hh|c> reload`` (batch_tile: the tiles back from L2; persistent: the partials) and
``LN_<hh|c> apply`` (statistics, normalisation or its backward, and the extra stores). The gate
math and the usual stores are the plan's own step (unchanged). A LayerNorm case's estimate is the
shipped design's; the notes and ``layernorm_table`` also give the design the model prefers (the
smaller modelled forward+backward time, ``choose_layernorm_design``): persistent at the bench
case's H=512, where one program per batch tile streams all of W_hh every step; not implemented.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import subprocess
from dataclasses import dataclass

from .cases import Case
from .perf_model import H100, Estimate, Machine, Phase, Step, elem_bytes, projection_gemms_us, register, \
    smem_us, whole_call_ms

# L2 -> SM bandwidth: per SM (bytes/clk) and for the whole chip (TB/s), H100 microbenchmark range
# 5.5-7 TB/s aggregate: central values, to be measured.
L2_BYTES_PER_CLK_SM = 64
L2_TBPS = 5.5
BAR_CLK = 20  # bar.sync with every warp arriving together
SMEM_TRIP_CLK = 30  # STS -> bar.sync -> LDS visibility round trip
SHFL_CLK = 25  # dependent warp shuffle
MUFU_CHAIN_CLK = 120  # the gate math's dependent ex2 / rcp / FMA chain
FMA_PER_CLK_SM = {"fp32": 128, "fp64": 64}  # FFMA / DFMA issue rate per SM (H100 non-tensor)
# Layout conversions before the stores, per unit block and step (SASS, flashrnn shapes): forward
# h/c state, exchange, y (+ 4 saved activations when training); backward dgates/exchange/carries.
CONVERSIONS = {("fwd", False): 4, ("fwd", True): 8, ("bwd", True): 6}
# Zoneout (kernels/cells.py zone / zone_grad; fusedrnn/zoneout.py). The Philox round as the sm_90
# SASS runs it (zoneout-gru's step loops against the same kernels without zoneout, Triton 3.8:
# +15 IMAD.HI.U32, +2 IMAD.WIDE.U32, +13 IMAD, +19 LOP3.LUT per zoned element, bf16 and fp32,
# forward and backward; 3.6 the same per element): the two 32x32 products' high and low halves, and
# each word's hi ^ counter ^ key in one three-input LOP3; the key schedule depends on the seed only:
# the uniform datapath (UIADD3) or hoisted out of the loop. The CUDA ZO kernels (csrc/ptx.cuh,
# gru bf16 against the plain instantiation) run the same rounds as +15 IMAD.WIDE.U32, +3 IMAD.HI.U32,
# +19 LOP3.LUT and +15 VIADD (nvcc keeps the key adds per thread): 49 and 52 ops per element in all,
# counted here as 6 per round (60).
PHILOX_ROUNDS = 10  # tl.rand's default
PHILOX_OPS_PER_ROUND = {"umulhi": 2, "mul": 2, "xor (3-input LOP3)": 2}  # per element
# per element around the Philox rounds: the 64-bit counter (t*B + b)*H + j (2 adds, 1 shift), the
# uint32 -> [0, 1) map (compare + select, I2F, FMUL), the compare with p; then the select of the
# forward, or the two selects and the add into dh_{t-1} (dc_{t-1}) of the backward
MASK_OPS = {"fwd": 3 + 4 + 1 + 1, "bwd": 3 + 4 + 1 + 2 + 1}
EVAL_OPS = 2  # p * old + (1 - p) * new: FMUL + FFMA
LSTM_C_RECOMPUTE_OPS = 2  # the backward recomputes the un-zoned c~_t = f * c_{t-1} + i * g
ALU_OPS_PER_CLK_SM = 64  # 32-bit integer multiply / logic / add issue rate per SM (H100: 16 lanes per sub-partition)
PHILOX_ROUND_CLK = 10  # one round's dependent path (IMAD.HI, then LOP3), assumed


# LayerNorm in the step (see "LayerNorm" in the module docstring). Assumed, to be measured:
ROW_REDUCE_CLK = 2 * BAR_CLK + SMEM_TRIP_CLK + 2 * SHFL_CLK  # per-row (sum, sum of squares) over a tile:
# two shuffles within the lanes holding a row, one cross-warp round through shared memory
LN_STATS_CLK = 40  # mean, variance and rsqrt (MUFU) from the row sums: one dependent chain per row
PARTIAL_ADD_CLK = 4  # one level of the tree that sums the nprog_h partials (persistent design)
# fp32 ops per element of the normalised tile, at FMA_PER_CLK_SM["fp32"]
LN_OPS = {
    ("fwd", "sums"): 2,  # add, FMA (sum, sum of squares)
    ("fwd", "apply"): 3,  # (v - mean) * rstd, * gamma + beta
    ("bwd", "sums"): 3,  # g = upstream * gamma, then add and FMA (sum g, sum g * x-hat)
    ("bwd", "apply"): 3,  # rstd * (g - mean g - x-hat * mean(g x-hat))
}
LN_DESIGNS = ("persistent", "batch_tile")
SHIPPED_LN_DESIGN = "batch_tile"  # what the Triton kernels run (kernels/plan.py make_plan(layernorm=True))
_LN_PASS = {("fwd", "hh"): "2", ("fwd", "c"): "3", ("bwd", "c"): "B", ("bwd", "hh"): "C"}  # batch_tile: the pass a reload starts
LN_IH_PASSES = {"fwd": 3, "bwd": 4}  # LN_ih outside the step: (T*B, G) tiles read/written (stats, normalise;
# backward: the row sums, then d(gx) from d(a), x-hat)


def _plan(cell: str, direction: str, case: Case, dtype_name: str, m: Machine, strategy: str | None = None,
          layernorm: bool = False):
    from fusedrnn.kernels import plan as kplan

    device = kplan.Device(m.name, m.n_sm, m.smem_optin_bytes, 90)
    # fp32 is exact fp32 (torch's default matmul precision): FMA plans
    return kplan.make_plan(cell, direction, case.B, case.H, elem_bytes(dtype_name), device, strategy=strategy,
                           fma=dtype_name == "fp32", layernorm=layernorm)


def _clk(n: float, m: Machine) -> float:
    return n * m.clk_us


def _l2_transfer_us(bytes_per_program: float, programs: int, m: Machine) -> float:
    per_sm = _clk(bytes_per_program / L2_BYTES_PER_CLK_SM, m)
    aggregate = bytes_per_program * programs / (L2_TBPS * 1e12) * 1e6
    return max(per_sm, aggregate)


def _operand_readers(p) -> int:
    """Warps that each read the whole staged operand: one per column slice when the warps split
    the columns (KS == 1), none shared when they split the reduction (each reads its own part)."""
    return 1 if p.KS > 1 else min(p.num_warps, max(1, p.N // 8))


def _mma_us(p, dtype_name: str, k: int, m: Machine) -> tuple[float, str]:
    """The product over ``k`` reduction columns for one program: tensor-core chain or FMA rate."""
    if dtype_name in ("fp32", "fp64"):  # exact fp32 (torch's default) and fp64: FMA, not MMA
        fmas = p.BB * p.N * k
        return _clk(fmas / FMA_PER_CLK_SM[dtype_name], m), f"{fmas} FMA at {FMA_PER_CLK_SM[dtype_name]}/clk"
    steps = k // (16 * p.KS) if p.KS > 1 else k // 16
    return _clk(steps * m.hmma_clk, m), f"{steps} dependent HMMA steps"


def step(cell: str, direction: str, case: Case, dtype_name: str, save: bool, m: Machine = H100, plan=None):
    """(plan, Step) of one step of ``direction``; ``plan`` overrides the launcher's (to compare)."""
    p = plan if plan is not None else _plan(cell, direction, case, dtype_name, m)
    e = p.elem_bytes
    blocks = math.ceil(p.n_blk / p.nprog_h)  # unit blocks each program walks per step
    rows = min(case.B, p.BB)  # rows of the operand actually fetched (masked rows are not)
    k_valid = (-(-case.H // 16) * 16) * (1 if direction == "fwd" else case.gates)
    operand_bytes = rows * k_valid * e
    programs = p.nprog_h * p.n_btiles
    phases = []
    if p.grid_barrier:
        phases.append(Phase("barrier", m.barrier_us, "bar.sync + red.release, acquire poll"))
        prefetch = max(0.0, m.hbm_us - m.barrier_us) if p.resident else m.hbm_us
        phases.append(Phase("prefetch", prefetch, "gx/act/state tiles issued before the wait"
                            if p.resident else "gx/act/state tiles after the wait"))
    else:
        phases.append(Phase("CTA barrier", _clk(BAR_CLK, m), "one program per batch tile"))
        phases.append(Phase("prefetch", m.hbm_us, "gx/act/state tiles (nothing to hide them behind)"))
    mma_us, mma_why = _mma_us(p, dtype_name, p.K, m)
    if p.resident:
        phases.append(Phase("operand", blocks * (m.l2_us + _l2_transfer_us(operand_bytes, programs, m)),
                            f"{operand_bytes // 1024} KB per program, one group of .cg loads"))
        staged = p.BB * p.K * e
        phases.append(Phase("stage", blocks * (smem_us(staged, m) + _clk(2 * BAR_CLK, m)), "STS + bar.sync"))
        reads = p.w_slice_bytes + staged * _operand_readers(p)
        phases.append(Phase("MMA", blocks * max(smem_us(reads, m), mma_us),
                            f"ldmatrix {reads // 1024} KB vs {mma_why}"))
    else:
        chunks = p.K // p.BLOCK_K
        chunk_bytes = (rows * p.BLOCK_K + p.BLOCK_K * p.N) * e
        chunk_reads = (p.BB * p.BLOCK_K * _operand_readers(p) + p.BLOCK_K * p.N) * e
        per_chunk = max(_l2_transfer_us(chunk_bytes, programs, m), smem_us(chunk_bytes + chunk_reads, m),
                        mma_us / chunks)
        phases.append(Phase("K loop", blocks * (m.l2_us + chunks * per_chunk),
                            f"{chunks} chunks of {p.BLOCK_K} ({chunk_bytes // 1024} KB each from L2), "
                            f"{p.num_stages}-stage cp.async pipeline"))
    if p.KS > 1:
        rounds = (p.BB // 16) * max(1, p.N // 8)
        per_round = 2 * BAR_CLK + SMEM_TRIP_CLK + int(math.log2(p.KS)) * SHFL_CLK
        phases.append(Phase("partial sums", blocks * _clk(rounds * per_round, m),
                            f"{rounds} rounds over {p.KS} warps"))
    conversions = CONVERSIONS[(direction, save)] if (direction, save) in CONVERSIONS else 6
    phases.append(Phase("epilogue", blocks * _clk(MUFU_CHAIN_CLK + conversions * (2 * BAR_CLK + SMEM_TRIP_CLK), m),
                        f"gate math, {conversions} layout conversions, stores"))
    zo = zoneout_phase(p, case, direction, save, blocks, m)
    if zo is not None:
        phases.append(zo)
    return p, Step(tuple(phases))


def zoneout_ops(cell: str, direction: str, training: bool) -> int:
    """Integer/float ops per element of the program's tile that zoneout adds to one step (every
    zoned state: GRU and RNN h, LSTM h and c, as a case's one ``zoneout`` float zones both)."""
    states = 2 if cell == "lstm" else 1
    if not training:  # evaluation: the blend (only a forward runs in evaluation here)
        return states * EVAL_OPS
    ops = states * (PHILOX_ROUNDS * sum(PHILOX_OPS_PER_ROUND.values()) + MASK_OPS[direction])
    if direction == "bwd" and cell == "lstm":
        ops += LSTM_C_RECOMPUTE_OPS
    return ops


def zoneout_phase(p, case: Case, direction: str, save: bool, blocks: int, m: Machine = H100) -> Phase | None:
    """The zoneout term of one step of plan ``p`` (None without zoneout): a training step (the
    forward that saves activations, and every backward) generates the masks; the inference forward
    blends with p. max(issue of every replica's ops at ALU_OPS_PER_CLK_SM, one element's dependent
    chain), per unit block the program walks. The replicas are what Triton 3.6 computes (zoneout-gru
    bf16: +68 IMAD.HI.U32 in the training forward's loop, 4 elements per thread, the walk +0.59 us
    against this term's +0.63); Triton 3.8 computes the masks once per element of the stores'
    layout (+15, the walk +0.0 us): an upper bound there. The SASS walk, where there is one, replaces
    this term."""
    if not getattr(case, "zoneout", 0.0):
        return None
    training = save or direction == "bwd"
    ops = zoneout_ops(case.cell, direction, training)
    replicas = p.KS if p.KS > 1 else 1  # a K-split plan holds the (BB, BH) gate tile in every warp
    lanes = max(p.BB * p.BH * replicas, 32 * p.num_warps)  # elements computed per block, replicas included
    rate = ALU_OPS_PER_CLK_SM if training else FMA_PER_CLK_SM["fp32"]  # the blend is float FMUL/FFMA
    issue_clk = lanes * ops / rate
    chain_clk = PHILOX_ROUNDS * PHILOX_ROUND_CLK if training else 2 * 4
    what = (f"Philox 4x32-{PHILOX_ROUNDS} masks{' regenerated' if direction == 'bwd' else ''}" if training
            else "evaluation blend p*old + (1-p)*new")
    return Phase("zoneout", blocks * _clk(max(issue_clk, chain_clk), m),
                 f"{what}: {ops} ops x {lanes} elements ({p.BB}x{p.BH} tile x {replicas} warp replicas) at "
                 f"{rate}/clk/SM vs a {chain_clk}-clk dependent chain")


def zoneout_cost_us(case: Case, dtype_name: str, m: Machine = H100) -> dict[str, float]:
    """What zoneout adds to a step (inference forward, training forward, backward), MODEL: the
    SASS-derived compute phase of the zoneout kernel less that of the same kernel without zoneout
    where both are walked, else the analytic ``zoneout`` term."""
    plain = dataclasses.replace(case, zoneout=0.0)
    out = {}
    for label, d, save in (("inference", "fwd", False), ("training fwd", "fwd", True), ("bwd", "bwd", True)):
        zo, base = sass_compute(case, d, dtype_name, save, m), sass_compute(plain, d, dtype_name, save, m)
        if zo is not None and base is not None:
            out[label] = zo.us - base.us
        else:
            p = _plan(case.cell, d, case, dtype_name, m)
            term = zoneout_phase(p, case, d, save, math.ceil(p.n_blk / p.nprog_h), m)
            out[label] = term.us if term is not None else 0.0
    return out


def layernorm_norms(cell: str, direction: str) -> tuple[str, ...]:
    """The in-step LayerNorms in the order a step meets them: forward LN_hh then LN_c (LSTM);
    the backward undoes them in reverse."""
    norms = ("hh", "c") if cell == "lstm" else ("hh",)
    return norms if direction == "fwd" else norms[::-1]


def layernorm_phases(p, case: Case, direction: str, save: bool, m: Machine = H100) -> list[Phase]:
    """The phases LayerNorm adds to one step of plan ``p`` (see the module docstring): per in-step
    LayerNorm, sums, sync, reload and apply. The design is the plan's strategy: ``batch_tile``
    (passes over the unit blocks, CTA barriers, tiles parked in L2) or ``persistent`` (per-program
    partial sums met at one extra grid barrier). A persistent plan with one program per batch tile
    (nprog_h == 1: huge B) has no grid barrier to add: it runs the batch_tile passes."""
    e = p.elem_bytes
    blocks = math.ceil(p.n_blk / p.nprog_h)
    programs = p.nprog_h * p.n_btiles
    rows = min(case.B, p.BB)
    replicas = p.KS if p.KS > 1 else 1  # a K-split plan holds its gate tiles in every warp
    gate_w, unit_w = p.slots * p.BH, p.BH  # columns of a block's gate tile and of its unit tile

    def ops_us(width: int, ops: int) -> float:
        lanes = max(p.BB * width * replicas, 32 * p.num_warps)
        return _clk(lanes * ops / FMA_PER_CLK_SM["fp32"], m)

    def xfer(n_bytes: float) -> float:
        return _l2_transfer_us(n_bytes, programs, m)

    grid = p.grid_barrier  # programs of a batch tile split its units: they meet at a grid barrier
    out = []
    for which in layernorm_norms(case.cell, direction):
        width = gate_w if which == "hh" else unit_w
        tile = p.BB * width * 4  # an fp32 tile of this LayerNorm's input (raw product, c~, dh, d(a))
        name = f"LN_{which}"
        sums = ops_us(width, LN_OPS[(direction, "sums")]) + _clk(ROW_REDUCE_CLK, m)
        if grid:
            parked = blocks > 1  # several blocks per program: the tiles wait in L2 for the statistics
            out.append(Phase(f"{name} sums", blocks * (sums + (xfer(tile) if parked else 0.0)),
                             f"{width} columns x {p.BB} rows per block, row reduction, 2 partials per row stored"
                             + ("; raw tiles parked in L2" if parked else "")))
            out.append(Phase(f"{name} sync", m.barrier_us, "one extra grid barrier"))
            tree = math.ceil(math.log2(max(2, p.nprog_h)))
            out.append(Phase(f"{name} reload", m.l2_us + xfer(p.nprog_h * rows * 2 * 4)
                             + (blocks * (m.l2_us + xfer(tile)) if parked else 0.0),
                             f"the {p.nprog_h} programs' partials of its rows (one L2 trip)"
                             + ("; the parked tiles" if parked else "")))
            stats = _clk(LN_STATS_CLK + tree * PARTIAL_ADD_CLK, m)
        else:
            out.append(Phase(f"{name} sums", blocks * (sums + xfer(tile)),
                             f"{width} columns x {p.BB} rows per block: stored to scratch (L2), row reduction"))
            out.append(Phase(f"{name} sync", _clk(BAR_CLK, m), "CTA barrier between passes"))
            # the next pass reloads the tile: forward LN_c also reloads o; backward also the saved x-hat / c-hat
            if direction == "fwd":
                back = tile * (2 if which == "c" else 1)
            else:
                back = tile + p.BB * width * e
            out.append(Phase(f"{name} reload", blocks * (m.l2_us + xfer(back)),
                             f"pass {_LN_PASS[(direction, which)]} per block: one L2 trip, {back / 1024:g} KB"))
            stats = _clk(LN_STATS_CLK, m)
        # what the normalisation stores besides the plan's own stores: x-hat / c-hat for the
        # backward (training forward), the dp buffer for dW_hh (backward, LN_hh)
        extra = p.BB * width * e if (direction == "fwd" and save) or (direction == "bwd" and which == "hh") else 0
        out.append(Phase(f"{name} apply", stats + blocks * (ops_us(width, LN_OPS[(direction, "apply")])
                                                             + (xfer(extra) if extra else 0.0)),
                         "statistics, " + ("normalise" if direction == "fwd" else "LayerNorm backward")
                         + (", x-hat stored" if direction == "fwd" and save else "")
                         + (", dp buffer stored" if extra and direction == "bwd" else "")))
    return out


def layernorm_syncs(cell: str) -> int:
    """Extra synchronisations per step that the in-step LayerNorms add (each direction): one per
    LayerNorm (GRU LN_hh; LSTM LN_hh and LN_c); batch_tile adds as many passes."""
    return len(layernorm_norms(cell, "fwd"))


def layernorm_ih_us(case: Case, dtype_name: str, m: Machine = H100) -> tuple[float, float]:
    """(forward, backward) us per layer-direction of LN_ih outside the step: element-wise passes
    over the (T*B, G) projection at HBM bandwidth (LN_IH_PASSES), one launch each."""
    n_bytes = case.B * case.T * case.gates * case.H * elem_bytes(dtype_name)
    return tuple(LN_IH_PASSES[d] * n_bytes / (m.hbm_tbps * 1e12) * 1e6 + m.launch_us for d in ("fwd", "bwd"))


@dataclass(frozen=True)
class LayerNormDesign:
    """One design of a LayerNorm case: its plans and steps with and without the LayerNorm phases, and
    the whole call's ms (every layer; the ``base_*`` figures: the same plans without LayerNorm)."""

    design: str
    plan_fwd: object
    plan_bwd: object
    base_inf: Step
    base_train: Step
    base_bwd: Step
    inf: Step
    train: Step
    bwd: Step
    base_fwd_ms: float
    base_fb_ms: float
    fwd_ms: float
    fb_ms: float


def _extras(case: Case, dtype_name: str, m: Machine, layernorm: bool) -> tuple[float, float]:
    """Per layer-direction us outside the step loop: the projection GEMMs and launches (model()'s),
    plus LN_ih with ``layernorm``."""
    fwd_extra = bwd_extra = 0.0
    for layer_input in case.layer_inputs():
        f, b = projection_gemms_us(case, dtype_name, layer_input, m)
        fwd_extra += (f + m.launch_us) / case.layers
        bwd_extra += (b + m.launch_us) / case.layers
    if layernorm:
        f, b = layernorm_ih_us(case, dtype_name, m)
        fwd_extra, bwd_extra = fwd_extra + f, bwd_extra + b
    return fwd_extra, bwd_extra


def layernorm_design(case: Case, dtype_name: str, design: str, m: Machine = H100) -> LayerNormDesign:
    """One design (``LN_DESIGNS``) on ``case``'s shape: kernels/plan.py's plan of that strategy."""
    if design not in LN_DESIGNS:
        raise ValueError(f"design must be one of {LN_DESIGNS}, got {design!r}")
    shipped = design == SHIPPED_LN_DESIGN  # the kernels' own LayerNorm plans
    pf = _plan(case.cell, "fwd", case, dtype_name, m, strategy=design, layernorm=shipped)
    pb = _plan(case.cell, "bwd", case, dtype_name, m, strategy=design, layernorm=shipped)
    base = {k: step(case.cell, d, case, dtype_name, save, m, plan=p)[1]
            for k, d, save, p in (("inf", "fwd", False, pf), ("train", "fwd", True, pf), ("bwd", "bwd", True, pb))}
    full = {k: Step(st.phases + tuple(layernorm_phases(pf if k != "bwd" else pb, case, "bwd" if k == "bwd" else "fwd",
                                                       k != "inf", m)))
            for k, st in base.items()}
    ms = {}
    for key, steps, layernorm in (("base", base, False), ("ln", full, True)):
        fx, bx = _extras(case, dtype_name, m, layernorm)
        fwd_ms, _ = whole_call_ms(case, dtype_name, steps["inf"], None, fx, 0.0, m)
        _, fb_ms = whole_call_ms(case, dtype_name, steps["train"], steps["bwd"], fx, bx, m)
        ms[key] = (fwd_ms, fb_ms)
    return LayerNormDesign(design, pf, pb, base["inf"], base["train"], base["bwd"], full["inf"], full["train"],
                           full["bwd"], *ms["base"], *ms["ln"])


def layernorm_designs(case: Case, dtype_name: str, m: Machine = H100) -> dict[str, LayerNormDesign]:
    return {d: layernorm_design(case, dtype_name, d, m) for d in LN_DESIGNS}


def choose_layernorm_design(designs: dict[str, LayerNormDesign]) -> str:
    """The design with the smaller modelled forward+backward ms (training is what LayerNorm cells
    are for); ties go to the first of LN_DESIGNS."""
    return min(designs, key=lambda d: (designs[d].fb_ms, LN_DESIGNS.index(d)))


def _design_words(name: str, d: LayerNormDesign) -> str:
    return (f"{name}: {d.inf.us:.2f} / {d.train.us:.2f} / {d.bwd.us:.2f} us/step (inference / training fwd / bwd; "
            f"without LN {d.base_inf.us:.2f} / {d.base_train.us:.2f} / {d.base_bwd.us:.2f}), {d.fwd_ms:.3f} / "
            f"{d.fb_ms:.3f} ms fwd / fwd+bwd (without LN {d.base_fwd_ms:.3f} / {d.base_fb_ms:.3f})")


# The shapes the LayerNorm designs are compared on (bench/README.md shows the table): the case, a
# LayerNormGRU of its size, both at B=256, and a small H where all of W_hh fits one program.
LAYERNORM_SHAPES = (
    ("layernorm-lstm", {}),
    ("GRU, same size", {"cell": "gru"}),
    ("LSTM B=256", {"B": 256}),
    ("GRU B=256", {"cell": "gru", "B": 256}),
    ("LSTM H=128", {"H": 128}),
    ("LSTM H=64", {"H": 64}),
)


def layernorm_table(dtype_name: str = "bf16", m: Machine = H100) -> str:
    """The two designs on LAYERNORM_SHAPES (MODEL), as a markdown table."""
    import dataclasses

    from .cases import get

    base = get("layernorm-lstm")
    lines = [f"MODEL, not measured ({dtype_name}, T={base.T}, {base.layers} layers; {m.name}); us per step "
             "(one layer), ms per call (every layer): without LN -> with LN",
             "| shape | design | plan (fwd / bwd) | inference fwd us | training fwd us | bwd us | fwd ms | "
             "fwd+bwd ms | model's pick |",
             "|---|---|---|---|---|---|---|---|---|"]
    for label, changes in LAYERNORM_SHAPES:
        case = dataclasses.replace(base, **changes)
        designs = layernorm_designs(case, dtype_name, m)
        pick = choose_layernorm_design(designs)
        for name, d in designs.items():
            plans = " / ".join(f"{p.nprog_h}x{p.n_btiles} {p.BB}x{p.BH}{' W resident' if p.resident else ''}"
                               for p in (d.plan_fwd, d.plan_bwd))
            lines.append(
                f"| {label} | {name}{' (shipped)' if name == SHIPPED_LN_DESIGN else ''} | {plans} | {d.base_inf.us:.2f} -> {d.inf.us:.2f} | "
                f"{d.base_train.us:.2f} -> {d.train.us:.2f} | {d.base_bwd.us:.2f} -> {d.bwd.us:.2f} | "
                f"{d.base_fwd_ms:.3f} -> {d.fwd_ms:.3f} | {d.base_fb_ms:.3f} -> {d.fb_ms:.3f} | "
                f"{'yes' if name == pick else ''} |")
    return "\n".join(lines)


@register("fusedrnn-triton")
def model(case: Case, dtype_name: str, m: Machine = H100) -> Estimate | str:
    if getattr(case, "layernorm", False):
        return _layernorm_model(case, dtype_name, m)
    try:
        pf, fwd_inf = sass_step(case, "fwd", dtype_name, False, m)
        _, fwd_train = sass_step(case, "fwd", dtype_name, True, m)
        pb, bwd = sass_step(case, "bwd", dtype_name, True, m)
    except ImportError as e:  # fusedrnn.kernels not importable here
        return f"kernels/plan.py not importable: {e}"
    fwd_extra = bwd_extra = 0.0
    for layer_input in case.layer_inputs():
        f, b = projection_gemms_us(case, dtype_name, layer_input, m)
        fwd_extra += (f + m.launch_us) / case.layers
        bwd_extra += (b + m.launch_us) / case.layers
    fwd_ms, _ = whole_call_ms(case, dtype_name, fwd_inf, None, fwd_extra, 0.0, m)
    train_ms, fb_ms = whole_call_ms(case, dtype_name, fwd_train, bwd, fwd_extra, bwd_extra, m)
    plan = f"fwd: {pf.describe()}; bwd: {pb.describe()}"
    notes = f"training forward {fwd_train.us:.2f} us/step (saves activations)"
    sassed = [sass_compute(case, d, dtype_name, save, m) for d, save in (("fwd", False), ("fwd", True), ("bwd", True))]
    if all(x is not None for x in sassed):
        notes += ("; compute phase from the sm_90 SASS (MODEL): inference / training fwd / bwd "
                  + " / ".join(f"{x.us:.2f}" for x in sassed) + " us (analytic "
                  + " / ".join(f"{x.analytic_us:.2f}" for x in sassed) + ")")
    else:
        notes += "; analytic compute phase (no SASS: Triton, cuobjdump or the cached dump missing)"
    if case.zoneout:
        zo = zoneout_cost_us(case, dtype_name, m)
        notes += (f"; zoneout p={case.zoneout:g} (MODEL, independent of p, "
                  + ("the SASS walks with and without it" if all(x is not None for x in sassed) else "analytic")
                  + "): " + ", ".join(f"{k} {v:+.2f}" for k, v in zo.items()) + " us/step")
    return Estimate("fusedrnn-triton", case.id, dtype_name, plan, fwd_inf, bwd, fwd_ms, fb_ms, notes=notes)


def _layernorm_model(case: Case, dtype_name: str, m: Machine = H100) -> Estimate | str:
    """A LayerNorm case: the shipped design's figures; both designs, the model's preference and the
    plans without LN in the notes."""
    try:
        designs = layernorm_designs(case, dtype_name, m)
    except ImportError as e:  # fusedrnn.kernels not importable here
        return f"kernels/plan.py not importable: {e}"
    pick = choose_layernorm_design(designs)
    d = designs[SHIPPED_LN_DESIGN]
    notes = (f"LayerNorm (MODEL): the kernels run {SHIPPED_LN_DESIGN}; the model prefers {pick} (the smaller "
             f"fwd+bwd ms{'' if pick == SHIPPED_LN_DESIGN else '; not implemented'}); "
             + "; ".join(_design_words(n, x) for n, x in designs.items())
             + f"; LN_ih outside the step: +{layernorm_ih_us(case, dtype_name, m)[0]:.1f} / "
             f"+{layernorm_ih_us(case, dtype_name, m)[1]:.1f} us per layer fwd / bwd")
    plan = f"LayerNorm design {SHIPPED_LN_DESIGN}: fwd: {d.plan_fwd.describe()}; bwd: {d.plan_bwd.describe()}"
    return Estimate("fusedrnn-triton", case.id, dtype_name, plan, d.inf, d.bwd, d.fwd_ms, d.fb_ms, notes=notes)


# --- the compute phase from the compiled SASS (bench/triton_sass.py) ----------------------------

SASS_PHASE = "compute (SASS)"
BOUNDARY_PHASES = ("barrier", "CTA barrier")  # a step's synchronisation: not part of its compute phase


@dataclass(frozen=True)
class SassCompute:
    """One step's compute phase of the Triton kernel from its sm_90 SASS, all MODEL: the executed
    path of the first step issued for one warp (``walk_us``), Σ stall counts on it (``stall_us``, a
    hard lower bound for that warp) and the analytic figure beside them (the step's phases but the
    barrier)."""

    walk_us: float
    stall_us: float
    floor_us: float  # the operand's L2 transfer and the shared-memory traffic at bandwidth (``bandwidth_floor_us``)
    analytic_us: float
    executed: int
    hmma: int
    hmma_live: int
    copies: int  # cp.async copies lane 0 executes (streamed W)
    guessed: tuple[str, ...]
    kernel: str  # the specialization in words

    @property
    def us(self) -> float:
        return max(self.walk_us, self.stall_us, self.floor_us)


def bandwidth_floor_us(p, case: Case, direction: str, m: Machine = H100) -> float:
    """What one warp's walk does not see: per unit block, one L2 trip plus the larger of the
    operand's (and a streamed W's) L2 transfer, at the SM's port and its share of L2 bandwidth
    (``_l2_transfer_us``), and the shared-memory traffic at the SM's bandwidth (the analytic
    model's operand / stage / MMA or K-loop terms without their latency chains)."""
    e = p.elem_bytes
    blocks = math.ceil(p.n_blk / p.nprog_h)
    rows = min(case.B, p.BB)
    k_valid = (-(-case.H // 16) * 16) * (1 if direction == "fwd" else case.gates)
    programs = p.nprog_h * p.n_btiles
    if p.resident:
        staged = p.BB * p.K * e
        reads = p.w_slice_bytes + staged * _operand_readers(p)
        return blocks * (m.l2_us + max(_l2_transfer_us(rows * k_valid * e, programs, m), smem_us(staged + reads, m)))
    chunks = p.K // p.BLOCK_K
    chunk_bytes = (rows * p.BLOCK_K + p.BLOCK_K * p.N) * e
    chunk_reads = (p.BB * p.BLOCK_K * _operand_readers(p) + p.BLOCK_K * p.N) * e
    return blocks * (m.l2_us + chunks * max(_l2_transfer_us(chunk_bytes, programs, m),
                                            smem_us(chunk_bytes + chunk_reads, m)))


def sass_latencies(m: Machine = H100):
    """The walk's latencies from the machine: L2 and HBM round trips and the HMMA latency in clocks."""
    from . import sass

    return sass.Latencies(clk_ghz=1.0 / (m.clk_us * 1e3), l2=round(m.l2_us / m.clk_us),
                          hbm=round(m.hbm_us / m.clk_us), hmma=m.hmma_clk)


def sass_compute(case: Case, direction: str, dtype_name: str, save: bool, m: Machine = H100,
                 strategy: str | None = None) -> SassCompute | None:
    """The compute phase of one step of the launcher's plan for ``case`` (``strategy``: the plan
    of that strategy instead, to compare) from the kernel's SASS, or
    None (no Triton / cuobjdump / cached dump, FUSEDRNN_MODEL_SASS=0, a LayerNorm case, a dtype the
    bench does not run, a walk that did not finish or left a loop's trip count to a rule). A
    zoneout case walks its own kernel (the ZO specialization: the masks' Philox rounds are on the
    path), so its figure holds zoneout and no analytic ``zoneout`` term is added to it."""
    if os.environ.get(SASS_OFF, "1") == "0":
        return None
    return _sass_compute(case, direction, dtype_name, save, m, strategy)


@functools.lru_cache(maxsize=None)
def _sass_compute(case: Case, direction: str, dtype_name: str, save: bool, m: Machine,
                  strategy: str | None) -> SassCompute | None:
    from . import triton_sass

    if getattr(case, "layernorm", False) or dtype_name not in triton_sass.DTYPES:
        return None
    p = _plan(case.cell, direction, case, dtype_name, m, strategy)
    spec = triton_sass.specialization(p, case, direction, dtype_name, save)
    try:
        compiled = triton_sass.kernel_sass(spec)
    except (RuntimeError, OSError, subprocess.SubprocessError):  # the compile failed: the analytic model
        return None
    if compiled is None:
        return None
    w = triton_sass.walk_step(compiled, p, case, save, sass_latencies(m), kernel=spec.kernel,
                              barrier_clk=round(m.barrier_us / m.clk_us) if p.grid_barrier else 0)
    if w.stopped and w.stopped != "exit":
        return None
    if any("backward branch" in g for g in w.guessed):  # a loop whose trip count the walk could not
        return None  # resolve: the path is not the plan's (seen: the exact-fp32 FMA backward)
    _, analytic = step(case.cell, direction, case, dtype_name, save, m, plan=p)
    analytic_us = sum(ph.us for ph in analytic.phases if ph.name not in BOUNDARY_PHASES)
    flags = ",".join(k for k, v in spec.constexprs if k in ("HAS_BIAS", "HAS_RES", "HAS_LEN", "SAVE_ACT", "HAS_DY")
                     and v) or "-"
    return SassCompute(w.issue_clk * m.clk_us, w.stall_clk * m.clk_us, bandwidth_floor_us(p, case, direction, m),
                       analytic_us, w.executed, w.hmma,
                       w.hmma_live, w.ldgsts_live, tuple(w.guessed), f"{spec.kernel} {dtype_name} flags={flags}")


def sass_step(case: Case, direction: str, dtype_name: str, save: bool, m: Machine = H100,
              strategy: str | None = None):
    """(plan, Step) as ``step``, with the compute phase from the SASS where it is available: the
    step's synchronisation phase kept, every other analytic phase (zoneout's term included: the
    walk is of the zoneout kernel) replaced by ``compute (SASS)``. ``strategy``: that strategy's
    plan instead of the launcher's."""
    plan = None if strategy is None else _plan(case.cell, direction, case, dtype_name, m, strategy)
    p, st = step(case.cell, direction, case, dtype_name, save, m, plan=plan)
    s = sass_compute(case, direction, dtype_name, save, m, strategy)
    if s is None:
        return p, st
    keep = tuple(ph for ph in st.phases if ph.name in BOUNDARY_PHASES)
    compute = Phase(SASS_PHASE, s.us,
                    f"sm_90 SASS ({s.kernel}), one warp, first step: executed path {s.walk_us:.2f} us "
                    f"({s.executed} instructions, {s.hmma} HMMAs), stall-count sum {s.stall_us:.2f} us, "
                    f"bandwidth floor {s.floor_us:.2f} us; "
                    f"the analytic model said {s.analytic_us:.2f} us")
    return p, Step(keep + (compute,))


def sass_report(dtypes: tuple[str, ...] = ("bf16",), m: Machine = H100) -> str:
    """Per case: the analytic compute phase vs the SASS-derived one per step (all MODEL), and the
    call's ms both ways."""
    from .cases import CASES

    rows = ["MODEL, not measured (sm_90 SASS of the Triton kernels, Triton "
            f"{__import__('fusedrnn.bench.triton_sass', fromlist=['x']).triton_version()}; "
            "H100 assumptions of bench/perf_model.py; compute = the step but its barrier)",
            "| case | dtype | inference fwd compute us: analytic / SASS (walk, stall sum, floor) | "
            "training fwd: analytic / SASS (walk, stall sum, floor) | bwd: analytic / SASS (walk, stall sum, floor) | "
            "fwd / f+b ms: analytic -> SASS |",
            "|---|---|---|---|---|---|"]
    for case in CASES:
        for dtype in dtypes:
            cells = []
            for d, save in (("fwd", False), ("fwd", True), ("bwd", True)):
                s = sass_compute(case, d, dtype, save, m)
                cells.append("-" if s is None else f"{s.analytic_us:.2f} / {s.us:.2f} ({s.walk_us:.2f}, "
                                                   f"{s.stall_us:.2f}, {s.floor_us:.2f})")
            est = model(case, dtype, m)
            if isinstance(est, str) or all(c == "-" for c in cells):
                why = "LayerNorm: analytic only" if getattr(case, "layernorm", False) else "no SASS"
                rows.append(f"| {case.id} | {dtype} | {why} | | | |")
                continue
            old = _analytic_model(case, dtype, m)
            cells.append(f"{old.fwd_ms:.3f} / {old.fb_ms:.3f} -> {est.fwd_ms:.3f} / {est.fb_ms:.3f}")
            rows.append(f"| {case.id} | {dtype} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def _analytic_model(case: Case, dtype_name: str, m: Machine = H100) -> Estimate:
    os.environ[SASS_OFF], before = "0", os.environ.get(SASS_OFF)
    try:
        return model(case, dtype_name, m)
    finally:
        if before is None:
            del os.environ[SASS_OFF]
        else:
            os.environ[SASS_OFF] = before


SASS_OFF = "FUSEDRNN_MODEL_SASS"


if __name__ == "__main__":
    import sys

    print(sass_report(tuple(sys.argv[1:]) or ("bf16",)))
