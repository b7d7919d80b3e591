"""Hardening: bad input, unusual-but-valid input, numerics, memory, determinism, concurrency, fuzzing.

Each check runs on every executor that can run it (tests/executors.py): the reference and torch
backends and the Triton interpreter on the CPU (small shapes for the interpreter: it is slow), and,
on a GPU machine (FUSEDRNN_TEST_DEVICE=cuda), the fused backends on the GPU. GPU-only checks
(per-step allocations, activation memory against cuDNN's reserve, two CUDA streams) are marked gpu.
Run the GPU part with -s to see the activation-memory table.
"""

from __future__ import annotations

import gc
import os
import resource
import threading

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import fusedrnn
from executors import CPU, GPU_FUSED, Executor, params
from helpers import functional_args, make_cell_inputs, run_with_grads

settings.register_profile("ci", max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# Longer run for nightly use: HYPOTHESIS_PROFILE=nightly python -m pytest tests/test_reliability.py -k fuzz
settings.register_profile("nightly", max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


REFERENCE_CPU, TORCH_CPU, TRITON_INTERPRETER = CPU
CPU_BACKENDS = [e.backend for e in CPU if not e.unavailable()]
PAIRS = [(torch.nn.GRU, fusedrnn.GRU), (torch.nn.LSTM, fusedrnn.LSTM)]
IDS = ["GRU", "LSTM"]


def _pair(tcls, fcls, *args, backend="auto", **kw):
    t = tcls(*args, **kw)
    f = fcls(*args, backend=backend, **kw)
    f.load_state_dict(t.state_dict())
    return t, f


# ----------------------------------------------------------------------------- 1. bad input


@pytest.mark.parametrize("tcls,fcls", PAIRS, ids=IDS)
def test_device_mismatch_gets_torchs_message(tcls, fcls):
    f = fcls(3, 4)
    with pytest.raises(RuntimeError, match="Input and parameter tensors are not at the same device, found input tensor at meta"):
        f(torch.randn(5, 2, 3, device="meta"))
    x = torch.randn(5, 2, 3)
    h = torch.zeros(1, 2, 4, device="meta")
    hx = (h, torch.zeros(1, 2, 4, device="meta")) if tcls is torch.nn.LSTM else h
    with pytest.raises(RuntimeError, match="Input and hidden tensors are not at the same device"):
        f(x, hx)


def test_unsorted_lengths_need_enforce_sorted_false():
    f = fusedrnn.GRU(3, 4)
    with pytest.raises(RuntimeError, match="must be sorted in decreasing order"):
        f(pack_padded_sequence(torch.randn(5, 3, 3), torch.tensor([2, 5, 3])))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("tcls,fcls", PAIRS, ids=IDS)
def test_strided_expanded_and_transposed_inputs(tcls, fcls, backend):
    t, f = _pair(tcls, fcls, 3, 4, backend=backend, dtype=torch.float64, batch_first=True)
    base = torch.randn(2, 1, 3, dtype=torch.float64)
    for x in (base.expand(2, 5, 3), torch.randn(5, 2, 3, dtype=torch.float64).transpose(0, 1), torch.randn(2, 5, 6, dtype=torch.float64)[..., ::2]):
        assert not x.is_contiguous()
        torch.testing.assert_close(f(x)[0], t(x.contiguous())[0])


# ----------------------------------------------------------------------------- 2. works where torch does


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("tcls,fcls", PAIRS, ids=IDS)
def test_tied_weights_and_partial_requires_grad(tcls, fcls, backend):
    t, f = _pair(tcls, fcls, 4, 4, num_layers=2, backend=backend, dtype=torch.float64)
    for m in (t, f):
        m.weight_hh_l1 = m.weight_hh_l0  # tied: one Parameter used by two layers
        m.weight_ih_l1 = m.weight_ih_l0
    x = torch.randn(3, 2, 4, dtype=torch.float64, requires_grad=True)
    a = run_with_grads(f, [x], lambda: f(x))
    b = run_with_grads(t, [x], lambda: t(x))
    torch.testing.assert_close(a[0][0], b[0][0])
    torch.testing.assert_close(a[1][0], b[1][0])
    for n in b[2]:
        torch.testing.assert_close(a[2][n], b[2][n], msg=lambda m: f"{n}: {m}")
    # Frozen weights, grad only for the input: no parameter grads are produced.
    f.zero_grad(set_to_none=True)
    for p in f.parameters():
        p.requires_grad_(False)
    x.grad = None
    f(x)[0].sum().backward()
    assert x.grad is not None and all(p.grad is None for p in f.parameters())
    # Nothing requires grad: no graph at all.
    with torch.no_grad():
        assert f(x)[0].grad_fn is None


# ----------------------------------------------------------------------------- 3. numerics


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("tcls,fcls", PAIRS, ids=IDS)
def test_nan_and_inf_propagate_like_torch(tcls, fcls, backend):
    t, f = _pair(tcls, fcls, 3, 4, backend=backend, dtype=torch.float64)
    x = torch.randn(6, 3, 3, dtype=torch.float64)
    x[2, 1, 0] = float("nan")
    x[4, 2, 1] = float("inf")
    a, b = f(x), t(x)
    assert torch.equal(a[0].isnan(), b[0].isnan())
    torch.testing.assert_close(a[0], b[0], equal_nan=True)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("tcls,fcls", PAIRS, ids=IDS)
def test_huge_preactivations_saturate_finite(tcls, fcls, backend):
    t, f = _pair(tcls, fcls, 3, 4, backend=backend, dtype=torch.float64)
    x = torch.sign(torch.randn(6, 2, 3, dtype=torch.float64)) * 1e4
    a, b = f(x), t(x)
    assert torch.isfinite(a[0]).all()
    torch.testing.assert_close(a[0], b[0])


# Documented bounds (docs/numerics.md), measured on this CPU with the weights used below (|W| ~ 0.35,
# a stable recurrence): error vs the fp64 oracle does not grow with T for outputs — fp32 max |err|
# 3.3e-7 at T=100..10,000; bf16 1.95e-3, the bf16 rounding of the output itself — while fp32 weight
# gradients (sums over T steps) grow about linearly: relative 1.6e-4 at T=10,000.
LONG_T_BOUNDS = {torch.float32: (2e-6, 5e-4), torch.bfloat16: (4e-3, None)}


def _long_problem(cell, seed, T=10_000, B=2, H=8, device="cpu"):
    """fp64 (fn, x, zero states, weights) for a stable recurrence (|W| ~ 0.35), as in docs/numerics.md."""
    fn = fusedrnn.functional.gru if cell == "gru" else fusedrnn.functional.lstm
    G = (3 if cell == "gru" else 4) * H
    g = torch.Generator().manual_seed(seed)
    w = [(torch.randn(*s, generator=g, dtype=torch.float64) * 0.35).to(device) for s in [(G, H), (G, H), (G,), (G,)]]
    x = torch.randn(T, B, H, generator=g, dtype=torch.float64).to(device)
    states = [torch.zeros(B, H, dtype=torch.float64, device=device)] * (1 if cell == "gru" else 2)
    return fn, x, states, w


def _long_cases():
    cases = [pytest.param(TORCH_CPU, torch.float32, id="torch-cpu-float32"),
             pytest.param(REFERENCE_CPU, torch.bfloat16, id="reference-cpu-bfloat16")]
    for ex in GPU_FUSED:
        for dtype in (torch.float32, torch.bfloat16):
            marks = list(ex.param().marks) + [pytest.mark.slow]
            cases.append(pytest.param(ex, dtype, id=f"{ex.id}-{str(dtype)[6:]}", marks=marks))
    return cases


@pytest.mark.parametrize("ex,dtype", _long_cases())
@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_long_sequence_error_bound(cell, ex: Executor, dtype):
    """T = 10,000 against the fp64 oracle on the same rounded weights: fp32 within 2e-6 (exact fp32
    math: TF32 off), bf16 within the bf16 rounding of the output (4e-3) or, on a GPU, 2x cuDNN's own
    bf16 error, whichever is larger."""
    ex.skip_unless_available(cell, dtype)
    fn, x, states, w = _long_problem(cell, seed=0, device=ex.device)
    T = x.shape[0]
    old_tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        y = fn(x.to(dtype), *[s.to(dtype) for s in states], *[p.to(dtype) for p in w], backend=ex.backend)[0]
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old_tf32
    # The weights themselves are rounded to dtype, so compare against the oracle on the rounded weights.
    y64r = fn(x.to(dtype).double(), *states, *[p.to(dtype).double() for p in w], backend="reference")[0]
    err = (y.double() - y64r).abs().max().item()
    bound = LONG_T_BOUNDS[dtype][0]
    if dtype != torch.float32 and ex.on_gpu:
        y_cudnn = fn(x.to(dtype), *[s.to(dtype) for s in states], *[p.to(dtype) for p in w], backend="torch")[0]
        bound = max(bound, 2 * (y_cudnn.double() - y64r).abs().max().item())
    assert err <= bound, f"{cell} {dtype} T={T} on {ex.id}: max |y - y_fp64| = {err:.3g} > {bound:.3g}"
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_long_sequence_gradient_error_bound(cell):
    fn, x64, states, w64 = _long_problem(cell, seed=1)
    T = x64.shape[0]
    grads = {}
    for dtype, backend in ((torch.float64, "torch"), (torch.float32, "torch")):
        w = [p.detach().to(dtype).requires_grad_() for p in w64]
        x = x64.detach().to(dtype).requires_grad_()
        y = fn(x, *[s.to(dtype) for s in states], *w, backend=backend)[0]
        (y.double() * torch.linspace(-1, 1, T, dtype=torch.float64).view(T, 1, 1)).sum().backward()
        grads[dtype] = [x.grad.double()] + [p.grad.double() for p in w]
    _, grad_bound = LONG_T_BOUNDS[torch.float32]
    for a, b in zip(grads[torch.float32], grads[torch.float64]):
        rel = ((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()
        assert rel <= grad_bound, f"{cell} fp32 gradient relative error {rel:.3g} > {grad_bound}"


# ----------------------------------------------------------------------------- 4. memory


def _rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize() / 2**20


@pytest.mark.parametrize("ex", params(REFERENCE_CPU, TORCH_CPU, *GPU_FUSED))
def test_no_memory_growth_over_repeated_calls(ex: Executor):
    """1000 forward/backward calls of a residual bidirectional stack: the CPU process's RSS grows by
    less than 20 MB; on a GPU the allocated memory returns exactly to where it was."""
    ex.skip_unless_available("lstm")
    f = fusedrnn.LSTM(16, 8, num_layers=2, bidirectional=True, residual=True, backend=ex.backend, device=ex.device)
    x = torch.randn(6, 3, 16, requires_grad=True, device=ex.device)

    def step():
        out, (h, c) = f(x)
        (out.sum() + h.sum() + c.sum()).backward()

    for _ in range(100):
        step()
    gc.collect()
    if ex.on_gpu:
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
    else:
        before = _rss_mb()
    for _ in range(1000):
        step()
    gc.collect()
    if ex.on_gpu:
        torch.cuda.synchronize()
        assert torch.cuda.memory_allocated() == before
    else:
        grown = _rss_mb() - before
        assert grown < 20, f"RSS grew {grown:.1f} MB over 1000 forward/backward calls"


def _functional_args(cell, T, B, H, dtype, device, requires_grad=True, seed=0):
    """Positional arguments of fusedrnn.functional.gru/lstm on ``device`` (the shared builder)."""
    d, _ = make_cell_inputs(cell, T, B, H, H, dtype, seed=seed)
    return [v.to(device).requires_grad_(requires_grad) for v in functional_args(cell, d).values() if v is not None]


def _fwd_bwd(cell, args, backend, **kw):
    fn = fusedrnn.functional.gru if cell == "gru" else fusedrnn.functional.lstm
    out = fn(*args, backend=backend, **kw)
    loss = sum((o.float() * (i + 1)).sum() for i, o in enumerate(out))
    return out, torch.autograd.grad(loss, [a for a in args if a.requires_grad])


@pytest.mark.parametrize("ex", params(*GPU_FUSED))
@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_no_per_step_allocations(cell, ex: Executor):
    """The number of allocator calls of a forward+backward must not depend on T."""
    ex.skip_unless_available(cell)
    counts = {}
    for T in (16, 256):
        args = _functional_args(cell, T, 8, 64, torch.float32, ex.device)
        _fwd_bwd(cell, args, ex.backend)  # warm-up: compile, autotune, caches
        torch.cuda.synchronize()
        n0 = torch.cuda.memory_stats()["allocation.all.allocated"]
        _fwd_bwd(cell, args, ex.backend)
        torch.cuda.synchronize()
        counts[T] = torch.cuda.memory_stats()["allocation.all.allocated"] - n0
    assert counts[16] == counts[256], f"allocations per call depend on T: {counts}"


@pytest.mark.gpu
@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_activation_memory_vs_cudnn_reserve(cell):
    """Measures the memory kept for backward by each fused backend against cuDNN (torch.nn) on the
    same problem and prints the table; the assertion only guards against a gross regression (> 4x)."""
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
    for ex in GPU_FUSED:
        f = (fusedrnn.GRU if cell == "gru" else fusedrnn.LSTM)(H, H, device="cuda", dtype=torch.bfloat16,
                                                               backend=ex.backend)
        try:
            torch.cuda.synchronize()
            base = torch.cuda.memory_allocated()
            out = f(x)
            torch.cuda.synchronize()
            rows[ex.backend] = torch.cuda.memory_allocated() - base
            del out
        except ValueError as e:
            rows[ex.backend] = f"unavailable: {e}"
    print(f"\nactivation memory kept for backward, {cell.upper()} bf16 T={T} B={B} H={H} (incl. outputs):")
    for k, v in rows.items():
        print(f"  {k:<18} {v / 2**20:.1f} MiB" if isinstance(v, int) else f"  {k:<18} {v}")
    for k, v in rows.items():
        if isinstance(v, int) and k != "cudnn (torch.nn)":
            assert v <= 4 * rows["cudnn (torch.nn)"], rows


# ----------------------------------------------------------------------------- 5. determinism


@pytest.mark.parametrize("ex", params(*CPU, *GPU_FUSED))
@pytest.mark.parametrize("cls", [fusedrnn.GRU, fusedrnn.LSTM], ids=IDS)
def test_bitwise_deterministic(cls, ex: Executor):
    """Repeated calls, also under torch.use_deterministic_algorithms, give bitwise equal outputs and
    gradients: bidirectional (reverse), packed (lengths), two layers. GPU: bf16, larger shapes."""
    dtype = torch.bfloat16 if ex.on_gpu else torch.float32
    ex.skip_unless_available(cls.__name__.lower(), dtype)
    T, B, H = (64, 16, 256) if ex.on_gpu else (5, 3, 5)
    torch.manual_seed(0)
    f = cls(4, H, num_layers=2, bidirectional=True, backend=ex.backend, device=ex.device, dtype=dtype)
    x = torch.randn(T, B, 4, requires_grad=True, device=ex.device, dtype=dtype)
    lengths = torch.randint(1, T + 1, (B,), generator=torch.Generator().manual_seed(0))
    lengths[0] = T

    def call():
        return f(pack_padded_sequence(x, lengths, enforce_sorted=False))

    runs = [run_with_grads(f, [x], call) for _ in range(2)]
    with torch.backends.cudnn.flags(deterministic=True):
        torch.use_deterministic_algorithms(True)
        try:
            runs.append(run_with_grads(f, [x], call))
        finally:
            torch.use_deterministic_algorithms(False)
    first = runs[0]
    for other in runs[1:]:
        for a, b in zip(first[0] + first[1], other[0] + other[1]):
            assert torch.equal(a, b)
        for n in first[2]:
            assert torch.equal(first[2][n], other[2][n]), n


# ----------------------------------------------------------------------------- 6. concurrency


@pytest.mark.parametrize("backend", ["reference", "torch"])
def test_two_threads_same_results_as_sequential(backend):
    f = fusedrnn.GRU(4, 6, num_layers=2, backend=backend)
    xs = [torch.randn(7, 3, 4) for _ in range(2)]
    want = [f(x)[0] for x in xs]
    got = [None, None]
    errors = []

    def work(i):
        try:
            for _ in range(20):
                got[i] = f(xs[i])[0]
        except Exception as e:  # noqa: BLE001 - surfaced by the assert below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors
    for a, b in zip(got, want):
        assert torch.equal(a, b)


@pytest.mark.parametrize("ex", params(*GPU_FUSED))
@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_two_streams_same_as_sequential(cell, ex: Executor):
    ex.skip_unless_available(cell)
    inputs = [_functional_args(cell, 128, 8, 128, torch.float32, "cuda", requires_grad=False, seed=s) for s in (1, 2)]
    fn = fusedrnn.functional.gru if cell == "gru" else fusedrnn.functional.lstm
    want = [fn(*a, backend=ex.backend) for a in inputs]
    torch.cuda.synchronize()
    streams = [torch.cuda.Stream(), torch.cuda.Stream()]
    got = [None, None]
    for i, (stream, a) in enumerate(zip(streams, inputs)):
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            got[i] = fn(*a, backend=ex.backend)
    torch.cuda.synchronize()
    for g, w in zip(got, want):
        for x, y in zip(g, w):
            assert torch.equal(x, y)


@pytest.mark.parametrize("ex", params(Executor("torch", "cuda"), *GPU_FUSED))
@pytest.mark.parametrize("cls", [fusedrnn.GRU, fusedrnn.LSTM], ids=IDS)
def test_module_call_never_synchronizes_the_device(cls, ex: Executor):
    """The module path (plan, checks, packing) adds no host-device synchronisation: packed lengths
    come from batch_sizes, which torch keeps on the CPU."""
    ex.skip_unless_available(cls.__name__.lower(), torch.bfloat16)
    f = cls(32, 32, num_layers=2, bidirectional=True, residual=True, backend=ex.backend, device="cuda",
            dtype=torch.bfloat16)
    x = torch.randn(9, 4, 32, device="cuda", dtype=torch.bfloat16)
    lengths = torch.tensor([9, 3, 7, 5])
    packed = pack_padded_sequence(x, lengths, enforce_sorted=False)
    f(packed)  # warm-up: compilation and caches may synchronise once
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        with torch.no_grad():
            f(packed)
            f(x)
    finally:
        torch.cuda.set_sync_debug_mode("default")


# ----------------------------------------------------------------------------- 7. fuzz


@st.composite
def rnn_configs(draw):
    cell = draw(st.sampled_from(["gru", "lstm"]))
    num_layers = draw(st.integers(1, 3))
    bidirectional = draw(st.booleans())
    H = draw(st.integers(1, 6))
    backend = draw(st.sampled_from(CPU_BACKENDS))
    # The Triton kernels declare proj_size unsupported (a forced backend then raises, by design).
    proj_ok = cell == "lstm" and H > 1 and backend != "triton"
    proj = draw(st.integers(0, H - 1)) if proj_ok and draw(st.booleans()) else 0
    D = 2 if bidirectional else 1
    P = proj or H
    residual = draw(st.sampled_from([False, True] + list(range(1, num_layers))))
    input_size = D * P if residual is True and draw(st.booleans()) else draw(st.integers(1, 6))
    T = draw(st.integers(1, 7))
    B = draw(st.integers(1, 4))
    packed = draw(st.booleans())
    lengths = draw(st.lists(st.integers(1, T), min_size=B, max_size=B)) if packed else None
    dtype = draw(st.sampled_from([torch.float64, torch.float32]))
    return dict(cell=cell, num_layers=num_layers, bidirectional=bidirectional, H=H, proj=proj,
                residual=residual, input_size=input_size, T=T, B=B, lengths=lengths, backend=backend, dtype=dtype)


@given(cfg=rnn_configs())
def test_fuzz_modules_against_torch(cfg):
    """Random cell/sizes/layers/direction/residual/lengths/dtype/backend vs torch.nn composed with the
    same residual adds (through the reference composition used in test_modules)."""
    from fusedrnn.bench.composed import ComposedTorch

    kw = dict(num_layers=cfg["num_layers"], bidirectional=cfg["bidirectional"], dtype=cfg["dtype"])
    if cfg["cell"] == "lstm":
        kw["proj_size"] = cfg["proj"]
    fcls = fusedrnn.LSTM if cfg["cell"] == "lstm" else fusedrnn.GRU
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        f = fcls(cfg["input_size"], cfg["H"], residual=cfg["residual"], backend=cfg["backend"], **kw)
    ref = ComposedTorch(f).to(cfg["dtype"])
    x = torch.randn(cfg["T"], cfg["B"], cfg["input_size"], dtype=cfg["dtype"])
    inp = x if cfg["lengths"] is None else pack_padded_sequence(x, torch.tensor(cfg["lengths"]), enforce_sorted=False)
    out_f, out_t = f(inp), ref(inp)
    tol = dict(atol=1e-9, rtol=1e-7) if cfg["dtype"] == torch.float64 else dict(atol=2e-5, rtol=1e-4)
    a, b = out_f[0], out_t[0]
    if cfg["lengths"] is not None:
        a, b = pad_packed_sequence(a)[0], pad_packed_sequence(b)[0]
    torch.testing.assert_close(a, b, **tol)
    ha = out_f[1] if isinstance(out_f[1], tuple) else (out_f[1],)
    hb = out_t[1] if isinstance(out_t[1], tuple) else (out_t[1],)
    for p, q in zip(ha, hb):
        torch.testing.assert_close(p, q, **tol)


def test_autocast_in_one_thread_does_not_leak_into_another():
    """Casting for autocast must not be visible to a concurrent call without autocast."""
    f = fusedrnn.LSTM(4, 6, num_layers=2)
    x = torch.randn(5, 3, 4)
    want = f(x)[0]
    stop = threading.Event()
    errors = []

    def autocast_loop():
        while not stop.is_set():
            with torch.autocast("cpu", dtype=torch.bfloat16):
                f(x)

    th = threading.Thread(target=autocast_loop)
    th.start()
    try:
        for _ in range(40):
            try:
                assert torch.equal(f(x)[0], want)
            except Exception as e:  # noqa: BLE001 - collected and reported below
                errors.append(e)
    finally:
        stop.set()
        th.join()
    assert not errors, errors[:3]
