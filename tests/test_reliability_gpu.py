"""Hardening on a GPU (issue: reliability): memory, per-step allocations, activation memory vs cuDNN's
reserve space, determinism, two CUDA streams, long sequences, for the fused backends.

Run with FUSEDRNN_TEST_DEVICE=cuda python -m pytest -m gpu tests/test_reliability_gpu.py -s
(-s shows the measured activation-memory table, which docs/numerics.md asks a GPU session to record).
"""

from __future__ import annotations

import pytest
import torch

import fusedrnn
import fusedrnn.functional as F

pytestmark = pytest.mark.gpu
FUSED = ["triton", "cuda"]


def _args(cell, T, B, H, dtype, requires_grad=True, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    G = (3 if cell == "gru" else 4) * H

    def r(*s, scale=1.0):
        return (torch.randn(*s, generator=g, device="cuda") * scale).to(dtype).requires_grad_(requires_grad)

    states = [r(B, H)] if cell == "gru" else [r(B, H), r(B, H)]
    return [r(T, B, H)] + states + [r(G, H, scale=H**-0.5), r(G, H, scale=H**-0.5), r(G, scale=0.1), r(G, scale=0.1)]


def _call(cell, args, backend, **kw):
    fn = F.gru if cell == "gru" else F.lstm
    return fn(*args, backend=backend, **kw)


def _skip_unavailable(backend, cell, dtype):
    from fusedrnn.backends import CallSpec as Problem, get

    p = Problem(cell, torch.device("cuda"), dtype, 8, 4, 64, 64, 64, False, False, False, False)
    why = get(backend).reasons(p, forced=True)
    if why:
        pytest.skip(f"{backend} cannot run here: {'; '.join(why)}")


def _fwd_bwd(cell, args, backend, **kw):
    out = _call(cell, args, backend, **kw)
    loss = sum((o.float() * (i + 1)).sum() for i, o in enumerate(out))
    return out, torch.autograd.grad(loss, [a for a in args if a.requires_grad])


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_no_memory_growth_over_1000_calls(cell, backend):
    _skip_unavailable(backend, cell, torch.float32)
    args = _args(cell, 32, 8, 64, torch.float32)
    for _ in range(20):
        _fwd_bwd(cell, args, backend)
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    for _ in range(1000):
        _fwd_bwd(cell, args, backend)
    torch.cuda.synchronize()
    assert torch.cuda.memory_allocated() == before


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_no_per_step_allocations(cell, backend):
    """The number of allocator calls of a forward+backward must not depend on T."""
    _skip_unavailable(backend, cell, torch.float32)
    counts = {}
    for T in (16, 256):
        args = _args(cell, T, 8, 64, torch.float32)
        _fwd_bwd(cell, args, backend)  # warm-up: compile, autotune, caches
        torch.cuda.synchronize()
        n0 = torch.cuda.memory_stats()["allocation.all.allocated"]
        _fwd_bwd(cell, args, backend)
        torch.cuda.synchronize()
        counts[T] = torch.cuda.memory_stats()["allocation.all.allocated"] - n0
    assert counts[16] == counts[256], f"allocations per call depend on T: {counts}"


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_activation_memory_vs_cudnn_reserve(cell):
    """Measures the memory kept for backward by each backend against cuDNN (torch.nn) on the same
    problem, and prints the table; the assertion only guards against a gross regression (> 4x)."""
    T, B, H = 256, 32, 512
    rows = {}
    tcls = torch.nn.GRU if cell == "gru" else torch.nn.LSTM
    m = tcls(H, H, device="cuda", dtype=torch.bfloat16)
    x = torch.randn(T, B, H, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    out = m(x)
    torch.cuda.synchronize()
    rows["cudnn (torch.nn)"] = torch.cuda.memory_allocated() - base
    del out
    for backend in FUSED:
        f = (fusedrnn.GRU if cell == "gru" else fusedrnn.LSTM)(H, H, device="cuda", dtype=torch.bfloat16, backend=backend)
        try:
            torch.cuda.synchronize()
            base = torch.cuda.memory_allocated()
            out = f(x)
            torch.cuda.synchronize()
            rows[backend] = torch.cuda.memory_allocated() - base
            del out
        except ValueError as e:
            rows[backend] = f"unavailable: {e}"
    print(f"\nactivation memory kept for backward, {cell.upper()} bf16 T={T} B={B} H={H} (incl. outputs):")
    for k, v in rows.items():
        print(f"  {k:<18} {v / 2**20:.1f} MiB" if isinstance(v, int) else f"  {k:<18} {v}")
    for k, v in rows.items():
        if isinstance(v, int) and k != "cudnn (torch.nn)":
            assert v <= 4 * rows["cudnn (torch.nn)"], rows


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_bitwise_deterministic_and_under_deterministic_algorithms(cell, backend):
    _skip_unavailable(backend, cell, torch.bfloat16)
    args = _args(cell, 64, 16, 256, torch.bfloat16)
    lengths = torch.randint(1, 65, (16,), generator=torch.Generator().manual_seed(0))
    runs = [_fwd_bwd(cell, args, backend, lengths=lengths, reverse=True)]
    torch.use_deterministic_algorithms(True)
    try:
        for _ in range(3):
            runs.append(_fwd_bwd(cell, args, backend, lengths=lengths, reverse=True))
    finally:
        torch.use_deterministic_algorithms(False)
    for other in runs[1:]:
        for x, y in zip(runs[0][0] + runs[0][1], other[0] + other[1]):
            assert torch.equal(x, y)


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_two_streams_same_as_sequential(cell, backend):
    _skip_unavailable(backend, cell, torch.float32)
    inputs = [_args(cell, 128, 8, 128, torch.float32, requires_grad=False, seed=s) for s in (1, 2)]
    want = [_call(cell, a, backend) for a in inputs]
    torch.cuda.synchronize()
    streams = [torch.cuda.Stream(), torch.cuda.Stream()]
    got = [None, None]
    for i, (s, a) in enumerate(zip(streams, inputs)):
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            got[i] = _call(cell, a, backend)
    torch.cuda.synchronize()
    for g, w in zip(got, want):
        for x, y in zip(g, w):
            assert torch.equal(x, y)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_long_sequence_T10000(cell, backend, dtype):
    """docs/numerics.md bounds, on the GPU kernels: fp32 outputs within 2e-6 of the fp64 oracle on the
    same rounded inputs (exact fp32 math; TF32 off), bf16 within 2x torch's own bf16 error."""
    _skip_unavailable(backend, cell, dtype)
    old_tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        _check_long_sequence(cell, backend, dtype)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old_tf32


def _check_long_sequence(cell, backend, dtype):
    T, B, H = 10_000, 2, 64
    args = _args(cell, T, B, H, dtype, requires_grad=False)
    y = _call(cell, args, backend)[0].double()
    y64 = _call(cell, [a.double() for a in args], "reference")[0]
    err = (y - y64).abs().max().item()
    if dtype == torch.float32:
        assert err <= 2e-6, err
    else:
        tcls = torch.nn.GRU if cell == "gru" else torch.nn.LSTM
        m = tcls(H, H, device="cuda", dtype=dtype)
        with torch.no_grad():
            for name, w in zip(["weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"], args[-4:]):
                getattr(m, name).copy_(w)
        hx = args[1].unsqueeze(0) if cell == "gru" else (args[1].unsqueeze(0), args[2].unsqueeze(0))
        with torch.no_grad():
            y_torch = m(args[0], hx)[0].double()
        torch_err = (y_torch - y64).abs().max().item()
        assert err <= 2 * torch_err + 1e-3, (err, torch_err)
