"""Latency model of the cuda backend's persistent kernels (csrc/): MODEL, not measured.

The launch plan (units and batch rows per CTA, grid, K blocks per warp, which W_hh fragments stay
in registers, shared memory) is csrc/rnn_launch.h's ``make_plan``, repeated here so the model runs
without a GPU or the extension; tests/test_cuda_glue.py checks the two agree. The step structure is
read off the kernels' sm_90 SASS (tests/test_cuda_codegen.py checks its static properties):

forward step, per 16-row pass:
  stage     each lane cp.asyncs its own operand pieces (hist[t]): one L2 round trip, then the pull at
            the slower of the SM's L2 port and its share of L2 bandwidth (every CTA reads all of h)
  MMA       mma.sync over the warp's K blocks, W_hh fragments from registers (the rest from shared
            memory); block i starts when its copy lands, so only the last block's MMAs trail the pull
  partials  8 warps' fp32 partial sums through shared memory, one __syncthreads
  cell      gates, fp32 state in shared memory, y/hist/saved stores; the inputs (gx, residual) were
            loaded one pass ahead and the sigmoid/tanh are ex2/rcp.approx (no CALL): math only
then one grid barrier, split: the next step's first inputs are loaded between its arrive and wait (a
load before the arrival would hold up the arrival's release fence for its HBM latency). Backward
step: grid barrier (dgates[t] complete), then per pass the same product over K = gates·H with the
W_hh column slice, dh += partials, and at once phase A of the next step for those rows (dgates from
inputs loaded before the pass's MMA).

The compute phase (the whole step but its boundary) comes from the kernel's compiled sm_90 SASS when
the extension is built and cuobjdump is found (bench/sass.py: the executed path of one step under the
plan, issued for one warp with its control words, then the bandwidth floors; bench/README.md); the
analytic phases below are the fallback and are shown beside it in the estimate's notes.

Assumptions beyond perf_model.Machine (central values; a GPU session measures them):
  L2 -> SM fill 64 B/clk per SM (range 32-64); L2 read bandwidth 5.5 TB/s for all SMs together
  (range 4.5-7); mma.sync issue 1024 fp16/bf16 FMA/clk/SM (A100's rate; H100's mma.sync is reported
  at 60-70 % of its 2048 wgmma peak), TF32 half of that; __syncthreads 0.02 us.
  Ready flags: one step boundary READY_FLAGS_US = 0.6 us (range 0.4-0.9) in place of the grid
  barrier's Machine.barrier_us (1.2). The model prices ready flags lower, so they are the kernels'
  default (DEFAULT_FLAGS; fusedrnn.backends.cuda.READY_FLAGS_DEFAULT, tested equal) until a GPU
  measures both; each estimate prices the default and gives the other kind in its notes
  (FUSEDRNN_CUDA_READY_FLAGS=0: grid barriers). The flags' cost: the release waits for the step's
  stores to reach L2 (~0.25), the consumer's polls (warp 0 only, relaxed loads that overlap) see the flag one L2 read later (~0.2)
  plus half a poll round and at most one backoff (<= 0.13), then one fence and a CTA barrier (~0.05);
  no shared arrival counter, and a batch group waits only for its own CTAs. Nothing else in the step
  changes. (Before the polls were relaxed and moved to one warp, an independent review of the SASS
  put this boundary at 0.75-0.9 us: four serialised acquire loads per lane, eight warps polling.)
  fusedrnn.backends.cuda.barrier_floor(T, ready_flags=True) against barrier_floor(T) measures it on
  a GPU.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass

from .cases import Case
from .perf_model import (
    H100, Estimate, Machine, Phase, Step, elem_bytes, mma_chain_us, projection_gemms_us, register, smem_us,
    whole_call_ms,
)

# --- the launch plan (csrc/rnn_launch.h) ---------------------------------------------------------

THREADS = 256
WARPS = THREADS // 32
PASS_ROWS = 16
MAX_ROWS = 64  # batch rows per CTA at most (kMaxRows)
STAGES = 8  # cp.async ring depth per lane at most, in K blocks (kStages)
IN_FLIGHT_BYTES = 24 * 1024  # the least a CTA keeps in flight when shared memory is short (kInFlightBytes)
FWD_UNITS = 16
W_WORDS = 8  # W_hh words per (block, m-tile, lane) (kWWords)
MODES = ("half", "tf32", "tf32x3")
# Gates per cell (n_gates in csrc/rnn_launch.h): the Elman RNN (rnn_tanh, rnn_relu) has one.
GATES = {"gru": 3, "lstm": 4, "rnn_tanh": 1, "rnn_relu": 1}


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _round_up(x: int, m: int) -> int:
    return _ceil_div(x, m) * m


def w_regs(mode: str, mtiles: int) -> int:
    """Registers per thread for W_hh fragments (w_regs in csrc/rnn_launch.h)."""
    if mode == "tf32x3":
        return 24 if mtiles >= 3 else 32 if mtiles == 2 else 48
    return 96


def reg_block_capacity(mode: str, mtiles: int) -> int:
    return w_regs(mode, mtiles) // (mtiles * W_WORDS)


@dataclass(frozen=True)
class Plan:
    """One kernel's launch plan (csrc/rnn_launch.h, struct Plan)."""

    cell: str
    backward: bool
    mode: str
    elem: int
    H: int
    B: int
    K: int
    units: int
    mtiles: int
    unit_groups: int
    batch_groups: int
    grid: int
    rows: int
    passes: int
    pass_ntiles: int
    kblock: int
    nblocks: int
    blocks_per_warp: int
    reg_blocks: int
    smem_blocks: int
    stage_slots: int
    smem: int

    def fits(self, num_sms: int, smem_optin: int) -> bool:
        return self.grid <= num_sms and self.smem <= smem_optin and self.rows <= MAX_ROWS


