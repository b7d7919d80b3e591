"""Quick, decisive GPU checks that bench/gpu_run.sh runs before the test suite:

    python -m fusedrnn.bench.gpu_checks barrier

barrier: each backend's grid barrier, alone, with one program per SM over many steps. The Triton
barrier runs with check=True (every program publishes its step before each barrier and reads every
other program's after it: a barrier that opens early shows as errors, which would otherwise make
the persistent kernels silently wrong); the CUDA barrier (cooperative groups' grid.sync) is run
and timed (a hang is caught by the caller's timeout). Prints one line per check; exit 1 on a failure.
"""

from __future__ import annotations

import sys
import time

import torch


def check_triton_barrier(steps: int = 2000) -> str:
    from fusedrnn.kernels.barrier import barrier_floor

    n_sm = torch.cuda.get_device_properties(0).multi_processor_count
    for programs in (n_sm, max(2, n_sm // 2)):
        errors = barrier_floor(steps, programs, check=True)
        torch.cuda.synchronize()
        bad = int(errors.sum())
        if bad:
            raise AssertionError(f"triton grid barrier let programs through early: {bad} stale reads "
                                 f"({programs} programs, {steps} steps)")
    t0 = time.perf_counter()
    barrier_floor(steps, n_sm)
    torch.cuda.synchronize()
    return f"ok: {n_sm} and {max(2, n_sm // 2)} programs x {steps} steps, no early release; " \
           f"{(time.perf_counter() - t0) / steps * 1e6:.2f} us/barrier (host-timed, unchecked run)"


def check_cuda_barrier(steps: int = 2000) -> str:
    from fusedrnn import _ext

    ext = _ext.load()
    n_sm = torch.cuda.get_device_properties(0).multi_processor_count
    ms = ext.barrier_floor(steps, n_sm)
    return f"ok: {n_sm} CTAs x {steps} grid.sync in {ms:.3f} ms ({ms / steps * 1e3:.2f} us/barrier)"


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv != ["barrier"]:
        print(__doc__)
        return 2
    if not torch.cuda.is_available():
        print("no CUDA device visible")
        return 1
    failed = 0
    for name, fn in (("triton barrier", check_triton_barrier), ("cuda barrier", check_cuda_barrier)):
        try:
            print(f"{name}: {fn()}", flush=True)
        except Exception as e:  # noqa: BLE001 - report every check
            failed += 1
            print(f"{name}: FAILED: {type(e).__name__}: {e}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
