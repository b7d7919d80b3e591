"""Shared pieces of the Triton GRU/LSTM kernels: activations, the grid barrier, and the launch plan.

Strategies (one launch per layer-direction for all T steps on a GPU; see kernels/README.md):

- ``persistent`` (split-H): each batch tile is served by ``nprog_h`` programs; program j owns the
  hidden units [j*BLOCK_H, (j+1)*BLOCK_H) of every gate (and, when it fits, keeps that slice of
  W_hh on chip for all steps). h_t is exchanged through a global buffer and the programs of one
  batch tile meet at a grid barrier once per step. All programs must be co-resident, so the grid
  is kept <= the SM count (make_plan) and the launch is cooperative (launch_steps): a grid that
  cannot be co-resident fails at launch instead of hanging.
- ``batch_tile``: one program per batch tile computes every hidden unit itself (looping over the
  unit blocks), so a CTA barrier (``tl.debug_barrier``) is all the synchronisation a step needs.

Both strategies run the same jitted step body; they differ only in how many unit blocks a program
owns and in which barrier closes a step. Under TRITON_INTERPRET=1 programs run one after another,
so a spin barrier between programs would deadlock: there the launcher ends each step at a kernel
boundary instead (``USE_GRID_BARRIER=False``, one launch per step). Only the barrier is GPU-only.
"""

from __future__ import annotations

import dataclasses
import os

from fusedrnn._precision import cuda_matmul_allows_tf32
import triton
import triton.language as tl

# ------------------------------------------------------------------------------------------------
# Device helpers
# ------------------------------------------------------------------------------------------------


@triton.jit
def sigmoid(x):
    # exp overflows to inf for very negative x and 1/(1+inf) = 0: saturates correctly.
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def tanh(x):
    # tl.extra's libdevice tanh does not run in the interpreter; 2*sigmoid(2x)-1 does, and it is
    # accurate to ~1 ulp of 1 (absolute), which is what the tests' fp32 tolerance allows.
    return 2.0 * sigmoid(2.0 * x) - 1.0


@triton.jit
def mma(a, b, acc, DOT_PRECISION: tl.constexpr):
    """acc + a @ b with fp32 (fp64 for fp64) accumulation; tensor cores for fp16/bf16 (and fp32
    when DOT_PRECISION is "tf32"). DOT_PRECISION "upcast" (interpreter only, see dot_precision)
    multiplies the already-rounded operands in fp32: the interpreter's bf16 tl.dot returns
    garbage (Triton 3.8), and a bf16 x bf16 product is exact in fp32, so the result is the MMA's
    up to summation order."""
    if DOT_PRECISION == "upcast":
        out = tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    else:
        out = tl.dot(a, b, acc, input_precision=DOT_PRECISION)
    return out


@triton.jit
def grid_barrier(counter_ptr, target):
    """Wait until ``*counter_ptr`` (incremented once per program per step) reaches ``target``.

    The counter only grows (target = (step + 1) * programs), so it never needs a reset inside a
    launch (launch_steps zeroes it per launch). The CTA barrier before the release makes every
    thread's stores of this step part of what the release publishes (cumulativity: the same
    pattern as cooperative groups' grid.sync); the acquire-loads in the spin make the other
    programs' stores visible to this one. Readers must still bypass L1 (cache_modifier=".cg"),
    since L1 is not coherent across SMs.

    Lowering (checked in the sm_90 PTX, Triton 3.8): a scalar atomic is executed by one thread
    per program (predicated on thread 0), and its result is broadcast to all threads through
    shared memory with a bar.sync, so the loop condition is uniform; the Membar pass puts a
    bar.sync at the top of each spin iteration, so thread 0 never overwrites the broadcast slot
    while others still read it. Triton 3.8 turns the add-0 acquire into ld.acquire.gpu; older
    Tritons keep atom.acquire.add (same semantics, an L2 RMW per spin).
    """
    tl.debug_barrier()
    tl.atomic_add(counter_ptr, 1, sem="release", scope="gpu")
    arrived = tl.atomic_add(counter_ptr, 0, sem="acquire", scope="gpu")
    while arrived < target:
        arrived = tl.atomic_add(counter_ptr, 0, sem="acquire", scope="gpu")
    tl.debug_barrier()