def plan_for_units(cell: str, backward: bool, dtype_name: str, tf32: bool, H: int, B: int, units: int,
                   num_sms: int, smem_optin: int) -> Plan:
    elem = elem_bytes(dtype_name)
    mode = "half" if elem == 2 else ("tf32" if tf32 else "tf32x3")
    ng = GATES[cell]
    K = ng * H if backward else H
    mtiles = units // 16 if backward else ng * units // 16
    n_ug = _ceil_div(H, units)
    bg_max = 1 if n_ug >= num_sms else num_sms // n_ug
    bg_want = _ceil_div(B, 8) if B > 8 else 1
    bg = min(bg_want, bg_max)
    rows = _round_up(_ceil_div(B, bg) if B > 0 else 8, 8)
    n_bg = _ceil_div(B, rows) if B > 0 else 1
    kblock = 64 // elem
    nblocks = _ceil_div(K, kblock)
    bpw = _ceil_div(nblocks, WARPS)
    reg_blocks = min(bpw, reg_block_capacity(mode, mtiles))
    smem_blocks = bpw - reg_blocks
    pass_ntiles = 2 if rows >= PASS_ROWS else 1
    states = 2 if cell == "lstm" else 1

    def smem_for(slots: int) -> int:
        stage_off = _round_up(WARPS * smem_blocks * mtiles * W_WORDS * 32 * 4, 128)
        part_off = _round_up(stage_off + WARPS * slots * pass_ntiles * 32 * 16, 128)
        state_off = _round_up(part_off + WARPS * mtiles * 2 * 32 * 16, 128)
        len_off = _round_up(state_off + states * MAX_ROWS * units * 4, 128)
        return _round_up(len_off + MAX_ROWS * 4, 128)

    most = min(bpw, STAGES)
    least = min(most, _ceil_div(IN_FLIGHT_BYTES, WARPS * pass_ntiles * 32 * 16))
    slots = most
    while smem_for(slots) > smem_optin and slots > least:
        slots -= 1
    return Plan(cell, backward, mode, elem, H, B, K, units, mtiles, n_ug, n_bg, n_ug * n_bg, rows,
                _ceil_div(rows, PASS_ROWS), pass_ntiles, kblock, nblocks, bpw, reg_blocks, smem_blocks, slots,
                smem_for(slots))


