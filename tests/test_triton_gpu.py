"""The Triton backend on a real GPU (every test is marked ``gpu``; run with FUSEDRNN_TEST_DEVICE=cuda,
see conftest.py and bench/gpu_run.sh). Interpreter off: the grid barrier runs for real here.

- both strategies at realistic sizes (H up to 1024, T up to 1024) vs an fp64 reference on the GPU;
  low precision judged against cuDNN's own error in that dtype (torch backend);
- the grid barrier under contention (one program per SM, many steps), in a subprocess with a
  timeout so that a broken barrier (deadlock) fails instead of hanging the run;
- one kernel launch for the whole recurrence of a layer-direction (torch.profiler).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

import fusedrnn.functional as F
from fusedrnn import backends
from fusedrnn.backends import triton as triton_ops
from helpers import run_cell_with_grads as _run
from fusedrnn.kernels import common

pytestmark = pytest.mark.gpu

DEV = "cuda"
FP32_TOL = 1e-4  # relative max error at T up to 1024 (ieee dot; TF32 is off by default in torch)
K_LOWP = 2.0


def _inputs(cell, T, B, I, H, seed=0, lengths=True, residual=True):  # noqa: E741
    g = torch.Generator(device="cpu").manual_seed(seed)
    n = 3 if cell == "gru" else 4
    s = H ** -0.5

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(DEV)

    d = dict(x=rnd(T, B, I), h0=rnd(B, H, scale=0.5), w_ih=rnd(n * H, I, scale=s), w_hh=rnd(n * H, H, scale=s),
             b_ih=rnd(n * H, scale=0.3), b_hh=rnd(n * H, scale=0.3), residual=rnd(T, B, H) if residual else None)
    if cell == "lstm":
        d["c0"] = rnd(B, H, scale=0.5)
    lens = None
    if lengths:
        lens = torch.randint(max(1, T // 2), T + 1, (B,), generator=g)
        lens[0] = T
    return d, lens




def _err(got, want):
    return (got - want).abs().max().item() / max(1.0, want.abs().max().item())


def _ref(cell):
    b = backends.get("reference")
    return b.gru if cell == "gru" else b.lstm


def _torch(cell):
    b = backends.get("torch")
    return b.gru if cell == "gru" else b.lstm


def _triton(cell, strategy):
    if cell == "gru":
        return lambda *a: triton_ops.gru(*a, strategy=strategy)
    return lambda *a: triton_ops.lstm(*a, strategy=strategy)


SIZES = [  # T, B, I, H
    (1024, 16, 64, 256),
    (128, 32, 128, 1024),
    (300, 3, 32, 500),
]


@pytest.mark.parametrize("T,B,I,H", SIZES, ids=lambda v: str(v))
@pytest.mark.parametrize("strategy", ["persistent", "batch_tile"])
@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_fp32_vs_fp64_reference(cell, strategy, T, B, I, H):  # noqa: E741
    d, lens = _inputs(cell, T, B, I, H)
    reverse = H % 2 == 1 or strategy == "batch_tile"
    oracle = _run(cell, _ref(cell), d, lens, reverse, torch.float64)
    got = _run(cell, _triton(cell, strategy), d, lens, reverse, torch.float32)
    for k in oracle:
        e = _err(got[k], oracle[k])
        assert e <= FP32_TOL, f"{cell} {strategy} {k}: relative error {e:.2e}"


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("strategy", ["persistent", "batch_tile"])
@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_low_precision_within_cudnn_error(cell, strategy, dtype):
    T, B, I, H = 512, 16, 128, 768  # noqa: E741
    d, lens = _inputs(cell, T, B, I, H, seed=2)
    oracle = _run(cell, _ref(cell), d, lens, False, torch.float64)
    got = _run(cell, _triton(cell, strategy), d, lens, False, dtype)
    base = _run(cell, _torch(cell), d, lens, False, dtype)  # cuDNN in this dtype
    for k in oracle:
        e, allowed = _err(got[k], oracle[k]), K_LOWP * _err(base[k], oracle[k])
        assert e <= allowed, f"{cell} {strategy} {dtype} {k}: error {e:.2e} > {K_LOWP} x cuDNN's {allowed / K_LOWP:.2e}"


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_fp64_gradcheck_cuda(cell):
    d, lens = _inputs(cell, 4, 3, 3, 5, seed=3)
    names = [k for k, v in d.items() if v is not None]
    fn = F.gru if cell == "gru" else F.lstm

    def f(*ts):
        a = dict(zip(names, ts))
        args = [a[k] for k in names if k != "residual"]
        if cell == "lstm":
            args = [a["x"], a["h0"], a["c0"], a["w_ih"], a["w_hh"], a["b_ih"], a["b_hh"]]
        return fn(*args, residual=a["residual"], lengths=lens, reverse=True, backend="triton")

    assert torch.autograd.gradcheck(f, tuple(d[k].clone().requires_grad_() for k in names))


def test_plans_fill_but_do_not_exceed_the_gpu():
    n_sm = common.sm_count(torch.device(DEV))
    for B, H in [(16, 768), (64, 512), (128, 1024), (1, 512), (4096, 1024)]:
        p = common.make_plan(4, B, H, 2, n_sm, "persistent")
        if p.grid_barrier:  # co-residency is required only when programs meet at a barrier
            assert p.nprog_h * p.n_btiles <= n_sm, p


_BARRIER_SCRIPT = textwrap.dedent("""
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
""")


def test_grid_barrier_under_contention():
    """Every program publishes its step before each barrier and checks everyone's after it: one
    program per SM, 20k steps. A subprocess with a timeout turns a deadlock into a failure."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    try:
        res = subprocess.run([sys.executable, "-c", _BARRIER_SCRIPT], env=env, capture_output=True, text=True,
                             timeout=300)
    except subprocess.TimeoutExpired:
        pytest.fail("grid barrier did not complete in 300 s (deadlock?)")
    assert res.returncode == 0, f"barrier errors or crash:\n{res.stdout}\n{res.stderr[-3000:]}"


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_persistent_many_programs_long_sequence(cell):
    """The real use of the barrier: every SM busy, T=1024, inference and training agree with fp64."""
    T, B, I, H = 1024, 8, 32, 1024  # noqa: E741
    d, lens = _inputs(cell, T, B, I, H, seed=4, residual=False)
    oracle = _run(cell, _ref(cell), d, lens, True, torch.float64)
    got = _run(cell, _triton(cell, "persistent"), d, lens, True, torch.float32)
    for k in oracle:
        assert _err(got[k], oracle[k]) <= FP32_TOL, k
    # inference (ping-pong buffers) gives the same outputs as training
    with torch.no_grad():
        args = [d[k].float() for k in (["x", "h0"] + (["c0"] if cell == "lstm" else []) + ["w_ih", "w_hh", "b_ih", "b_hh"])]
        outs = (F.gru if cell == "gru" else F.lstm)(*args, lengths=lens, reverse=True, backend="triton")
    for i, o in enumerate(outs):
        assert _err(o.double(), got[f"out{i}"]) <= 1e-6