@triton.jit
def step_barrier(counter_ptr, target, USE_GRID_BARRIER: tl.constexpr):
    """End of one time step: a grid barrier among the programs of this batch tile, or (one program
    per batch tile, or a launch per step) a CTA barrier so that this program's own global stores
    are visible to all of its threads in the next step."""
    if USE_GRID_BARRIER:
        grid_barrier(counter_ptr, target)
    else:
        tl.debug_barrier()


# ------------------------------------------------------------------------------------------------
# Host side: the launch plan
# ------------------------------------------------------------------------------------------------

STRATEGIES = ("persistent", "batch_tile")

# SM count assumed when planning for the interpreter (CPU): an H100's, so CPU tests exercise the
# same block shapes the GPU would get for the same problem.
INTERPRETER_SM_COUNT = 132

# A program keeps its W_hh slice in registers across steps only up to this many bytes (the rest of
# the register file holds gate tiles, operands and 64-bit pointer tiles); larger slices are re-read
# from L2 every step. 16 KB keeps ptxas spills at a few bytes for sm_80/sm_90 (tests/test_triton_compile.py).
RESIDENT_W_BYTES = 16 * 1024
# Reduction chunk when W_hh is streamed: 64 doubles the registers (187 vs 108 for the bf16 GRU
# forward at 8 warps) for no fewer L2 reads.
STREAM_BLOCK_K = 32
# One step is latency-bound: software pipelining of the K loop (num_stages > 1) only costs shared
# memory and registers (255 registers and spills at 3 stages, measured with ptxas -v).
NUM_STAGES = 1
NUM_WARPS = 8


def interpreter_on() -> bool:
    """Whether the kernels run in Triton's interpreter. Decided by what @triton.jit produced when
    this module was imported (TRITON_INTERPRET at that time), not by the environment now: a later
    change of the variable must not pick interpreter-only paths (the "upcast" dot, a launch per
    step) for compiled kernels, nor a spin barrier for interpreted ones."""
    try:
        from triton.runtime.interpreter import InterpretedFunction
    except ImportError:  # pragma: no cover
        return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
    return isinstance(sigmoid, InterpretedFunction)


def next_pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


def sm_count(device) -> int:
    import torch

    if device.type == "cuda" and not interpreter_on():
        return torch.cuda.get_device_properties(device).multi_processor_count
    return INTERPRETER_SM_COUNT


@dataclasses.dataclass(frozen=True)
class Plan:
    strategy: str
    BLOCK_B: int  # batch rows per program (>= 16: tl.dot's minimum M)
    BLOCK_H: int  # hidden units per block (>= 16: tl.dot's minimum N)
    BLOCK_K: int  # reduction chunk over H (>= 16); covers all of H when W is resident
    n_btiles: int
    n_hblocks: int
    nprog_h: int  # programs per batch tile; each owns blocks j = pid_h, pid_h + nprog_h, ...
    w_resident: bool
    grid_barrier: bool  # programs of a batch tile must meet once per step (nprog_h > 1)
    num_warps: int

    @property
    def grid(self):
        return (self.nprog_h, self.n_btiles)


def choose_strategy(H: int, B: int, n_sm: int) -> str:
    """Placeholder crossover, to be replaced by the one measured on a GPU (bench/): small H fits
    one program per batch tile with no barrier at all; so does a batch large enough that batch
    tiles of 16 rows alone fill the GPU. Otherwise split H across programs (persistent)."""
    if next_pow2(H) <= 64 or triton.cdiv(B, 16) >= n_sm:
        return "batch_tile"
    return "persistent"


