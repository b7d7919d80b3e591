"""Shared device helpers of the Triton GRU/LSTM kernels (activations, the MMA, the grid barrier)
and the host-side pieces every launch uses (interpreter detection, the step launcher).

The strategies, the step loop and what a GPU run must still check: README.md in this folder.
"""

from __future__ import annotations

import contextlib
import os

import triton
import triton.language as tl

from .plan import Device, INTERPRETER_DEVICE, Plan

# ------------------------------------------------------------------------------------------------
# Device helpers
# ------------------------------------------------------------------------------------------------


LOG2E = tl.constexpr(1.4426950408889634)  # exp(x) = exp2(x * log2(e))


@triton.jit
def sigmoid(x):
    # exp overflows to inf for very negative x and 1/(1+inf) = 0: saturates correctly. exp2 of the
    # scaled argument, not tl.exp: the same multiply and MUFU.EX2, without tl.exp's denormal
    # fix-up (a compare and two dependent multiplies) on fp32; a denormal exp only ever meets 1.0 + .
    return 1.0 / (1.0 + tl.exp2(x * -LOG2E))


@triton.jit
def tanh(x):
    # tl.extra's libdevice tanh does not run in the interpreter; 2*sigmoid(2x)-1 does, and it is
    # accurate to ~1 ulp of 1 (absolute), which is what the tests' fp32 tolerance allows.
    return 2.0 / (1.0 + tl.exp2(x * (-2.0 * LOG2E))) - 1.0


@triton.jit
def mma(a, b, acc, DOT_PRECISION: tl.constexpr):
    """acc + a @ b (2-D, or batched 3-D), accumulated in acc's dtype (fp32, fp64 for fp64);
    tensor cores for fp16/bf16 (and fp32 when DOT_PRECISION is "tf32"). DOT_PRECISION "upcast"
    (interpreter only, see dot_precision) multiplies the already-rounded operands in fp32: the
    interpreter's bf16 tl.dot returns garbage (Triton 3.8), and a bf16 x bf16 product is exact in
    fp32, so the result is the MMA's up to summation order. out_dtype is acc's: Triton 3.6 asserts
    it equals the accumulator's dtype (its default is fp32, wrong for fp64)."""
    if DOT_PRECISION == "upcast":
        out = tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee", out_dtype=acc.dtype)
    else:
        out = tl.dot(a, b, acc, input_precision=DOT_PRECISION, out_dtype=acc.dtype)
    return out


@triton.jit
def barrier_arrive(counter_ptr):
    """This program has finished its step: its stores are published to the programs that wait.

    The CTA barrier first makes every thread's stores of this step part of what the release
    publishes (cumulativity, the pattern of cooperative groups' grid.sync); the scalar atomic is
    then executed by one thread of the program (Triton predicates scalar atomics on thread 0), so
    the counter grows by exactly one per program and step. It only grows (targets are
    (step + 1) x programs), so it needs no reset within a launch. Compiled form (checked by
    tests/test_triton_codegen.py): bar.sync; @p(tid == 0) atom/red.release.gpu.add."""
    tl.debug_barrier()
    tl.atomic_add(counter_ptr, 1, sem="release", scope="gpu")


@triton.jit
def barrier_wait(counter_ptr, target):
    """Spin until ``*counter_ptr`` reaches ``target``. The poll is an acquire load (Triton lowers
    an add-0 acquire atomic to ld.acquire.gpu), so what the other programs stored before their
    release is visible after it; readers still bypass L1 for that data (cache_modifier=".cg"),
    since L1 is not coherent across SMs. One thread polls, the result reaches the others through
    shared memory, so the loop condition is uniform; the closing CTA barrier keeps every thread
    behind the poll."""
    arrived = tl.atomic_add(counter_ptr, 0, sem="acquire", scope="gpu")
    while arrived < target:
        arrived = tl.atomic_add(counter_ptr, 0, sem="acquire", scope="gpu")
    tl.debug_barrier()


@triton.jit
def grid_barrier(counter_ptr, target):
    """arrive + wait: every program of the grid (batch tile) has reached this point."""
    barrier_arrive(counter_ptr)
    barrier_wait(counter_ptr, target)


# ------------------------------------------------------------------------------------------------
# Host side
# ------------------------------------------------------------------------------------------------


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


def _fix_interpreter_loop_bounds() -> None:
    """Triton < 3.7's interpreter turns a scalar used as a loop bound (an int argument such as a
    step count, a program id) into ``int(array of shape (1,))``, which numpy >= 2.5 refuses ("only
    0-dimensional arrays can be converted to Python scalars"); every kernel with a runtime loop
    bound then fails under the interpreter. Triton 3.7 squeezes the array first; this applies the
    same one-line change to an older interpreter's tensor patching. Interpreter only: compiled
    kernels never see it."""
    from triton.runtime import interpreter

    patch_tensor = getattr(interpreter, "_patch_lang_tensor", None)
    if patch_tensor is None or getattr(patch_tensor, "fusedrnn_squeezes_index", False):
        return

    def patch_tensor_squeezing_index(tensor, scope):
        patch_tensor(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.squeeze()))

    patch_tensor_squeezing_index.fusedrnn_squeezes_index = True
    interpreter._patch_lang_tensor = patch_tensor_squeezing_index