def make_plan(cell: str, backward: bool, dtype_name: str, tf32: bool, H: int, B: int, num_sms: int,
              smem_optin: int) -> Plan:
    """The plan the launch uses (make_plan in csrc/rnn_launch.h)."""
    if backward and B > 8:
        wide = plan_for_units(cell, backward, dtype_name, tf32, H, B, 32, num_sms, smem_optin)
        if wide.fits(num_sms, smem_optin):
            return wide
    return plan_for_units(cell, backward, dtype_name, tf32, H, B, 16 if backward else FWD_UNITS, num_sms, smem_optin)


# --- the step, phase by phase ----------------------------------------------------------------------

L2_FILL_BYTES_PER_CLK = 64  # per SM
L2_READ_TBPS = 5.5  # all SMs together
MMA_FMA_PER_CLK = {"half": 1024, "tf32": 512, "tf32x3": 512}  # per SM, mma.sync
SYNCTHREADS_US = 0.02
# forward: ~3-4 MUFU pairs + FMAs, dependent; the Elman RNN one tanh (one MUFU pair) or a max (MODEL)
CELL_MATH_US = {"gru": 0.04, "lstm": 0.05, "rnn_tanh": 0.02, "rnn_relu": 0.01}
PHASE_A_MATH_US = {"gru": 0.03, "lstm": 0.04, "rnn_tanh": 0.01, "rnn_relu": 0.01}
MMAS_PER_KSTEP = {"half": 1, "tf32": 1, "tf32x3": 3}


def _assumption(m: Machine, name: str, default):
    return getattr(m, name, default)


def product_phases(p: Plan, m: Machine, label: str) -> list[Phase]:
    """One 16-row pass of RecProduct: stage + MMA (overlapped), partial sums."""
    clk = m.clk_us
    rows = p.pass_ntiles * 8
    staged = WARPS * p.blocks_per_warp * p.pass_ntiles * 32 * 16  # bytes each CTA pulls per pass
    fill = _assumption(m, "l2_fill_bytes_per_clk", L2_FILL_BYTES_PER_CLK)
    tbps = _assumption(m, "l2_read_tbps", L2_READ_TBPS)
    pull_sm = staged / fill * clk
    pull_l2 = p.grid * staged / (tbps * 1e12) * 1e6
    kernel_mmas = WARPS * p.blocks_per_warp * p.mtiles * p.pass_ntiles * 2 * MMAS_PER_KSTEP[p.mode]
    fma_per_mma = 16 * 8 * (16 if p.mode == "half" else 8)
    rate = _assumption(m, "mma_fma_per_clk", MMA_FMA_PER_CLK)[p.mode]
    mma = kernel_mmas * fma_per_mma / rate * clk
    chain = mma_chain_us(p.blocks_per_warp * 2 * MMAS_PER_KSTEP[p.mode], m)
    w_smem = WARPS * p.smem_blocks * p.mtiles * W_WORDS * 128
    smem = smem_us(2 * staged + w_smem, m)  # cp.async writes + LDS.128 reads of the operand, W from smem
    body = max(pull_sm, pull_l2, mma, chain, smem)
    binding = {pull_sm: "the SM's L2 port", pull_l2: "L2 bandwidth (every CTA pulls the operand)",
               mma: "mma.sync issue", chain: "the dependent MMA chain", smem: "shared-memory bandwidth"}[body]
    tail = mma / p.blocks_per_warp
    part = WARPS * p.mtiles * p.pass_ntiles * 512
    return [
        Phase(f"{label}stage+MMA", m.l2_us + body + tail,
              f"{staged // 1024} KiB pulled per CTA ({rows} rows x K={p.K}), L2 trip {m.l2_us} + {body:.2f} "
              f"bound by {binding} + last block {tail:.2f}; {p.reg_blocks}/{p.blocks_per_warp} blocks per warp "
              f"of W_hh in registers"),
        Phase(f"{label}partial sums", smem_us(2 * part, m) + SYNCTHREADS_US, f"{part // 1024} KiB via shared memory"),
    ]


