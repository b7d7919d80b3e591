"""The cuda backend (persistent kernels, csrc/) against the fp64 reference on a GPU.

Run on a GPU machine: FUSEDRNN_TEST_DEVICE=cuda pytest -m gpu tests/test_cuda_gpu.py

Numerics rule (DESIGN.md): for every output and every gradient,
    max|ours - fp64 oracle| <= K * max|torch's own op (cuDNN) in the same dtype - fp64 oracle| + floor
with floor a small multiple of the dtype's epsilon times the tensor's scale (only there so that a
tensor torch gets exactly right does not demand exactness). fp32 runs with TF32 off (exact FMA
path) unless a test says otherwise.
"""

from __future__ import annotations

import math

import pytest
import torch
from helpers import check_raw_recurrence_forward

import fusedrnn
from fusedrnn import functional as Fn

pytestmark = pytest.mark.gpu

DEV = "cuda"
K = {torch.float32: 4.0, torch.bfloat16: 3.0, torch.float16: 3.0}
FLOOR = {torch.float32: 2e-6, torch.bfloat16: 2e-3, torch.float16: 2.5e-4}
DTYPES = [torch.float32, torch.bfloat16, torch.float16]


@pytest.fixture(autouse=True)
def _exact_fp32():
    old = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def make_inputs(cell, T, B, I, H, *, bias=True, has_residual=False, has_lengths=False, seed=0):
    """fp64 CPU tensors shaped like torch's parameters (uniform ±1/sqrt(H)) plus states and upstream grads."""
    g = torch.Generator().manual_seed(seed)
    G = (3 if cell == "gru" else 4) * H
    k = 1 / math.sqrt(H)
    u = lambda *s: (torch.rand(*s, generator=g, dtype=torch.float64) * 2 - 1) * k  # noqa: E731
    n = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    d = dict(x=n(T, B, I), h0=n(B, H) * 0.5, w_ih=u(G, I), w_hh=u(G, H),
             b_ih=u(G) if bias else None, b_hh=u(G) if bias else None,
             residual=n(T, B, H) if residual else None)
    if cell == "lstm":
        d["c0"] = n(B, H) * 0.5
    if lengths:
        L = torch.randint(1, T + 1, (B,), generator=g)
        L[0] = T
        d["lengths"] = L
    else:
        d["lengths"] = None
    d["up"] = [n(T, B, H), n(B, H)] + ([n(B, H)] if cell == "lstm" else [])
    return d


DIFF = ("x", "h0", "c0", "w_ih", "w_hh", "b_ih", "b_hh", "residual")


def run(cell, d, dtype, backend, reverse=False, grads=True):
    """Outputs and the gradients of every differentiable input, as fp64 CPU tensors."""
    leaves = {k: d[k].to(DEV, dtype).requires_grad_(grads) for k in DIFF if d.get(k) is not None}
    lengths = d["lengths"]
    kw = dict(residual=leaves.get("residual"), lengths=lengths, reverse=reverse, backend=backend)
    if cell == "gru":
        outs = Fn.gru(leaves["x"], leaves["h0"], leaves["w_ih"], leaves["w_hh"], leaves.get("b_ih"),
                      leaves.get("b_hh"), **kw)
    else:
        outs = Fn.lstm(leaves["x"], leaves["h0"], leaves["c0"], leaves["w_ih"], leaves["w_hh"],
                       leaves.get("b_ih"), leaves.get("b_hh"), **kw)
    result = {f"out{i}": o.detach().double().cpu() for i, o in enumerate(outs)}
    if grads:
        loss = sum((o.double() * up.to(DEV)).sum() for o, up in zip(outs, d["up"]))
        names = list(leaves)
        for name, gr in zip(names, torch.autograd.grad(loss, [leaves[k] for k in names])):
            result[f"d{name}"] = gr.double().cpu()
    return result


def assert_within_torch_error(cell, d, dtype, reverse=False, grads=True, k=None):
    oracle = run(cell, d, torch.float64, "reference", reverse, grads)
    ours = run(cell, d, dtype, "cuda", reverse, grads)
    theirs = run(cell, d, dtype, "torch", reverse, grads)
    k = K[dtype] if k is None else k
    bad = []
    for name, ref in oracle.items():
        e_ours = (ours[name] - ref).abs().max().item()
        e_torch = (theirs[name] - ref).abs().max().item()
        bound = k * e_torch + FLOOR[dtype] * (1 + ref.abs().max().item())
        if not e_ours <= bound:  # also catches NaN
            bad.append(f"{name}: ours {e_ours:.3g} > {bound:.3g} (torch {e_torch:.3g})")
    assert not bad, f"{cell} {dtype}: " + "; ".join(bad)