@pytest.mark.parametrize("strategy", ["persistent", "batch_tile"])
@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_one_launch_per_layer_direction(cell, strategy):
    """torch.profiler: the recurrence of a whole sequence is one kernel launch, forward and backward."""
    from torch.profiler import ProfilerActivity, profile

    T, B, I, H = 256, 16, 64, 512  # noqa: E741
    d, lens = _inputs(cell, T, B, I, H, seed=5)
    call = _triton(cell, strategy)
    _run(cell, call, d, lens, False, torch.bfloat16)  # compile outside the profile
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        _run(cell, call, d, lens, False, torch.bfloat16)
        torch.cuda.synchronize()
    names = [e.name for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    assert sum(f"{cell}_fwd_kernel" in n for n in names) == 1, names
    assert sum(f"{cell}_bwd_kernel" in n for n in names) == 1, names


_COOP_SCRIPT = textwrap.dedent("""
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
""")


def test_grid_too_large_for_co_residency_fails_instead_of_hanging():
    """The grid-barrier launches are cooperative: the driver refuses a grid that cannot be
    co-resident (an error at launch) rather than letting the spin barrier deadlock."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    try:
        res = subprocess.run([sys.executable, "-c", _COOP_SCRIPT], env=env, capture_output=True, text=True,
                             timeout=120)
    except subprocess.TimeoutExpired:
        pytest.fail("an oversized grid-barrier launch hung instead of failing")
    assert res.returncode == 0, f"rc={res.returncode}\n{res.stdout}\n{res.stderr[-3000:]}"


_TWO_STREAMS_SCRIPT = textwrap.dedent("""
    import torch
    import fusedrnn.functional as F
    from fusedrnn.kernels import common
    n_sm = torch.cuda.get_device_properties(0).multi_processor_count
    T, B, H = 64, 64, 2048
    plan = common.make_plan(3, B, H, 2, n_sm, "persistent")
    assert plan.grid_barrier and 2 * plan.nprog_h * plan.n_btiles > n_sm, plan  # together: too many
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
    print("ok", plan, flush=True)
""")


def test_two_streams_of_persistent_kernels_larger_than_the_gpu_together():
    """Two persistent launches on two streams whose grids together exceed the SM count: with
    plain launches their programs could interleave and deadlock; cooperative launches cannot."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    try:
        res = subprocess.run([sys.executable, "-c", _TWO_STREAMS_SCRIPT], env=env, capture_output=True,
                             text=True, timeout=300)
    except subprocess.TimeoutExpired:
        pytest.fail("two concurrent persistent kernels deadlocked")
    assert res.returncode == 0, f"{res.stdout}\n{res.stderr[-3000:]}"