if interpreter_on() and tuple(int(v) for v in triton.__version__.split(".")[:2]) < (3, 7):
    _fix_interpreter_loop_bounds()


def device_of(device) -> Device:
    """The plan's view of a torch device: SM count and opt-in shared memory per block (an H100's
    under the interpreter)."""
    import torch

    if device.type == "cuda" and not interpreter_on():
        p = torch.cuda.get_device_properties(device)
        smem = getattr(p, "shared_memory_per_block_optin", 0) or 48 * 1024
        return Device(p.name, p.multi_processor_count, smem, p.major * 10 + p.minor)
    return INTERPRETER_DEVICE


def dot_precision(dtype, device, allow_tf32: bool) -> str:
    """tl.dot input precision: exact fp32 unless the caller allows TF32 (torch's matmul switch, read
    by fusedrnn.backends.triton) on a GPU; "upcast" for bf16 under the interpreter only (see mma): never
    on a real GPU, since the interpreter is what runs the kernel whenever interpreter_on()."""
    import torch

    if dtype == torch.bfloat16 and interpreter_on():
        return "upcast"
    if dtype == torch.float32 and allow_tf32 and device.type == "cuda" and not interpreter_on():
        return "tf32"
    return "ieee"


# Whether the torch GEMMs around the kernels (input projection, dx/dW in the backward) run in the
# input dtype for fp16/bf16 on a GPU (tensor cores, fp32 accumulation, one rounding of the result,
# as cuDNN does). A GPU run can turn it off to compare accuracy and speed.
LOWP_TORCH_GEMMS = True


def lowp_torch_gemms(t) -> bool:
    """LOWP_TORCH_GEMMS applied to tensor ``t``: only on a GPU for fp16/bf16; CPU and the
    interpreter run those GEMMs in fp32."""
    import torch

    return LOWP_TORCH_GEMMS and t.is_cuda and not interpreter_on() and t.dtype in (torch.float16, torch.bfloat16)


def launch_steps(kernel, plan: Plan, T: int, args: tuple, constexprs: dict, force_grid_barrier=None):
    """Run all T steps: one launch on a GPU; one launch per step under the interpreter when the
    programs of a batch tile would have to meet at a grid barrier (it would deadlock there, since
    the interpreter runs programs one after another).

    ``constexprs`` holds the kernel's constexprs; its trailing runtime arguments are
    (counter_ptr, t_begin, n_steps), then USE_GRID_BARRIER and the constexprs.

    On a GPU a grid-barrier launch is a cooperative launch (``launch_cooperative_grid``): the driver
    either makes every program co-resident or fails the launch with an error, so a grid that cannot
    be co-resident (another persistent kernel on another stream, MPS limits, a plan bug) raises
    instead of spinning forever. No host sync is involved.
    """
    import torch

    use_barrier = plan.grid_barrier if force_grid_barrier is None else force_grid_barrier
    device = args[0].device
    interp = interpreter_on()
    per_step = use_barrier and interp and plan.nprog_h > 1
    # The barrier counters start at zero in every launch (targets are (step + 1) x programs);
    # allocated with the launch, so stream- and CUDA-graph-safe. Unused without a barrier.
    alloc = torch.zeros if use_barrier else torch.empty
    counter = alloc(plan.n_btiles, dtype=torch.int32, device=device)
    launch_opts = dict(num_warps=plan.num_warps, num_stages=plan.num_stages)
    on_gpu = device.type == "cuda" and not interp
    if on_gpu:
        launch_opts["maxnreg"] = plan.maxnreg
    if use_barrier and on_gpu:
        n_sm = device_of(device).n_sm
        if plan.nprog_h * plan.n_btiles > n_sm:
            raise RuntimeError(f"fusedrnn: grid-barrier launch of {plan.nprog_h} x {plan.n_btiles} programs "
                               f"exceeds the {n_sm} SMs of {device}: the programs could not all be co-resident")
        launch_opts["launch_cooperative_grid"] = True
    # Triton launches on the *current* CUDA device: make it the tensors' device.
    guard = torch.cuda.device(device) if on_gpu else contextlib.nullcontext()
    with guard:
        if not per_step:
            kernel[plan.grid](*args, counter, 0, T, USE_GRID_BARRIER=use_barrier, **launch_opts, **constexprs)
            return
        for k in range(T):  # the kernel boundary is the barrier
            kernel[plan.grid](*args, counter, k, 1, USE_GRID_BARRIER=False, **launch_opts, **constexprs)