READY_FLAGS_US = 0.6  # assumed step boundary with ready flags (module docstring); not measured
# The step boundary the kernels use by default: the cheaper one by this model on the reference machine.
DEFAULT_FLAGS = READY_FLAGS_US < H100.barrier_us


def _boundary(m: Machine, flags: bool) -> Phase:
    return Phase("ready flags", READY_FLAGS_US) if flags else Phase("grid.sync", m.barrier_us)


# --- the compute phase from the compiled SASS (bench/sass.py) --------------------------------------

SASS_ENV = "FUSEDRNN_MODEL_SASS"  # "0": the analytic compute phase only (no disassembly)


@dataclass(frozen=True)
class SassCompute:
    """One step's compute phase of a plan from the kernel's sm_90 SASS, all MODEL: the executed path
    issued for one warp (``walk_us``), Σ stall counts on it (``stall_us``, a hard lower bound), the
    shared-memory / L2 bandwidth floors (``floor_us``) and the analytic figure beside them."""

    walk_us: float
    stall_us: float
    floor_us: float
    analytic_us: float
    hmma: int  # HMMAs issued on the path, predicated-off ones included
    hmma_live: int  # those lane 0 executes: the plan's MMAs when the walk followed the plan
    copies: int  # cp.async copies lane 0 executes
    executed: int
    guessed: tuple[str, ...]

    @property
    def us(self) -> float:
        return max(self.walk_us, self.floor_us, self.stall_us)


@functools.lru_cache(maxsize=1)
def _kernels():
    import os

    if os.environ.get(SASS_ENV, "1") == "0":
        return None
    from . import sass

    try:
        return sass.kernel_sass()
    except RuntimeError:  # cuobjdump could not read the extension: the analytic model, as without one
        return None


def _floor_us(p: Plan, m: Machine) -> float:
    """Per step: each pass's operand pull (one L2 trip, then the SM's L2 port, L2 bandwidth or the
    SM's shared-memory bandwidth, whichever binds)."""
    staged = WARPS * p.blocks_per_warp * p.pass_ntiles * 32 * 16
    pull_sm = staged / _assumption(m, "l2_fill_bytes_per_clk", L2_FILL_BYTES_PER_CLK) * m.clk_us
    pull_l2 = p.grid * staged / (_assumption(m, "l2_read_tbps", L2_READ_TBPS) * 1e12) * 1e6
    w_smem = WARPS * p.smem_blocks * p.mtiles * W_WORDS * 128
    part = WARPS * p.mtiles * p.pass_ntiles * 512
    smem = smem_us(2 * staged + w_smem + 2 * part, m)
    return p.passes * (m.l2_us + max(pull_sm, pull_l2, smem))


