"""The Triton grid barrier (kernels/common.py barrier_arrive/barrier_wait) at run time, on every
executor that can run it: the interpreter (one program: programs run one after another there)
and, with FUSEDRNN_TEST_DEVICE=cuda, a GPU (every SM busy, many steps, under contention). Its
compiled shape (one predicated release after bar.sync, acquire poll) is checked by
tests/test_triton_codegen.py.

GPU checks run in a subprocess with a timeout: a broken barrier (deadlock) fails the test
instead of hanging the run.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("triton")

from executors import executor_params  # noqa: E402

from fusedrnn.kernels import barrier, common  # noqa: E402

EXECUTORS = executor_params("triton", "interpreter", None if common.interpreter_on() else
                            "the Triton interpreter is off (FUSEDRNN_TEST_DEVICE=cuda)")


def _gpu_script(script: str, timeout: int, what: str):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    try:
        res = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], env=env, capture_output=True,
                             text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{what}: no result in {timeout} s (deadlock?)")
    return res


_CONTENTION = """
    import sys, torch
    from fusedrnn.kernels.barrier import barrier_floor
    n_sm = torch.cuda.get_device_properties(0).multi_processor_count
    for n_programs, steps, warps in [(n_sm, 20000, 4), (n_sm, 2000, 8), (max(2, n_sm // 2), 5000, 1)]:
        errors = barrier_floor(steps, n_programs, device="cuda", check=True, num_warps=warps)
        torch.cuda.synchronize()
        bad = int(errors.sum())
        print(n_programs, steps, warps, bad, flush=True)
        if bad:
            sys.exit(1)
"""


@pytest.mark.parametrize("executor", EXECUTORS)
def test_barrier_publishes_every_step(executor):
    """Every program publishes its step number before each barrier and reads everyone's after
    it: zero stale reads. Interpreter: one program, 10 steps; GPU: one program per SM, 20k steps."""
    if executor == "interpreter":
        assert barrier.barrier_floor(10, n_programs=1, device="cpu", check=True).tolist() == [0]
        return
    res = _gpu_script(_CONTENTION, 300, "grid barrier under contention")
    assert res.returncode == 0, f"barrier errors or crash:\n{res.stdout}\n{res.stderr[-3000:]}"


_OVERSIZED = """
    import sys, torch
    from fusedrnn.kernels.barrier import barrier_floor
    n_sm = torch.cuda.get_device_properties(0).multi_processor_count
    try:  # more programs than can ever be co-resident (H100: at most 32 CTAs per SM)
        barrier_floor(10, 64 * n_sm, device="cuda", check=False, num_warps=1)
        torch.cuda.synchronize()
    except RuntimeError as e:
        print("refused:", str(e)[:200], flush=True)
        sys.exit(0)
    sys.exit(3)
"""


@pytest.mark.parametrize("executor", EXECUTORS)
def test_barrier_that_cannot_complete_is_refused(executor):
    """Interpreter: more than one program would never meet (they run one after another): a
    ValueError. GPU: the grid-barrier launch is cooperative, so the driver refuses a grid that
    cannot be co-resident instead of letting the spin barrier deadlock."""
    if executor == "interpreter":
        with pytest.raises(ValueError, match="would never complete"):
            barrier.barrier_floor(3, n_programs=2, device="cpu")
        return
    res = _gpu_script(_OVERSIZED, 120, "oversized grid-barrier launch")
    assert res.returncode == 0, f"rc={res.returncode}\n{res.stdout}\n{res.stderr[-3000:]}"


_TWO_STREAMS = """
    import torch
    import fusedrnn.functional as F
    from fusedrnn.kernels import common, plan as plans
    dev = common.device_of(torch.device("cuda"))
    T, B, H = 64, 64, 2048
    p = plans.make_plan("gru", "fwd", B, H, 2, dev, "persistent")
    assert p.grid_barrier and 2 * p.nprog_h * p.n_btiles > dev.n_sm, p  # together: too many
    g = torch.Generator(device="cuda").manual_seed(0)
    def args():
        r = lambda *s: (torch.randn(*s, device="cuda", generator=g) * H ** -0.5).bfloat16()
        return [r(T, B, H), r(B, H), r(3 * H, H), r(3 * H, H), r(3 * H), r(3 * H)]
    inputs = [args(), args()]
    with torch.no_grad():
        want = [F.gru(*a, backend="triton") for a in inputs]
        torch.cuda.synchronize()
        streams = [torch.cuda.Stream(), torch.cuda.Stream()]
        got = [None, None]
        for _ in range(20):
            for i, (s, a) in enumerate(zip(streams, inputs)):
                s.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(s):
                    got[i] = F.gru(*a, backend="triton")
        torch.cuda.synchronize()
    for g_, w in zip(got, want):
        for x, y in zip(g_, w):
            assert torch.equal(x, y)
    print("ok", p.describe(), flush=True)
"""


@pytest.mark.gpu
def test_two_streams_of_persistent_kernels_larger_than_the_gpu_together():
    """Two persistent launches on two streams whose grids together exceed the SM count: with
    plain launches their programs could interleave and deadlock; cooperative launches cannot."""
    res = _gpu_script(_TWO_STREAMS, 300, "two concurrent persistent kernels")
    assert res.returncode == 0, f"{res.stdout}\n{res.stderr[-3000:]}"