def make_plan(n_gates: int, B: int, H: int, elem_bytes: int, n_sm: int, strategy: str | None = None) -> Plan:
    if strategy is None:
        strategy = choose_strategy(H, B, n_sm)
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    HP = max(16, next_pow2(H))
    if strategy == "batch_tile":
        BLOCK_B = 16  # many small tiles: the batch is the only parallelism
        n_btiles = triton.cdiv(B, BLOCK_B)
        BLOCK_H = min(64, HP)
        nprog_h = 1
    else:
        BLOCK_B = min(32, max(16, next_pow2(B)))  # 64 spills (ptxas -v)
        n_btiles = triton.cdiv(B, BLOCK_B)
        cap = max(1, n_sm // n_btiles)  # programs per batch tile that stay co-resident
        # BLOCK_B * BLOCK_H <= 1024: larger gate tiles spill (ptxas -v, 8 warps)
        BLOCK_H = min(1024 // BLOCK_B, max(16, next_pow2(triton.cdiv(H, cap))))
        nprog_h = min(triton.cdiv(H, BLOCK_H), cap)
    n_hblocks = triton.cdiv(H, BLOCK_H)
    w_resident = nprog_h == n_hblocks and n_gates * BLOCK_H * HP * elem_bytes <= RESIDENT_W_BYTES
    BLOCK_K = HP if w_resident else min(HP, STREAM_BLOCK_K)
    num_warps = NUM_WARPS
    return Plan(
        strategy=strategy, BLOCK_B=BLOCK_B, BLOCK_H=BLOCK_H, BLOCK_K=BLOCK_K, n_btiles=n_btiles,
        n_hblocks=n_hblocks, nprog_h=nprog_h, w_resident=w_resident, grid_barrier=nprog_h > 1,
        num_warps=num_warps,
    )


def dot_precision(dtype, device) -> str:
    """tl.dot input precision: exact fp32 unless torch allows TF32 for matmuls on this device;
    "upcast" for bf16 under the interpreter only (see mma): never on a real GPU, since the
    interpreter is what runs the kernel whenever interpreter_on()."""
    import torch

    if dtype == torch.bfloat16 and interpreter_on():
        return "upcast"
    if dtype == torch.float32 and device.type == "cuda" and not interpreter_on() and cuda_matmul_allows_tf32():
        return "tf32"
    return "ieee"


def lowp_torch_gemms(t) -> bool:
    """Whether the torch GEMMs around the kernels (input projection, dx/dW in the backward) run in
    the input dtype: on a GPU for fp16/bf16 (tensor cores, fp32 accumulation, one rounding of the
    result, as cuDNN does); elsewhere (CPU, the interpreter) in fp32 as before."""
    import torch

    return LOWP_TORCH_GEMMS and t.is_cuda and not interpreter_on() and t.dtype in (torch.float16, torch.bfloat16)


# Switch for lowp_torch_gemms (a GPU run can turn it off to compare accuracy/speed).
LOWP_TORCH_GEMMS = True


def launch_steps(kernel, plan: Plan, T: int, args: tuple, kwargs: dict, force_grid_barrier=None):
    """Run all T steps: one launch on a GPU; one launch per step under the interpreter when the
    programs of a batch tile would have to meet at a grid barrier (it would deadlock there).

    ``kwargs`` holds the constexprs; the kernel's trailing runtime arguments are (t_begin, n_steps)
    followed by USE_GRID_BARRIER and the constexprs.

    On a GPU a grid-barrier launch is a cooperative launch (``launch_cooperative_grid``): the driver
    either makes every program co-resident or fails the launch with an error, so a grid that
    cannot be co-resident (another persistent kernel on another stream, MPS limits, a plan bug)
    raises instead of spinning forever. No host sync is involved.
    """
    import contextlib

    import torch

    use_barrier = plan.grid_barrier if force_grid_barrier is None else force_grid_barrier
    device = args[0].device
    interp = interpreter_on()
    per_step = use_barrier and interp and plan.nprog_h > 1
    # The barrier counter must start at zero in every launch (targets are (step + 1) * programs);
    # allocated with the launch, so it is stream- and CUDA-graph-safe. Unused without a barrier.
    alloc = torch.zeros if use_barrier else torch.empty
    counter = alloc(plan.n_btiles, dtype=torch.int32, device=device)
    launch_opts = dict(num_warps=plan.num_warps, num_stages=NUM_STAGES)
    on_gpu = device.type == "cuda" and not interp
    if use_barrier and on_gpu:
        n_sm = sm_count(device)
        if plan.nprog_h * plan.n_btiles > n_sm:
            raise RuntimeError(f"fusedrnn: grid-barrier launch of {plan.nprog_h} x {plan.n_btiles} programs "
                               f"exceeds the {n_sm} SMs of {device}: the programs could not all be co-resident")
        launch_opts["launch_cooperative_grid"] = True
    # Triton launches on the *current* CUDA device: make it the tensors' device.
    guard = torch.cuda.device(device) if on_gpu else contextlib.nullcontext()
    with guard:
        if not per_step:
            kernel[plan.grid](*args, counter, 0, T, USE_GRID_BARRIER=use_barrier, **launch_opts, **kwargs)
            return
        for k in range(T):  # the kernel boundary is the barrier
            kernel[plan.grid](*args, counter, k, 1, USE_GRID_BARRIER=False, **launch_opts, **kwargs)