def sass_walk(p: Plan, case: Case, dtype_name: str, m: Machine = H100, training: bool = True,
              flags: bool = DEFAULT_FLAGS, trace: list | None = None):
    """The walk (bench/sass.py ``Walk``) of one step of `p` in the built extension's SASS, or None
    without the extension, cuobjdump, or the kernel in it. The step boundary is the one the model
    prices: with ``flags`` the ready-flag path (the ``ready`` pointer set; the forward's second step,
    the first to wait), else the grid barrier's. A zoneout case walks the ZO kernel with its zoneout
    parameters: in ``training`` (every backward; a forward that draws masks) the Philox masks, else
    the evaluation blend. ``trace``: see ``sass.walk``."""
    kernels = _kernels()
    if not kernels:
        return None
    from . import sass

    zoned = bool(getattr(case, "zoneout", 0.0))
    name = sass.kernel_name(p.cell, p.backward, p.elem, p.mode, p.mtiles, dtype_name, p.pass_ntiles, zo=zoned)
    insns = kernels.get(name)
    if not insns:
        return None
    null = (set() if flags else {"ready"}) | (set() if case.residual else {"residual"}) | \
        (set() if case.packed else {"lengths"})
    lat = sass.Latencies(clk_ghz=1.0 / (m.clk_us * 1e3), l2=round(m.l2_us / m.clk_us),
                         hbm=round(m.hbm_us / m.clk_us) if hasattr(m, "hbm_us") else sass.Latencies().hbm)
    zo = (case.zoneout, training or p.backward) if zoned else None
    # With ready flags the forward's first step has no wait (nothing to wait for): its second is walked.
    skip = 1 if flags and not p.backward and case.T > 1 else 0
    return sass.walk(insns, p, sass.param_constants(p, case.T, null, zoneout=zo), lat, kernel=name,
                     skip_steps=skip, trace=trace)


@functools.lru_cache(maxsize=None)
def sass_compute(p: Plan, case: Case, dtype_name: str, m: Machine = H100, training: bool = True,
                 flags: bool = DEFAULT_FLAGS) -> SassCompute | None:
    """The compute phase of one step of `p` from the walk of its SASS (``sass_walk``), or None
    without one; a zoneout case's figure holds zoneout's cost."""
    w = sass_walk(p, case, dtype_name, m, training, flags)
    if w is None or (w.stopped and w.stopped != "exit"):
        return None
    analytic = _analytic_compute_us(p, case, m)
    return SassCompute(w.issue_clk * m.clk_us, w.stall_clk * m.clk_us, _floor_us(p, m), analytic, w.hmma,
                       w.hmma_live, w.ldgsts_live, w.executed, tuple(w.guessed))


def _analytic_compute_us(p: Plan, case: Case, m: Machine) -> float:
    body = forward_step if not p.backward else backward_step
    step = body(p, case, m, analytic=True)
    return sum(ph.us for ph in step.phases if ph.name not in ("grid.sync", "ready flags", "zoneout"))


def _sass_phase(p: Plan, case: Case, m: Machine, dtype_name: str, training: bool = True,
                flags: bool = DEFAULT_FLAGS) -> Phase | None:
    s = sass_compute(p, case, dtype_name, m, training, flags)
    if s is None:
        return None
    return Phase("compute (SASS)", s.us,
                 f"sm_90 SASS, one warp: executed path {s.walk_us:.2f} us ({s.executed} instructions, {s.hmma} "
                 f"HMMAs of which {s.hmma - s.hmma_live} predicated off), stall-count sum {s.stall_us:.2f} us, bandwidth floors {s.floor_us:.2f} us; "
                 f"the analytic model said {s.analytic_us:.2f} us")


def zoneout_phase(p: Plan, case: Case, training: bool, m: Machine = H100) -> Phase | None:
    """The zoneout term of one step of plan ``p`` (None without zoneout), MODEL: the ZO kernels
    (csrc/rnn_kernels.cuh, template parameter ZO) add to the cell math (forward) or phase A (backward)
    of each pass, per (row, unit) element a thread owns (the forward one, the backward one per m-tile),
    the ops model_triton.zoneout_ops counts (Philox 4x32-10 of fusedrnn/zoneout.py per zoned state,
    its rounds as the ZO kernels' SASS runs them, the counter, float map, compare and select;
    evaluation: the blend p * old + (1 - p) * new), issued by the CTA's 256 threads at model_triton's
    64 integer ops/clk/SM (the blend at the FFMA rate), against one element's dependent Philox
    chain. An op count, used where the step is not walked (no built extension): the walk of the ZO
    kernel holds zoneout's cost itself."""
    if not getattr(case, "zoneout", 0.0):
        return None
    from . import model_triton as mt

    direction = "bwd" if p.backward else "fwd"
    ops = mt.zoneout_ops(p.cell, direction, training)
    elements = THREADS * (p.mtiles if p.backward else 1)  # per pass, each thread its own element(s)
    rate = mt.ALU_OPS_PER_CLK_SM if training else mt.FMA_PER_CLK_SM["fp32"]
    chain = mt.PHILOX_ROUNDS * mt.PHILOX_ROUND_CLK if training else 2 * 4
    clk = max(elements * ops / rate, chain)
    what = (f"Philox 4x32-{mt.PHILOX_ROUNDS} masks{' regenerated' if p.backward else ''}" if training
            else "evaluation blend p*old + (1-p)*new")
    return Phase("zoneout", p.passes * clk * m.clk_us,
                 f"{what}: {ops} ops x {elements} elements per pass at {rate}/clk/SM vs a {chain}-clk dependent "
                 f"chain, x{p.passes} passes")


