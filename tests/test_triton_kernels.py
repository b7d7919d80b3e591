"""The Triton kernels' numerics against the fp64 reference, each check written once and run by
every executor that can: the Triton interpreter on the CPU (small shapes: it is slow) and, with
FUSEDRNN_TEST_DEVICE=cuda, a GPU (realistic shapes; the grid barrier runs for real there).

Calls go through fusedrnn.functional (backend="triton"), or through fusedrnn.backends.triton / the
launchers in fusedrnn.kernels.rnn where a strategy, a plan or the barrier mode is forced. Outputs,
final states and the gradients of every input are compared, with random upstream gradients on
every output including the final states: fp32 within helpers.FP32_TOL of the fp64 oracle; fp16/bf16
within helpers.K_LOWP x torch's own error in that dtype (cuDNN on a GPU).
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

pytest.importorskip("triton")

from executors import executor_device, executor_params  # noqa: E402
from helpers import FP32_TOL, assert_fp32_close, assert_lowp_within_baselines  # noqa: E402
from helpers import functional_call, make_cell_inputs, rel_err, run_cell_with_grads  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import fusedrnn.functional as F  # noqa: E402
from fusedrnn.backends import triton as triton_ops  # noqa: E402
from fusedrnn.kernels import common, rnn  # noqa: E402

EXECUTORS = executor_params("triton", "interpreter", None if common.interpreter_on() else
                            "the Triton interpreter is off (FUSEDRNN_TEST_DEVICE=cuda)")
executor = pytest.fixture(params=EXECUTORS)(lambda request: request.param)


def _inputs(executor, cell, T, B, I, H, dtype=torch.float64, **kw):  # noqa: E741
    d, lens = make_cell_inputs(cell, T, B, I, H, dtype, **kw)
    dev = executor_device(executor)
    return {k: (v.to(dev) if v is not None else None) for k, v in d.items()}, lens


def _triton(strategy=None, plan_override=None):
    """{cell: call with the functional positional signature} through triton_ops, or, with a
    plan override, through an autograd wrapper of the launchers."""
    if plan_override is None:
        return {"gru": lambda *a: triton_ops.gru(*a, strategy=strategy),
                "lstm": lambda *a: triton_ops.lstm(*a, strategy=strategy),
                "rnn_tanh": lambda *a: triton_ops.rnn("rnn_tanh", *a, strategy=strategy),
                "rnn_relu": lambda *a: triton_ops.rnn("rnn_relu", *a, strategy=strategy)}
    return {cell: _launcher_call(cell, strategy, plan_override) for cell in ("gru", "lstm", "rnn_tanh", "rnn_relu")}


def _launcher_call(cell, strategy, plan_override):
    lstm = cell == "lstm"

    class Fn(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, h0, c0, w_ih, w_hh, b_ih, b_hh, residual, lengths, reverse):
            y, h_n, c_n, hseq, cseq, act, _, _ = rnn.forward(
                cell, x, h0, c0, w_ih, w_hh, b_ih, b_hh, residual, lengths, reverse, True, strategy=strategy,
                plan_override=plan_override)
            ctx.save_for_backward(x, w_ih, w_hh, hseq, cseq, act)
            ctx.lengths, ctx.reverse = lengths, reverse
            ctx.flags = (c0 is not None, b_ih is not None, residual is not None)
            return (y, h_n, c_n) if lstm else (y, h_n)

        @staticmethod
        def backward(ctx, dy, dh_n, dc_n=None):
            x, w_ih, w_hh, hseq, cseq, act = ctx.saved_tensors
            has_c0, has_bias, has_res = ctx.flags
            needs = (True, True, has_c0, True, True, has_bias, has_bias, has_res)
            g = rnn.backward(cell, dy, dh_n, dc_n, x, w_ih, w_hh, ctx.lengths, hseq, cseq if lstm else None, act,
                             ctx.reverse, needs, strategy=strategy, plan_override=plan_override)
            dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh, dres, _ = g
            return dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh, dres, None, None

    if lstm:
        return lambda x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, residual, lengths, reverse: Fn.apply(
            x, h0, c0, w_ih, w_hh, b_ih, b_hh, residual, lengths, reverse)
    return lambda x, h0, w_ih, w_hh, b_ih, b_hh, residual, lengths, reverse: Fn.apply(
        x, h0, None, w_ih, w_hh, b_ih, b_hh, residual, lengths, reverse)


def _check_fp32(executor, cell, T, B, I, H, residual, lengths, reverse, bias, call, seed=0):  # noqa: E741
    d, lens = _inputs(executor, cell, T, B, I, H, bias=bias, residual=residual, lengths=lengths, seed=seed)
    want = run_cell_with_grads(cell, functional_call("reference")[cell], d, lens, reverse)  # fp64 oracle
    got = run_cell_with_grads(cell, call, d, lens, reverse, dtype=torch.float32)
    assert_fp32_close(got, want, f"{cell} T{T} B{B} I{I} H{H}")


# A covering subset of cell x residual x lengths x reverse x bias x shape x strategy. On the
# interpreter: H in {1, 3, 40, 100, 257} (T short where H is large: it is slow there); on a GPU:
# realistic sizes, T up to 1024, every SM busy.
CASES = {
    "interpreter": [
        # cell,  T,  B,  I,   H, residual, lengths, reverse, bias, strategy
        ("gru", 1, 1, 3, 1, False, False, False, True, None),
        ("gru", 2, 3, 5, 3, True, True, True, True, "batch_tile"),
        ("gru", 33, 17, 7, 3, True, True, False, False, "persistent"),
        ("gru", 33, 3, 4, 40, False, True, True, True, None),
        ("gru", 9, 3, 4, 40, True, True, False, True, "persistent"),
        ("gru", 2, 17, 5, 100, True, False, False, True, "batch_tile"),
        ("gru", 2, 3, 6, 257, True, True, True, True, "persistent"),
        ("lstm", 1, 1, 3, 1, True, False, True, True, None),
        ("lstm", 2, 3, 5, 3, False, True, False, False, "batch_tile"),
        ("lstm", 33, 17, 7, 3, True, True, True, True, "persistent"),
        ("lstm", 33, 3, 4, 40, True, True, False, True, None),
        ("lstm", 9, 40, 4, 24, False, True, True, True, "persistent"),
        ("lstm", 2, 17, 5, 100, False, True, True, True, "batch_tile"),
        ("lstm", 2, 1, 6, 257, False, True, False, True, "batch_tile"),
        ("rnn_tanh", 1, 1, 3, 1, False, False, False, True, None),
        ("rnn_relu", 2, 3, 5, 3, True, True, True, True, "batch_tile"),
        ("rnn_tanh", 33, 17, 7, 3, True, True, False, False, "persistent"),
        ("rnn_relu", 9, 3, 4, 40, True, True, False, True, "persistent"),
        ("rnn_tanh", 2, 17, 5, 100, False, True, True, True, "batch_tile"),
        ("rnn_relu", 2, 3, 6, 257, True, True, True, False, "persistent"),
    ],
    "gpu": [
        ("gru", 1024, 16, 64, 256, True, True, False, True, "persistent"),
        ("gru", 128, 32, 128, 1024, False, True, True, True, "persistent"),
        ("gru", 300, 3, 32, 500, True, True, True, True, "batch_tile"),
        ("gru", 1024, 8, 32, 1024, False, True, True, True, None),
        ("lstm", 1024, 16, 64, 256, True, True, True, True, "batch_tile"),
        ("lstm", 128, 32, 128, 1024, False, True, False, True, "persistent"),
        ("lstm", 300, 3, 32, 500, True, True, True, False, "persistent"),
        ("lstm", 1024, 8, 32, 1024, False, True, True, True, None),
        ("lstm", 256, 130, 64, 768, True, True, False, True, None),
        ("rnn_tanh", 1024, 16, 64, 256, True, True, True, True, "persistent"),
        ("rnn_relu", 128, 32, 128, 1024, False, True, False, True, "persistent"),
        ("rnn_tanh", 300, 3, 32, 500, True, True, False, True, "batch_tile"),
        ("rnn_relu", 256, 130, 64, 768, True, True, True, True, None),
    ],
}


def _per_executor(cases):
    """(executor, case) params: each executor's own case list, with the executor's marks."""
    out = []
    for p in EXECUTORS:
        ex = p.values[0]
        out += [pytest.param(ex, c, marks=p.marks, id=f"{ex}-" + "-".join(map(str, c))) for c in cases[ex]]
    return out


@pytest.mark.parametrize("executor,case", _per_executor(CASES))
def test_fp32_matches_reference(executor, case):
    cell, T, B, I, H, residual, lengths, reverse, bias, strategy = case  # noqa: E741
    _check_fp32(executor, cell, T, B, I, H, residual, lengths, reverse, bias, _triton(strategy)[cell])


# Streamed plans (W_hh re-read in K chunks through the cp.async pipeline) are what large H gets;
# forced here at small H so the interpreter runs them: both warp splits, both directions.
STREAMED = [
    # cell, strategy, H, override
    ("gru", "persistent", 100, dict(resident=False, BLOCK_K=64, num_stages=3)),
    ("lstm", "persistent", 40, dict(resident=False, BLOCK_K=128, num_stages=2)),
    ("lstm", "batch_tile", 40, dict(resident=False, BLOCK_K=16, num_stages=3)),
    ("gru", "batch_tile", 24, dict(resident=False, BLOCK_K=32, num_stages=2)),
    ("rnn_tanh", "persistent", 100, dict(resident=False, BLOCK_K=32, num_stages=3)),
    ("rnn_relu", "batch_tile", 40, dict(resident=False, BLOCK_K=16, num_stages=2)),
]


@pytest.mark.parametrize("cell,strategy,H,override", STREAMED, ids=lambda v: str(v))
def test_streamed_plans_match_reference(executor, cell, strategy, H, override):
    T, B = (3, 5) if executor == "interpreter" else (200, 24)
    _check_fp32(executor, cell, T, B, 4, H, True, True, True, True, _triton(strategy, override)[cell], seed=2)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("cell,strategy", [("gru", "persistent"), ("lstm", "batch_tile"),
                                           ("gru", "batch_tile"), ("lstm", "persistent"),
                                           ("rnn_tanh", "persistent"), ("rnn_relu", "batch_tile")])
def test_low_precision_error_within_torch_error(executor, cell, strategy, dtype):
    T, B, I, H = (24, 5, 8, 40) if executor == "interpreter" else (512, 16, 128, 768)  # noqa: E741
    d, lens = _inputs(executor, cell, T, B, I, H, residual=True, lengths=True, seed=3)
    reverse = strategy == "persistent"
    got = run_cell_with_grads(cell, _triton(strategy)[cell], d, lens, reverse, dtype=dtype)
    assert_lowp_within_baselines(cell, got, d, lens, reverse, dtype)


@pytest.mark.parametrize("strategy", ["persistent", "batch_tile"])
@pytest.mark.parametrize("cell", ["gru", "lstm", "rnn_tanh", "rnn_relu"])
def test_fp64_gradcheck(executor, cell, strategy):
    T, B, I, H = 3, 2, 2, 10  # noqa: E741  (H=10: two unit blocks when persistent)
    d, lens = _inputs(executor, cell, T, B, I, H, residual=True, lengths=True, seed=5)
    names = [k for k, v in d.items() if v is not None]
    fn = _triton(strategy)[cell]

    def f(*ts):
        a = dict(zip(names, ts))
        if cell != "lstm":
            return fn(a["x"], a["h0"], a["w_ih"], a["w_hh"], a["b_ih"], a["b_hh"], a["residual"], lens, True)
        return fn(a["x"], a["h0"], a["c0"], a["w_ih"], a["w_hh"], a["b_ih"], a["b_hh"], None, a["residual"],
                  lens, True)

    inputs = tuple(d[k].clone().requires_grad_() for k in names)
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-7, fast_mode=True)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                               HealthCheck.function_scoped_fixture])
@given(
    cell=st.sampled_from(["gru", "lstm", "rnn_tanh", "rnn_relu"]), T=st.integers(1, 6), B=st.integers(1, 20), I=st.integers(1, 9),
    H=st.integers(1, 40), residual=st.booleans(), lengths=st.booleans(), reverse=st.booleans(),
    bias=st.booleans(), strategy=st.sampled_from(["persistent", "batch_tile"]), seed=st.integers(0, 2**16),
)
def test_property_matches_reference(executor, cell, T, B, I, H, residual, lengths, reverse, bias, strategy, seed):  # noqa: E741
    _check_fp32(executor, cell, T, B, I, H, residual, lengths, reverse, bias, _triton(strategy)[cell], seed=seed)


@pytest.mark.parametrize("cell", ["gru", "lstm", "rnn_relu"])
def test_grid_barrier_code_path_matches_cta_barrier(executor, cell):
    """With one program per batch tile the spin barrier completes in the interpreter too: the
    USE_GRID_BARRIER=True kernels (forward and backward) give the same numbers as the CTA-barrier
    ones, bit for bit."""
    T, B, I, H = (5, 20, 3, 16) if executor == "interpreter" else (300, 70, 16, 64)  # noqa: E741
    d, lens = _inputs(executor, cell, T, B, I, H, dtype=torch.float32, residual=True, lengths=True, seed=7)
    lstm = cell == "lstm"
    results = []
    for forced in (False, True):
        out = rnn.forward(cell, d["x"], d["h0"], d.get("c0"), d["w_ih"], d["w_hh"], d["b_ih"], d["b_hh"],
                          d["residual"], lens, True, True, strategy="batch_tile", force_grid_barrier=forced)
        y, h_n, c_n, hseq, cseq, act, _, _ = out
        g = torch.Generator().manual_seed(2)
        ups = [torch.randn(o.shape, generator=g).to(o.device) for o in (y, h_n, c_n) if o is not None]
        grads = rnn.backward(cell, ups[0], ups[1], ups[2] if lstm else None, d["x"], d["w_ih"], d["w_hh"], lens,
                             hseq, cseq if lstm else None, act, True, (True,) * 8, strategy="batch_tile",
                             force_grid_barrier=forced)
        results.append([t for t in (y, h_n, c_n, *grads[:8]) if t is not None])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("cell", ["gru", "lstm", "rnn_tanh"])
def test_inference_matches_training_forward(executor, cell):
    """No grad needed: the forward keeps only two state slots (ping-pong) and saves nothing."""
    T, H = (9, 40) if executor == "interpreter" else (1024, 1024)
    d, lens = _inputs(executor, cell, T, 5, 4, H, dtype=torch.float32, residual=True, lengths=True, seed=11)
    args = [d["x"], d["h0"]] + ([d["c0"]] if cell == "lstm" else []) + [d["w_ih"], d["w_hh"], d["b_ih"], d["b_hh"]]
    fn = getattr(F, cell)
    for reverse in (False, True):
        with torch.no_grad():
            inf = fn(*args, residual=d["residual"], lengths=lens, reverse=reverse, backend="triton")
        x = d["x"].clone().requires_grad_()
        train = fn(x, *args[1:], residual=d["residual"], lengths=lens, reverse=reverse, backend="triton")
        for a, b in zip(inf, train):
            torch.testing.assert_close(a, b.detach(), rtol=0, atol=0)


@pytest.mark.parametrize("cell", ["gru", "lstm", "rnn_relu"])
def test_partial_upstream_and_partial_requires_grad(executor, cell):
    """Only h_n used (dy absent), and only some inputs require grad: grads match, others stay None."""
    d, lens = _inputs(executor, cell, 6, 3, 4, 20, dtype=torch.float32, lengths=True, seed=13)
    fn = getattr(F, cell)
    outs = {}
    for backend in ("triton", "reference"):
        x = d["x"].clone().requires_grad_()
        w_hh = d["w_hh"].clone().requires_grad_()
        extra = [d["c0"]] if cell == "lstm" else []
        y_hc = fn(x, d["h0"], *extra, d["w_ih"], w_hh, d["b_ih"], d["b_hh"], lengths=lens, backend=backend)
        y_hc[1].pow(2).sum().backward()
        outs[backend] = (x.grad, w_hh.grad)
    for a, b in zip(outs["triton"], outs["reference"]):
        assert rel_err(a.double(), b.double()) <= FP32_TOL


@pytest.mark.parametrize("cell,compile_backend", [("gru", "inductor"), ("lstm", "aot_eager"),
                                                   ("rnn_tanh", "aot_eager"), ("rnn_relu", "inductor")])
def test_torch_compile_fullgraph(executor, cell, compile_backend):
    d, lens = _inputs(executor, cell, 4, 3, 5, 8, dtype=torch.float32, residual=True, lengths=True, seed=17)
    fn = getattr(F, cell)
    names = ["x", "h0"] + (["c0"] if cell == "lstm" else []) + ["w_ih", "w_hh", "b_ih", "b_hh", "residual"]

    def f(*ts):
        a = dict(zip(names, ts))
        outs = fn(*[a[k] for k in names[:-1]], residual=a["residual"], lengths=lens, reverse=True, backend="triton")
        return sum((o * (i + 1)).sum() for i, o in enumerate(outs))

    torch._dynamo.reset()
    compiled = torch.compile(f, fullgraph=True, backend=compile_backend)
    results = []
    for g in (compiled, f):
        leaves = [d[k].clone().requires_grad_() for k in names]
        loss = g(*leaves)
        loss.backward()
        results.append([loss.detach()] + [t.grad for t in leaves])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.gpu
@pytest.mark.parametrize("strategy", ["persistent", "batch_tile"])
@pytest.mark.parametrize("cell", ["gru", "lstm", "rnn_tanh"])
def test_one_launch_per_layer_direction(cell, strategy):
    """torch.profiler: the recurrence of a whole sequence is one kernel launch, forward and backward
    (GPU only: the interpreter launches nothing to profile)."""
    from torch.profiler import ProfilerActivity, profile

    d, lens = _inputs("gpu", cell, 256, 16, 64, 512, seed=5)
    call = _triton(strategy)[cell]
    run_cell_with_grads(cell, call, d, lens, False, dtype=torch.bfloat16)  # compile outside the profile
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        run_cell_with_grads(cell, call, d, lens, False, dtype=torch.bfloat16)
        torch.cuda.synchronize()
    names = [e.name for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    assert sum("rnn_fwd_kernel" in n for n in names) == 1, names
    assert sum("rnn_bwd_kernel" in n for n in names) == 1, names


def test_plan_override_is_applied():
    """The streamed cases above really run streamed plans (the override reaches the launch)."""
    x, w = torch.empty(3, 5, 4), torch.empty(12, 3)
    p = rnn.make_plan("gru", "fwd", x, w, "persistent", dict(resident=False, BLOCK_K=16, num_stages=2))
    assert not p.resident and p.BLOCK_K == 16 and p.num_stages == 2
    base = rnn.make_plan("gru", "fwd", x, w, "persistent")
    assert dataclasses.replace(base, resident=False, BLOCK_K=16, num_stages=2) == p


# ------------------------------------------------------------------------------------------------
# The gate nonlinearities (kernels/common.py) against the fp64 oracle
# ------------------------------------------------------------------------------------------------

import triton  # noqa: E402
import triton.language as tl  # noqa: E402


@triton.jit
def _nonlinearities(x_ptr, sig_ptr, tanh_ptr, n, BLOCK: tl.constexpr):
    o = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    x = tl.load(x_ptr + o, mask=o < n)
    tl.store(sig_ptr + o, common.sigmoid(x), mask=o < n)
    tl.store(tanh_ptr + o, common.tanh(x), mask=o < n)


def _gate_inputs(dtype, device):
    """Every regime of the gates: both saturations (fp32's exponential overflows below x = -88.7
    and is denormal above x = 87.3), around 0 (denormal and tiny arguments), and dense [-20, 20]."""
    tiny = [0.0, -0.0, 1e-45, -1e-45, 1e-39, -1e-39, 1e-30, -1e-30, 1e-8, -1e-8]
    edges = [v * s for v in (30.0, 44.0, 60.0, 87.0, 88.0, 89.0, 100.0, 1e4, 3.4e38) for s in (1.0, -1.0)]
    grid = torch.linspace(-20, 20, 40001, dtype=torch.float64).tolist()
    return torch.tensor(tiny + edges + grid, dtype=dtype, device=device)


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")  # numpy, under the interpreter
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-6), (torch.float64, 1e-14)], ids=str)
def test_sigmoid_and_tanh_match_fp64(executor, dtype, tol):
    """sigmoid(x) = 1/(1 + exp2(-x log2 e)), tanh(x) = 2 sigmoid(2x) - 1, as the kernels compute
    them: within ``tol`` (absolute) of the fp64 values, exact at the saturations, never NaN."""
    x = _gate_inputs(dtype, executor_device(executor))
    sig, th = torch.empty_like(x), torch.empty_like(x)
    _nonlinearities[(triton.cdiv(x.numel(), 1024),)](x, sig, th, x.numel(), BLOCK=1024)
    x64 = x.double().cpu()
    for got, want in ((sig, torch.sigmoid(x64)), (th, torch.tanh(x64))):
        got = got.double().cpu()
        assert not got.isnan().any()
        assert (got - want).abs().max().item() <= tol
    assert sig[x <= -1e4].eq(0).all() and sig[x >= 40].eq(1).all()
    assert th[x <= -20].eq(-1).all() and th[x >= 20].eq(1).all()


def test_sigmoid_and_tanh_within_tolerance_at_the_gpus_worst_case():
    """On sm_80/sm_90 the fp32 forms compile to ``ex2.approx.ftz.f32`` (2 ulp) and ``div.full.f32``
    (2 ulp) (docs/numerics.md). The same arithmetic in fp32, with each of those two results off by
    its whole bound in either direction, stays within the fp32 tolerance the kernel tests use."""
    x = _gate_inputs(torch.float32, "cpu")
    log2e = 1.4426950408889634
    worst = {"sigmoid": 0.0, "tanh": 0.0}
    for e_err in (-(2.0 ** -21), 2.0 ** -21):
        for d_err in (-(2.0 ** -22), 2.0 ** -22):
            def sig(v):
                e = torch.exp2(v * torch.tensor(-log2e, dtype=torch.float32)) * (1 + e_err)
                return (1.0 / (1.0 + e)) * (1 + d_err)

            for name, got, want in (("sigmoid", sig(x), torch.sigmoid(x.double())),
                                    ("tanh", 2.0 * sig(2.0 * x) - 1.0, torch.tanh(x.double()))):
                assert got.dtype == torch.float32 and not got.isnan().any()
                worst[name] = max(worst[name], (got.double() - want).abs().max().item())
    assert worst["sigmoid"] <= 1e-6 and worst["tanh"] <= 1e-6, worst  # the bound the executor test asserts
