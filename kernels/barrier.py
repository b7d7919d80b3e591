"""The grid barrier alone: the latency floor of a persistent kernel, and its correctness check.

``barrier_floor(T, n_programs)`` launches ``n_programs`` co-resident programs that meet at T grid
barriers and do nothing else: a persistent GRU/LSTM step can never be faster than one of these
barriers (bench/ reports it as the floor). With ``check=True`` every program also publishes its
step number before each barrier and, after it, reads every other program's: a barrier that lets
a program through early (or a load served from a stale L1 line) shows up as a nonzero error
count. tests/test_triton_barrier.py runs that under contention on a GPU (many programs, many steps).
"""

from __future__ import annotations

import contextlib

import torch
import triton
import triton.language as tl

from .common import grid_barrier, interpreter_on


@triton.jit(do_not_specialize=["n_steps"])
def barrier_floor_kernel(
    counter_ptr,  # (1,) int32 zero
    slots_ptr,  # (2, n_programs) int32 (read/written only if CHECK)
    errors_ptr,  # (n_programs,) int32 out (written only if CHECK)
    n_steps, n_programs,
    CHECK: tl.constexpr, BLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    others = tl.arange(0, BLOCK)
    errors = tl.zeros((BLOCK,), dtype=tl.int32)
    for s in range(n_steps):
        if CHECK:
            # Two slot rows: a program that is already at step s+1 writes the other row, and it
            # cannot reach step s+2 (this row again) before everyone passed barrier s+1, i.e.
            # after every read of step s.
            row = slots_ptr + (s % 2) * n_programs
            tl.store(row + pid, s)
        grid_barrier(counter_ptr, (s + 1) * n_programs)
        if CHECK:
            seen = tl.load(row + others, mask=others < n_programs, other=s, cache_modifier=".cg")
            errors += (seen != s).to(tl.int32)
    if CHECK:
        tl.store(errors_ptr + pid, tl.sum(errors, axis=0))


def barrier_floor(T: int, n_programs: int | None = None, device="cuda", check: bool = False,
                  num_warps: int = 4):
    """Run T grid barriers among ``n_programs`` programs (default: one per SM). Returns the
    per-program error counts when ``check`` (all zero for a correct barrier), else None.
    Under the interpreter only one program can run (the others would never be scheduled)."""
    device = torch.device(device)
    if n_programs is None:
        n_programs = torch.cuda.get_device_properties(device).multi_processor_count
    if interpreter_on() and n_programs > 1:
        raise ValueError("under TRITON_INTERPRET=1 programs run one at a time: a grid barrier among "
                         f"{n_programs} programs would never complete")
    counter = torch.zeros(1, dtype=torch.int32, device=device)
    slots = torch.full((2, n_programs), -1, dtype=torch.int32, device=device)
    errors = torch.zeros(n_programs, dtype=torch.int32, device=device)
    opts = dict(num_warps=num_warps)
    on_gpu = device.type == "cuda" and not interpreter_on()
    if on_gpu:
        # cooperative launch: co-residency guaranteed, or a launch error instead of a hang
        opts["launch_cooperative_grid"] = True
    with torch.cuda.device(device) if on_gpu else contextlib.nullcontext():
        barrier_floor_kernel[(n_programs,)](
            counter, slots, errors, T, n_programs, CHECK=check,
            BLOCK=max(16, triton.next_power_of_2(n_programs)), **opts)
    if check:
        return errors
    return None