def zoneout_cost_us(case: Case, dtype_name: str, fwd_plan: Plan, bwd_plan: Plan,
                    m: Machine = H100) -> tuple[float, float, float]:
    """What zoneout adds to an inference forward, a training forward and a backward step (MODEL):
    the walk of the ZO kernel less the walk of the plain one where the extension is built, else the
    analytic ``zoneout_phase``."""
    plain = dataclasses.replace(case, zoneout=0.0)
    out = []
    for pl, training in ((fwd_plan, False), (fwd_plan, True), (bwd_plan, True)):
        zo, base = sass_compute(pl, case, dtype_name, m, training), sass_compute(pl, plain, dtype_name, m, training)
        if zo is not None and base is not None:
            out.append(zo.us - base.us)
        else:
            ph = zoneout_phase(pl, case, training, m)
            out.append(ph.us if ph is not None else 0.0)
    return tuple(out)


def _with_zoneout(step: Step, zo: Phase | None) -> Step:
    return step if zo is None else Step(step.phases + (zo,))


def forward_step(p: Plan, case: Case, m: Machine = H100, flags: bool = False, analytic: bool = False,
                 dtype_name: str = "bf16", training: bool = False) -> Step:
    """One forward step; ``training``: a zoneout case's forward draws masks (else evaluation: m = p)."""
    if not analytic:
        ph = _sass_phase(p, case, m, dtype_name, training, flags)
        if ph is not None:  # the walk of the ZO kernel: zoneout included
            return Step((ph, _boundary(m, flags)))
    zo = zoneout_phase(p, case, training, m)
    phases = []
    for q in range(p.passes):
        label = f"pass {q} " if p.passes > 1 else ""
        phases += product_phases(p, m, label)
        phases.append(Phase(f"{label}cell math", CELL_MATH_US[p.cell], "inputs prefetched, ex2/rcp.approx"))
        if q + 1 < p.passes:
            phases.append(Phase(f"{label}__syncthreads", SYNCTHREADS_US))
    phases.append(_boundary(m, flags))
    return _with_zoneout(Step(tuple(_merge_passes(phases, p.passes))), zo)


def backward_step(p: Plan, case: Case, m: Machine = H100, flags: bool = False, analytic: bool = False,
                  dtype_name: str = "bf16") -> Step:
    if not analytic:
        ph = _sass_phase(p, case, m, dtype_name, flags=flags)
        if ph is not None:  # the walk of the ZO kernel: zoneout included
            return Step((_boundary(m, flags), ph))
    zo = zoneout_phase(p, case, True, m)
    phases = [_boundary(m, flags)]
    for q in range(p.passes):
        label = f"pass {q} " if p.passes > 1 else ""
        phases += product_phases(p, m, "phase B " + label)
        phases.append(Phase(f"{label}phase A", PHASE_A_MATH_US[p.cell],
                            "next step's dgates for these rows; inputs loaded before the MMA"))
        if q + 1 < p.passes:
            phases.append(Phase(f"{label}__syncthreads", SYNCTHREADS_US))
    return _with_zoneout(Step(tuple(_merge_passes(phases, p.passes))), zo)