def _assert_fp32_tight(ours, ref):
    """fp32 (TF32 off) against the fp32 reference: the same operands, only summation order differs."""
    for name in ref:
        torch.testing.assert_close(ours[name], ref[name], atol=2e-5, rtol=2e-5, msg=lambda m: f"{name}: {m}")  # noqa: B023


CASES = [  # (T, B, I, H, bias, residual, lengths, reverse)
    (5, 3, 7, 16, True, False, False, False),
    (63, 3, 40, 500, True, True, True, True),      # odd sizes, every feature
    (33, 17, 64, 256, False, False, True, False),  # two batch tiles, no bias
    (17, 33, 32, 128, True, True, False, True),    # three batch tiles
    (9, 1, 24, 520, True, False, False, False),    # B=1, H not a multiple of 16 * CTAs
    (1, 2, 8, 8, True, True, True, True),          # T=1 (no grid barrier at all), H < 16 (one partial CTA)
    (4, 16, 8, 17, True, False, True, False),      # B = exactly one tile; last CTA owns 1 unit; scalar staging
]


@pytest.mark.parametrize("cell", ["gru", "lstm"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", CASES, ids=lambda c: "T{}-B{}-I{}-H{}-b{:d}r{:d}l{:d}rev{:d}".format(*c))
def test_forward_and_all_grads_vs_fp64(cell, dtype, case):
    T, B, I, H, bias, residual, lengths, reverse = case
    d = make_inputs(cell, T, B, I, H, bias=bias, residual=residual, lengths=lengths, seed=T * 7 + H)
    assert_within_torch_error(cell, d, dtype, reverse)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_hidden_size_at_declared_limit(cell, dtype):
    from fusedrnn.backends import cuda as cuda_ops

    hmax = cuda_ops.max_hidden_size(cell, dtype, False, torch.cuda.current_device())
    assert hmax >= 256
    d = make_inputs(cell, 6, 3, 32, hmax, has_residual=True, has_lengths=True, seed=hmax)
    assert_within_torch_error(cell, d, dtype, reverse=True)
    with pytest.raises(ValueError, match=f"H={hmax + 1}"):
        run(cell, make_inputs(cell, 2, 1, 8, hmax + 1), dtype, "cuda", grads=False)


@pytest.mark.slow
@pytest.mark.parametrize("cell", ["gru", "lstm"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_long_sequence(cell, dtype):
    d = make_inputs(cell, 2048, 4, 64, 128, lengths=True, seed=5)
    assert_within_torch_error(cell, d, dtype)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
@pytest.mark.parametrize("B,H", [(5, 256), (17, 520)])  # 520: K chunks of 512 and a partial CTA under TF32
def test_tf32_path(cell, B, H):
    torch.backends.cuda.matmul.allow_tf32 = True
    d = make_inputs(cell, 20, B, 48, H, lengths=True, seed=3)
    oracle = run(cell, d, torch.float64, "reference")
    ours = run(cell, d, torch.float32, "cuda")
    for name, ref in oracle.items():
        err = (ours[name] - ref).abs().max().item()
        assert err <= 1e-2 * (1 + ref.abs().max().item()), f"{name}: {err}"  # TF32: 10-bit mantissa operands


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_matches_fp32_reference_tightly(cell):
    d = make_inputs(cell, 40, 6, 24, 96, has_residual=True, has_lengths=True, seed=11)
    ref = run(cell, d, torch.float32, "reference", reverse=True)
    ours = run(cell, d, torch.float32, "cuda", reverse=True)
    _assert_fp32_tight(ours, ref)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_deterministic_and_no_grad_matches(cell):
    d = make_inputs(cell, 12, 5, 16, 64, lengths=True, seed=2)
    a = run(cell, d, torch.bfloat16, "cuda")
    b = run(cell, d, torch.bfloat16, "cuda")
    for name in a:
        assert torch.equal(a[name], b[name]), name
    with torch.no_grad():
        c = run(cell, d, torch.bfloat16, "cuda", grads=False)
    for name in c:
        assert torch.equal(a[name], c[name]), name


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_final_state_grad_only_and_noncontiguous(cell):
    d = make_inputs(cell, 10, 4, 16, 48, seed=4)
    d["up"][0] = torch.zeros_like(d["up"][0])  # y unused: only final states carry gradient
    ref = run(cell, d, torch.float32, "reference")
    x = d["x"].transpose(0, 1).contiguous().transpose(0, 1)  # same values, (B, T, I) memory order
    d2 = dict(d, x=x, w_hh=d["w_hh"].t().contiguous().t())
    ours = run(cell, d2, torch.float32, "cuda")
    _assert_fp32_tight(ours, ref)


def _count_kernels(fn, needle):
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return sum(1 for e in prof.events() if needle in e.name and e.device_type == torch.autograd.DeviceType.CUDA)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_one_launch_per_direction(cell):
    d = make_inputs(cell, 50, 4, 32, 64, seed=6)
    leaves = {k: d[k].to(DEV, torch.bfloat16).requires_grad_() for k in DIFF if d.get(k) is not None}
    args = [leaves[k] for k in (("x", "h0") if cell == "gru" else ("x", "h0", "c0"))]
    args += [leaves["w_ih"], leaves["w_hh"], leaves["b_ih"], leaves["b_hh"]]
    fn = Fn.gru if cell == "gru" else Fn.lstm
    holder = {}

    def fwd():
        holder["out"] = fn(*args, backend="cuda")

    assert _count_kernels(fwd, "rnn_fwd_persistent_kernel") == 1
    loss = sum(o.float().sum() for o in holder["out"])
    assert _count_kernels(lambda: loss.backward(), "rnn_bwd_persistent_kernel") == 1


def test_barrier_floor():
    from fusedrnn import _ext

    ext = _ext.load()
    ms = ext.barrier_floor(T=1000, grid=torch.cuda.get_device_properties(0).multi_processor_count)
    assert 0 < ms < 1000
    assert ext.barrier_floor(T=10) > 0


def test_auto_skips_unvalidated_kernels_and_rejects_fp64():
    from fusedrnn import backends, dispatch

    p = backends.CallSpec(cell="gru", device=torch.device(DEV), dtype=torch.bfloat16, T=4, B=2, I=8, H=64, P=64,
                         has_residual=False, has_lengths=False, reverse=False, has_proj=False)
    if dispatch.gate_reasons("cuda", p):
        assert dispatch.choose("auto", p).name != "cuda"
    assert backends.get("cuda").reasons(p, forced=True) == []
    d = make_inputs("gru", 3, 2, 8, 16)
    with pytest.raises(ValueError, match="dtype=torch.float64"):
        run("gru", d, torch.float64, "cuda", grads=False)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_torch_compile_fullgraph(cell):
    d = make_inputs(cell, 8, 3, 16, 32, residual=True, seed=9)
    eager = run(cell, d, torch.float32, "cuda")
    compiled_fn = torch.compile(Fn.gru if cell == "gru" else Fn.lstm, fullgraph=True)
    leaves = {k: d[k].to(DEV, torch.float32).requires_grad_() for k in DIFF if d.get(k) is not None}
    states = ("x", "h0") if cell == "gru" else ("x", "h0", "c0")
    outs = compiled_fn(*[leaves[k] for k in states], leaves["w_ih"], leaves["w_hh"], leaves["b_ih"],
                       leaves["b_hh"], residual=leaves["residual"], backend="cuda")
    for i, o in enumerate(outs):
        torch.testing.assert_close(o.detach().double().cpu(), eager[f"out{i}"], atol=1e-6, rtol=1e-6)
    loss = sum((o.double() * up.to(DEV)).sum() for o, up in zip(outs, d["up"]))
    names = list(leaves)
    for name, g in zip(names, torch.autograd.grad(loss, [leaves[k] for k in names])):
        torch.testing.assert_close(g.double().cpu(), eager[f"d{name}"], atol=1e-5, rtol=1e-5)


def test_modules_forced_cuda_match_torch():
    torch.manual_seed(0)
    ref = torch.nn.LSTM(64, 64, num_layers=2, bidirectional=True).to(DEV)
    ours = fusedrnn.LSTM(64, 64, num_layers=2, bidirectional=True, backend="cuda").to(DEV)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(20, 3, 64, device=DEV)
    torch.testing.assert_close(ours(x)[0], ref(x)[0], atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
@pytest.mark.parametrize("reverse", [False, True])
def test_final_state_grads_only_with_lengths(cell, reverse):
    """Only h_n (and c_n) carry gradient, rows of different lengths: checks that the backward starts
    each row at its own last valid step (dh/dc pass through invalid steps) in both directions."""
    d = make_inputs(cell, 13, 20, 16, 40, lengths=True, seed=21)
    d["up"][0] = torch.zeros_like(d["up"][0])
    ref = run(cell, d, torch.float32, "reference", reverse=reverse)
    ours = run(cell, d, torch.float32, "cuda", reverse=reverse)
    _assert_fp32_tight(ours, ref)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_lengths_on_device_same_as_on_cpu(cell):
    d = make_inputs(cell, 9, 18, 16, 48, lengths=True, residual=True, seed=8)
    a = run(cell, d, torch.bfloat16, "cuda", reverse=True)
    b = run(cell, dict(d, lengths=d["lengths"].to(DEV)), torch.bfloat16, "cuda", reverse=True)
    for name in a:
        assert torch.equal(a[name], b[name]), name


@pytest.mark.parametrize("cell", ["gru", "lstm"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("reverse", [False, True])
def test_hist_slots_and_saved_activations(cell, dtype, reverse):
    """The extension's raw outputs, to localise a failure: hist[t] is the state before time t (the
    exchange buffer), and the saved activations are the gate values recomputed in fp64 from gx, hist
    and W_hh. A wrong slot index, MMA layout or K-split sum shows up here directly."""
    from fusedrnn import _ext

    check_raw_recurrence_forward(_ext.load(), cell, dtype, reverse, DEV)


@pytest.mark.slow
@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_offsets_past_int32(cell):
    """T*B*G > 2^31 elements: every (t, b, gate) offset into gx/saved/dgh must be 64-bit. Checked on
    the last steps (forward) and on dx of the last steps (backward) against cuDNN with the suite's rule."""
    B, H, I = 128, 1024, 8
    G = (3 if cell == "gru" else 4) * H
    T = (1 << 31) // (B * G) + 16
    g = torch.Generator().manual_seed(1)
    k = 1 / math.sqrt(H)
    x = torch.randn(T, B, I, generator=g)
    w = dict(w_ih=(torch.rand(G, I, generator=g) * 2 - 1) * k, w_hh=(torch.rand(G, H, generator=g) * 2 - 1) * k,
             b_ih=(torch.rand(G, generator=g) * 2 - 1) * k, b_hh=(torch.rand(G, generator=g) * 2 - 1) * k)
    h0 = torch.randn(B, H, generator=g) * 0.5
    c0 = torch.randn(B, H, generator=g) * 0.5
    up = torch.randn(8, B, H, generator=g)

    def go(dtype, backend):
        lv = {n: t.to(DEV, dtype).requires_grad_() for n, t in w.items()}
        xs = x.to(DEV, dtype).requires_grad_()
        states = (h0.to(DEV, dtype),) + ((c0.to(DEV, dtype),) if cell == "lstm" else ())
        fn = Fn.gru if cell == "gru" else Fn.lstm
        outs = fn(xs, *states, lv["w_ih"], lv["w_hh"], lv["b_ih"], lv["b_hh"], backend=backend)
        loss = (outs[0][-8:].float() * up.to(DEV)).sum()
        (dx,) = torch.autograd.grad(loss, [xs])
        res = {"y": outs[0][-8:].double().cpu(), "h_n": outs[1].double().cpu(), "dx": dx[-8:].double().cpu()}
        del outs, dx, loss
        torch.cuda.empty_cache()
        return res

    oracle = go(torch.float32, "torch")
    theirs = go(torch.bfloat16, "torch")
    ours = go(torch.bfloat16, "cuda")
    for name, ref in oracle.items():
        e_ours = (ours[name] - ref).abs().max().item()
        e_torch = (theirs[name] - ref).abs().max().item()
        bound = K[torch.bfloat16] * e_torch + FLOOR[torch.bfloat16] * (1 + ref.abs().max().item())
        assert e_ours <= bound, f"{name}: ours {e_ours:.3g} > {bound:.3g} (torch {e_torch:.3g})"
