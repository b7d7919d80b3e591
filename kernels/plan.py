"""Launch plans for the Triton GRU/LSTM kernels (see README.md in this folder for the loop they
drive). Pure Python: no torch, no triton, so ``bench/model_triton.py`` models exactly the plans the
launcher uses.

A plan fixes, for one (cell, direction, B, H, dtype, device):

- the work split: ``BB`` batch rows x ``BH`` hidden units (of every gate) per program; programs of
  one batch tile meet at a grid barrier once per step (``persistent``), or one program computes
  every unit of its batch tile and needs no barrier (``batch_tile``);
- the recurrent product ``a @ W`` of a step (forward: ``h_{t-1}`` (BB, HP) @ W slice (HP, 4*BH);
  backward: ``dgates_{t+1}`` (BB, 4*HP) @ W slice (4*HP, BH)): whether the program's W_hh slice is
  loaded once and kept on chip (``resident``) or re-read every step in ``BLOCK_K`` chunks through a
  ``num_stages``-deep cp.async pipeline; and how the warps share it: ``KS`` > 1 splits the
  reduction over the warps (each holds a partial sum, reduced once per step), ``KS`` == 1 splits
  the output columns;
- ``num_warps``.

The numbers come from a small table (``_TABLE``) keyed by the padded hidden size, the batch tile
and the element size, chosen with the latency model in bench/model_triton.py and checked by
tests/test_triton_codegen.py, which compiles for sm_90 every plan the benchmark grid
(bench/cases.py) gets, crossed with the call's feature flags (bias, residual, lengths, reverse,
saved activations; backward: lengths, dy, reverse), and every code path of the tests' shapes at
its largest tile with the default flag sets, and requires 0 spills and shared memory within the
device's. That is what "does not spill" means here: whether ptxas spills depends on the
flags as much as on the tile (the deepbench-lstm forward's former 16 x 256 streamed tile spilled
8 to 80 B of stack under 14 of its 16 flag sets, Triton 3.8), so a shape outside those sets is covered only
as far as its code path and tile size resemble a compiled one.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

CELLS = {"gru": 3, "lstm": 4, "rnn_tanh": 1, "rnn_relu": 1}  # gates per cell
# Gate slots per unit in the packed weights and in the product's output columns: the gate count
# rounded up to a power of two (gate_slots), so GRU's fourth slot is zeros. Four slots make the
# output (BB, 4*BH) split into per-gate tiles with two tl.split (a power-of-two width) and keep
# every gate of a unit in the thread that holds that unit; the Elman RNN's one gate is one slot
# (its product is (BB, BH): no zero columns). GATE_SLOTS: GRU's and LSTM's.
GATE_SLOTS = 4
# Activations saved per unit and step for the backward: GRU r, z, n, W_hn h + b_hn; LSTM i, f, g,
# o; RNN h' (its derivative is a function of h': 1 - h'^2 for tanh, h' > 0 for relu).
SAVED_ACTS = {"gru": 4, "lstm": 4, "rnn_tanh": 1, "rnn_relu": 1}


def gate_slots(cell: str) -> int:
    """Gate slots of ``cell`` in the packed weights and the product's columns (see GATE_SLOTS)."""
    return next_pow2(CELLS[cell])
STRATEGIES = ("persistent", "batch_tile")
DIRECTIONS = ("fwd", "bwd")
BLOCK_B = 16  # batch rows per program: tl.dot's M on tensor cores (mma.sync m16)
MIN_BLOCK_H = 8  # units per block: 8 x 16-bit = one 16-byte vector per row
MAX_BLOCK_H = 64  # larger blocks only grow the product's columns (registers, pipeline buffers)
# The LayerNorm cells' step holds more tiles per block (raw products, x-hat, gamma and beta of
# every gate; the backward's LN sums): 64-unit blocks spilled (the LSTM forward with W resident,
# 10-12 B with fp16/bf16; the GRU backward with zoneout, 2-4 B), and 32 with fp64 (the LSTM
# backward with zoneout, 2 B; Triton 3.8, sm_90). Keyed by element size.
LN_MAX_BLOCK_H = {2: 32, 4: 32, 8: 16}