def _merge_passes(phases: list[Phase], passes: int) -> list[Phase]:
    """Identical passes summed under one name (keeps the printed step readable)."""
    if passes <= 1:
        return phases
    merged: dict[str, Phase] = {}
    for ph in phases:
        name = ph.name
        for q in range(passes):
            name = name.replace(f"pass {q} ", "")
        if name in merged:
            merged[name] = Phase(name, merged[name].us + ph.us, merged[name].why)
        else:
            merged[name] = Phase(name, ph.us, ph.why + (f" (x{passes} passes)" if ph.why else f"x{passes} passes"))
    return list(merged.values())


def plans(case: Case, dtype_name: str, m: Machine = H100, tf32: bool = False) -> tuple[Plan, Plan]:
    return tuple(make_plan(case.cell, bwd, dtype_name, tf32, case.H, case.B, m.n_sm, m.smem_optin_bytes)
                 for bwd in (False, True))


def describe(p: Plan) -> str:
    return (f"{p.grid} CTAs ({p.unit_groups} unit groups x {p.batch_groups} batch groups) x {THREADS} threads, "
            f"{p.units} units x {p.rows} rows per CTA, {p.passes} pass(es), {p.mode} MMA, {p.smem // 1024} KiB smem")


def _misfit(fwd_plan: Plan, bwd_plan: Plan, m: Machine) -> str | None:
    for p in (fwd_plan, bwd_plan):
        if not p.fits(m.n_sm, m.smem_optin_bytes):
            kind = "backward" if p.backward else "forward"
            return f"the {kind} plan needs {p.grid} CTAs, {p.smem // 1024} KiB and {p.rows} rows per CTA"
    return None


def _tf32_note(case: Case, m: Machine) -> str:
    """fp32 with torch.backends.cuda.matmul.allow_tf32: one TF32 MMA per k-step."""
    fwd_plan, bwd_plan = plans(case, "fp32", m, tf32=True)
    misfit = _misfit(fwd_plan, bwd_plan, m)
    if misfit:
        return f"with TF32 allowed it does not fit either ({misfit})"
    fwd = forward_step(fwd_plan, case, m, flags=DEFAULT_FLAGS, dtype_name="fp32")
    bwd = backward_step(bwd_plan, case, m, flags=DEFAULT_FLAGS, dtype_name="fp32")
    return f"with TF32 allowed: {fwd.us:.2f} / {bwd.us:.2f} us/step"


@register("fusedrnn-cuda")
def model(case: Case, dtype_name: str, m: Machine = H100) -> Estimate | str:
    if getattr(case, "layernorm", False):
        return "not applicable (the cuda backend declines LayerNorm: its kernels have none; the reference runs it)"
    fwd_plan, bwd_plan = plans(case, dtype_name, m)
    misfit = _misfit(fwd_plan, bwd_plan, m)
    if misfit:
        why = f"H={case.H} B={case.B}: {misfit}; limits() refuses it, dispatch takes another backend"
        return why + ("; " + _tf32_note(case, m) if dtype_name == "fp32" else "")
    fwd = forward_step(fwd_plan, case, m, flags=DEFAULT_FLAGS, dtype_name=dtype_name)
    bwd = backward_step(bwd_plan, case, m, flags=DEFAULT_FLAGS, dtype_name=dtype_name)
    gemm_f, gemm_b = 0.0, 0.0
    for layer_input in case.layer_inputs():
        f, b = projection_gemms_us(case, dtype_name, layer_input, m)
        gemm_f, gemm_b = max(gemm_f, f), max(gemm_b, b)
    # A zoneout case's forward+backward is a training step (its forward draws masks); the forward
    # alone is inference (m = p). Without zoneout the two forward steps are the same.
    fwd_t = forward_step(fwd_plan, case, m, flags=DEFAULT_FLAGS, dtype_name=dtype_name, training=True)
    fwd_ms = whole_call_ms(case, dtype_name, fwd, bwd, gemm_f + m.launch_us, gemm_b + m.launch_us, m)[0]
    fb_ms = whole_call_ms(case, dtype_name, fwd_t, bwd, gemm_f + m.launch_us, gemm_b + m.launch_us, m)[1]
    other = not DEFAULT_FLAGS
    fwd_o = forward_step(fwd_plan, case, m, flags=other, dtype_name=dtype_name)
    fwd_ot = forward_step(fwd_plan, case, m, flags=other, dtype_name=dtype_name, training=True)
    bwd_o = backward_step(bwd_plan, case, m, flags=other, dtype_name=dtype_name)
    other_ms = (whole_call_ms(case, dtype_name, fwd_o, bwd_o, gemm_f + m.launch_us, gemm_b + m.launch_us, m)[0],
                whole_call_ms(case, dtype_name, fwd_ot, bwd_o, gemm_f + m.launch_us, gemm_b + m.launch_us, m)[1])
    kinds = (f"ready flags ({READY_FLAGS_US} us, the default: cheaper by this model)",
             f"grid barriers ({m.barrier_us} us)")
    notes = (f"step boundary: {kinds[0] if DEFAULT_FLAGS else kinds[1]}; with "
             f"{kinds[1] if DEFAULT_FLAGS else kinds[0]} instead (FUSEDRNN_CUDA_READY_FLAGS="
             f"{0 if DEFAULT_FLAGS else 1}, MODEL): {fwd_o.us:.2f} / {bwd_o.us:.2f} us/step, "
             f"{other_ms[0]:.3f} / {other_ms[1]:.3f} ms fwd / fwd+bwd")
    old_f = forward_step(fwd_plan, case, m, flags=DEFAULT_FLAGS, analytic=True)
    old_b = backward_step(bwd_plan, case, m, flags=DEFAULT_FLAGS, analytic=True)
    old_ms = whole_call_ms(case, dtype_name, old_f, old_b, gemm_f + m.launch_us, gemm_b + m.launch_us, m)
    sf, sb = sass_compute(fwd_plan, case, dtype_name, m, False), sass_compute(bwd_plan, case, dtype_name, m)
    if sf is not None and sb is not None:
        notes += (f"; compute phase from the sm_90 SASS (MODEL): fwd {sf.us:.2f} / bwd {sb.us:.2f} us (stall-count "
                  f"sums {sf.stall_us:.2f} / {sb.stall_us:.2f}); the analytic model's step: {old_f.us:.2f} / "
                  f"{old_b.us:.2f} us (compute {sf.analytic_us:.2f} / {sb.analytic_us:.2f}), "
                  f"{old_ms[0]:.3f} / {old_ms[1]:.3f} ms fwd / fwd+bwd")
    else:
        notes += "; compute phase from the analytic model (no built extension or cuobjdump: no SASS to walk)"
    if getattr(case, "zoneout", 0.0):
        zo_f, zo_t, zo_b = zoneout_cost_us(case, dtype_name, fwd_plan, bwd_plan, m)
        how = "the SASS walks of the ZO and plain kernels" if sf is not None and sb is not None else \
            "Philox ops per element from the SASS"
        notes += (f"; zoneout p={case.zoneout:g} (MODEL, independent of p, {how}): "
                  f"{zo_f:+.2f} us per inference step, {zo_t:+.2f} per training forward step, "
                  f"{zo_b:+.2f} per backward step")
    if dtype_name == "fp32":
        notes += ("; fp32 with TF32 off (torch's default) runs 3xTF32 MMAs (hi·lo + lo·hi + hi·hi: fp32 accuracy); "
                  f"{_tf32_note(case, m)}; the projection GEMMs are costed at TF32 rate by perf_model")
    return Estimate("fusedrnn-cuda", case.id, dtype_name,
                    f"fwd: {describe(fwd_plan)}; bwd: {describe(bwd_plan)}", fwd, bwd, fwd_ms, fb_ms, notes=notes)