@dataclass(frozen=True)
class Device:
    """What a plan depends on besides the problem: SMs (co-residency) and shared memory per program."""

    name: str
    n_sm: int
    smem_bytes: int  # opt-in shared memory per block
    cc: int  # compute capability, e.g. 90

    @property
    def smem_budget(self) -> int:
        # room for the layout conversions of the epilogue and the barrier's broadcast slot
        return self.smem_bytes - 8 * 1024


H100 = Device("H100", 132, 227 * 1024, 90)
A100 = Device("A100", 108, 163 * 1024, 80)
# The interpreter (CPU tests) plans for an H100, so CPU tests run the block shapes a GPU would get.
INTERPRETER_DEVICE = H100


@dataclass(frozen=True)
class Plan:
    cell: str
    direction: str  # "fwd" | "bwd"
    strategy: str
    BB: int  # batch rows per program (>= 16)
    BH: int  # hidden units per block (>= 8); the product has slots*BH output columns (fwd) or BH (bwd)
    HP: int  # H padded to a power of two (>= 16)
    KS: int  # warps splitting the reduction (3-D product); 1: the warps split the output columns
    BLOCK_K: int  # reduction chunk per K-loop iteration; the whole reduction when resident
    num_stages: int  # K-loop pipeline depth (asynchronous copies) when W is streamed; 1 when resident
    num_warps: int
    resident: bool  # the W_hh slice is loaded once per launch and kept on chip for every step
    n_btiles: int
    n_blk: int  # unit blocks per batch tile
    nprog_h: int  # programs per batch tile; program p owns blocks p, p + nprog_h, ...
    elem_bytes: int

    @property
    def grid(self) -> tuple[int, int]:
        return (self.nprog_h, self.n_btiles)

    @property
    def grid_barrier(self) -> bool:
        """Programs of a batch tile exchange h (dgates) through memory: a grid barrier per step."""
        return self.nprog_h > 1

    @property
    def maxnreg(self) -> int:
        """Registers per thread ptxas may use: all of them for one program per SM (ptxas's own
        default caps 256-thread kernels at 128 and spills instead)."""
        return min(255, 65536 // (32 * self.num_warps))

    @property
    def slots(self) -> int:
        """Gate slots per unit (gate_slots): 4 for GRU and LSTM, 1 for the Elman RNN."""
        return gate_slots(self.cell)

    @property
    def K(self) -> int:
        """Reduction length of the step's product."""
        return self.HP if self.direction == "fwd" else self.slots * self.HP

    @property
    def N(self) -> int:
        """Output columns of the step's product."""
        return self.slots * self.BH if self.direction == "fwd" else self.BH

    @property
    def w_slice_bytes(self) -> int:
        return self.K * self.N * self.elem_bytes

    @property
    def smem_bytes(self) -> int:
        """Shared memory the compiled kernel needs (estimate; tests/test_triton_codegen.py checks
        it against Triton's own figure): resident W plus the staged operand, or the pipeline's
        buffers; the partial sums' reduction reuses the operand's space."""
        if self.resident:
            operand = self.BB * self.K * self.elem_bytes
            partials = self.KS * self.BB * self.N * 4 if self.KS > 1 else 0
            return self.w_slice_bytes + max(operand, partials)
        per_stage = (self.BB + self.N) * self.BLOCK_K * self.elem_bytes
        partials = self.KS * self.BB * self.N * 4 if self.KS > 1 else 0
        return max(self.num_stages * per_stage, partials)

    def constexprs(self) -> dict:
        """The kernel constexprs this plan fixes (the launcher and the compile checks use these)."""
        return dict(CELL=self.cell, BB=self.BB, BH=self.BH, HP=self.HP, KS=self.KS, BLOCK_K=self.BLOCK_K,
                    NUM_STAGES=self.num_stages, RESIDENT=self.resident)

    def check(self) -> None:
        """The kernels' shape rules: every tensor dimension a power of two, tl.dot's K >= 16 per
        warp, a whole number of K chunks, one block per program when W is resident."""
        pow2 = [self.BB, self.BH, self.HP, self.KS, self.BLOCK_K]
        if any(v & (v - 1) for v in pow2):
            raise ValueError(f"plan sizes must be powers of two: {self}")
        if self.BLOCK_K // self.KS < 16 or self.K % self.BLOCK_K or (self.resident and self.BLOCK_K != self.K):
            raise ValueError(f"invalid reduction chunking (K={self.K}, BLOCK_K={self.BLOCK_K}, KS={self.KS}): {self}")
        if self.resident and self.nprog_h != self.n_blk:
            raise ValueError(f"a resident W slice needs one unit block per program: {self}")

    def describe(self) -> str:
        w = f"W resident ({self.w_slice_bytes // 1024} KB)" if self.resident else \
            f"W streamed (K chunks of {self.BLOCK_K}, {self.num_stages} stages)"
        split = f"K split over {self.KS} warps" if self.KS > 1 else f"columns split over {self.num_warps} warps"
        return (f"{self.strategy} {self.direction}: grid {self.nprog_h}x{self.n_btiles}, {self.BB} rows x {self.BH} "
                f"units/program, {self.n_blk} blocks/tile, {w}, {split}, {self.num_warps} warps, "
                f"~{self.smem_bytes // 1024} KB smem")


def next_pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


# ------------------------------------------------------------------------------------------------
# The table
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Row:
    """Per element size: how large the product's tiles may be without spilling (from the compiled
    code, tests/test_triton_codegen.py: Triton 3.8 and 3.6, every flag set), the warps, and the
    streamed K loop's shape."""

    ks_tile: int  # max BB*N when the warps split the reduction (forward): every warp holds a full
    ks_gate: int  # partial, and the summed tile and the gate tiles (BB*BH) are replicated in every warp
    bwd_ks_tile: int  # the same for the backward, whose step holds more tiles (dh, dc, dy, 4 acts, states)
    cols_tile: int  # max BB*N when the warps split the columns (forward; the tile is spread over warps)
    bwd_cols_tile: int
    stream_cols_tile: int  # the same, forward with W streamed: the K loop's pipeline (addresses,
    # the chunks in flight) holds registers across the product besides the accumulator
    fma_tile: int  # max BB*N of an FMA product (exact fp32, fp64): its operands sit in registers;
    # the FMA backward (many live tiles) always streams W in small chunks
    num_warps: int
    resident_operand: int  # max bytes per thread of a resident plan's operand (BB, K), which one
    # group of loads brings into registers (Triton 3.6 spilled the flashrnn backward's 512)
    kci: int  # reduction per warp and K-loop iteration when W is streamed (BLOCK_K = KS * kci)
    num_stages: int


# Keyed by element size. Persistent plans use 16-row batch tiles (the MMA's M): more, smaller
# programs keep the replicated tiles small and the MMA chains short; 8 warps (two per SM
# sub-partition) overlap the shared-memory reads of the product with its MMAs.
_TABLE = {
    2: _Row(ks_tile=512, ks_gate=256, bwd_ks_tile=256, cols_tile=4096, bwd_cols_tile=1024, stream_cols_tile=2048,
            fma_tile=512, num_warps=8, resident_operand=256, kci=32, num_stages=3),
    4: _Row(ks_tile=512, ks_gate=128, bwd_ks_tile=0, cols_tile=2048, bwd_cols_tile=1024, stream_cols_tile=2048,
            fma_tile=512, num_warps=8, resident_operand=256, kci=16, num_stages=2),
    8: _Row(ks_tile=256, ks_gate=64, bwd_ks_tile=0, cols_tile=1024, bwd_cols_tile=512, stream_cols_tile=1024,
            fma_tile=512, num_warps=8, resident_operand=256, kci=16, num_stages=2),
}


def choose_strategy(cell: str, B: int, H: int, elem_bytes: int, device: Device = INTERPRETER_DEVICE,
                    fma: bool = False) -> str:
    """batch_tile (no grid barrier) when one program can keep all of W_hh on chip (the forward
    step is then an on-chip product, no barrier, the exchange stays in the CTA),
    or when the batch tiles alone fill the GPU; persistent (split H, one grid barrier per step)
    otherwise. The latency model (bench/model_triton.py) puts a persistent step at >= the barrier
    (~1.2 us) plus an L2 round trip, which a whole-W batch-tile step beats whenever it is possible."""
    if _whole_w(cell, "fwd", B, H, elem_bytes, device, fma) is not None:
        return "batch_tile"
    if cdiv(B, BLOCK_B) >= device.n_sm:
        return "batch_tile"
    return "persistent"


def make_plan(cell: str, direction: str, B: int, H: int, elem_bytes: int, device: Device = INTERPRETER_DEVICE,
              strategy: str | None = None, fma: bool = False, layernorm: bool = False) -> Plan:
    """``fma``: the product runs on FMA units (exact fp32, fp64) instead of tensor cores; those
    plans never split the reduction over the warps (Triton's batched FMA product spills).
    ``layernorm``: the LayerNorm cells (the kernels' LN): batch_tile (one program holds every unit of
    its rows, so the rows' statistics are a reduction in the program), unit blocks of at most
    LN_MAX_BLOCK_H units."""
    if cell not in CELLS:
        raise ValueError(f"cell must be one of {tuple(CELLS)}, got {cell!r}")
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    if layernorm:
        if strategy not in (None, "batch_tile"):
            raise ValueError(f"layernorm runs the batch_tile strategy (one program per batch tile), "
                             f"got strategy={strategy!r}")
        strategy = "batch_tile"
    if strategy is None:
        strategy = choose_strategy(cell, B, H, elem_bytes, device, fma)
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    HP = max(16, next_pow2(H))
    n_btiles = cdiv(B, BLOCK_B)
    if strategy == "batch_tile":
        max_bh = LN_MAX_BLOCK_H[elem_bytes] if layernorm else MAX_BLOCK_H
        whole = _whole_w(cell, direction, B, H, elem_bytes, device, fma) if HP <= max_bh or not layernorm else None
        if whole is not None:
            return whole
        # one program walks blocks of up to 64 (LayerNorm: 32) units, W streamed
        plan = _split(cell, direction, strategy, H, min(max_bh, max(MIN_BLOCK_H, HP)), n_btiles, 1, elem_bytes,
                      fma)
        return _stream(plan, device, H)
    cap = max(1, device.n_sm // n_btiles)  # programs per batch tile that stay co-resident
    BH = MIN_BLOCK_H
    while cdiv(H, BH) > cap and BH < min(HP, MAX_BLOCK_H):
        BH *= 2
    # more blocks than programs only for huge B x H: then each program walks several blocks
    plan = _split(cell, direction, strategy, H, BH, n_btiles, cap, elem_bytes, fma)
    if plan.nprog_h == plan.n_blk and _resident_fits(plan, device) and not (fma and direction == "bwd"):
        plan.check()
        return plan
    return _stream(plan, device, H)


def _whole_w(cell, direction, B, H, elem_bytes, device, fma) -> Plan | None:
    """The batch-tile plan with all of W_hh resident in its one program, if the tiles and the
    shared memory allow it; else None."""
    HP = max(16, next_pow2(H))
    plan = _split(cell, direction, "batch_tile", H, max(MIN_BLOCK_H, HP), cdiv(B, BLOCK_B), 1, elem_bytes, fma)
    if plan.n_blk != 1 or not _resident_fits(plan, device) or (fma and direction == "bwd"):
        return None
    plan.check()
    return plan


def _resident_fits(plan: Plan, device: Device) -> bool:
    """W resident: the slice and the staged operand fit the shared memory, and the operand, loaded
    as one group, stays within the table's registers per thread."""
    operand = plan.BB * plan.K * plan.elem_bytes // (32 * plan.num_warps)
    return plan.smem_bytes <= device.smem_budget and operand <= _TABLE[plan.elem_bytes].resident_operand


def _split(cell, direction, strategy, H, BH, n_btiles, cap, elem_bytes, fma) -> Plan:
    """A resident plan for blocks of (up to) ``BH`` units, ``cap`` programs per batch tile at
    most, with the warp split the tiles allow: the reduction over the warps while the replicated
    tiles stay within the table's limits, else the columns; BH halves until one of them fits."""
    row = _TABLE[elem_bytes]
    HP = max(16, next_pow2(H))
    slots = gate_slots(cell)
    K = HP if direction == "fwd" else slots * HP
    while True:
        # The table's tile limits hold for GATE_SLOTS gates per unit: a cell with fewer slots (the
        # RNN) gets the unit block GRU/LSTM would get, so its per-unit tiles (the step's epilogue)
        # stay as large as theirs; its product is narrower (compiled with 1 slot per unit, wider
        # blocks spilled: 2-4 STL/LDL with Triton 3.8 on sm_90).
        N = GATE_SLOTS * BH if direction == "fwd" else BH
        num_warps = row.num_warps if K >= 16 * row.num_warps else max(1, K // 16)
        ks = row.ks_tile if direction == "fwd" else row.bwd_ks_tile
        if not fma and num_warps > 1 and BLOCK_B * N <= ks and BLOCK_B * BH <= row.ks_gate:
            KS = num_warps
            break
        cols = row.cols_tile if direction == "fwd" else row.bwd_cols_tile
        if BLOCK_B * N <= (min(cols, row.fma_tile) if fma else cols) or BH == MIN_BLOCK_H:
            KS, num_warps = 1, row.num_warps
            break
        BH //= 2
    n_blk = cdiv(H, BH)
    return Plan(cell=cell, direction=direction, strategy=strategy, BB=BLOCK_B, BH=BH, HP=HP, KS=KS, BLOCK_K=K,
                num_stages=1, num_warps=num_warps, resident=True, n_btiles=n_btiles, n_blk=n_blk,
                nprog_h=min(n_blk, cap), elem_bytes=elem_bytes)


def _stream(plan: Plan, device: Device, H: int) -> Plan:
    """The plan with W streamed: BLOCK_K chunks (each warp kci of the reduction per iteration when
    KS > 1, chunks of 64 when the warps split the columns) through the table's pipeline depth;
    fewer stages, then smaller chunks, then the warps on the columns, until the buffers fit.
    A forward whose warps split the columns takes smaller unit blocks first if its tile exceeds
    ``stream_cols_tile`` (the programs then walk more blocks per step)."""
    row = _TABLE[plan.elem_bytes]
    if plan.direction == "fwd" and plan.KS == 1:
        cap = 1 if plan.strategy == "batch_tile" else max(1, device.n_sm // plan.n_btiles)
        while plan.BB * plan.N > row.stream_cols_tile and plan.BH > MIN_BLOCK_H:
            n_blk = cdiv(H, plan.BH // 2)
            plan = dataclasses.replace(plan, BH=plan.BH // 2, n_blk=n_blk, nprog_h=min(n_blk, cap))
    K = plan.K
    block_k = min(K, plan.KS * row.kci) if plan.KS > 1 else min(K, 64)
    plan = dataclasses.replace(plan, resident=False, BLOCK_K=block_k, num_stages=row.num_stages)
    while plan.smem_bytes > device.smem_budget:
        if plan.num_stages > 2:
            plan = dataclasses.replace(plan, num_stages=plan.num_stages - 1)
        elif plan.BLOCK_K // 2 >= 16 * plan.KS:
            plan = dataclasses.replace(plan, BLOCK_K=plan.BLOCK_K // 2)
        elif plan.KS > 1:
            plan = dataclasses.replace(plan, KS=1, BLOCK_K=min(K, 64))
        else:
            raise ValueError(f"no {plan.direction} plan for B={plan.n_btiles * plan.BB} H={plan.HP} fits the "
                             f"{device.smem_bytes // 1024} KB of shared memory of {device.name}")
    plan.check()
    return plan
